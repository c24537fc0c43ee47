"""The ebpfguard command line: a thin layer over the library."""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from ebpfguard.common.units import parse_size as _size
from ebpfguard.errors import EbpfguardError, ManifestError
from ebpfguard.forensics.trace import RECORD_KINDS

DEFAULT_STATE = "/var/lib/ebpfguard"
STATE_OPT = click.option("--state-dir", default=lambda: os.environ.get("EBPFGUARD_STATE_DIR", DEFAULT_STATE),
                         show_default=DEFAULT_STATE, type=click.Path(file_okay=False, readable=False),
                         help="Forensic log, control socket and keys (env EBPFGUARD_STATE_DIR).")


def fail(msg: str, code: int = 1) -> NoReturn:
    click.echo(f"ebpfguard: error: {msg}", err=True)
    sys.exit(code)


def _examples_last(cmd: click.Command) -> None:
    """Move the docstring's "Examples:" block after the options (click prints the help text first)."""
    text = inspect.cleandoc(cmd.help or "")
    i = text.find("\b\nExamples:")
    if i >= 0:
        cmd.help, cmd.epilog = text[:i].rstrip(), text[i:]


class Command(click.Command):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _examples_last(self)


class Group(click.Group):
    command_class = Command
    group_class = type  # subgroups are Groups too

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _examples_last(self)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 80,
                                          "terminal_width": 80})
@click.version_option(package_name="ebpfguard")
def main() -> None:
    """Contain untrusted extensions: one cgroup per extension, every file open, exec, socket and
    dangerous syscall checked against its manifest inside the kernel.

    \b
    Examples:
      ebpfguard policy validate policies/*.yaml
      sudo ebpfguard run --manifest policies/md-preview.yaml -- python3 preview.py
      sudo ebpfguard agent --policy-dir /etc/ebpfguard/policies
      sudo ebpfguard trace --extension md-preview
      sudo ebpfguard forensics show --json
    """


# ---- run ---------------------------------------------------------------------------------------
@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--manifest", "-m", type=click.Path(dir_okay=False), help="The extension's manifest file.")
@click.option("--extension", "-e", help="Use the policy of this name that the running agent loaded.")
@click.option("--mode", type=click.Choice(["audit", "enforce"]), help="Override the manifest's spec.mode.")
@click.option("--standalone", is_flag=True, help="Load the programs in this process even if an agent runs.")
@click.option("--files", type=click.Path(file_okay=False, exists=True),
              help="The extension's folder: launch only if the manifest is signed by a trusted key and every "
                   "file there is as signed (no changed file, no extra executable).")
@click.option("--trust", "trust_dir", default="/etc/ebpfguard/trust", show_default=True,
              type=click.Path(file_okay=False), help="The trust store for --files without an agent.")
@STATE_OPT
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(manifest: str | None, extension: str | None, mode: str | None, standalone: bool, files: str | None,
        trust_dir: str, state_dir: str, command: tuple[str, ...]) -> None:
    """Run COMMAND as an extension instance in its own cgroup, under its manifest.

    Without an agent it loads the eBPF programs itself; with one it goes through the agent's control
    socket. Exits with COMMAND's status, or 128+N if COMMAND was killed by signal N.

    \b
    Examples:
      ebpfguard run -m policies/md-preview.yaml -- python3 -m md_preview
      ebpfguard run -m plugin.yaml --mode audit -- ./plugin.sh
      ebpfguard run -e md-preview -- python3 preview.py   # a policy the agent has
      ebpfguard run -m plugin/plugin.yaml --files plugin -- plugin/bin/tool
    """
    from ebpfguard.manifest.load import load
    from ebpfguard.service.control import agent_running
    from ebpfguard.service.runner import run_standalone, run_via_agent

    if bool(manifest) == bool(extension):
        fail("give exactly one of --manifest or --extension", 2)
    m = None
    if manifest:
        try:
            m = load(manifest)
        except ManifestError as err:
            fail(str(err), 2)
    try:
        if not standalone and agent_running(state_dir):
            status = run_via_agent(state_dir, command, manifest=m, extension=extension, mode=mode, files=files)
        elif m is None:
            fail(f"--extension needs a running agent (none on {state_dir}/agent.sock)", 2)
            return
        else:
            _require_root()
            status = run_standalone(m, command, state_dir, mode, files, trust_dir)
    except EbpfguardError as err:
        fail(str(err), getattr(err, "exit_code", 1))
    sys.exit(status)


def parse_size(text: str) -> int:
    """The one size grammar (units.parse_size), at least 4 KiB."""
    n = _size(text)
    if n < 4096:
        raise ValueError(f"{text!r} is below the 4Ki minimum")
    return n


def _state_readable(*dirs: str) -> None:
    """A state folder that exists but is closed to this user (0700, root's): say so, not a bare EACCES."""
    for d in dirs:
        try:
            os.stat(d)
        except PermissionError:
            fail(f"{d}: a folder on the way is closed to this user: run this as root (sudo)")
        except OSError:
            continue
        if os.path.isdir(d) and not os.access(d, os.R_OK | os.X_OK):
            fail(f"{d} is readable by its owner only ({_owner(d)}): run this as root (sudo)")


def _owner(path: str) -> str:
    import pwd

    uid = os.stat(path).st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _require_root() -> None:
    if os.geteuid() != 0:
        fail("loading eBPF programs and creating cgroups needs root", 1)


# ---- agent -------------------------------------------------------------------------------------
@main.command()
@STATE_OPT
@click.option("--policy-dir", type=click.Path(file_okay=False, exists=True),
              help="Load every manifest here (*.yaml, *.yml, *.json); reload on change.")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--metrics-address", default="127.0.0.1:9464", show_default=True,
              help="Serve Prometheus /metrics here (host:port; loopback by default; '' to disable).")
@click.option("--allow-root-extensions", is_flag=True,
              help="Let a manifest with spec.user: root run as root (both must say so; off by default).")
@click.option("--rotate-size", default="64Mi", show_default=True, metavar="SIZE",
              help="Rotate the forensic log at this size (Ki, Mi, Gi: powers of 1024; K, M, G: of "
                   "1000); the chain runs on across files.")
@click.option("--log-forward", default="", metavar="journald|syslog[:SOCKET]",
              help="Also send every record to journald or syslog, for the fleet's log shippers.")
@click.option("--bpf-stats", is_flag=True,
              help="Turn on the kernel's BPF run-time statistics while the agent runs (costs tens of ns per "
                   "program run); they feed ebpfguard_bpf_program_* metrics.")
@click.option("--require-signed", is_flag=True,
              help="Reject an enforce-mode manifest unless a key in the trust store signed it for its publisher "
                   "(a .require-signed file in the policy directory asks the same); audit-mode ones load, "
                   "their signature status on record.")
@click.option("--trust", "trust_dir", default="/etc/ebpfguard/trust", show_default=True,
              type=click.Path(file_okay=False), help="The trust store (policy trust add).")
@click.option("--anomaly-response", default="alert", show_default=True, type=click.Choice(["alert", "freeze", "kill"]),
              help="What an allowed action new to the extension's baseline (POLICY_DIR/baselines/) makes the agent "
                   "do, besides its anomaly record.")
@click.option("--ebpf", is_flag=True, hidden=True, help="Print the eBPF C source and exit.")
def agent(state_dir: str, policy_dir: str | None, log_level: str, metrics_address: str, allow_root_extensions: bool,
          rotate_size: str, log_forward: str, bpf_stats: bool, require_signed: bool, trust_dir: str,
          anomaly_response: str, ebpf: bool) -> None:
    """Run the root service: load the programs once, serve the control socket, watch the policies.

    Logs go to stdout (journald under systemd). SIGTERM stops it cleanly: running extensions are
    stopped, programs detached and their cgroups removed.

    \b
    Examples:
      ebpfguard agent --policy-dir policies
      ebpfguard agent --policy-dir /etc/ebpfguard/policies --state-dir /run/eg
      ebpfguard agent --policy-dir policies --log-forward journald --bpf-stats
      ebpfguard agent --policy-dir /etc/ebpfguard/policies --require-signed
    """
    if ebpf:
        from ebpfguard.kernel.loader import program_source

        click.echo(program_source())
        return
    from ebpfguard.service.agent import Agent
    from ebpfguard.service.journal import log_handler

    logging.basicConfig(level=log_level.upper(), handlers=[log_handler(sys.stdout)])
    try:
        rotate_bytes = parse_size(rotate_size)
    except ValueError as err:
        fail(f"--rotate-size: {err}", 2)
    if log_forward:
        from ebpfguard.forensics import Forwarder

        try:
            Forwarder(log_forward)
        except EbpfguardError as err:
            fail(str(err), 2)
    if policy_dir and not any(f.endswith((".yaml", ".yml", ".json")) for f in os.listdir(policy_dir)):
        click.echo(f"ebpfguard: warning: no manifest (*.yaml) in --policy-dir {policy_dir}: no policy is loaded "
                   "until one appears there", err=True)
    _require_root()
    a = Agent(state_dir, policy_dir, allow_root_extensions=allow_root_extensions, metrics_address=metrics_address,
              rotate_bytes=rotate_bytes, log_forward=log_forward, bpf_stats=bpf_stats, trust_dir=trust_dir,
              require_signed=require_signed, anomaly_response=anomaly_response)
    try:
        a.start()
    except EbpfguardError as err:
        fail(str(err))
    a.serve_forever()


# ---- status ------------------------------------------------------------------------------------
@main.command()
@STATE_OPT
@click.option("--json", "as_json", is_flag=True, help="Print the agent's answer as JSON.")
def status(state_dir: str, as_json: bool) -> None:
    """Show the agent and every running extension instance. Exits 1 when no agent is enforcing.

    \b
    Examples:
      ebpfguard status
      ebpfguard status --json | jq '.instances[].violations'
    """
    from ebpfguard.service.control import Client

    try:
        with Client(state_dir, timeout=5) as c:
            ans = c.request("status")
    except EbpfguardError as err:
        fail(str(err))
    if as_json:
        click.echo(json.dumps(ans, indent=2))
        return
    a = ans["agent"]
    ctr = a["counters"]
    click.echo(f"agent pid {a['pid']} {a['state']} since {a['started']} (cgroups: {a['cgroup_mode']})")
    click.echo(f"  kernel: {ctr['events']} events, {ctr['drops']} dropped, {ctr.get('over_share', 0)} over a "
               f"cgroup's share, {ctr['denials']} denied, "
               f"{ctr['kills']} killed; records written {a['records_written']}, failed {a['records_failed']}")
    click.echo(f"  layers: {', '.join(a['layers'])}")
    if (a.get("metrics") or {}).get("error"):
        click.echo(f"  metrics: {a['metrics']['error']}")
    req = "; signatures required" if ans.get("require_signed") else ""
    click.echo(f"policies ({len(ans['policies'])}; trust store {ans.get('trust', '-')}{req}):")
    for p in ans["policies"]:
        sig = p.get("signature") or {}
        said = f"signed {sig.get('key_id', '')}" if sig.get("ok") else sig.get("status", "-")
        click.echo(f"  {p['name']:<24} {p['version']:<10} {p['mode']:<8} {p['sha256'][:12]} {said}")
    for sh in ans.get("shadows", []):
        beside = "beside the enforced version" if sh["enforced"] else "only a shadow version"
        click.echo(f"  {sh['name']:<24} {sh['version']:<10} {'shadow':<8} {sh['sha256'][:12]} {beside}; "
                   f"{sh['shadow_denials']} would-be refusals")
    for f, e in ans.get("policy_errors", {}).items():
        click.echo(f"  rejected {f}: {e.splitlines()[0]}")
    click.echo(f"instances ({len(ans['instances'])}):")
    for i in ans["instances"]:
        shadow = f" shadow {i['shadow_denials']}" if i.get("shadow_denials") else ""
        click.echo(f"  {i['instance']:<30} pid {i['pid']!s:<7} {i['state']:<8} {i['mode']:<8} "
                   f"violations {i['violations']:<5}{shadow} {i['cgroup']}")
        click.echo(f"    layers: {', '.join(i['layers'])}")
        for gap in i["not_enforced"]:
            click.echo(f"    not enforced: {gap}")


# ---- attach ------------------------------------------------------------------------------------
@main.command()
@click.option("--pid", "-p", type=int, required=True, help="The process to adopt, with its descendants.")
@click.option("--manifest", "-m", required=True, type=click.Path(dir_okay=False), help="Its manifest.")
@click.option("--mode", type=click.Choice(["audit", "enforce"]), help="Override the manifest's spec.mode.")
@STATE_OPT
def attach(pid: int, manifest: str, mode: str | None, state_dir: str) -> None:
    """Adopt a running process tree: move it into a new extension cgroup, where the in-kernel layers
    (network programs, tracepoints, caps, the ladder) apply. Landlock, seccomp and the user change
    cannot be imposed on a running process from outside; the record and status say so. Needs a
    running agent, which watches the adopted processes after this command returns.

    
    Examples:
      ebpfguard attach --pid 4242 --manifest policies/script-plugin.yaml
    """
    from ebpfguard.manifest.load import load
    from ebpfguard.service.control import Client

    try:
        m = load(manifest)
    except ManifestError as err:
        fail(str(err), 2)
    try:
        with Client(state_dir) as c:
            ans = c.request("attach", pid=pid, manifest_text=m.raw.decode(), manifest_path=m.source, home=m.home,
                            mode=mode)
    except EbpfguardError as err:
        fail(str(err))
    click.echo(f"{ans['instance']}: adopted pids {' '.join(map(str, ans['pids']))} into {ans['cgroup']}")
    for gap in ans["not_enforced"]:
        click.echo(f"  not enforced: {gap}")


# ---- the ladder by hand ------------------------------------------------------------------------
def _operator(state_dir: str, op: str, name: str, **extra: Any) -> None:
    from ebpfguard.service.control import Client

    try:
        with Client(state_dir, timeout=10) as c:
            ans = c.request(op, name=name, **extra)
    except EbpfguardError as err:
        fail(str(err))
    for inst in ans["instances"]:
        click.echo(f"{inst}: {op if not extra.get('lift') else 'quarantine lifted'}")


@main.command()
@STATE_OPT
@click.argument("name")
def freeze(state_dir: str, name: str) -> None:
    """Freeze an instance (or every instance of an extension) through the agent.

    
    Examples:
      ebpfguard freeze md-preview
    """
    _operator(state_dir, "freeze", name)


@main.command()
@STATE_OPT
@click.argument("name")
def thaw(state_dir: str, name: str) -> None:
    """Resume a frozen instance (or every instance of an extension).

    
    Examples:
      ebpfguard thaw md-preview-3f2a9c1e
    """
    _operator(state_dir, "thaw", name)


@main.command(name="kill")
@STATE_OPT
@click.argument("name")
def kill_cmd(state_dir: str, name: str) -> None:
    """Kill every process of an instance (or of every instance of an extension): cgroup.kill.

    
    Examples:
      ebpfguard kill md-preview
    """
    _operator(state_dir, "kill", name)


@main.command()
@STATE_OPT
@click.option("--lift", is_flag=True, help="End the quarantine.")
@click.argument("name")
def quarantine(state_dir: str, lift: bool, name: str) -> None:
    """Deny all network to an instance in the kernel (restricted mode), or lift that with --lift.

    
    Examples:
      ebpfguard quarantine md-preview
      ebpfguard quarantine --lift md-preview
    """
    _operator(state_dir, "quarantine", name, lift=lift)


# ---- trace -------------------------------------------------------------------------------------
@main.command()
@STATE_OPT
@click.option("--extension", "-e", help="Only this extension.")
@click.option("--pid", "-p", type=int, help="Only this process (pid or thread id).")
@click.option("--kind", "-k", multiple=True, type=click.Choice(RECORD_KINDS), metavar="KIND",
              help="Only these kinds (repeatable): " + ", ".join(RECORD_KINDS) + ".")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of columns.")
@click.option("--all", "from_start", is_flag=True, help="Start from the first record, not from now.")
@click.option("--activity", is_flag=True,
              help="Everything the instance does, allowed or not: file opens, execs, connects, sends, binds and "
                   "unix sockets, as they happen (a stream from the agent, not records). Needs --extension or "
                   "--pid; costs nothing to instances no one traces.")
def trace(state_dir: str, extension: str | None, pid: int | None, kind: tuple[str, ...], as_json: bool,
          from_start: bool, activity: bool) -> None:
    """Follow violations and lifecycle events live, one line each (80 columns) or JSON lines.

    \b
    Examples:
      ebpfguard trace
      ebpfguard trace --extension md-preview --kind network --kind exec
      ebpfguard trace --pid 4242 --json
      ebpfguard trace --activity --extension md-preview
    """
    from ebpfguard.forensics.trace import HEADER, follow, format_line, log_path, matcher
    from ebpfguard.service.control import agent_running

    if activity:
        _trace_activity(state_dir, extension, pid, kind, as_json)
        return
    _state_readable(state_dir)
    if not agent_running(state_dir):
        if not log_path(state_dir).exists():
            fail(f"no agent on {state_dir}/agent.sock and no forensic log in {state_dir}: start `ebpfguard agent`, "
                 "or point --state-dir at where records are written")
        click.echo(f"ebpfguard: no agent on {state_dir}/agent.sock: following {log_path(state_dir)} for what a "
                   "standalone `run` records (Ctrl-C ends)", err=True)
    ok = matcher(extension, pid, kind)
    try:
        if not as_json:
            click.echo(HEADER)
        for rec in follow(log_path(state_dir), from_start):
            if ok(rec):
                click.echo(json.dumps(rec) if as_json else format_line(rec))
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        sys.stderr.close()


def _trace_activity(state_dir: str, extension: str | None, pid: int | None, kind: tuple[str, ...],
                    as_json: bool) -> None:
    from ebpfguard.forensics.trace import HEADER, format_line
    from ebpfguard.service.control import Client, agent_running

    if bool(extension) == bool(pid):
        fail("--activity follows one extension (--extension NAME or an instance id) or one instance (--pid P)", 2)
    if not agent_running(state_dir):
        fail(f"--activity needs a running agent (none on {state_dir}/agent.sock): it streams from the kernel", 1)
    try:
        with Client(state_dir, timeout=None) as c:
            ans = c.request("activity", extension=extension, pid=pid)
            click.echo(f"ebpfguard: following {', '.join(ans['following']) or 'no instance yet'}"
                       + (f" and new instances of {extension}" if extension else "") + " (Ctrl-C ends)", err=True)
            if not as_json:
                click.echo(HEADER)
            for item in c.lines():
                if "lost" in item:
                    click.echo(f"ebpfguard: {item['lost']} activity events dropped: this terminal fell behind",
                               err=True)
                    continue
                if kind and item.get("kind") not in kind:
                    continue
                if as_json:
                    click.echo(json.dumps(item))
                else:
                    click.echo(format_line({**item, "verdict": item.get("verdict") or "allowed"}))
            fail("the agent closed the stream (it stopped)")
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        sys.stderr.close()
    except EbpfguardError as err:
        fail(str(err))


# ---- policy ------------------------------------------------------------------------------------
@main.group()
def policy() -> None:
    """Work with manifests: check them, sign them, and keep the keys an agent trusts.

    \b
    Examples:
      ebpfguard policy validate policies/*.yaml
      ebpfguard policy keygen --publisher acme -o acme.key
      ebpfguard policy sign --key acme.key plugin.yaml --files ./plugin
      sudo ebpfguard policy trust add acme.key.pub --expires 2027-12-31
      ebpfguard policy verify plugin.yaml --files ./plugin
    """


@policy.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
def validate(files: tuple[str, ...]) -> None:
    """Validate manifests. Exits 0 when all are valid, 2 otherwise; every problem is printed as
    FILE:LINE: FIELD: REASON.

    \b
    Examples:
      ebpfguard policy validate policies/*.yaml
    """
    from ebpfguard.manifest.compile import compile as compile_manifest
    from ebpfguard.manifest.load import load

    bad = 0
    for f in files:
        try:
            m = load(f)
            compile_manifest(m, 0)
        except ManifestError as err:
            bad += 1
            for p in err.problems:
                click.echo(str(p), err=True)
            continue
        click.echo(f"{f}: ok ({m.name} {m.version}, {m.mode}, sha256 {m.sha256[:12]})")
    if bad:
        click.echo(f"{bad} of {len(files)} manifest(s) invalid", err=True)
        sys.exit(2)



@policy.command()
@STATE_OPT
@click.argument("name")
def promote(state_dir: str, name: str) -> None:
    """Make NAME's shadow version (spec.rollout: shadow) the enforced one, for the instances launched from now
    on; running ones keep the version they started with. Recorded in the forensic log; kept across restarts.

    \b
    Examples:
      sudo ebpfguard status    # shadow versions, their would-be refusals
      sudo ebpfguard policy promote md-preview
    """
    from ebpfguard.service.control import Client

    try:
        with Client(state_dir, timeout=10) as c:
            ans = c.request("promote", extension=name)
    except EbpfguardError as err:
        fail(str(err))
        return
    was = f", replacing {ans['replaces']['version']} ({ans['replaces']['sha256'][:12]})" if ans.get("replaces") else ""
    click.echo(f"{name}: {ans['version']} ({ans['sha256'][:12]}) is enforced from now on{was}")


TRUST_OPT = click.option("--trust", "trust_dir", default="/etc/ebpfguard/trust", show_default=True,
                         type=click.Path(file_okay=False), help="The trust store: publisher keys and revocations.")


def _trusted(call: Any, *args: Any) -> Any:
    """Run a trust-store or signing call; bad input is one precise line and exit 2."""
    from ebpfguard.governance.trust import TrustError

    try:
        return call(*args)
    except TrustError as err:
        fail(str(err), 2)


@policy.command()
@click.option("--publisher", required=True, help="The publisher name the key signs for (metadata.publisher).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="The private key file (0600); the public key goes beside it as OUTPUT.pub.")
@click.option("--endorse-with", type=click.Path(dir_okay=False),
              help="Rotate: the old private key signs over its trust to the new one.")
def keygen(publisher: str, output: str, endorse_with: str | None) -> None:
    """Make a publisher's Ed25519 signing key. Never overwrites a key.

    \b
    Examples:
      ebpfguard policy keygen --publisher acme -o acme.key
      ebpfguard policy keygen --publisher acme -o new.key --endorse-with acme.key
    """
    from ebpfguard.governance.trust import keygen as make

    k = _trusted(make, publisher, output, endorse_with)
    via = f", endorsed by {k.endorsement['endorsed_by']}" if k.endorsement else ""
    click.echo(f"key {k.key_id} for {publisher}{via}: {output} (private, 0600), {output}.pub (public)")


@policy.command()
@click.option("--key", "key", required=True, type=click.Path(dir_okay=False), help="The publisher's private key.")
@click.option("--files", type=click.Path(file_okay=False),
              help="The extension's folder: the size and SHA-256 of every file in it are signed too.")
@click.argument("manifest", type=click.Path(dir_okay=False))
def sign(key: str, files: str | None, manifest: str) -> None:
    """Sign MANIFEST's exact bytes (and the extension's files): writes MANIFEST.sig.

    \b
    Examples:
      ebpfguard policy sign --key acme.key plugin.yaml
      ebpfguard policy sign --key acme.key plugin.yaml --files ./plugin
    """
    from ebpfguard.governance.trust import sign as do_sign

    out = _trusted(do_sign, key, manifest, files)
    click.echo(f"{out}: signed")


@policy.command(name="verify")
@TRUST_OPT
@click.option("--files", type=click.Path(file_okay=False), help="Check the extension's folder against the list.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per manifest.")
@click.argument("manifests", nargs=-1, required=True, type=click.Path(dir_okay=False))
def policy_verify(trust_dir: str, files: str | None, as_json: bool, manifests: tuple[str, ...]) -> None:
    """Check MANIFESTS' signatures against the trust store: exit 0 when every one is signed by a key the
    store holds for its metadata.publisher, unexpired and unrevoked, with every signed file as signed; exit 1
    naming the first reason otherwise.

    \b
    Examples:
      ebpfguard policy verify plugin.yaml
      ebpfguard policy verify --trust ./trust plugin.yaml --files ./plugin
    """
    from ebpfguard.governance.trust import TrustStore, verify

    store = TrustStore(trust_dir)
    bad = 0
    for m in manifests:
        v = verify(m, store, files)
        bad += not v.ok
        if as_json:
            click.echo(json.dumps({"manifest": m, **v.as_dict(), "extra_files": v.extras}))
        else:
            click.echo(f"{m}: {'ok' if v.ok else 'REJECTED'}: {v.reason}", err=not v.ok)
            for x in v.extras:
                click.echo(f"{m}: note: {x} is not in the signed list (not executable)")
    sys.exit(1 if bad else 0)


@policy.group()
def trust() -> None:
    """Manage the trust store: which publisher keys sign for whom, until when, and which are revoked.

    \b
    Examples:
      sudo ebpfguard policy trust add acme.key.pub --expires 2027-12-31
      sudo ebpfguard policy trust add v.pub --publisher v --publisher v-labs
      sudo ebpfguard policy trust revoke 3f2a9c0d11e4b7a8 --reason "key leaked"
      ebpfguard policy trust list
    """


@trust.command(name="add")
@TRUST_OPT
@click.option("--publisher", "publishers", multiple=True,
              help="A publisher name the key may sign for (repeatable); the name in the .pub file by default.")
@click.option("--expires", metavar="DATE", help="YYYY-MM-DD or an ISO 8601 time; no expiry by default.")
@click.argument("pubfile", type=click.Path(dir_okay=False))
def trust_add(trust_dir: str, publishers: tuple[str, ...], expires: str | None, pubfile: str) -> None:
    """Trust a publisher's public key (KEYFILE.pub) for its publisher names.

    \b
    Examples:
      sudo ebpfguard policy trust add acme.key.pub --expires 2027-12-31
    """
    from ebpfguard.governance.trust import TrustStore

    k = _trusted(TrustStore(trust_dir).add, pubfile, list(publishers) or None, expires)
    exp = k.expires.date().isoformat() if k.expires else "never"
    click.echo(f"trusted key {k.key_id} for {', '.join(k.publishers)} (expires {exp}) in {trust_dir}")


@trust.command(name="revoke")
@TRUST_OPT
@click.option("--reason", default="", help="Why, kept in the revocation list and shown on rejection.")
@click.argument("key_id")
def trust_revoke(trust_dir: str, reason: str, key_id: str) -> None:
    """Revoke KEY_ID: its signatures, and those of keys it endorsed, are rejected from now on.

    \b
    Examples:
      sudo ebpfguard policy trust revoke 3f2a9c0d11e4b7a8 --reason "key leaked"
    """
    from ebpfguard.governance.trust import TrustStore

    r = _trusted(TrustStore(trust_dir).revoke, key_id, reason)
    click.echo(f"revoked key {r.key_id} on {r.at} in {trust_dir}")


@trust.command(name="list")
@TRUST_OPT
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
def trust_list(trust_dir: str, as_json: bool) -> None:
    """List the trusted keys and the revocations.

    \b
    Examples:
      ebpfguard policy trust list --trust ./trust
    """
    from ebpfguard.governance.trust import TrustStore

    store = TrustStore(trust_dir)
    keys = _trusted(store.keys)
    revoked = {r.key_id: r for r in _trusted(store.revocations)}
    for k in keys:
        r = revoked.pop(k.key_id, None)
        if as_json:
            click.echo(json.dumps({**k.as_dict(), "revoked": vars(r) if r else None}))
        else:
            exp = k.expires.date().isoformat() if k.expires else "never"
            state = f"REVOKED {r.at}" if r else f"expires {exp}"
            click.echo(f"{k.key_id}  {', '.join(k.publishers):30.30}  {state}")
    for r in revoked.values():
        click.echo(json.dumps({"key_id": r.key_id, "revoked": vars(r)}) if as_json
                   else f"{r.key_id}  {'(not in the store)':30}  REVOKED {r.at}")

# ---- forensics ---------------------------------------------------------------------------------
@main.group()
def forensics() -> None:
    """Read, verify and export the signed, hash-chained forensic log.

    \b
    Examples:
      sudo ebpfguard forensics show --since 1h --kind network
      sudo ebpfguard forensics verify
      sudo ebpfguard forensics export -o /var/tmp/evidence.tar.gz
      sudo ebpfguard forensics pubkey > host.pem
    """


@forensics.command()
@STATE_OPT
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line.")
@click.option("--extension", "-e", help="Only this extension.")
@click.option("--kind", "-k", multiple=True, type=click.Choice(RECORD_KINDS), metavar="KIND",
              help="Only these kinds (repeatable): " + ", ".join(RECORD_KINDS) + ".")
@click.option("--since", metavar="WHEN", help="Only records at or after WHEN: RFC 3339 (UTC if no offset) or a "
              "duration ago (90s, 15m, 2h, 7d).")
@click.option("--until", metavar="WHEN", help="Only records before WHEN (same forms as --since).")
def show(state_dir: str, as_json: bool, extension: str | None, kind: tuple[str, ...], since: str | None,
         until: str | None) -> None:
    """List forensic records, oldest first, across rotated files. A line that is not a record is
    reported on stderr (exit 1).

    \b
    Examples:
      ebpfguard forensics show
      ebpfguard forensics show --since 2h --kind file --kind exec
      ebpfguard forensics show --since 2026-11-24T08:00Z --until 2026-11-24T09:00Z
      ebpfguard forensics show --json --kind network | jq .detail
    """
    from ebpfguard.forensics import BadLine, parse_when, read, record_ns
    from ebpfguard.forensics.trace import HEADER, format_line, matcher

    _state_readable(state_dir)

    try:
        lo = parse_when(since) if since else None
        hi = parse_when(until) if until else None
    except ValueError as err:
        fail(f"--since/--until: {err}", 2)
    ok = matcher(extension, None, kind)
    bad = 0
    if not as_json:
        click.echo(HEADER)
    for rec in read(state_dir):
        if isinstance(rec, BadLine):
            bad += 1
            click.echo(str(rec), err=True)
            continue
        if lo is not None or hi is not None:
            t = record_ns(rec)
            if t is None or (lo is not None and t < lo) or (hi is not None and t >= hi):
                continue
        if ok(rec):
            click.echo(json.dumps(rec) if as_json else format_line(rec))
    if bad:
        sys.exit(1)


@forensics.command(name="verify")
@STATE_OPT
@click.option("--pubkey", "pubkeys", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="Trust this public key (PEM; repeatable) instead of the host's own or the bundle's.")
@click.option("--metrics-file", type=click.Path(dir_okay=False),
              help="Also write the outcome for node_exporter's textfile collector (Prometheus text format, "
                   "replaced atomically): ebpfguard_forensics_verify_ok, _verified_records, _timestamp_seconds.")
@click.option("--anchors", type=click.Path(dir_okay=False), metavar="FILE",
              help="Checkpoints forwarded off the host (JSON lines, syslog lines or `journalctl -o json`): each "
                   "must be in the log as forwarded, so a cut tail or a rewritten head is caught.")
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
def verify_cmd(state_dir: str, pubkeys: tuple[str, ...], metrics_file: str | None, anchors: str | None,
               paths: tuple[str, ...]) -> None:
    """Verify forensic logs: gapless seq across rotated files, the hash chain, every Ed25519
    signature and the signed checkpoint. Exits 0 when intact, 1 naming the first bad record and why
    (modified, deleted, reordered, inserted, tail truncated after the last checkpoint, bad signature,
    unknown key), 2 for unusable arguments.

    PATHS are evidence bundles (from `forensics export`) or state folders; without them, --state-dir.
    A bundle is checked against its own pubkey.pem unless --pubkey pins the key your fleet knows.
    A local root holds the signing key: only checkpoints kept elsewhere (--anchors, from the journal or
    syslog the agent forwards to) catch a tail cut off and a head.json signed again.

    \b
    Examples:
      ebpfguard forensics verify
      ebpfguard forensics verify --pubkey fleet/host42.pem --state-dir /srv/host42
      ebpfguard forensics verify --pubkey fleet/host42.pem host42-evidence.tar.gz
      ebpfguard forensics verify --pubkey host42.pem --anchors host42.ckpt host42/
      ebpfguard forensics verify --metrics-file \\
        /var/lib/node_exporter/textfile/ebpfguard.prom
    """
    import tempfile

    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from ebpfguard.common.statedir import StateDir
    from ebpfguard.errors import ForensicsError
    from ebpfguard.forensics import bundle_public_key, host_public_key, key_id, unpack_bundle, verify
    from ebpfguard.forensics.anchors import check_anchors, read_anchors
    from ebpfguard.forensics.log import log_files

    _state_readable(*[t for t in paths if os.path.isdir(t)] or ([] if paths else [state_dir]))
    keys: list[Ed25519PublicKey] = []
    for path in pubkeys:
        try:
            key = serialization.load_pem_public_key(open(path, "rb").read())
        except (ValueError, TypeError, UnsupportedAlgorithm):
            fail(f"--pubkey {path}: not a PEM public key (expected '-----BEGIN PUBLIC KEY-----', as "
                 "`ebpfguard forensics pubkey` prints)", 2)
        except OSError as err:
            fail(f"--pubkey {path}: {err.strerror}", 2)
        if not isinstance(key, Ed25519PublicKey):
            fail(f"--pubkey {path}: a {type(key).__name__.lstrip('_')}, not an Ed25519 public key", 2)
        keys.append(key)
    failed = False
    outcomes: list[tuple[str, bool, int]] = []
    if anchors and any(not os.path.isdir(t) for t in paths):
        fail("--anchors checks a state folder's log (not a bundle): give the folder", 2)
    for target in paths or (state_dir,):
        label = f"{target}: " if paths else ""
        anchored = None
        try:
            if os.path.isdir(target):
                if not log_files(StateDir.of(target).forensics):
                    raise ForensicsError(f"no forensic log in {StateDir.of(target).forensics} (not a state "
                                         "directory, or nothing was recorded there)")
                result = verify(target, keys or None)
                note = ""
                if anchors:
                    trusted = {key_id(k): k for k in (keys or [host_public_key(target)])}
                    anchored = check_anchors(target, read_anchors(anchors), trusted)
            else:
                with tempfile.TemporaryDirectory(prefix="ebpfguard-verify-") as tmp:
                    root, info = unpack_bundle(target, tmp)
                    trust = keys or [bundle_public_key(root)]
                    result = verify(root, trust)
                    own = "" if keys else ": the bundle's own key; pin it with --pubkey"
                    note = f" (host {info.get('host')}, key {info.get('key_id')}{own})"
                    if keys and info.get("key_id") not in {key_id(k) for k in keys}:
                        note = f" (the bundle's pubkey.pem {info.get('key_id')} is not one you trust)"
        except EbpfguardError as err:
            click.echo(f"{label}error: {err}", err=True)
            failed = True
            outcomes.append((target, False, 0))
            continue
        click.echo(f"{label}{result}{note if result.ok else ''}", err=not result.ok)
        good = result.ok
        if anchored is not None:
            click.echo(f"{label}{anchored}", err=not anchored.ok)
            good = good and anchored.ok
        failed |= not good
        outcomes.append((target, good, result.records))
    if metrics_file:
        _write_verify_metrics(metrics_file, outcomes)
    sys.exit(1 if failed else 0)


def _write_verify_metrics(path: str, outcomes: list[tuple[str, bool, int]]) -> None:
    import time

    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    reg = CollectorRegistry()
    ok = Gauge("ebpfguard_forensics_verify_ok", "1 if the forensic log verified intact, 0 if not.", ["log"],
               registry=reg)
    n = Gauge("ebpfguard_forensics_verified_records", "Records checked by the last verification.", ["log"],
              registry=reg)
    ts = Gauge("ebpfguard_forensics_verify_timestamp_seconds", "When the last verification ran.", ["log"],
               registry=reg)
    for target, good, records in outcomes:
        ok.labels(target).set(1 if good else 0)
        n.labels(target).set(records)
        ts.labels(target).set(time.time())
    try:
        write_to_textfile(path, reg)
    except OSError as err:
        fail(f"--metrics-file {path}: {err.strerror}")


@forensics.command(name="export")
@STATE_OPT
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="Where to write the bundle (.tar.gz).")
def export_cmd(state_dir: str, output: str) -> None:
    """Write a self-contained evidence bundle: every record file, head.json, the exact manifests the
    records name, the host's public key and a MANIFEST.json of sha256 sums. It verifies on any
    machine with `ebpfguard forensics verify BUNDLE`.

    \b
    Examples:
      sudo ebpfguard forensics export -o /tmp/host42-evidence.tar.gz
      ebpfguard forensics verify --pubkey fleet/host42.pem host42.tar.gz
    """
    from ebpfguard.forensics import export

    _state_readable(state_dir)
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        fail(f"-o {output}: no folder {folder}", 2)
    if not os.access(folder, os.W_OK):
        fail(f"-o {output}: {folder} is not writable by this user", 2)
    try:
        info = export(state_dir, output)
    except (EbpfguardError, OSError) as err:
        fail(str(err))
    missing = info["policies_missing"]
    click.echo(f"wrote {info['path']}: {info['records']} records (seq {info['first_seq']}..{info['last_seq']}), "
               f"{len([f for f in info['files'] if f.startswith('policies/')])} policies, key {info['key_id']}")
    if missing:
        click.echo(f"warning: {len(missing)} policies named by records are not archived: "
                   f"{', '.join(s[:12] for s in missing)}", err=True)


@forensics.command()
@STATE_OPT
def pubkey(state_dir: str) -> None:
    """Print the host's forensic signing public key (PEM), for a fleet's verifier.

    \b
    Examples:
      ebpfguard forensics pubkey > host42.pem
    """
    from cryptography.hazmat.primitives import serialization

    from ebpfguard.forensics.keys import host_public_key

    _state_readable(state_dir)
    try:
        pub = host_public_key(state_dir)  # never created here: only the agent or a run mints the key
    except EbpfguardError as err:
        fail(f"{err}" if "no host key" not in str(err) else
             f"no signing key in {state_dir}/keys: nothing has recorded there yet (the agent or `run` makes it)")
    click.echo(pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
               nl=False)


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="The manifest to write; its evidence goes beside it as OUTPUT.evidence.json.")
@click.option("--name", help="metadata.name (default: the command's file name).")
@click.option("--duration", metavar="DURATION", help="Stop (kill) the command after this long: 30s, 5m.")
@click.option("--merge", is_flag=True, help="Add this run's evidence to OUTPUT's and write both.")
@click.option("--threshold", default=4, show_default=True, type=click.IntRange(2, 1000),
              help="Files used directly in one folder before the folder is granted as a tree.")
@STATE_OPT
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def learn(output: str, name: str | None, duration: str | None, merge: bool, threshold: int, state_dir: str,
          command: tuple[str, ...]) -> None:
    """Run COMMAND as an extension granted nothing, in audit mode (nothing is refused, everything is
    recorded), and write the manifest that grants exactly what it did: each rule with a comment giving its
    evidence (count, first use, an example path or peer). Exact files where few; a folder as a tree only
    past --threshold files; never /, a top folder, home or a credential location as a tree. Its forensic
    records go to a scratch state directory, not the host's log.

    \b
    Examples:
      sudo ebpfguard learn -o plugin.yaml -- python3 plugin.py --selftest
      sudo ebpfguard learn -o plugin.yaml --merge -- python3 plugin.py big.md
      sudo ebpfguard learn -o srv.yaml --duration 30s -- ./server
    """
    import tempfile

    from ebpfguard.common.units import parse_duration
    from ebpfguard.governance.learn import Evidence, LearnError, render
    from ebpfguard.governance.learn import learn as run_learn
    from ebpfguard.manifest.load import default_home, load

    out = Path(output)
    evidence_path = out.with_name(out.name + ".evidence.json")
    if merge and not evidence_path.exists():
        fail(f"--merge: no evidence file {evidence_path} (from an earlier learn -o {output})", 2)
    if not out.parent.is_dir():
        fail(f"-o {output}: no folder {out.parent}", 2)
    seconds = None
    if duration:
        try:
            seconds = parse_duration(duration)
        except ValueError as err:
            fail(f"--duration: {err}", 2)
    label = name or Path(command[0]).name.lower().replace("_", "-")
    label = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in label).strip("-._") or "learned"
    _require_root()
    try:
        previous = Evidence.load(evidence_path) if merge else None
        with tempfile.TemporaryDirectory(prefix="ebpfguard-learn-") as scratch:
            ev, status = run_learn(list(command), label, seconds, scratch, default_home(None))
        if previous is not None:
            ev.merge(previous)
        text = render(ev, label, threshold)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text)
        load(tmp)  # what it writes validates, or it says so
        tmp.replace(out)
        evidence_path.write_text(json.dumps(ev.as_dict(), indent=1) + "\n")
    except (LearnError, ManifestError) as err:
        fail(str(err))
        return
    except EbpfguardError as err:
        fail(str(err), getattr(err, "exit_code", 1))
        return
    n = sum(len(t) for t in ev.files.values()) + sum(len(t) for t in ev.net.values()) + len(ev.unix)
    click.echo(f"{output}: {n} distinct uses from {len(ev.runs)} run(s) ({ev.runs[-1]['ending'] if ev.runs else ''}"
               f"); evidence in {evidence_path}", err=True)
    if status:
        click.echo(f"ebpfguard: note: the command ended with status {status}: a manifest learned from a failed run "
                   "may miss what success needs", err=True)


@main.group()
def baseline() -> None:
    """Baselines of normal activity: an allowed action an extension's baseline never saw is an anomaly.

    A baseline is learn's evidence (X.yaml.evidence.json) or one built from audit-mode history; the agent
    uses POLICY_DIR/baselines/NAME@VERSION.json, else NAME.json.

    \b
    Examples:
      sudo ebpfguard learn -o p.yaml -- ./plugin
      cp p.yaml.evidence.json /etc/ebpfguard/policies/baselines/plugin.json
      cd /etc/ebpfguard/policies/baselines
      sudo ebpfguard baseline from-log plugin -o plugin.json
    """


@baseline.command(name="from-log")
@STATE_OPT
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="The baseline file to write.")
@click.argument("name")
def baseline_from_log(state_dir: str, output: str, name: str) -> None:
    """Build NAME's baseline from what its audit-mode instances were recorded doing.

    \b
    Examples:
      cd /etc/ebpfguard/policies/baselines
      sudo ebpfguard baseline from-log plugin -o plugin.json
    """
    from ebpfguard.governance.baseline import BaselineError, from_log

    _state_readable(state_dir)
    try:
        ev = from_log(state_dir, name)
    except BaselineError as err:
        fail(str(err))
        return
    out = Path(output)
    if not out.parent.is_dir():
        fail(f"-o {output}: no folder {out.parent}", 2)
    out.write_text(json.dumps(ev.as_dict(), indent=1) + "\n")
    n = sum(len(t) for t in ev.files.values()) + sum(len(t) for t in ev.net.values())
    click.echo(f"{output}: baseline of {name} from {len(ev.runs)} audit-mode instance(s), {n} distinct uses")


@main.command(name="provenance")
@STATE_OPT
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--limit", default=10, show_default=True, help="Incidents and refusals shown (text only).")
@click.argument("name")
def provenance_cmd(state_dir: str, as_json: bool, limit: int, name: str) -> None:
    """Where extension NAME comes from and what it has done: publisher, signing key, every version seen (first
    and last seen, policy sha256, signature status), incidents, refusals and an administrator's flag, all read
    from the signed forensic log (verified first: a log that fails is said so). Exits 1 if the log never saw NAME.

    \b
    Examples:
      sudo ebpfguard provenance md-preview
      sudo ebpfguard provenance md-preview --json | jq .versions
    """
    from ebpfguard.governance.provenance import provenance, render

    _state_readable(state_dir)
    p = provenance(state_dir, name)
    if as_json:
        click.echo(json.dumps(p.as_dict()))
    else:
        for line in render(p, limit):
            click.echo(line)
    if not p.versions and not p.flag and not p.incidents and not p.refusals:
        click.echo(f"ebpfguard: the forensic log in {state_dir} has no record of {name}", err=True)
        sys.exit(1)


@main.command(name="flag")
@STATE_OPT
@click.option("--reason", default="", help="Why (required unless --clear).")
@click.option("--clear", is_flag=True, help="Clear the flag.")
@click.argument("name")
def flag_cmd(state_dir: str, reason: str, clear: bool, name: str) -> None:
    """Flag extension NAME for security concerns (or clear the flag): a signed record in the forensic log that
    `provenance` shows, through the agent when one runs.

    \b
    Examples:
      sudo ebpfguard flag md-preview --reason "CVE-2026-1234 in its renderer"
      sudo ebpfguard flag md-preview --clear
    """
    from ebpfguard.service.control import Client, agent_running

    if not clear and not reason:
        fail("give --reason (or --clear)", 2)
    _require_root()
    by = _operator_name()
    try:
        if agent_running(state_dir):
            with Client(state_dir, timeout=10) as c:
                seq = c.request("flag", extension=name, reason=reason, clear=clear, by=by)["seq"]
        else:
            from ebpfguard.forensics import ForensicLog
            from ebpfguard.pipeline.record import Recorder

            rec = Recorder(ForensicLog(state_dir)).flag(name, not clear, reason, by)
            if rec is None:
                fail("the flag could not be written to the forensic log")
                return
            seq = rec["seq"]
    except EbpfguardError as err:
        fail(str(err))
    click.echo(f"{name}: {'flag cleared' if clear else 'flagged'} (record {seq})")


def _operator_name() -> str:
    """Who asked: the user behind sudo, else this process's user."""
    import pwd

    uid = int(os.environ.get("SUDO_UID", os.getuid()))
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _rollback_text(area: dict[str, Any], limit: int = 50) -> list[str]:
    out = [f"{area.get('instance') or ''} {area.get('extension') or ''}  trees: {', '.join(area.get('trees') or [])}"
           f"  changes: {area.get('count', 0)}" + (f"  state: {area['state']}" if area.get("state") else "")]
    for c in (area.get("changes") or [])[:limit]:
        out.append(f"  {c['op']:<11} {c['path']}" + (f"  sha256 {c['sha256'][:16]} {c['size']} B" if c.get("sha256")
                                                     else ""))
    if area.get("count", 0) > min(limit, len(area.get("changes") or [])):
        out.append(f"  ... {area['count'] - min(limit, len(area.get('changes') or []))} more (--json lists "
                   f"{area.get('listed')})")
    return out


@main.command(name="rollback")
@STATE_OPT
@click.argument("action", type=click.Choice(["list", "show", "commit", "discard"]))
@click.argument("instance", required=False)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
def rollback_cmd(state_dir: str, action: str, instance: str | None, as_json: bool) -> None:
    """List, show, commit or discard the changes of an extension whose manifest
    sets spec.filesystem.rollback: each write tree is an overlay; the real tree
    is untouched until a clean stop commits (a kill by the agent discards).

    \b
    list     instances with rollback, and areas an instance left when the
             agent or the host went down while it ran
    show     what INSTANCE changed: paths, and the sha256 of each file
    commit   apply them (a running, e.g. frozen, instance is killed first);
             a path the user changed meanwhile keeps the user's version
    discard  throw them away (a running instance is killed first)

    Each commit and discard is a signed record of kind rollback.

    \b
    Examples:
      sudo ebpfguard rollback list
      sudo ebpfguard rollback show md-preview-3f2a9c
      sudo ebpfguard rollback discard md-preview-3f2a9c
    """
    from ebpfguard.service.control import Client, agent_running

    if action != "list" and not instance:
        fail(f"rollback {action} needs an INSTANCE (see ebpfguard rollback list)", 2)
    _require_root()
    try:
        if agent_running(state_dir):
            with Client(state_dir, timeout=60) as c:
                ans = c.request("rollback", action=action, id=instance, by=_operator_name())
        else:
            ans = _rollback_offline(state_dir, action, instance)
    except EbpfguardError as err:
        fail(str(err))
        return
    ans.pop("ok", None)
    if as_json:
        click.echo(json.dumps(ans, indent=2))
        return
    if action == "list":
        for kind in ("running", "pending"):
            areas = ans.get(kind) or []
            click.echo(f"{kind}: {len(areas)}")
            for area in areas:
                click.echo("\n".join(_rollback_text(area, limit=0)))
    elif action == "show":
        click.echo("\n".join(_rollback_text(ans)))
    elif ans.get("stopped"):
        click.echo(f"{instance}: killed; its changes are {ans['event']} at its stop (a rollback record)")
    else:
        click.echo(f"{instance}: {ans['event']} {ans.get('count', 0)} change(s)"
                   + (f"; {len(ans['conflicts'])} path(s) kept as the user left them" if ans.get("conflicts") else ""))


def _rollback_offline(state_dir: str, action: str, instance: str | None) -> dict[str, Any]:
    """No agent runs: the areas on disk (their instances are gone with the agent that ran them)."""
    from ebpfguard.common.statedir import StateDir
    from ebpfguard.forensics import ForensicLog
    from ebpfguard.pipeline.record import Recorder, finish_rollback
    from ebpfguard.sandbox.rollback import pending

    state = StateDir.of(state_dir)
    areas = pending(state.rollback, set())
    if action == "list":
        return {"running": [], "pending": [a.show() for a in areas]}
    layer = next((a for a in areas if a.instance == instance), None)
    if layer is None:
        raise EbpfguardError(f"no rollback area for an instance {instance!r} in {state.rollback}")
    if action == "show":
        return layer.show()
    from ebpfguard.kernel.cgroups import CgroupManager

    if any(cg.name == instance and cg.populated() for cg in CgroupManager().existing()):
        raise EbpfguardError(f"{instance} still runs (its agent is gone): start the agent, which takes it back, "
                             "then commit or discard through it")
    detail = finish_rollback(layer, action, Recorder(ForensicLog(state)), state.rollback_kept, by=_operator_name())
    return {"instance": instance, "stopped": False, "event": detail["event"], "count": detail["count"],
            "conflicts": detail.get("conflicts") or []}


@main.command(name="explain")
@STATE_OPT
@click.argument("seq", type=int)
@click.option("--json", "as_json", is_flag=True)
def explain_cmd(state_dir: str, seq: int, as_json: bool) -> None:
    """Say why record SEQ was raised: the manifest and rule, the entry that matched or was missing,
    the action taken, and the manifest line to add if the access was legitimate.

    \b
    Examples:
      ebpfguard explain 1234
      ebpfguard forensics show -k network --json | jq .seq |
        xargs -n1 ebpfguard explain
    """
    from ebpfguard.forensics.explain import explain, format_text

    try:
        e = explain(state_dir, seq)
    except EbpfguardError as err:
        fail(str(err))
    click.echo(json.dumps(e, indent=2) if as_json else format_text(e))


# ---- simulate ----------------------------------------------------------------------------------
@main.command()
@click.option("--technique", "-t", "techniques", multiple=True, metavar="ID",
              help="Run only this technique (repeatable; --list shows them).")
@click.option("--manifest", "-m", type=click.Path(dir_okay=False, exists=True),
              help="Check this manifest instead of the simulator's typical plug-in.")
@click.option("--mode", type=click.Choice(["audit", "enforce"]), help="Override the manifest's spec.mode.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per technique.")
@click.option("--list", "list_only", is_flag=True, help="List the techniques and exit.")
@click.option("--state-dir", type=click.Path(file_okay=False),
              help="Where the simulation's forensic log goes (default: a new /var/tmp/ebpfguard-simulate-TIME, "
                   "kept for explain).")
@click.option("--require", type=click.Choice(["no-miss", "contained"]), default="no-miss", show_default=True,
              help="Exit 1 when a technique was missed (no-miss), or when any was only detected or missed "
                   "(contained).")
def simulate(techniques: tuple[str, ...], manifest: str | None, mode: str | None, as_json: bool, list_only: bool,
             state_dir: str | None, require: str) -> None:
    """Run escape techniques (docs/escapes.md) as throwaway extensions in a world of their own: a
    temporary HOME with fake credentials, loopback listeners, a stand-in for the agent. Reports each
    one as blocked, contained, detected or missed, with the time from attempt to containment and the
    forensic record's seq. Exits 1 if anything was missed.

    \b
    Examples:
      sudo ebpfguard simulate                        # is this host containing?
      sudo ebpfguard simulate -m my-plugin.yaml      # does my manifest contain?
      sudo ebpfguard simulate -t cred-ssh -t exfil-dns --json
      ebpfguard simulate --list
    """
    from ebpfguard.lab.simulate import BY_ID, TECHNIQUES
    from ebpfguard.lab.simulate import simulate as run_sim

    if list_only:
        for t in TECHNIQUES:
            click.echo(f"{t.id:<21} {t.category:<12} {t.title}")
        return
    unknown = [t for t in techniques if t not in BY_ID]
    if unknown:
        fail(f"unknown technique(s) {', '.join(unknown)}; --list shows them", 2)
    if manifest:
        from ebpfguard.manifest.load import load

        try:
            load(manifest)
        except ManifestError as err:
            fail(str(err), 2)
    _require_root()

    def progress(o: Any) -> None:
        if as_json:
            click.echo(json.dumps(o.as_dict()))
        else:
            click.echo(f"  {o.id:<21} {o.outcome}", err=True)

    import time

    state = state_dir or f"/var/tmp/ebpfguard-simulate-{time.strftime('%Y%m%dT%H%M%S')}"
    try:
        results = run_sim(state, list(techniques) or None, Path(manifest) if manifest else None, mode,
                          progress=progress)
    except EbpfguardError as err:
        fail(str(err))
    if not as_json:
        from ebpfguard.lab.simulate import format_table

        click.echo(format_table(results))
        click.echo(f"records: ebpfguard forensics show --state-dir {state}; ebpfguard explain --state-dir {state} SEQ")
    bad = {"no-miss": {"missed"}, "contained": {"missed", "detected"}}[require]
    sys.exit(1 if any(r.outcome in bad for r in results) else 0)


# ---- bench -------------------------------------------------------------------------------------
@main.command()
@click.option("--rounds", default=7, show_default=True, help="Interleaved rounds per workload and monitor.")
@click.option("--scale", default=1.0, show_default=True, help="Multiply each workload's iterations.")
@click.option("--quick", is_flag=True, help="A smoke run: 2 rounds, small workloads, short latency and flood "
              "runs; the numbers are not meaningful.")
@click.option("--no-peers", is_flag=True, help="Do not measure auditd and bpftrace.")
@click.option("--latency-runs", default=100, show_default=True, help="Offenders frozen and killed for the p50/p99.")
@click.option("--flood-seconds", default=10.0, show_default=True, help="How long the flood test's offender runs.")
@click.option("--log", "log_only", is_flag=True, help="Measure only the forensic log: records/s with signing "
              "and fsync, its CPU, and the bytes per record.")
@click.option("--json", "as_json", is_flag=True)
def bench(rounds: int, scale: float, quick: bool, no_peers: bool, latency_runs: int, flood_seconds: float,
          log_only: bool, as_json: bool) -> None:
    """Measure ebpfguard's overhead side by side with auditd and bpftrace, in one run, on the same
    workloads (open/close loop, stat tree walk, loopback connect loop, fork+exec loop, unpacking and
    checksumming a source tarball); the agent's CPU and RSS; p50/p99 detection-to-containment latency
    for freeze (user space) and kill (in the kernel); and a flood of violations (events handled,
    records written, ring-buffer drops counted).

    Each round runs every workload with no monitor, with ebpfguard (outside any extension, and inside
    one launched as `ebpfguard run` launches it), with auditd and with bpftrace watching the same
    syscalls and folder. Prints each monitor's median ratio to no monitor and the spread over rounds.

    \b
    Examples:
      sudo ebpfguard bench
      sudo ebpfguard bench --rounds 15 --json > bench.json
      sudo ebpfguard bench --quick --no-peers
      ebpfguard bench --log
    """
    from ebpfguard.lab.bench import run_bench

    if log_only:
        from ebpfguard.lab.bench import format_log_table, run_log_bench

        res = run_log_bench(1.0 if quick else 5.0)
        click.echo(json.dumps(res, indent=2) if as_json else format_log_table(res))
        return
    _require_root()
    if quick:
        rounds, scale, latency_runs, flood_seconds = 2, 0.05, 5, 1.0
    try:
        result: dict[str, Any] = run_bench(rounds=rounds, scale=scale, echo=lambda s: click.echo(s, err=True),
                                           peers=not no_peers, latency_runs=latency_runs,
                                           flood_seconds=flood_seconds)
    except EbpfguardError as err:
        fail(str(err))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    from ebpfguard.lab.bench import format_table

    click.echo(format_table(result))


if __name__ == "__main__":
    main()

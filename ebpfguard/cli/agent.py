"""The root service and its state: `agent` runs it, `status` asks it."""

from __future__ import annotations

import json
import logging
import os
import sys

import click

from ebpfguard.cli.common import STATE_OPT, TRUST_DIR, Command, fail, require_root
from ebpfguard.errors import EbpfguardError


@click.command(cls=Command)
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
@click.option("--trust", "trust_dir", default=TRUST_DIR, show_default=True,
              type=click.Path(file_okay=False), help="The trust store (policy trust add).")
@click.option("--anomaly-response", default="alert", show_default=True, type=click.Choice(["alert", "freeze", "kill"]),
              help="What an allowed action new to the extension's baseline (POLICY_DIR/baselines/) makes the agent "
                   "do, besides its anomaly record.")
@click.option("--socket", "socket_file", metavar="PATH",
              help="The control socket, 0666: every local user launches and watches their own plug-ins through it "
                   "[default: /run/ebpfguard/agent.sock with the default --state-dir, else STATE/agent.sock].")
@click.option("--socket-group", metavar="GROUP",
              help="Make the control socket 0660 and of this group: only its members (and root) reach the agent.")
@click.option("--unload", is_flag=True,
              help="Detach and remove the programs kept in bpffs that no agent or run uses, and exit (the package "
                   "does it when it is removed).")
@click.option("--ebpf", is_flag=True, hidden=True, help="Print the eBPF C source and exit.")
def agent(state_dir: str, policy_dir: str | None, log_level: str, metrics_address: str, allow_root_extensions: bool,
          rotate_size: str, log_forward: str, bpf_stats: bool, require_signed: bool, trust_dir: str,
          anomaly_response: str, socket_file: str | None, socket_group: str | None, unload: bool,
          ebpf: bool) -> None:
    """Run the root service: load the programs once, serve the control socket, watch the policies.

    Logs go to stdout (journald under systemd). SIGTERM stops it cleanly: running extensions are
    stopped, their cgroup programs detached and their cgroups removed. The compiled programs stay in
    bpffs (/sys/fs/bpf/ebpfguard), attached and idle, for the next start to take over without compiling,
    attaching or detaching; --unload removes them.

    \b
    Examples:
      ebpfguard agent --policy-dir policies
      ebpfguard agent --policy-dir /etc/ebpfguard/policies --state-dir /run/eg
      ebpfguard agent --policy-dir policies --log-forward journald --bpf-stats
      ebpfguard agent --policy-dir /etc/ebpfguard/policies --require-signed
      ebpfguard agent --policy-dir policies --socket-group ebpfguard-users
      ebpfguard agent --unload
    """
    if unload:
        require_root()
        from ebpfguard.kernel.kept import unload as unload_kept

        try:
            gone = unload_kept()
        except OSError as err:
            fail(f"cannot remove the kept programs: {err}")
        click.echo(f"removed {len(gone)} kept program set(s)" + (f": {', '.join(gone)}" if gone else ""))
        return
    if ebpf:
        from ebpfguard.kernel.loader import program_source

        click.echo(program_source())
        return
    from ebpfguard.forensics.log import rotate_size as parse_rotate_size
    from ebpfguard.service.agent import Agent
    from ebpfguard.service.journal import log_handler

    logging.basicConfig(level=log_level.upper(), handlers=[log_handler(sys.stdout)])
    try:
        rotate_bytes = parse_rotate_size(rotate_size)
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
    require_root()
    a = Agent(state_dir, policy_dir, allow_root_extensions=allow_root_extensions, metrics_address=metrics_address,
              rotate_bytes=rotate_bytes, log_forward=log_forward, bpf_stats=bpf_stats, trust_dir=trust_dir,
              require_signed=require_signed, anomaly_response=anomaly_response, socket_file=socket_file,
              socket_group=socket_group)
    try:
        a.start()
    except EbpfguardError as err:
        fail(str(err))
    a.serve_forever()


@click.command(cls=Command)
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
        with Client(state_dir) as c:
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
    others = f"; {ans['others']} more of other users" if ans.get("others") else ""
    click.echo(f"instances ({len(ans['instances'])}{others}):")
    for i in ans["instances"]:
        shadow = f" shadow {i['shadow_denials']}" if i.get("shadow_denials") else ""
        click.echo(f"  {i['instance']:<30} pid {i['pid']!s:<7} {i['state']:<8} {i['mode']:<8} "
                   f"violations {i['violations']:<5}{shadow} {i['cgroup']}")
        click.echo(f"    layers: {', '.join(i['layers'])}")
        for gap in i["not_enforced"]:
            click.echo(f"    not enforced: {gap}")


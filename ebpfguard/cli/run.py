"""Launching and adopting: `run` (through the agent when one runs, standalone otherwise) and `attach`."""

from __future__ import annotations

import os
import sys

import click

from ebpfguard.cli.common import STATE_OPT, TRUST_DIR, Command, fail, require_root
from ebpfguard.errors import EbpfguardError, ManifestError


@click.command(cls=Command, context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--manifest", "-m", type=click.Path(dir_okay=False), help="The extension's manifest file.")
@click.option("--extension", "-e", help="Use the policy of this name that the running agent loaded.")
@click.option("--mode", type=click.Choice(["audit", "enforce"]), help="Override the manifest's spec.mode.")
@click.option("--standalone", is_flag=True, help="Load the programs in this process even if an agent runs.")
@click.option("--files", type=click.Path(file_okay=False, exists=True),
              help="The extension's folder: launch only if the manifest is signed by a trusted key and every "
                   "file there is as signed (no changed file, no extra executable).")
@click.option("--trust", "trust_dir", default=TRUST_DIR, show_default=True,
              type=click.Path(file_okay=False), help="The trust store for --files without an agent.")
@STATE_OPT
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(manifest: str | None, extension: str | None, mode: str | None, standalone: bool, files: str | None,
        trust_dir: str, state_dir: str, command: tuple[str, ...]) -> None:
    """Run COMMAND as an extension instance in its own cgroup, under its manifest.

    Without an agent it loads the eBPF programs itself (root only); with one it goes through the agent's
    control socket. A user other than root runs through the agent: it launches COMMAND as that user, with
    this terminal's stdin, stdout and stderr, environment (as the manifest filters it) and working folder;
    SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH are passed on, and if this command dies
    the instance is stopped. Exits with COMMAND's status, or 128+N if COMMAND was killed by signal N.
    The agent's socket: /run/ebpfguard/agent.sock, or $EBPFGUARD_SOCKET.

    \b
    Examples:
      ebpfguard run -m policies/md-preview.yaml -- python3 -m md_preview
      ebpfguard run -m plugin.yaml --mode audit -- ./plugin.sh
      ebpfguard run -e md-preview -- python3 preview.py   # a policy the agent has
      ebpfguard run -m plugin/plugin.yaml --files plugin -- plugin/bin/tool
    """
    from ebpfguard.manifest.load import load
    from ebpfguard.service.control import agent_running, socket_path
    from ebpfguard.service.runner import run_as_caller, run_standalone, run_via_agent

    if bool(manifest) == bool(extension):
        fail("give exactly one of --manifest or --extension", 2)
    m = None
    if manifest:
        try:
            m = load(manifest)
        except ManifestError as err:
            fail(str(err), 2)
    if os.geteuid() != 0:  # the agent launches it, as this user
        if standalone or files:
            fail(f"{'--standalone' if standalone else '--files'} needs root; as uid {os.geteuid()}, run through "
                 "the agent (without it)", 2)
        if not agent_running(state_dir):
            fail(f"no agent is listening on {socket_path(state_dir)}: an instance of a user is launched by the "
                 "agent (systemctl start ebpfguard)", 1)
        try:
            sys.exit(run_as_caller(state_dir, command, manifest=m, extension=extension, mode=mode))
        except EbpfguardError as err:
            fail(str(err), getattr(err, "exit_code", 1))
    try:
        if not standalone and agent_running(state_dir):
            status = run_via_agent(state_dir, command, manifest=m, extension=extension, mode=mode, files=files)
        elif m is None:
            fail(f"--extension needs a running agent (none on {state_dir}/agent.sock)", 2)
            return
        else:
            require_root()
            status = run_standalone(m, command, state_dir, mode, files, trust_dir)
    except EbpfguardError as err:
        fail(str(err), getattr(err, "exit_code", 1))
    sys.exit(status)


@click.command(cls=Command)
@click.option("--pid", "-p", type=int, required=True, help="The process to adopt, with its descendants.")
@click.option("--manifest", "-m", required=True, type=click.Path(dir_okay=False), help="Its manifest.")
@click.option("--mode", type=click.Choice(["audit", "enforce"]), help="Override the manifest's spec.mode.")
@STATE_OPT
def attach(pid: int, manifest: str, mode: str | None, state_dir: str) -> None:
    """Adopt a running process tree: move it into a new extension cgroup, where the in-kernel layers
    (network programs, tracepoints, caps, the ladder) apply. Landlock, seccomp and the user change
    cannot be imposed on a running process from outside; the record and status say so. Needs a
    running agent, which watches the adopted processes after this command returns.

    \b
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


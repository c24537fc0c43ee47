"""Reading what happens and why: `trace` follows records live (or, with --activity, everything an
instance does, streamed by the agent); `explain` says why one record was raised."""

from __future__ import annotations

import json
import os
import sys
import time

import click

from ebpfguard.cli.common import STATE_OPT, Command, fail, state_readable
from ebpfguard.errors import EbpfguardError
from ebpfguard.forensics.trace import RECORD_KINDS


@click.command(cls=Command)
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
    if os.geteuid() != 0 and agent_running(state_dir):
        _trace_own(state_dir, extension, pid, kind, as_json, from_start)
        return
    state_readable(state_dir)
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


def _trace_own(state_dir: str, extension: str | None, pid: int | None, kind: tuple[str, ...], as_json: bool,
               from_start: bool) -> None:
    """A non-root user's trace: the records of the instances they launched, asked of the agent twice a second."""
    from ebpfguard.cli.forensics import own_records
    from ebpfguard.forensics.trace import HEADER, format_line, matcher

    ok = matcher(extension, pid, kind)
    try:
        last = 0
        if not from_start:
            for rec in own_records(state_dir):
                last = int(rec["seq"])
        if not as_json:
            click.echo(HEADER)
        while True:
            for rec in own_records(state_dir, last, extension, kind):
                last = int(rec["seq"])
                if ok(rec):
                    click.echo(json.dumps(rec) if as_json else format_line(rec), nl=True)
            sys.stdout.flush()
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        sys.stderr.close()
    except EbpfguardError as err:
        fail(f"{err} (a user follows their own records through the agent)")


@click.command(cls=Command, name="explain")
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
        from ebpfguard.service.control import Client, agent_running
        from ebpfguard.service.protocol import Explain

        if os.geteuid() != 0 and agent_running(state_dir):  # the log is root's: the agent explains a user's own

            with Client(state_dir, timeout=30) as c:
                e = c.request(Explain(seq=seq)).explanation
        else:
            e = explain(state_dir, seq)
    except EbpfguardError as err:
        fail(str(err))
    click.echo(json.dumps(e, indent=2) if as_json else format_text(e))

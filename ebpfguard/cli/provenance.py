"""Where an extension comes from and what the administrator says of it: `provenance` and `flag`."""

from __future__ import annotations

import json
import sys

import click

from ebpfguard.cli.common import STATE_OPT, Command, fail, operator_name, require_root, state_readable
from ebpfguard.errors import EbpfguardError


@click.command(cls=Command, name="provenance")
@STATE_OPT
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--limit", default=10, show_default=True, help="Incidents and refusals shown (text only).")
@click.argument("name")
def provenance_cmd(state_dir: str, as_json: bool, limit: int, name: str) -> None:
    """Where extension NAME comes from and what it has done: publisher, signing key, every version seen (first
    and last seen, policy sha256, signature status), incidents, refusals and an administrator's flag, all read
    from the signed forensic log (verified first: a log that fails is said so); beside them, the incident
    summaries received from elsewhere (`incident import`) and the local version each matches. Exits 1 if
    neither the log nor a received summary knows NAME.

    \b
    Examples:
      sudo ebpfguard provenance md-preview
      sudo ebpfguard provenance md-preview --json | jq .versions
    """
    from ebpfguard.governance.provenance import provenance, render

    state_readable(state_dir, exists=True)
    p = provenance(state_dir, name)
    if as_json:
        click.echo(json.dumps(p.as_dict()))
    else:
        for line in render(p, limit):
            click.echo(line)
    if not p.versions and not p.flag and not p.incidents and not p.refusals and not p.received:
        click.echo(f"ebpfguard: the forensic log in {state_dir} has no record of {name}", err=True)
        sys.exit(1)


@click.command(cls=Command, name="flag")
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
    require_root()
    by = operator_name()
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

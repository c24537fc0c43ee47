"""What an extension needs and what is normal for it: `learn` writes the manifest a run needed, `baseline
from-log` what audit-mode instances were recorded doing."""

from __future__ import annotations

from pathlib import Path

import click

from ebpfguard.cli.common import STATE_OPT, Command, Group, fail, require_root, state_readable
from ebpfguard.errors import EbpfguardError, ManifestError


@click.command(cls=Command, context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
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
    from ebpfguard.common.units import parse_duration
    from ebpfguard.governance.learn import LearnError, evidence_file, extension_name, learn_into
    from ebpfguard.manifest.load import default_home

    out = Path(output)
    evidence_path = evidence_file(out)
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
    label = extension_name(command[0], name)
    require_root()
    try:
        ev, status = learn_into(out, list(command), label, seconds, default_home(None), threshold, merge)
    except (LearnError, ManifestError) as err:
        fail(str(err))
        return
    except EbpfguardError as err:
        fail(str(err), getattr(err, "exit_code", 1))
        return
    ending = ev.runs[-1]["ending"] if ev.runs else ""
    click.echo(f"{output}: {ev.uses()} distinct uses from {len(ev.runs)} run(s) ({ending}); evidence in "
               f"{evidence_path}", err=True)
    if status:
        click.echo(f"ebpfguard: note: the command ended with status {status}: a manifest learned from a failed run "
                   "may miss what success needs", err=True)


@click.group(cls=Group)
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

    state_readable(state_dir)
    try:
        ev = from_log(state_dir, name)
    except BaselineError as err:
        fail(str(err))
        return
    out = Path(output)
    if not out.parent.is_dir():
        fail(f"-o {output}: no folder {out.parent}", 2)
    ev.save(out)
    click.echo(f"{output}: baseline of {name} from {len(ev.runs)} audit-mode instance(s), {ev.uses(unix=False)} "
               "distinct uses")

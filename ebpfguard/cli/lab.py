"""The security engineer's lab: `simulate` runs escape techniques against a manifest, `bench` measures the
overhead beside auditd and bpftrace."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ebpfguard.cli.common import Command, fail, require_root
from ebpfguard.errors import EbpfguardError, ManifestError


@click.command(cls=Command)
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
    require_root()

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

@click.command(cls=Command)
@click.option("--rounds", default=7, show_default=True, help="Interleaved rounds per workload and monitor.")
@click.option("--scale", default=1.0, show_default=True, help="Multiply each workload's iterations.")
@click.option("--quick", is_flag=True, help="A smoke run: 2 rounds, small workloads, short latency and flood "
              "runs; the numbers are not meaningful.")
@click.option("--no-peers", is_flag=True, help="Do not measure auditd and bpftrace.")
@click.option("--latency-runs", default=100, show_default=True, help="Offenders frozen and killed for the p50/p99.")
@click.option("--flood-seconds", default=10.0, show_default=True, help="How long the flood test's offender runs.")
@click.option("--log", "log_only", is_flag=True, help="Measure only the forensic log: records/s with signing "
              "and fsync, its CPU, and the bytes per record.")
@click.option("--startup", is_flag=True, help="Measure only start-up and restart: a standalone run and an agent, "
              "from the programs kept in bpffs and from a fresh compile, as whole processes (--rounds of them).")
@click.option("--json", "as_json", is_flag=True)
def bench(rounds: int, scale: float, quick: bool, no_peers: bool, latency_runs: int, flood_seconds: float,
          log_only: bool, startup: bool, as_json: bool) -> None:
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
      sudo ebpfguard bench --startup --rounds 5
      ebpfguard bench --log
    """
    from ebpfguard.lab.bench import run_bench

    if log_only:
        from ebpfguard.lab.bench import format_log_table, run_log_bench

        res = run_log_bench(1.0 if quick else 5.0)
        click.echo(json.dumps(res, indent=2) if as_json else format_log_table(res))
        return
    require_root()
    if startup:
        from ebpfguard.lab.bench import format_startup, run_startup

        try:
            res = run_startup(rounds=2 if quick else rounds, cold_rounds=1 if quick else 2,
                              echo=lambda s: click.echo(s, err=True))
        except EbpfguardError as err:
            fail(str(err))
        click.echo(json.dumps(res, indent=2) if as_json else format_startup(res))
        return
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

"""The signed, hash-chained forensic log: `forensics show`, `verify`, `export` and `pubkey`."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import click

from ebpfguard.cli.common import STATE_OPT, Group, fail, state_readable
from ebpfguard.errors import EbpfguardError, ForensicsError
from ebpfguard.forensics.trace import RECORD_KINDS


def own_records(state_dir: str, since_seq: int = 0, extension: str | None = None,
                kinds: tuple[str, ...] = ()) -> Iterator[dict[str, Any]]:
    """A non-root user's records, from the agent (the log is root's): those of the instances they launched."""
    from ebpfguard.service.control import Client
    from ebpfguard.service.protocol import Records

    with Client(state_dir, timeout=60) as c:
        while True:
            page = c.request(Records(since_seq=since_seq, extension=extension, kinds=list(kinds), limit=10000))
            yield from page.records
            if not page.more or not page.records:
                return
            since_seq = int(page.records[-1]["seq"])


@click.group(cls=Group)
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
    reported on stderr (exit 1). A user other than root gets the records of the instances they
    launched, from the running agent.

    \b
    Examples:
      ebpfguard forensics show
      ebpfguard forensics show --since 2h --kind file --kind exec
      ebpfguard forensics show --since 2026-11-24T08:00Z --until 2026-11-24T09:00Z
      ebpfguard forensics show --json --kind network | jq .detail
    """
    from ebpfguard.forensics import BadLine, parse_when, read, within
    from ebpfguard.forensics.trace import HEADER, format_line, matcher

    try:
        lo = parse_when(since) if since else None
        hi = parse_when(until) if until else None
    except ValueError as err:
        fail(f"--since/--until: {err}", 2)
    ok = matcher(extension, None, kind)
    bad = 0
    from ebpfguard.service.control import agent_running

    if os.geteuid() != 0 and agent_running(state_dir):
        try:
            records = list(own_records(state_dir, 0, extension, kind))
        except EbpfguardError as err:
            fail(f"{err} (a user reads their own records through the agent)")
        if not as_json:
            click.echo(HEADER)
        for own in records:
            if within(own, lo, hi) and ok(own):
                click.echo(json.dumps(own) if as_json else format_line(own))
        return
    state_readable(state_dir, exists=True)
    if not as_json:
        click.echo(HEADER)
    for rec in read(state_dir):
        if isinstance(rec, BadLine):
            bad += 1
            click.echo(str(rec), err=True)
            continue
        if within(rec, lo, hi) and ok(rec):
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
    syslog the agent forwards to, as a central log host collects them) catch a tail cut off and a
    head.json signed again, in a state folder or in the bundle exported from it.

    \b
    Examples:
      ebpfguard forensics verify
      ebpfguard forensics verify --pubkey fleet/host42.pem --state-dir /srv/host42
      ebpfguard forensics verify --pubkey fleet/host42.pem host42-evidence.tar.gz
      ebpfguard forensics verify --pubkey host42.pem --anchors host42.ckpt host42/
      ebpfguard forensics verify --pubkey fleet/host42.pem \\
        --anchors /var/log/ebpfguard/host42.jsonl host42-evidence.tar.gz
      ebpfguard forensics verify --metrics-file \\
        /var/lib/node_exporter/textfile/ebpfguard.prom
    """
    from ebpfguard.forensics.check import check_log, load_public_key

    state_readable(*[t for t in paths if os.path.isdir(t)] or ([] if paths else [state_dir]), exists=not paths)
    try:
        keys = [load_public_key(path) for path in pubkeys]
    except ForensicsError as err:
        fail(f"--pubkey {err}", 2)
    checks = []
    for target in paths or (state_dir,):
        label = f"{target}: " if paths else ""
        c = check_log(target, keys, anchors)
        checks.append(c)
        if c.verdict is None:
            click.echo(f"{label}error: {c.error}", err=True)
            continue
        click.echo(f"{label}{c.verdict}{c.note if c.verdict.ok else ''}", err=not c.verdict.ok)
        if c.anchors is not None:
            click.echo(f"{label}{c.anchors}", err=not c.anchors.ok)
    if metrics_file:
        from ebpfguard.observability.textfile import write_verify_metrics

        try:
            write_verify_metrics(metrics_file, checks)
        except OSError as err:
            fail(f"--metrics-file {metrics_file}: {err.strerror}")
    sys.exit(0 if all(c.ok for c in checks) else 1)


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

    state_readable(state_dir)
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
    from ebpfguard.forensics.keys import host_public_key, public_pem

    state_readable(state_dir)
    try:
        pub = host_public_key(state_dir)  # never created here: only the agent or a run mints the key
    except EbpfguardError as err:
        fail(f"{err}" if "no host key" not in str(err) else
             f"no signing key in {state_dir}/keys: nothing has recorded there yet (the agent or `run` makes it)")
    click.echo(public_pem(pub), nl=False)

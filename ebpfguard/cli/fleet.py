"""Records collected from many hosts: `fleet report`."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING

import click

from ebpfguard.cli.common import Group, fail

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


@click.group(cls=Group, name="fleet")
def fleet() -> None:
    """The forensic records of many hosts, as a central log host collected them.

    \b
    Examples:
      ebpfguard fleet report /var/log/ebpfguard/
      ebpfguard fleet report --json /var/log/ebpfguard/ | jq .integrity_failed
    """


def _n(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _keys(pubkeys_dir: str | None, pubkey: tuple[str, ...]) -> dict[str, Ed25519PublicKey]:
    from ebpfguard.errors import ForensicsError
    from ebpfguard.forensics.check import load_public_key

    keys: dict[str, Ed25519PublicKey] = {}
    try:
        if pubkeys_dir is not None:
            for name in sorted(os.listdir(pubkeys_dir)):
                if name.endswith(".pem") and not name.startswith("."):
                    keys[name[:-4]] = load_public_key(os.path.join(pubkeys_dir, name))
            if not keys:
                fail(f"--pubkeys {pubkeys_dir}: no HOST.pem in it (`ebpfguard forensics pubkey` on each host "
                     "prints its key)", 2)
        for spec in pubkey:
            host, eq, path = spec.partition("=")
            if not eq or not host or not path:
                fail(f"--pubkey {spec!r}: give HOST=PEM, for instance ws42=fleet/ws42.pem", 2)
            keys[host] = load_public_key(path)
    except ForensicsError as err:
        fail(f"--pubkey: {err}", 2)
    except OSError as err:
        fail(f"--pubkeys {pubkeys_dir}: {err.strerror}", 2)
    return keys


@fleet.command(name="report")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--extension", "-e", metavar="NAME", help="Only this extension's versions.")
@click.option("--since", metavar="WHEN", help="Count records at or after WHEN: RFC 3339 (UTC if no offset) or a "
              "duration ago (90m, 2h, 7d). Integrity is checked on every record.")
@click.option("--until", metavar="WHEN", help="Count records before WHEN (same forms as --since).")
@click.option("--pubkeys", "pubkeys_dir", type=click.Path(file_okay=False, exists=True), metavar="DIR",
              help="Each host's public key as DIR/HOST.pem: every checkpoint's signature is verified.")
@click.option("--pubkey", multiple=True, metavar="HOST=PEM", help="A host's public key (repeatable).")
@click.option("--host", metavar="NAME", help="The host of plain records (lines without _HOSTNAME); by default "
              "each file's name without its extensions.")
@click.option("--limit", default=8, show_default=True, help="Techniques shown per version (text only).")
@click.argument("paths", nargs=-1, required=True, metavar="FILE|DIR|-...")
def report(as_json: bool, extension: str | None, since: str | None, until: str | None, pubkeys_dir: str | None,
           pubkey: tuple[str, ...], host: str | None, limit: int, paths: tuple[str, ...]) -> None:
    """Read the forensic records a fleet's central log host collected, once, in bounded memory: the central
    collector's JSON lines, `journalctl -o json --all` exports and plain record lines, from files, folders
    (recursively), gzip files, or - for stdin. Report, per extension version: the hosts it ran on and those it
    affected, incidents by technique (with its MITRE ATT&CK ID) and by response, first and last seen, ladder steps
    and rollbacks discarded; per host: records read, and its log's integrity: chain breaks, gaps, records
    received again with different content (rewound, rewritten), and checkpoint signatures with --pubkeys. Hosts
    whose integrity failed come first.

    Exits 1 when a host's integrity failed, 2 when an argument cannot be used or nothing in the input is an
    ebpfguard record.

    \b
    Examples:
      ebpfguard fleet report /var/log/ebpfguard/
      ebpfguard fleet report --since 7d -e md-preview /var/log/ebpfguard/
      ebpfguard fleet report --pubkeys fleet-keys/ /var/log/ebpfguard/
      ebpfguard fleet report --pubkey ws42=ws42.pem /var/log/ebpfguard/ws42.jsonl
      journalctl -o json --all -t ebpfguard | ebpfguard fleet report --host ws42 -
      ebpfguard fleet report --json collected.jsonl.gz | jq '.versions[0]'
    """
    from ebpfguard.forensics import parse_when
    from ebpfguard.forensics.fleet import FleetReport, render, sources

    for p in paths:
        if p != "-" and not os.path.exists(p):
            fail(f"{p}: no such file or folder", 2)
    if paths.count("-") > 1:
        fail("- (stdin) given twice", 2)
    try:
        lo = parse_when(since) if since else None
        hi = parse_when(until) if until else None
    except ValueError as err:
        fail(f"--since/--until: {err}", 2)
    keys = _keys(pubkeys_dir, pubkey)
    srcs = sources(paths, host)
    if not srcs:
        fail(f"no file in {', '.join(paths)}", 2)
    tty = sys.stderr.isatty()

    def progress(files: int, records: int) -> None:
        click.echo(f"\rreading: {files}/{len(srcs)} files, {records} records", err=True, nl=False)

    r = FleetReport(keys=keys, since_ns=lo, until_ns=hi, extension=extension)
    r.read(srcs, progress if tty else None)
    if tty:
        click.echo("\r\033[K", err=True, nl=False)
    click.echo(f"fleet report: {_n(r.records, 'record')}, {_n(len(r.hosts), 'host')}, {_n(len(srcs), 'file')}, "
               f"{r.seconds:.1f} s", err=True)
    if not r.records:
        bad = [s for s in r.files if s.note()]
        why = f"; {bad[0].path}: {bad[0].note()}" if bad else ""
        fail(f"no ebpfguard record in {_n(len(srcs), 'file')}{why}", 2)
    if as_json:
        click.echo(json.dumps(r.as_dict()))
    else:
        for line in render(r, limit):
            click.echo(line)
    unseen = sorted(set(keys) - set(r.hosts))
    if unseen:
        click.echo(f"ebpfguard: no record from {', '.join(unseen)}, whose key was given", err=True)
    failed = r.failed
    if failed:
        click.echo(f"ebpfguard: integrity failed on {_n(len(failed), 'host')}: {', '.join(h.name for h in failed)}",
                   err=True)
        sys.exit(1)

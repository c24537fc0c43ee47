"""Incident summaries to share and summaries received: `incident share|verify|keygen|import|list`
(the library: governance/incident/)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ebpfguard.cli.common import STATE_OPT, Group, fail, state_readable
from ebpfguard.errors import EbpfguardError

KEYS_DIR = "/etc/ebpfguard/trust/incident-keys"  # the keys `incident import` trusts by default



@click.group(cls=Group, name="incident")
def incident() -> None:
    """What an extension did and what was done, as a summary that can leave the host: anonymized by rule, signed
    with a sharing key, verified and kept where it is received (docs/incidents.md).

    \b
    Examples:
      sudo ebpfguard incident share -e md-preview --key share.key -o out.json
      ebpfguard incident verify out.json --pubkey share.key.pub
      sudo ebpfguard incident import out.json --pubkey acme-incidents.pub
    """


@incident.command(name="share")
@STATE_OPT
@click.option("--extension", "-e", metavar="NAME", help="Summarize every record of extension NAME.")
@click.option("--seq", "seqs", type=int, multiple=True, metavar="N",
              help="Summarize record N (repeatable; all of one extension).")
@click.option("--since", metavar="DUR", help="Only records since then: a duration ago (2h, 7d) or a time.")
@click.option("--format", "fmt", type=click.Choice(["json", "md"]), default="json", show_default=True,
              help="JSON (the signed form) or a Markdown report (the JSON inside it).")
@click.option("-o", "--output", metavar="FILE", type=click.Path(dir_okay=False, writable=True),
              help="Write to FILE (atomically) instead of standard output.")
@click.option("--key", metavar="FILE", type=click.Path(dir_okay=False),
              help="Sign with this Ed25519 private key (PEM; `incident keygen`), never the host's forensic key.")
def share_cmd(state_dir: str, extension: str | None, seqs: tuple[int, ...], since: str | None, fmt: str,
              output: str | None, key: str | None) -> None:
    """A summary of what extension NAME (or the records N) did and what was done, from the signed forensic log
    (verified first): techniques with their ATT&CK IDs, the layer that decided, the responses, the ladder's steps
    and rollbacks, times relative to each launch, the kernel and layers, public destinations. User names, uids,
    homes, file names, command lines, pids, the host's identifiers, local addresses and times of day are removed
    by rule; a last scrub refuses to write if any is left. Without --key the summary is unsigned.

    \b
    Examples:
      sudo ebpfguard incident share -e md-preview --key share.key -o out.json
      sudo ebpfguard incident share --seq 41 --seq 42 --format md
      sudo ebpfguard incident share -e md-preview --since 24h --format md
    """
    from ebpfguard.forensics import parse_when
    from ebpfguard.governance.incident import load_key, share, write_out

    if not extension and not seqs:
        fail("give --extension NAME or --seq N (repeatable)", 2)
    if extension and seqs:
        fail("give --extension NAME or --seq N, not both", 2)
    since_ns = None
    if since:
        try:
            since_ns = parse_when(since)
        except ValueError as err:
            fail(f"--since: {err}", 2)
    try:
        private = load_key(key) if key else None
    except EbpfguardError as err:
        fail(f"--key: {err}", 2)
    state_readable(state_dir, exists=True)
    try:
        text = share(state_dir, extension=extension, seqs=seqs, since_ns=since_ns, key=private, fmt=fmt)
        if output:
            write_out(output, text)
    except EbpfguardError as err:
        fail(str(err), 2 if "forensic signing key" in str(err) else 1)
    if output:
        what = "signed" if private is not None else "unsigned"
        click.echo(f"wrote {output} ({what} summary, {fmt})", err=True)
    else:
        click.echo(text, nl=False)


@incident.command(name="keygen")
@click.option("-o", "--output", "out", required=True, metavar="FILE", type=click.Path(dir_okay=False),
              help="The private key (0600); its public half goes to FILE.pub.")
def keygen_cmd(out: str) -> None:
    """Make a sharing key for `incident share --key`: an Ed25519 private key FILE (PEM, 0600) and FILE.pub, the
    public key those who import your summaries trust. Refuses to overwrite either.

    \b
    Examples:
      sudo ebpfguard incident keygen -o /etc/ebpfguard/incident-share.key
      ebpfguard incident keygen -o share.key
    """
    from ebpfguard.governance.incident import keygen

    try:
        kid = keygen(out)
    except EbpfguardError as err:
        fail(str(err))
    click.echo(f"wrote {out} (private, 0600) and {out}.pub; key id {kid}")


@incident.command(name="verify")
@click.option("--pubkey", "pubkeys", multiple=True, metavar="PEM", type=click.Path(dir_okay=False),
              help="The signer must be this key (repeatable: one of them).")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def verify_cmd(pubkeys: tuple[str, ...], file: str) -> None:
    """Check an incident summary (JSON, or a Markdown report with its JSON): its format and schema, and its
    signature with the key it embeds; with --pubkey the signer must be one of those keys. Exits 0 when it holds,
    1 naming what is wrong (invalid, unsigned, tampered, untrusted), 2 for unusable arguments.

    \b
    Examples:
      ebpfguard incident verify md-preview.json
      ebpfguard incident verify report.md --pubkey acme-incidents.pub
    """
    from ebpfguard.governance.incident import check, parse, trusted_keys

    try:
        trusted = trusted_keys(None, pubkeys)[0] if pubkeys else None
    except EbpfguardError as err:
        fail(f"--pubkey: {err}", 2)
    try:
        doc = parse(Path(file).read_bytes(), file)
    except OSError as err:
        fail(f"{file}: {err.strerror}", 2)
    except EbpfguardError as err:
        click.echo(f"invalid: {err}")
        sys.exit(1)
    c = check(doc, trusted)
    click.echo(str(c))
    sys.exit(0 if c.ok else 1)


@incident.command(name="import")
@STATE_OPT
@click.option("--keys", "keys_dir", metavar="DIR", type=click.Path(exists=True, file_okay=False),
              help=f"A folder of PEM public keys you trust [default: {KEYS_DIR}].")
@click.option("--pubkey", "pubkeys", multiple=True, metavar="PEM", type=click.Path(dir_okay=False),
              help="A public key you trust (repeatable), besides the folder's.")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
def import_cmd(state_dir: str, keys_dir: str | None, pubkeys: tuple[str, ...], files: tuple[str, ...]) -> None:
    """Keep incident summaries received from elsewhere (a publisher's or a community's feed, as files), each
    verified against the keys you trust, under STATE/incidents/<sha256>.json; `incident list` and `provenance`
    show them. A summary that fails is refused with why and nothing of it is kept; the others still import.
    Exits 1 if any was refused.

    \b
    Examples:
      sudo ebpfguard incident import acme/*.json
      sudo ebpfguard incident import feed/x.json --pubkey acme-incidents.pub
      sudo ebpfguard incident import report.md --keys /srv/incident-keys
    """
    from ebpfguard.governance.incident import import_summary, trusted_keys

    folder = keys_dir if keys_dir is not None else (KEYS_DIR if Path(KEYS_DIR).is_dir() else None)
    try:
        trusted, skipped = trusted_keys(folder, pubkeys)
    except EbpfguardError as err:
        fail(f"--pubkey: {err}", 2)
    except OSError as err:
        fail(f"{folder}: {err.strerror}", 2)
    for why in skipped:
        click.echo(f"ebpfguard: warning: {why} (skipped)", err=True)
    if not trusted:
        fail(f"no key to verify summaries with: put the PEM public keys you trust in {keys_dir or KEYS_DIR} "
             "(or give --keys DIR or --pubkey PEM)", 1)
    new = same = refused = 0
    for f in files:
        try:
            got = import_summary(state_dir, f, trusted)
        except EbpfguardError as err:
            refused += 1
            click.echo(f"refused {err}", err=True)
            continue
        ext = got.doc["extension"]
        versions = ", ".join(str(v.get("version")) for v in ext["versions"]) or "-"
        what = f"{ext['name']} {versions} (sha256 {got.sha256[:12]}, signed by {got.doc['signer']['key_id']})"
        if got.new:
            new += 1
            click.echo(f"imported {f}: {what}")
        else:
            same += 1
            click.echo(f"already imported {f}: {what}, kept once")
    click.echo(f"{new} imported, {same} already there, {refused} refused")
    sys.exit(1 if refused else 0)


@incident.command(name="list")
@STATE_OPT
@click.option("--extension", "-e", metavar="NAME", help="Only summaries of extension NAME.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_cmd(state_dir: str, extension: str | None, as_json: bool) -> None:
    """The incident summaries imported here (STATE/incidents): extension, versions, signer, violations and the
    techniques seen, oldest import first.

    \b
    Examples:
      sudo ebpfguard incident list
      sudo ebpfguard incident list --extension md-preview --json
    """
    from ebpfguard.governance.incident import brief, imported

    state_readable(state_dir)
    items = [brief(i) for i in imported(state_dir, extension)]
    if as_json:
        for b in items:
            click.echo(json.dumps(b))
        return
    if not items:
        click.echo("no incident summaries imported" + (f" of {extension}" if extension else ""))
        return
    click.echo(f"{'SHA256':<12} {'EXTENSION':<18} {'VERSION':<10} {'SIGNER':<16} {'VIOL':>5}  TECHNIQUES")
    for b in items:
        versions = ",".join(str(v["version"]) for v in b["versions"]) or "-"
        techs = ", ".join(f"{t['technique']}" + (f" {t['attack_id']}" if t["attack_id"] else "") + f" ×{t['count']}"
                          for t in b["techniques"][:3]) or "-"
        click.echo(f"{b['sha256'][:12]:<12} {str(b['extension'])[:18]:<18} {versions[:10]:<10} "
                   f"{str(b['signer'] or '-'):<16} {b['violations']:>5}  {techs}")

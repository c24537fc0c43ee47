"""Manifests and whom to believe: `policy validate`, `promote`, `keygen`, `sign`, `verify`, and the trust
store (`policy trust add|revoke|list`)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ebpfguard.cli.common import STATE_OPT, TRUST_DIR, Group, fail
from ebpfguard.errors import EbpfguardError, ManifestError


@click.group(cls=Group)
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


TRUST_OPT = click.option("--trust", "trust_dir", default=TRUST_DIR, show_default=True,
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

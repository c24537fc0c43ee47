"""Signed manifests and extension files against a trust store: each way to be untrusted is rejected with its
own reason, a rotated key is accepted, and the untampered signed extension passes."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ebpfguard.cli.main import main
from ebpfguard.governance.trust import TrustError, TrustStore, keygen, sign, verify

MANIFEST = """apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {name: acme-tool, version: "1.0", publisher: acme}
spec:
  mode: enforce
  filesystem:
    read: [/usr/]
"""


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    ext = tmp_path / "ext"
    (ext / "bin").mkdir(parents=True)
    (ext / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    (ext / "bin" / "tool").chmod(0o755)
    (ext / "lib.py").write_text("X = 1\n")
    m = tmp_path / "acme-tool.yaml"
    m.write_text(MANIFEST)
    key = tmp_path / "acme.key"
    keygen("acme", key)
    store = tmp_path / "trust"
    TrustStore(store).add(f"{key}.pub")
    sign(key, m, ext)
    return {"ext": ext, "manifest": m, "key": key, "store": store, "tmp": tmp_path}


def check(w: dict[str, Path], **kw: object) -> tuple[bool, str, str]:
    v = verify(w["manifest"], TrustStore(w["store"]), kw.get("files", w["ext"]), **{  # type: ignore[arg-type]
        k: x for k, x in kw.items() if k != "files"})
    return v.ok, v.status, v.reason


def test_the_untampered_signed_extension_passes(world: dict[str, Path]) -> None:
    ok, status, reason = check(world)
    assert ok and status == "signed" and reason.startswith("signed by acme (key "), reason
    assert oct(world["key"].stat().st_mode & 0o777) == "0o600"


def test_a_tampered_manifest_byte(world: dict[str, Path]) -> None:
    raw = bytearray(world["manifest"].read_bytes())
    raw[raw.index(b"/usr/")] = ord("\\")
    world["manifest"].write_bytes(bytes(raw))
    ok, status, reason = check(world)
    assert not ok and status == "tampered" and reason.startswith("tampered: the manifest's sha256 is "), reason


def test_a_tampered_signature_file(world: dict[str, Path]) -> None:
    sig = world["tmp"] / "acme-tool.yaml.sig"
    d = json.loads(sig.read_text())
    d["manifest_sha256"] = "0" * 64  # the claim changed to match another manifest
    sig.write_text(json.dumps(d))
    ok, status, reason = check(world)
    assert not ok and status == "tampered" and "was altered after key" in reason, reason


def test_a_tampered_extension_file(world: dict[str, Path]) -> None:
    (world["ext"] / "lib.py").write_text("X = 2\n")
    ok, status, reason = check(world)
    assert not ok and status == "files" and reason.startswith("files: lib.py: changed (sha256 "), reason


def test_an_extra_executable_and_a_missing_file(world: dict[str, Path], tmp_path: Path) -> None:
    (world["ext"] / "bin" / "dropper").write_text("#!/bin/sh\n")
    (world["ext"] / "bin" / "dropper").chmod(0o755)
    (world["ext"] / "notes.txt").write_text("data, not code\n")
    ok, status, reason = check(world)
    assert not ok and reason == "files: bin/dropper: extra executable, not in the signed list", reason
    (world["ext"] / "bin" / "dropper").unlink()
    v = verify(world["manifest"], TrustStore(world["store"]), world["ext"])
    assert v.ok and v.extras == ["notes.txt"]  # data beside the code is noted, not refused
    (world["ext"] / "lib.py").unlink()
    ok, _, reason = check(world)
    assert not ok and reason == "files: lib.py: missing", reason


def test_a_key_the_store_does_not_hold(world: dict[str, Path]) -> None:
    other = world["tmp"] / "other.key"
    keygen("acme", other)
    sign(other, world["manifest"], world["ext"])
    ok, status, reason = check(world)
    assert not ok and status == "untrusted" and "is not in the trust store" in reason, reason


def test_a_key_not_bound_to_that_publisher(world: dict[str, Path]) -> None:
    other = world["tmp"] / "other.key"
    keygen("acme", other)
    TrustStore(world["store"]).add(f"{other}.pub", ["globex"])  # trusted, but for another publisher
    sign(other, world["manifest"], world["ext"])
    ok, status, reason = check(world)
    assert not ok and status == "untrusted" and reason.endswith("may sign for globex, not for 'acme'"), reason


def test_an_expired_key(world: dict[str, Path]) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    store = TrustStore(world["store"])
    store.add(f"{world['key']}.pub", expires=(later - dt.timedelta(days=35)).date().isoformat())
    assert check(world)[0]
    ok, status, reason = check(world, now=later)
    assert not ok and status == "expired" and reason.startswith("expired: key "), reason


def test_a_revoked_key(world: dict[str, Path]) -> None:
    kid = json.loads(Path(f"{world['key']}.pub").read_text())["key_id"]
    TrustStore(world["store"]).revoke(kid, "key leaked")
    ok, status, reason = check(world)
    assert not ok and status == "revoked" and reason.startswith(f"revoked: key {kid} was revoked on "), reason
    assert reason.endswith(": key leaked")
    with pytest.raises(TrustError, match="revoked"):
        TrustStore(world["store"]).add(f"{world['key']}.pub")


def test_an_unsigned_manifest(world: dict[str, Path]) -> None:
    (world["tmp"] / "acme-tool.yaml.sig").unlink()
    ok, status, reason = check(world)
    assert not ok and status == "unsigned" and reason == "unsigned: no signature acme-tool.yaml.sig beside the manifest"


def test_a_rotated_key_is_accepted_until_the_old_one_is_revoked(world: dict[str, Path]) -> None:
    new = world["tmp"] / "acme-2027.key"
    keygen("acme", new, endorse_with=world["key"])
    sign(new, world["manifest"], world["ext"])  # the store was not told about the new key
    v = verify(world["manifest"], TrustStore(world["store"]), world["ext"])
    old_kid = json.loads(Path(f"{world['key']}.pub").read_text())["key_id"]
    assert v.ok and v.endorsed_by == old_kid and f"endorsed by {old_kid}" in v.reason, v.reason
    TrustStore(world["store"]).revoke(old_kid, "rotated out and leaked")
    v = verify(world["manifest"], TrustStore(world["store"]), world["ext"])
    assert not v.ok and v.status == "revoked"


def test_a_forged_endorsement_is_not_accepted(world: dict[str, Path]) -> None:
    rogue = world["tmp"] / "rogue.key"
    keygen("acme", rogue)
    forged = world["tmp"] / "forged.key"
    keygen("acme", forged, endorse_with=rogue)  # endorsed by a key the store does not hold
    pub = json.loads(Path(f"{forged}.pub").read_text())
    pub["endorsement"]["endorsed_by"] = json.loads(Path(f"{world['key']}.pub").read_text())["key_id"]
    Path(f"{forged}.pub").write_text(json.dumps(pub))
    sign(forged, world["manifest"], world["ext"])
    ok, status, reason = check(world)
    assert not ok and status == "untrusted" and "endorsement" in reason and "is not signed by" in reason, reason


def test_the_cli_round_trip_and_its_exit_codes(tmp_path: Path) -> None:
    r = CliRunner()
    m = tmp_path / "m.yaml"
    m.write_text(MANIFEST)
    key, store = str(tmp_path / "k"), str(tmp_path / "trust")
    assert r.invoke(main, ["policy", "keygen", "--publisher", "acme", "-o", key]).exit_code == 0
    again = r.invoke(main, ["policy", "keygen", "--publisher", "acme", "-o", key])
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
    assert r.invoke(main, ["policy", "sign", "--key", key, str(m)]).exit_code == 0
    out = r.invoke(main, ["policy", "verify", "--trust", store, str(m)])
    assert out.exit_code == 1 and "REJECTED: untrusted" in out.output
    assert r.invoke(main, ["policy", "trust", "add", "--trust", store, key + ".pub", "--expires", "2099-01-01"]
                    ).exit_code == 0
    out = r.invoke(main, ["policy", "verify", "--trust", store, str(m)])
    assert out.exit_code == 0 and ": ok: signed by acme" in out.output
    listed = r.invoke(main, ["policy", "trust", "list", "--trust", store])
    assert "acme" in listed.output and "expires 2099-01-01" in listed.output
    bad = r.invoke(main, ["policy", "trust", "add", "--trust", store, str(m)])
    assert bad.exit_code == 2 and "is not a publisher public key" in bad.output and "Traceback" not in bad.output
    bad = r.invoke(main, ["policy", "sign", "--key", str(m), str(m)])
    assert bad.exit_code == 2 and "is not an unencrypted PEM private key" in bad.output
    bad = r.invoke(main, ["policy", "trust", "revoke", "--trust", store, "nothex"])
    assert bad.exit_code == 2 and "is not a key id" in bad.output
    bad = r.invoke(main, ["policy", "trust", "add", "--trust", store, key + ".pub", "--expires", "soon"])
    assert bad.exit_code == 2 and "is not a date" in bad.output

"""Checking one log as a verifier meets it (forensics/check.py), and the textfile its outcome leaves for
node_exporter (observability/textfile.py): without the CLI, a fresh registry and a fixed clock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import generate_latest

from ebpfguard.errors import ForensicsError
from ebpfguard.forensics import ForensicLog, export, host_public_key, key_id, public_pem
from ebpfguard.forensics.check import LogCheck, check_log, load_public_key
from ebpfguard.forensics.verify import Verdict
from ebpfguard.observability.textfile import verify_registry, write_verify_metrics


def a_log(state: Path, n: int = 5) -> ForensicLog:
    log = ForensicLog(state)
    for i in range(n):
        log.append({"kind": "file", "detail": {"path": f"/secret/{i}"}, "verdict": "denied"})
    return log


def pem_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_public_key_file_is_ed25519_pem_or_a_precise_error(tmp_path: Path) -> None:
    a_log(tmp_path / "st", 1)
    host = host_public_key(tmp_path / "st")
    assert key_id(load_public_key(pem_file(tmp_path / "host.pem", public_pem(host)))) == key_id(host)
    with pytest.raises(ForensicsError, match=r"notakey: not a PEM public key \(expected '-----BEGIN PUBLIC KEY"):
        load_public_key(pem_file(tmp_path / "notakey", "hello\n"))
    ec = generate_private_key(SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(ForensicsError, match="ec.pem: a EllipticCurvePublicKey, not an Ed25519 public key"):
        load_public_key(pem_file(tmp_path / "ec.pem", ec))
    with pytest.raises(ForensicsError, match="missing.pem: No such file or directory"):
        load_public_key(tmp_path / "missing.pem")


def test_a_state_folder_checks_against_the_host_key_or_the_pinned_one(tmp_path: Path) -> None:
    a_log(tmp_path / "st")
    c = check_log(str(tmp_path / "st"))
    assert c.ok and c.records == 5 and c.note == "" and c.anchors is None and not c.error
    other = Ed25519PrivateKey.generate().public_key()
    c = check_log(str(tmp_path / "st"), [other])
    assert not c.ok and c.verdict is not None and "unknown key" in c.verdict.reason and c.records == 0


def test_a_folder_with_no_log_is_an_error_not_an_intact_empty_log(tmp_path: Path) -> None:
    c = check_log(str(tmp_path))
    assert not c.ok and c.verdict is None and c.records == 0
    assert c.error.startswith(f"no forensic log in {tmp_path / 'forensics'}")


def test_a_bundle_checks_against_its_own_key_unless_one_is_pinned(tmp_path: Path) -> None:
    a_log(tmp_path / "st")
    bundle = tmp_path / "ev.tar.gz"
    info = export(tmp_path / "st", bundle)
    own = check_log(str(bundle))
    assert own.ok and own.records == info["records"]
    assert own.note == f" (host {info['host']}, key {info['key_id']}: the bundle's own key; pin it with --pubkey)"
    pinned = check_log(str(bundle), [host_public_key(tmp_path / "st")])
    assert pinned.ok and pinned.note == f" (host {info['host']}, key {info['key_id']})"
    other = Ed25519PrivateKey.generate().public_key()
    wrong = check_log(str(bundle), [other])
    assert not wrong.ok and wrong.note == f" (the bundle's pubkey.pem {info['key_id']} is not one you trust)"
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    assert check_log(str(junk)).error.startswith(f"{junk}: not an evidence bundle")


def test_anchors_are_checked_beside_the_log_and_an_unreadable_file_is_an_error(tmp_path: Path) -> None:
    state = tmp_path / "st"
    log = ForensicLog(state)
    sent: list[dict] = []  # type: ignore[type-arg]
    log.durable.append(lambda r: sent.append(r) if r["kind"] == "checkpoint" else None)
    log.append({"kind": "file"})
    log.checkpoint()
    anchors = tmp_path / "central.log"
    anchors.write_text("".join(json.dumps(r) + "\n" for r in sent))
    c = check_log(str(state), anchors=str(anchors))
    assert c.ok and c.anchors is not None and c.anchors.ok and c.anchors.anchors == 1
    sent[0]["seq"] += 10  # forwarded, then cut off the host (and its signature no longer matches)
    anchors.write_text(json.dumps(sent[0]) + "\n")
    c = check_log(str(state), anchors=str(anchors))
    assert c.verdict is not None and c.verdict.ok and c.anchors is not None and not c.anchors.ok and not c.ok
    c = check_log(str(state), anchors=str(tmp_path / "none"))
    assert c.verdict is None and c.error.startswith(f"--anchors {tmp_path / 'none'}")


def test_the_textfile_has_one_sample_per_log_with_the_clock_given(tmp_path: Path) -> None:
    checks = [LogCheck("/srv/a", Verdict(True, 7)), LogCheck("/srv/b", Verdict(False, 3, reason="deleted")),
              LogCheck("b.tar.gz", error="not an evidence bundle")]
    text = generate_latest(verify_registry(checks, now=lambda: 1700000000.0)).decode()
    assert 'ebpfguard_forensics_verify_ok{log="/srv/a"} 1.0' in text
    assert 'ebpfguard_forensics_verify_ok{log="/srv/b"} 0.0' in text
    assert 'ebpfguard_forensics_verify_ok{log="b.tar.gz"} 0.0' in text
    assert 'ebpfguard_forensics_verified_records{log="/srv/a"} 7.0' in text
    assert 'ebpfguard_forensics_verified_records{log="b.tar.gz"} 0.0' in text
    assert 'ebpfguard_forensics_verify_timestamp_seconds{log="/srv/a"} 1.7e+09' in text
    out = tmp_path / "ebpfguard.prom"
    write_verify_metrics(out, checks[:1])
    assert 'ebpfguard_forensics_verify_ok{log="/srv/a"} 1.0' in out.read_text()
    with pytest.raises(OSError):
        write_verify_metrics(tmp_path / "no" / "such" / "folder.prom", checks)

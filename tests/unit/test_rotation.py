"""Rotation (the chain runs on across files), evidence bundles, time filters and record forwarding."""

from __future__ import annotations

import io
import json
import multiprocessing
import socket
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ebpfguard.cli.main import main
from ebpfguard.errors import ForensicsError
from ebpfguard.forensics import (
    BadLine,
    ForensicLog,
    Forwarder,
    digest,
    log_files,
    parse_when,
    read,
    record_ns,
    rotate_size,
    verify,
    within,
)


def fill(tmp: Path, n: int, max_bytes: int = 4096) -> ForensicLog:
    log = ForensicLog(tmp, max_bytes=max_bytes)
    for i in range(n):
        log.append({"kind": "file", "detail": {"path": f"/home/u/.ssh/id_{i}", "access": "read"},
                    "extension": "x", "verdict": "denied"})
    return log


def recs(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_rotation_chains_across_files(tmp_path: Path) -> None:
    fill(tmp_path, 60)
    files = log_files(tmp_path / "forensics")
    assert len(files) >= 4 and files[-1].name == "records.jsonl"
    for f in files[:-1]:
        last = recs(f)[-1]
        assert last["kind"] == "checkpoint" and f.name == f"records-{last['seq']:012d}.jsonl"
        assert f.stat().st_size <= 4096 + 2048  # rotated at the limit (plus the checkpoint)
    nxt = recs(files[1])[0]
    assert nxt["prev_sha256"] == digest(recs(files[0])[-1])
    all_recs = [r for r in read(tmp_path)]
    assert [r["seq"] for r in all_recs] == list(range(1, len(all_recs) + 1))  # type: ignore[index]
    v = verify(tmp_path)
    assert v.ok and v.records == len(all_recs) and v.files == len(files), v
    assert f"across {len(files)} files" in str(v)


def test_a_deleted_rotated_file_is_named(tmp_path: Path) -> None:
    fill(tmp_path, 60)
    files = log_files(tmp_path / "forensics")
    gone = recs(files[1])
    files[1].unlink()
    v = verify(tmp_path)
    assert not v.ok and v.reason == f"deleted: records {gone[0]['seq']}..{gone[-1]['seq']} are missing"
    assert v.file == files[2].name and v.lineno == 1


def test_a_modified_record_in_a_rotated_file_is_named_with_its_file(tmp_path: Path) -> None:
    fill(tmp_path, 30)
    first = log_files(tmp_path / "forensics")[0]
    lines = recs(first)
    lines[2]["detail"]["path"] = "/innocent"
    first.write_text("".join(json.dumps(r) + "\n" for r in lines))
    v = verify(tmp_path)
    assert not v.ok and v.reason.startswith("modified") and v.file == first.name and v.lineno == 3


def test_new_writer_continues_after_rotation(tmp_path: Path) -> None:
    log = fill(tmp_path, 20)
    log.checkpoint(rotate=True)  # records.jsonl is gone: the next writer must chain onto the rotated file
    assert not (tmp_path / "forensics" / "records.jsonl").exists()
    ForensicLog(tmp_path).append({"kind": "lifecycle"})
    assert verify(tmp_path).ok


def _writer(tmp: str, n: int) -> None:
    log = ForensicLog(tmp, max_bytes=4096)
    for i in range(n):
        log.append({"kind": "file", "detail": {"i": i}})


def test_concurrent_writers_rotating_keep_one_chain(tmp_path: Path) -> None:
    procs = [multiprocessing.get_context("fork").Process(target=_writer, args=(str(tmp_path), 80)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    v = verify(tmp_path)
    assert v.ok, v
    files = [r for r in read(tmp_path) if not isinstance(r, BadLine) and r["kind"] == "file"]
    assert len(files) == 240 and len(log_files(tmp_path / "forensics")) > 3


def test_export_bundle_verifies_elsewhere_and_detects_tampering(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "policies").mkdir(parents=True)
    import hashlib

    manifest = b"apiVersion: ebpfguard.io/v1\n"
    sha = hashlib.sha256(manifest).hexdigest()
    (state / "policies" / sha).write_bytes(manifest)
    log = ForensicLog(state, max_bytes=4096)
    for i in range(40):
        log.append({"kind": "file", "detail": {"i": i}, "policy_sha256": sha})
    bundle = tmp_path / "ev.tar.gz"
    r = CliRunner().invoke(main, ["forensics", "export", "--state-dir", str(state), "-o", str(bundle)])
    assert r.exit_code == 0, r.output
    total = sum(1 for _ in read(state))
    assert f"{total} records (seq 1..{total}), 1 policies" in r.output
    assert bundle.stat().st_mode & 0o777 == 0o600
    pem = tmp_path / "host.pem"
    pem.write_text(CliRunner().invoke(main, ["forensics", "pubkey", "--state-dir", str(state)]).output)
    (state / "keys" / "forensics.ed25519").unlink()  # "another machine": nothing of the host left but the bundle
    r = CliRunner().invoke(main, ["forensics", "verify", "--pubkey", str(pem), str(bundle)])
    assert r.exit_code == 0 and "ok:" in r.output and "across" in r.output, r.output
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
    assert any(n.endswith(f"policies/{sha}") for n in names) and any(n.endswith("pubkey.pem") for n in names)

    other = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "other.pem").write_bytes(other)
    r = CliRunner().invoke(main, ["forensics", "verify", "--pubkey", str(tmp_path / "other.pem"), str(bundle)])
    assert r.exit_code == 1 and "unknown key" in r.output

    tampered = tmp_path / "bad.tar.gz"
    done = False
    with tarfile.open(bundle) as src, tarfile.open(tampered, "w:gz") as dst:
        for m in src:
            data = src.extractfile(m).read()  # type: ignore[union-attr]
            if "/forensics/records-" in m.name and not done:
                done = True
                lines = data.decode().splitlines()
                del lines[1]
                data = ("\n".join(lines) + "\n").encode()
            m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    assert done
    r = CliRunner().invoke(main, ["forensics", "verify", "--pubkey", str(pem), str(tampered)])
    assert r.exit_code == 1 and "deleted" in r.output, r.output


def test_bundle_with_a_link_or_escape_is_refused(tmp_path: Path) -> None:
    from ebpfguard.forensics import unpack_bundle

    bad = tmp_path / "evil.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("top/../../etc/x")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ForensicsError, match="refusing member"):
        unpack_bundle(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    r = CliRunner().invoke(main, ["forensics", "verify", str(bad)])
    assert r.exit_code == 1 and "refusing member" in r.output


def test_time_filters() -> None:
    now = parse_when("2026-11-24T12:00:00Z")
    assert parse_when("2h", now) == now - 7200 * 10**9
    assert parse_when("2026-11-24 12:00") == now and parse_when("2026-11-24T13:00:00+01:00") == now
    with pytest.raises(ValueError, match="neither a time"):
        parse_when("yesterday")
    assert record_ns({"time": "2026-11-24T12:00:00.000000500Z"}) == now + 500
    assert record_ns({"time": "garbage"}) is None
    at = {"time": "2026-11-24T12:00:00.000000000Z"}
    assert within(at, now, now + 1) and within(at, None, None) and within({}, None, None)
    assert not within(at, now + 1, None) and not within(at, None, now) and not within({}, now, None)


def test_show_filters_by_time(tmp_path: Path) -> None:
    log = ForensicLog(tmp_path)
    for t in ("2026-11-24T10:00:00.000000000Z", "2026-11-24T11:00:00.000000000Z", "2026-11-24T12:00:00.000000000Z"):
        log.append({"kind": "file", "time": t})
    r = CliRunner().invoke(main, ["forensics", "show", "--state-dir", str(tmp_path), "--json",
                                  "--since", "2026-11-24T10:30:00Z", "--until", "2026-11-24T12:00:00Z"])
    assert r.exit_code == 0 and [json.loads(x)["time"][11:13] for x in r.output.splitlines()] == ["11"]
    r = CliRunner().invoke(main, ["forensics", "show", "--state-dir", str(tmp_path), "--since", "soon"])
    assert r.exit_code == 2 and "--since/--until" in r.output


@pytest.mark.parametrize("kind", ["syslog", "journald"])
def test_forwarder_sends_every_record(tmp_path: Path, kind: str) -> None:
    path = str(tmp_path / "log.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    rx.settimeout(2)
    log = ForensicLog(tmp_path, forward=Forwarder(f"{kind}:{path}"))
    log.append({"kind": "file", "extension": "x", "verdict": "denied", "detail": {"path": "/a\nb"}})
    msg = rx.recv(65536)
    if kind == "syslog":
        assert msg.startswith(b"<83>ebpfguard[")  # authpriv.err: acted on
        assert json.loads(msg.split(b"]: ", 1)[1])["seq"] == 1
    else:
        assert b"SYSLOG_IDENTIFIER=ebpfguard\n" in msg and b"EBPFGUARD_SEQ=1\n" in msg and b"PRIORITY=3\n" in msg
        body = msg.split(b"EBPFGUARD_RECORD=", 1)[1]  # the record has no raw newline: JSON escapes it
        assert json.loads(body.rstrip(b"\n"))["detail"]["path"] == "/a\nb"
    rx.close()
    log.append({"kind": "file"})  # nobody listening: counted, the file still has it
    assert log.forward is not None and log.forward.failed == 1 and verify(tmp_path).records == 2


def test_rotate_size_is_the_manifest_grammar() -> None:
    """--rotate-size speaks the manifest's quantities: Mi is 2^20, M is 10^6, wherever written."""
    assert rotate_size("64Mi") == 64 << 20 and rotate_size("64M") == 64_000_000 and rotate_size("8192") == 8192
    assert rotate_size("512Ki") == 512 << 10
    for bad in ("1K", "lots", "-5M", "512KiB", "64mb"):
        with pytest.raises(ValueError):
            rotate_size(bad)
    with pytest.raises(ValueError, match="below the 4Ki minimum"):
        rotate_size("4095")


def test_a_torn_tail_from_a_killed_writer_is_kept_as_data_and_the_chain_goes_on(tmp_path: Path) -> None:
    import base64

    fill(tmp_path, 3, max_bytes=1 << 20)
    path = tmp_path / "forensics" / "records.jsonl"
    with open(path, "ab") as fh:
        fh.write(b'{"seq":4,"kind":"file","detail":{"pa')  # killed inside write(): no newline
    rec = ForensicLog(tmp_path).append({"kind": "file", "detail": {"path": "/after"}})
    lines = recs(path)
    torn = lines[3]
    assert torn["detail"]["event"] == "torn-tail" and torn["seq"] == 4
    assert base64.b64decode(torn["detail"]["data_b64"]) == b'{"seq":4,"kind":"file","detail":{"pa'
    assert rec["seq"] == 5 and lines[4]["detail"]["path"] == "/after"
    assert verify(tmp_path).ok


def test_verify_writes_textfile_metrics(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    fill(tmp_path, 5)
    prom = tmp_path / "ebpfguard.prom"
    args = ["forensics", "verify", "--state-dir", str(tmp_path), "--metrics-file", str(prom)]
    assert CliRunner().invoke(main, args).exit_code == 0

    def values() -> dict[str, float]:
        return {s.name: s.value for f in text_string_to_metric_families(prom.read_text()) for s in f.samples}

    assert values()["ebpfguard_forensics_verify_ok"] == 1 and values()["ebpfguard_forensics_verified_records"] == 5
    path = tmp_path / "forensics" / "records.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + lines[3:]) + "\n")
    assert CliRunner().invoke(main, args).exit_code == 1
    assert values()["ebpfguard_forensics_verify_ok"] == 0


def test_group_commit_counts_and_forwards_only_after_the_batch_is_durable(tmp_path: Path) -> None:
    path = str(tmp_path / "log.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    rx.setblocking(False)
    log = ForensicLog(tmp_path, forward=Forwarder(f"syslog:{path}"))
    with log.batch():
        for i in range(10):
            log.append({"kind": "file", "detail": {"i": i}})
        assert log.written == 0  # not yet fsync'd: not yet counted, not yet forwarded
        with pytest.raises(BlockingIOError):
            rx.recv(65536)
    assert log.written == 10
    got = []
    while True:
        try:
            got.append(json.loads(rx.recv(65536).split(b"]: ", 1)[1])["seq"])
        except BlockingIOError:
            break
    assert got == list(range(1, 11))
    log.max_bytes = 4096
    with log.batch():  # across rotations and checkpoints inside one batch
        for i in range(80):
            log.append({"kind": "file", "detail": {"path": f"/x/{i}" * 4}})
    assert verify(tmp_path).ok and len(log_files(tmp_path / "forensics")) > 2
    head = json.loads((tmp_path / "forensics" / "head.json").read_text())
    assert head["seq"] <= max(r["seq"] for r in read(tmp_path) if not isinstance(r, BadLine))  # type: ignore[index]
    rx.close()

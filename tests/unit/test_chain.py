"""The hash chain and Ed25519 signatures: every kind of tampering is named by verify()."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ebpfguard.cli.main import main
from ebpfguard.forensics import GENESIS, ForensicLog, canonical, digest, key_id, verify


def write_log(tmp: Path, n: int = 6) -> Path:
    log = ForensicLog(tmp)
    for i in range(n):
        log.append({"kind": "file", "detail": {"path": f"/secret/{i}"}, "verdict": "denied"})
    return tmp / "forensics" / "records.jsonl"


def lines(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(x) for x in path.read_text().splitlines()]


def rewrite(path: Path, recs: list[dict]) -> None:  # type: ignore[type-arg]
    path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in recs))


def test_intact_log_verifies_across_writer_restarts(tmp_path: Path) -> None:
    path = write_log(tmp_path, 3)
    ForensicLog(tmp_path).append({"kind": "lifecycle"})  # a new writer continues seq and chain
    recs = lines(path)
    assert [r["seq"] for r in recs] == [1, 2, 3, 4] and recs[0]["prev_sha256"] == GENESIS
    assert all(len(base64.b64decode(r["signature"])) == 64 for r in recs)
    assert verify(tmp_path).ok and verify(tmp_path).records == 4
    key = tmp_path / "keys" / "forensics.ed25519"
    assert key.stat().st_mode & 0o777 == 0o600


def test_modified(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    recs = lines(path)
    recs[2]["detail"]["path"] = "/innocent"
    rewrite(path, recs)
    v = verify(tmp_path)
    assert not v.ok and v.seq == 3 and v.reason.startswith("modified")


def test_deleted(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    recs = lines(path)
    del recs[3]
    rewrite(path, recs)
    v = verify(tmp_path)
    assert not v.ok and v.seq == 5 and v.reason == "deleted: records 4..4 are missing"


def test_reordered(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    recs = lines(path)
    recs[2], recs[3] = recs[3], recs[2]
    rewrite(path, recs)
    v = verify(tmp_path)
    assert not v.ok and v.reason.startswith(("reordered", "deleted"))
    assert v.seq == 4


def test_inserted(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    recs = lines(path)
    fake = dict(recs[1])
    fake["detail"] = {"path": "/planted"}
    recs.insert(2, fake)
    rewrite(path, recs)
    v = verify(tmp_path)
    assert not v.ok and v.reason == "inserted: repeats seq" and v.seq == 2


def test_bad_signature(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    recs = lines(path)
    recs[1]["signature"] = recs[2]["signature"]  # a valid signature, of another record
    rewrite(path, recs)
    v = verify(tmp_path)
    assert not v.ok and v.seq == 2 and v.reason == "bad signature"


def test_resigned_by_another_key(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    recs = lines(path)
    other = Ed25519PrivateKey.generate()
    recs[4]["detail"] = {"path": "/innocent"}
    recs[4]["key_id"] = key_id(other.public_key())
    recs[4]["signature"] = None
    recs[4]["signature"] = base64.b64encode(other.sign(canonical(recs[4]))).decode()
    rewrite(path, recs)
    v = verify(tmp_path)
    assert not v.ok and v.seq == 5 and v.reason.startswith("unknown key")


def test_trusting_only_another_key(tmp_path: Path) -> None:
    write_log(tmp_path, 2)
    v = verify(tmp_path, [Ed25519PrivateKey.generate().public_key()])
    assert not v.ok and v.seq == 1 and v.reason.startswith("unknown key")


@pytest.mark.parametrize("tamper,code", [(False, 0), (True, 1)])
def test_cli_verify_and_pubkey(tmp_path: Path, tamper: bool, code: int) -> None:
    path = write_log(tmp_path, 3)
    if tamper:
        recs = lines(path)
        recs[0]["verdict"] = "allowed"
        rewrite(path, recs)
    pem = tmp_path / "host.pem"
    out = CliRunner().invoke(main, ["forensics", "pubkey", "--state-dir", str(tmp_path)])
    assert out.exit_code == 0 and out.output.startswith("-----BEGIN PUBLIC KEY-----")
    pem.write_text(out.output)
    r = CliRunner().invoke(main, ["forensics", "verify", "--state-dir", str(tmp_path), "--pubkey", str(pem)])
    assert r.exit_code == code
    assert ("ok: 3 records" in r.output) if not tamper else ("records.jsonl:1: seq 1: modified" in r.output)


def test_checkpoints_detect_a_truncated_tail(tmp_path: Path) -> None:
    log = ForensicLog(tmp_path)
    for i in range(5):
        log.append({"kind": "file", "detail": {"i": i}})
    cp = log.checkpoint()
    assert cp["kind"] == "checkpoint" and cp["seq"] == 6 and cp["detail"] == {"records": 5}
    log.append({"kind": "file"})
    assert verify(tmp_path).ok
    path = tmp_path / "forensics" / "records.jsonl"
    rewrite(path, lines(path)[:4])  # cut back past the checkpoint
    v = verify(tmp_path)
    assert not v.ok and v.reason.startswith("tail truncated after the last checkpoint") and v.seq == 5


def test_checkpoint_every_n_records(tmp_path: Path) -> None:
    from ebpfguard import forensics

    log = ForensicLog(tmp_path)
    for _ in range(forensics.CHECKPOINT_EVERY):
        log.append({"kind": "file"})
    recs = lines(tmp_path / "forensics" / "records.jsonl")
    assert recs[-1]["kind"] == "checkpoint" and json.loads((tmp_path / "forensics" / "head.json").read_text())["seq"] == len(recs)
    head = tmp_path / "forensics" / "head.json"
    forged = json.loads(head.read_text())
    forged["seq"] = 1
    head.write_text(json.dumps(forged))
    assert verify(tmp_path).reason.startswith("head.json: bad signature")


def test_verify_never_creates_a_key(tmp_path: Path) -> None:
    import shutil

    from ebpfguard.errors import ForensicsError

    write_log(tmp_path, 2)
    copy = tmp_path / "copied"
    shutil.copytree(tmp_path / "forensics", copy / "forensics")  # a log moved to another machine, no key
    with pytest.raises(ForensicsError, match="give the signer's public key with --pubkey"):
        verify(copy)
    assert not (copy / "keys").exists()
    from ebpfguard.forensics import host_public_key

    assert verify(copy, [host_public_key(tmp_path)]).ok


def test_one_signature_per_group_binds_the_whole_group(tmp_path: Path) -> None:
    log = ForensicLog(tmp_path)
    with log.batch():
        for i in range(5):
            log.append({"kind": "file", "detail": {"path": f"/secret/{i}"}})
    path = tmp_path / "forensics" / "records.jsonl"
    recs = lines(path)
    assert [r.get("signature") is not None for r in recs] == [False] * 4 + [True]
    assert path.read_bytes().splitlines()[0] == canonical(recs[0])[:-1] + b',"signature":null}'  # canonical + null
    assert verify(tmp_path).ok
    recs[1]["detail"]["path"] = "/innocent"  # an unsigned record changed: the chain names it
    rewrite(path, recs)
    v = verify(tmp_path)
    assert not v.ok and v.seq == 2 and v.reason.startswith("modified")


def test_unsigned_records_appended_at_the_end_are_named(tmp_path: Path) -> None:
    path = write_log(tmp_path, 3)
    recs = lines(path)
    forged = {**recs[-1], "seq": 4, "prev_sha256": digest(recs[-1]), "detail": {"path": "/forged"}}
    forged.pop("signature")
    rewrite(path, [*recs, forged])
    v = verify(tmp_path)
    assert not v.ok and v.seq == 4 and v.reason.startswith("unsigned: records 4..4")


def test_a_writer_cuts_a_group_its_predecessor_never_signed(tmp_path: Path) -> None:
    path = write_log(tmp_path, 2)
    log = ForensicLog(tmp_path)
    with log.batch():
        for i in range(3):
            log.append({"kind": "file", "detail": {"path": f"/late/{i}"}})
    data = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(data[:4]))  # the group's signed last record never reached the disk
    assert not verify(tmp_path).ok
    rec = ForensicLog(tmp_path).append({"kind": "lifecycle"})
    recs = lines(path)
    assert [r["seq"] for r in recs] == [1, 2, 3, 4] and rec["seq"] == 4
    assert recs[2]["detail"]["event"] == "torn-tail" and recs[2]["detail"]["bytes"] == len(b"".join(data[2:4]))
    assert verify(tmp_path).ok


def _forwarded_checkpoints(tmp_path: Path, form: str) -> tuple[ForensicLog, Path]:
    """A log with checkpoints at seq 6 and 12, forwarded (as the agent's Forwarder encodes them) into an
    anchors file that a central host kept."""
    from ebpfguard.forensics import Forwarder

    log = ForensicLog(tmp_path / "st")
    sent: list[dict] = []  # type: ignore[type-arg]
    log.durable.append(lambda r: sent.append(r) if r["kind"] == "checkpoint" else None)
    for block in range(2):
        for i in range(5):
            log.append({"kind": "file", "detail": {"path": f"/secret/{block}-{i}"}, "verdict": "denied"})
        log.checkpoint()
    log.append({"kind": "file", "detail": {"path": "/after"}, "verdict": "denied"})
    anchors = tmp_path / "central.log"
    if form == "syslog":
        fwd = Forwarder("syslog:/nonexistent")
        anchors.write_text("other-program: hello\n" + "".join(fwd.encode(r).decode() + "\n" for r in sent))
    else:  # journalctl -o json
        anchors.write_text("".join(json.dumps({"MESSAGE": "x", "EBPFGUARD_RECORD": json.dumps(r)}) + "\n"
                                   for r in sent))
    assert [r["seq"] for r in sent] == [6, 12]
    return log, anchors


@pytest.mark.parametrize("form", ["syslog", "journal"])
def test_anchors_catch_a_cut_tail_with_a_head_signed_again(tmp_path: Path, form: str) -> None:
    """A local root has the key: it cuts the log back to seq 8 and signs a new head.json for it. verify()
    alone finds nothing wrong; the checkpoints forwarded off the host do."""
    log, anchors = _forwarded_checkpoints(tmp_path, form)
    state = tmp_path / "st"
    ok = CliRunner().invoke(main, ["forensics", "verify", "--state-dir", str(state), "--anchors", str(anchors)])
    assert ok.exit_code == 0 and "2 forwarded checkpoints, each in the log" in ok.output, ok.output
    path = state / "forensics" / "records.jsonl"
    kept = lines(path)[:8]
    rewrite(path, kept)
    log._write_head(kept[-1])  # the attacker's new head, with the host's own key
    assert verify(state).ok  # undetectable on the host alone
    r = CliRunner().invoke(main, ["forensics", "verify", "--state-dir", str(state), "--anchors", str(anchors)])
    assert r.exit_code == 1 and "tail truncated: the log ends at seq 8, but checkpoint seq 12 was forwarded" in r.output


def test_anchors_catch_a_rewritten_checkpoint(tmp_path: Path) -> None:
    _log, anchors = _forwarded_checkpoints(tmp_path, "syslog")
    state = tmp_path / "st"
    path = state / "forensics" / "records.jsonl"
    recs = lines(path)
    recs[5]["detail"]["records"] = 4  # checkpoint seq 6 says something else now; re-chained and re-signed
    from ebpfguard.forensics.keys import load_or_create_key

    key = load_or_create_key(state)
    for i in range(5, len(recs)):
        if i > 5:
            recs[i]["prev_sha256"] = digest(recs[i - 1])
        if recs[i]["signature"] is not None:
            recs[i]["signature"] = base64.b64encode(key.sign(canonical(recs[i]))).decode()
    rewrite(path, recs)
    assert verify(state).ok
    r = CliRunner().invoke(main, ["forensics", "verify", "--state-dir", str(state), "--anchors", str(anchors)])
    assert r.exit_code == 1 and "rewritten: record seq 6 is not the checkpoint forwarded" in r.output, r.output


def test_an_anchors_file_with_no_checkpoint(tmp_path: Path) -> None:
    write_log(tmp_path, 2)
    bad = tmp_path / "a.log"
    bad.write_text("nothing here\n")
    r = CliRunner().invoke(main, ["forensics", "verify", "--state-dir", str(tmp_path), "--anchors", str(bad)])
    assert r.exit_code == 1 and "no ebpfguard checkpoint in it" in r.output

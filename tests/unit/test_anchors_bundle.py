"""Anchors against an evidence bundle: the central side usually holds the host's bundle and the checkpoints its
log pipeline collected (journalctl-style JSON lines, as contrib/rsyslog/ebpfguard-central.conf writes them), not
the host's state folder. A tail cut off and a head.json signed again before the export are caught as on the host."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from ebpfguard.cli.main import main
from ebpfguard.forensics import ForensicLog, export, host_public_key, public_pem
from ebpfguard.forensics.check import check_log
from ebpfguard.forensics.verify import verify


def forwarded(tmp_path: Path) -> tuple[ForensicLog, Path, Path]:
    """A host's log with checkpoints at seq 6 and 12 and one record after them; the central file holds every
    forwarded record as the central rsyslog writes it; the fleet kept the host's public key beforehand."""
    state = tmp_path / "host42"
    log = ForensicLog(state)
    sent: list[dict[str, Any]] = []
    log.durable.append(sent.append)
    for block in range(2):
        for i in range(5):
            log.append({"kind": "file", "extension": "md-preview", "detail": {"path": f"/secret/{block}-{i}"},
                        "verdict": "denied"})
        log.checkpoint()
    log.append({"kind": "file", "extension": "md-preview", "detail": {"path": "/after"}, "verdict": "denied"})
    central = tmp_path / "central" / "host42.jsonl"
    central.parent.mkdir()
    central.write_text("".join(json.dumps({"_HOSTNAME": "host42", "SYSLOG_IDENTIFIER": "ebpfguard",
                                           "EBPFGUARD_KIND": r["kind"], "EBPFGUARD_RECORD": json.dumps(r)}) + "\n"
                               for r in sent))
    assert [r["seq"] for r in sent if r["kind"] == "checkpoint"] == [6, 12]
    pem = tmp_path / "host42.pem"
    pem.write_text(public_pem(host_public_key(state)))
    return log, central, pem


def cut_after(log: ForensicLog, seq: int) -> None:
    """What a local root can do: keep records up to ``seq`` and sign a head.json for it with the host's key."""
    path = log.state_dir.records
    kept = [json.loads(line) for line in path.read_text().splitlines()][:seq]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    log._write_head(kept[-1])


def verify_cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["forensics", "verify", *args])
    return r.exit_code, r.output


def test_a_whole_bundle_holds_every_forwarded_checkpoint(tmp_path: Path) -> None:
    _log, central, pem = forwarded(tmp_path)
    bundle = tmp_path / "host42.tar.gz"
    export(tmp_path / "host42", bundle)
    c = check_log(str(bundle), anchors=str(central))
    assert c.ok and c.anchors is not None and c.anchors.anchors == 2, c
    code, out = verify_cli("--pubkey", str(pem), "--anchors", str(central), str(bundle))
    assert code == 0, out
    assert f"{bundle}: anchors: 2 forwarded checkpoints, each in the log as it was forwarded" in out


def test_a_bundle_exported_after_the_tail_was_cut_fails_its_anchors(tmp_path: Path) -> None:
    log, central, pem = forwarded(tmp_path)
    cut_after(log, 8)
    assert verify(tmp_path / "host42").ok  # the host alone finds nothing wrong
    bundle = tmp_path / "host42.tar.gz"
    export(tmp_path / "host42", bundle)
    plain = check_log(str(bundle), [host_public_key(tmp_path / "host42")])
    assert plain.ok and plain.records == 8
    code, out = verify_cli("--pubkey", str(pem), "--anchors", str(central), str(bundle))
    assert code == 1, out
    assert f"{bundle}: ok: 8 records" in out
    assert f"{bundle}: anchors: tail truncated: the log ends at seq 8, but checkpoint seq 12 was forwarded" in out
    # the folder and its bundle tell the same
    code, out = verify_cli("--pubkey", str(pem), "--anchors", str(central), str(tmp_path / "host42"), str(bundle))
    assert code == 1 and out.count("tail truncated: the log ends at seq 8") == 2, out


def test_a_bundle_signed_again_with_a_key_of_its_own_does_not_carry_the_hosts_anchors(tmp_path: Path) -> None:
    """The whole log rewritten under a new key, head and pubkey.pem included: the bundle verifies against its
    own key, but the checkpoints forwarded off the host were signed with the key the fleet knows."""
    _log, central, pem = forwarded(tmp_path)
    forged = tmp_path / "forged"
    fake = ForensicLog(forged)
    for old in [json.loads(line) for line in (tmp_path / "host42/forensics/records.jsonl").read_text().splitlines()]:
        if old["kind"] == "checkpoint":
            fake.checkpoint()
        else:
            fake.append({k: old[k] for k in ("kind", "extension", "detail", "verdict")})
    bundle = tmp_path / "forged.tar.gz"
    export(forged, bundle)
    own = check_log(str(bundle), anchors=str(central))
    assert own.verdict is not None and own.verdict.ok and own.anchors is not None and not own.ok
    assert "which this verifier does not trust" in str(own.anchors)
    code, out = verify_cli("--pubkey", str(pem), "--anchors", str(central), str(bundle))
    assert code == 1 and "unknown key" in out, out


def test_an_unusable_anchors_file_is_said_before_the_bundle_is_read(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    c = check_log(str(junk), anchors=str(tmp_path / "none.jsonl"))
    assert c.verdict is None and c.error.startswith(f"--anchors {tmp_path / 'none.jsonl'}"), c.error
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"_HOSTNAME": "host42", "MESSAGE": "no record here"}) + "\n")
    c = check_log(str(junk), anchors=str(empty))
    assert c.verdict is None and "no ebpfguard checkpoint in it" in c.error

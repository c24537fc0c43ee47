"""The fleet report on logs the real writer made (ForensicLog), as a central collector, `journalctl -o json` and the
log itself hold them: the same report from each, every way a log can go wrong named, every input that is not a record
counted, and every unusable argument refused with exit 2 and no traceback. The generated million-record fleet, with
its memory bound, is tests/e2e/test_fleet.py."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from ebpfguard.cli.main import main
from ebpfguard.forensics import ForensicLog, digest, host_public_key, public_pem
from ebpfguard.forensics.fleet import FleetReport, _digest, _order, host_of, parse_line, render, sources

SHA = {v: hashlib.sha256(v.encode()).hexdigest() for v in ("1.0", "2.0", "3.0")}


def fleet(*args: str, input: str | bytes | None = None) -> Result:
    return CliRunner(mix_stderr=False).invoke(main, ["fleet", "report", *args], input=input)


class Host:
    """A host's log written by the real writer, and what its forwarder sent (the agent's JSON of each record)."""

    def __init__(self, root: Path, name: str):
        self.name, self.state = name, root / name
        self.log = ForensicLog(self.state, fsync=False)
        self.sent: list[dict[str, Any]] = []
        self.log.durable.append(lambda rec: self.sent.append(json.loads(json.dumps(rec))))

    def write(self, n: int, version: str = "1.0", ext: str = "md-preview", **body: Any) -> None:
        for i in range(n):
            rec = {"kind": "file", "extension": ext, "instance": f"{ext}-1", "policy_sha256": SHA[version],
                   "detail": {"access": "read", "path": f"/home/u/.ssh/id_{i % 2 and 'rsa' or 'ed25519'}"},
                   "verdict": "denied", "actions": ["eacces:landlock"], **body}
            self.log.append(rec)

    def policy(self, version: str, ext: str = "md-preview") -> None:
        self.log.append({"kind": "policy", "extension": ext, "policy_sha256": SHA[version], "actions": [],
                         "detail": {"event": "loaded", "name": ext, "version": version}})

    def central(self, recs: list[dict[str, Any]] | None = None, spaced: bool = False) -> str:
        """Lines as the central collector writes them (or as journalctl -o json does, with its spaces)."""
        sep = (", ", " : ") if spaced else (",", ":")
        return "".join(json.dumps({"_HOSTNAME": self.name, "MESSAGE": f"seq={r['seq']}", "EBPFGUARD_RECORD":
                                   json.dumps(r, separators=(",", ":"), ensure_ascii=False)}, separators=sep) + "\n"
                       for r in (self.sent if recs is None else recs))

    def lines(self) -> str:
        return (self.state / "forensics" / "records.jsonl").read_text()


def report(tmp: Path, name: str, text: str, **kw: Any) -> FleetReport:
    f = tmp / name
    f.write_text(text)
    return FleetReport(**kw).read(sources([str(f)]))


def test_the_same_report_from_the_collector_journalctl_and_the_log_itself(tmp_path: Path) -> None:
    h = Host(tmp_path, "ws1")
    h.policy("1.0")
    h.write(130)
    h.write(20, "2.0", verdict="killed", actions=["sigkill:agent", "cgroup.kill:escalation(4 in 60s)"])
    h.log.append({"kind": "lifecycle", "extension": "md-preview", "policy_sha256": SHA["2.0"], "actions": ["freeze"],
                  "detail": {"event": "freeze", "by": "operator"}})
    h.log.append({"kind": "rollback", "extension": "md-preview", "policy_sha256": SHA["2.0"],
                  "detail": {"event": "discarded", "count": 2}})
    h.log.checkpoint()
    other = json.dumps({"_HOSTNAME": "ws1", "SYSLOG_IDENTIFIER": "sshd", "MESSAGE": "Accepted"}) + "\n"
    got = [report(tmp_path, "central.jsonl", h.central()),
           report(tmp_path, "export.json", other + h.central(spaced=True) + other),
           report(tmp_path, "ws1.jsonl", h.lines())]
    want = None
    for r in got:
        d = r.as_dict()
        assert d["records"] == 155 and d["integrity_failed"] == [] and d["hosts"] == 1
        [host] = d["host_integrity"]
        assert (host["host"], host["first_seq"], host["last_seq"], host["missing"], host["checkpoints"]) == \
            ("ws1", 1, 155, 0, 2)
        v1, v2 = d["versions"]
        assert (v1["version"], v1["incidents"], v1["hosts_affected"]) == ("1.0", 130, ["ws1"])
        assert v1["by_technique"] == [{"technique": "credential file read", "attack_id": "T1552.004",
                                       "attack_name": "Private Keys", "incidents": 130}]
        assert v1["by_response"] == {"eacces": 130} and v1["ladder"] == {}
        # 2.0 has no policy record: named by its sha256; its escalation kills and the operator's freeze are ladder
        assert (v2["version"], v2["incidents"], v2["rollbacks_discarded"]) == (SHA["2.0"][:12], 20, 1)
        assert v2["by_response"] == {"sigkill": 20, "cgroup.kill": 20} and v2["ladder"] == {"kill": 20, "freeze": 1}
        d.pop("seconds"), d.pop("skipped")
        for f in d.pop("file_problems"):
            raise AssertionError(f)
        want = want or d
        assert d == want
    assert got[1].as_dict()["skipped"] == 2


def test_a_log_rotated_and_gzipped_read_as_one_folder(tmp_path: Path) -> None:
    h = Host(tmp_path, "ws1")
    h.log.max_bytes = 4096
    h.write(60)
    files = sorted((h.state / "forensics").glob("records*.jsonl"))
    assert len(files) > 2
    d = tmp_path / "in"
    d.mkdir()
    for f in files[:2]:  # older files gzipped, under other names: read by content, ordered by their numbers
        with gzip.open(d / (f.name + ".gz"), "wb") as out:
            out.write(f.read_bytes())
    for f in files[2:]:
        shutil.copy(f, d / f.name)
    r = FleetReport().read(sources([str(d)], host="ws1"))
    assert r.records == h.log._last_seq and not r.failed and r.hosts["ws1"].again == 0


def test_chain_broken_lost_and_twice(tmp_path: Path) -> None:
    h = Host(tmp_path, "ws1")
    h.write(250)
    sent = h.sent
    changed = [dict(r) for r in sent]
    changed[9] = {**changed[9], "detail": {"path": "/innocent"}}
    r = report(tmp_path, "a", h.central(changed))
    assert r.hosts["ws1"].problems == ["chain broken at seq 11: its prev_sha256 is not the digest of seq 10"]
    lost = sent[:30] + sent[33:150] + sent[151:]
    r = report(tmp_path, "b", h.central(lost))
    assert r.hosts["ws1"].ok and (r.hosts["ws1"].missing, r.hosts["ws1"].gaps) == (4, 2)
    twice = sent[:120] + sent[90:120] + sent[120:] + sent[240:]  # a stretch again, and the tail again
    r = report(tmp_path, "c", h.central(twice))
    assert r.hosts["ws1"].ok and r.hosts["ws1"].again == 30 + len(sent) - 240 and r.hosts["ws1"].notes == []
    assert r.versions["md-preview", SHA["1.0"]].incidents == sum(x["kind"] == "file" for x in twice)
    cut = sent[:200] + sent[150:160]  # again, and the stream ends there, the same: said, not failed
    r = report(tmp_path, "d", h.central(cut))
    assert r.hosts["ws1"].ok and r.hosts["ws1"].notes == [
        "seqs 151..160 received again (the log had reached seq 200); nothing in them found different"]


def test_a_log_cut_back_and_written_on_is_rewound(tmp_path: Path) -> None:
    h = Host(tmp_path, "ws1")
    h.write(150)  # checkpoints at 100 and 150 (the end of each hundred's group)
    before = list(h.sent)
    top = before[-1]["seq"]
    path = h.state / "forensics" / "records.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:120]))  # a root cuts the tail, and the agent writes on
    h.sent.clear()
    h.write(60)
    assert h.sent[0]["seq"] == 121
    r = report(tmp_path, "a", h.central(before + h.sent))
    assert not r.hosts["ws1"].ok
    assert r.hosts["ws1"].problems[0] == (f"rewound: the log went back from seq {top} to seq 121 and came to seq "
                                          f"{top} again with a different record")
    # a checkpoint among what came again: rewritten
    h2 = Host(tmp_path, "ws2")
    h2.write(130)
    sent = h2.sent
    ckpt = next(r for r in sent if r["kind"] == "checkpoint")
    forged = [dict(x) for x in sent[ckpt["seq"] - 5:ckpt["seq"] + 3]]
    for i, x in enumerate(forged):  # made up, and chained again
        x["time"] = "2020-01-01T00:00:00.000000000Z"
        if i:
            x["prev_sha256"] = digest(forged[i - 1])
    r = report(tmp_path, "b", h2.central(sent + forged))
    assert r.hosts["ws2"].problems[0] == f"rewritten: checkpoint seq {ckpt['seq']} came again with a different digest"
    # cut back, written on, and the stream ends before the seq it had reached: nothing to compare, said
    r = report(tmp_path, "c", h.central(before + h.sent[:10]))
    assert r.hosts["ws1"].ok and r.hosts["ws1"].notes and "received again" in r.hosts["ws1"].notes[0]


def test_checkpoint_signatures_against_the_hosts_keys(tmp_path: Path) -> None:
    h = Host(tmp_path, "ws1")
    h.write(220)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "ws1.pem").write_text(public_pem(host_public_key(h.state)))
    other = Host(tmp_path, "ws2")
    other.write(1)
    (tmp_path / "ws2.pem").write_text(public_pem(host_public_key(other.state)))
    f = tmp_path / "c.jsonl"
    f.write_text(h.central())
    got = fleet("--json", "--pubkeys", str(tmp_path / "keys"), str(f))
    assert got.exit_code == 0, got.output
    host = json.loads(got.stdout)["host_integrity"][0]
    assert host["signatures_verified"] == host["checkpoints"] == 2
    first = next(r["seq"] for r in h.sent if r["kind"] == "checkpoint")
    got = fleet("--json", "--pubkey", f"ws1={tmp_path / 'ws2.pem'}", str(f))  # the wrong key
    assert got.exit_code == 1
    assert json.loads(got.stdout)["host_integrity"][0]["problems"][0].startswith(
        f"bad signature: checkpoint seq {first} names key")
    assert "integrity failed on 1 host: ws1" in got.stderr
    sent = [dict(r) for r in h.sent]
    sent[first - 1]["signature"] = sent[first - 3]["signature"]  # the key's, over another record
    f.write_text(h.central(sent))
    got = fleet("--pubkeys", str(tmp_path / "keys"), str(f))
    assert got.exit_code == 1
    out = got.stdout.splitlines()
    assert out[2:4] == ["INTEGRITY FAILED on 1 of 1 host:", f"  ws1  bad signature: checkpoint seq {first}"]


def test_lines_that_are_no_record_are_counted_and_said(tmp_path: Path) -> None:
    h = Host(tmp_path, "ws1")
    h.write(5)
    good = h.central().splitlines()
    null = json.dumps({"_HOSTNAME": "ws1", "EBPFGUARD_RECORD": None})
    text = "\n".join([good[0], "{not json", good[1], null, "[1, 2]", '{"seq": "x", "kind": "file"}', *good[2:],
                      '{"some": "object"}', "", "   "]) + "\n"
    r = report(tmp_path, "ws1.jsonl", text)
    [src] = r.files
    assert (r.records, src.bad, src.first_bad, src.why) == (5, 5, 2, "not JSON")
    assert r.hosts["ws1"].ok
    text = render(r)
    assert text[2:5] == ["notes:", f"  {tmp_path / 'ws1.jsonl'}:",
                         "    5 unparseable lines, the first at line 2 (not JSON)"]
    with pytest.raises(Exception, match="journalctl leaves out fields over 4096 bytes unless given --all"):
        parse_line(null, "x")


def test_syslog_lines_stdin_and_gzip_by_content(tmp_path: Path) -> None:
    h = Host(tmp_path, "ws1")
    h.write(3)
    recs = [json.dumps(r, separators=(",", ":"), ensure_ascii=False) for r in h.sent]
    syslog = "".join(f"Dec  3 23:00:01 ws7 ebpfguard[812]: {r}\n" for r in recs)
    got = fleet("--json", "-", input=syslog)
    assert got.exit_code == 0, got.output
    d = json.loads(got.stdout)
    assert (d["records"], d["host_integrity"][0]["host"]) == (3, "ws7")
    plain = gzip.compress(h.lines().encode())
    got = fleet("--json", "--host", "laptop", "-", input=plain)
    assert json.loads(got.stdout)["host_integrity"][0]["host"] == "laptop"
    (tmp_path / "ws9.log").write_bytes(plain)  # gzip, whatever the name
    got = fleet("--json", str(tmp_path / "ws9.log"))
    assert json.loads(got.stdout)["host_integrity"][0]["host"] == "ws9"


def test_filters_and_the_text_report(tmp_path: Path) -> None:
    h = Host(tmp_path, "ws1")
    h.policy("1.0")
    h.write(10)
    h.policy("3.0", ext="git-lens")
    h.write(3, "3.0", ext="git-lens", time="2020-01-01T00:00:00.000000000Z")
    f = tmp_path / "c.jsonl"
    f.write_text(h.central())
    d = json.loads(fleet("--json", "-e", "git-lens", str(f)).stdout)
    assert [(v["extension"], v["incidents"]) for v in d["versions"]] == [("git-lens", 3)]
    d = json.loads(fleet("--json", "--since", "2021-01-01", str(f)).stdout)
    assert [(v["extension"], v["incidents"]) for v in d["versions"]] == [("md-preview", 10), ("git-lens", 0)]
    d = json.loads(fleet("--json", "--until", "2021-01-01", str(f)).stdout)
    assert [(v["extension"], v["incidents"]) for v in d["versions"]] == [("git-lens", 3)]
    assert d["records"] == 15 and d["host_integrity"][0]["records"] == 15  # integrity reads every record
    got = fleet(str(f))
    assert got.exit_code == 0 and "fleet report: 15 records, 1 host, 1 file, " in got.stderr
    out = got.stdout.splitlines()
    assert out[0] == "fleet report: 15 records from 1 host in 1 file"
    assert out[2].split() == ["EXTENSION", "VERSION", "HOSTS", "INCIDENTS", "FIRST", "SEEN", "LAST", "SEEN"]
    assert out[3].split()[:4] == ["md-preview", "1.0", "1/1", "10"]
    assert f"  technique {10:>7}  {'credential file read':<46} T1552.004" in out
    assert max(len(line) for line in out) <= 80


@pytest.mark.parametrize("args, why", [
    (["/nonexistent"], "/nonexistent: no such file or folder"),
    (["--since", "yesterday-ish", "."], "--since/--until: 'yesterday-ish' is neither a time"),
    (["--pubkey", "ws1", "."], "--pubkey 'ws1': give HOST=PEM"),
    (["--pubkey", "ws1=/etc/hostname", "."], "/etc/hostname: not a PEM public key"),
    (["-", "-"], "- (stdin) given twice"),
])
def test_unusable_arguments_exit_2_and_say_why(args: list[str], why: str) -> None:
    got = fleet(*args)
    assert got.exit_code == 2 and why in got.stderr and "Traceback" not in got.output, got.output


def test_no_record_at_all_and_no_key_in_the_folder_exit_2(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("-- Reboot --\n")
    got = fleet(str(tmp_path / "empty.jsonl"))
    assert got.exit_code == 2
    assert "no ebpfguard record in 1 file; " in got.stderr and "1 unparseable line, the first at line 1" in got.stderr
    (tmp_path / "keys").mkdir()
    got = fleet("--pubkeys", str(tmp_path / "keys"), str(tmp_path))
    assert got.exit_code == 2 and "no HOST.pem in it" in got.stderr


def test_records_of_odd_shapes_are_read_without_a_traceback(tmp_path: Path) -> None:
    odd = [{"seq": 1, "kind": "file", "extension": "x", "detail": ["a"], "actions": 5, "time": 7},
           {"seq": 2, "kind": "network", "extension": 3, "detail": "s", "actions": [{"a": 1}], "signature": 5},
           {"seq": 3, "kind": "checkpoint", "signature": "!!", "key_id": None, "policy_sha256": 9},
           {"seq": 4, "kind": "lifecycle", "extension": "x", "detail": [], "policy_sha256": None},
           {"seq": 2, "kind": "rollback", "extension": "x", "detail": None}]
    f = tmp_path / "odd.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in odd))
    (tmp_path / "keys").mkdir()
    got = fleet("--pubkey", f"odd={tmp_path / 'k.pem'}", str(f))
    assert got.exit_code == 2  # no such key file: said
    got = fleet("--json", str(f))
    assert got.exit_code == 1 and "Traceback" not in got.output, got.output
    assert json.loads(got.stdout)["versions"][0]["version"] == "(no policy)"


def test_the_quick_digest_is_the_chains(tmp_path: Path) -> None:
    h = Host(tmp_path, "ws1")
    h.write(3, detail={"path": "/home/ü/\u2028 \"x\"", "n": 1.5, "big": 10 ** 30, "none": None})
    for r in h.sent:
        assert _digest(r) == digest(r) and "signature" in r


def test_rotated_files_read_oldest_first() -> None:
    names = ["ws4.jsonl", "ws4.jsonl.1.gz", "ws4.jsonl.2.gz", "records.jsonl", "records-000000001234.jsonl",
             "records-000000000200.jsonl", "h.jsonl-20261203.gz", "h.jsonl", "ws-04.jsonl", "ws-04.jsonl.1"]
    assert sorted(names, key=_order) == [
        "h.jsonl-20261203.gz", "h.jsonl", "records-000000000200.jsonl", "records-000000001234.jsonl", "records.jsonl",
        "ws-04.jsonl.1", "ws-04.jsonl", "ws4.jsonl.2.gz", "ws4.jsonl.1.gz", "ws4.jsonl"]
    assert [host_of(n) for n in ("ws4.jsonl.1.gz", "ws-04.jsonl", "h.jsonl-20261203.gz", "laptop")] == [
        "ws4", "ws-04", "h", "laptop"]


def test_the_quick_time_filter_is_within() -> None:
    from ebpfguard.forensics import parse_when, within

    lo, hi = parse_when("2026-12-01T10:00:00Z"), parse_when("2026-12-01T11:00:00Z")
    r = FleetReport(since_ns=lo, until_ns=hi)
    for t in ("2026-12-01T09:59:59.999999999Z", "2026-12-01T10:00:00.000000000Z", "2026-12-01T10:59:59.999999999Z",
              "2026-12-01T11:00:00.000000000Z", "2026-12-01T10:30:00Z", "2026-12-01T10:30:00.5Z", "junk", None):
        rec = {"time": t}
        assert r._within(rec) == within(rec, lo, hi), t

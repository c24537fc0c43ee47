"""Forensic log, event decoding and the trace view, without root."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

from ebpfguard.common.abi import c
from ebpfguard.forensics import FIELDS, GENESIS, BadLine, ForensicLog, read, verify
from ebpfguard.forensics.trace import WIDTH, format_line
from ebpfguard.pipeline.events import decode, rfc3339_ns


def test_log_appends_with_gapless_seq_across_writers(tmp_path: Path) -> None:
    logs = [ForensicLog(tmp_path) for _ in range(4)]

    def write(log: ForensicLog) -> None:
        for i in range(50):
            log.append({"kind": "file", "detail": {"i": i}})

    threads = [threading.Thread(target=write, args=(lg,)) for lg in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recs = [r for r in read(tmp_path) if not isinstance(r, BadLine)]
    assert [r["seq"] for r in recs] == list(range(1, 201))
    assert set(FIELDS) <= set(recs[0])  # every record has every field, null where it does not apply
    assert recs[0]["prev_sha256"] == GENESIS and recs[0]["signature"]
    assert verify(tmp_path).ok, verify(tmp_path)  # four writers, one intact chain


def test_log_continues_after_a_restart_and_reports_bad_lines(tmp_path: Path) -> None:
    ForensicLog(tmp_path).append({"kind": "lifecycle"})
    with open(tmp_path / "forensics" / "records.jsonl", "a") as fh:
        fh.write("not json\n")
    assert ForensicLog(tmp_path).append({"kind": "file"})["seq"] == 2
    out = list(read(tmp_path))
    assert isinstance(out[1], BadLine) and out[1].lineno == 2
    assert (tmp_path / "forensics" / "records.jsonl").stat().st_mode & 0o777 == 0o600


def raw_event(**kw: object) -> SimpleNamespace:
    base = dict(ts_ns=1_000, cgroup_id=7, pid=10, tgid=10, uid=0, slot=1, kind=c("KIND_NETWORK"),
                verdict=c("V_DENIED"), syscall_nr=-1, flags=0, dirfd=0, op=c("NET_CONNECT"), family=6,
                port=443, proto=6, addr=bytes(15) + b"\1", comm=b"curl\0\0", path=b"\0", uptr=0, aux=0, repeats=0)
    base.update(kw)
    return SimpleNamespace(**base)


def test_decode_network_event() -> None:
    ev = decode(raw_event())
    assert ev.kind == "network" and ev.verdict == "denied" and ev.comm == "curl"
    assert ev.detail() == {"op": "connect", "address": "::1", "port": 443, "proto": "tcp"}


def test_decode_file_event_with_flags() -> None:
    ev = decode(raw_event(kind=c("KIND_FILE"), verdict=c("V_PENDING"), syscall_nr=257, op=c("ACC_WRITE"),
                          flags=c("EV_RELATIVE") | c("EV_HELD"), path=b"x.txt\0junk"))
    assert ev.detail() == {"path": "x.txt", "access": "write", "syscall": "openat", "flags": ["relative", "held"]}


def test_rfc3339_has_nanoseconds() -> None:
    assert rfc3339_ns(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"


def test_trace_lines_fit_80_columns() -> None:
    rec = {"time": "2026-11-24T10:00:00.123456789Z", "extension": "a-very-long-extension-name", "pid": 4194304,
           "kind": "file", "verdict": "detected", "detail": {"access": "read", "path": "/x" * 100}}
    line = format_line(rec)
    assert len(line) <= WIDTH and line.startswith("10:00:00.123 a-very-long-ex")
    net = format_line({**rec, "kind": "network", "detail": {"op": "connect", "address": "::1", "port": 9,
                                                             "proto": "tcp"}})
    assert net.endswith("connect [::1]:9/tcp")
    procs = format_line({**rec, "kind": "lifecycle", "verdict": None, "detail": {"event": "processes", "procs": [
        {"pid": 5, "ppid": 1, "exe": "/bin/cat", "exec_ns": 1, "exit": 1, "exit_ns": 2},
        {"pid": 6, "signal": "SIGKILL", "exit_ns": 3}]}})
    assert len(procs) <= WIDTH and "processes 5:/bin/cat=1 6" in procs
    json.dumps(rec)


def test_cgroup_sweep_takes_only_old_empty_unowned_groups(tmp_path: Path) -> None:
    import os
    import time

    from ebpfguard.kernel.cgroups import CgroupManager

    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.procs").write_text("")
    slice_dir = tmp_path / "unified" / "ebpfguard.slice"
    for name in ("old", "young", "busy", "owned"):
        (slice_dir / name).mkdir(parents=True)
    (slice_dir / "busy" / "cgroup.procs").write_text("4242\n")
    old = time.time() - 3600
    for name in ("old", "busy", "owned"):
        os.utime(slice_dir / name, (old, old))
    mgr = CgroupManager(tmp_path)
    owned = os.stat(slice_dir / "owned").st_ino
    assert mgr.sweep({owned}) == ["old"]
    assert sorted(p.name for p in slice_dir.iterdir()) == ["busy", "owned", "young"]

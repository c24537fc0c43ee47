"""Baselines from learn's evidence: what is new, by kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ebpfguard.governance.baseline import Baseline, BaselineError, find
from ebpfguard.governance.learn import Evidence


def evidence() -> Evidence:
    ev = Evidence("/home/ann")
    t = "2026-11-25T10:00:00Z"
    ev.add_record({"kind": "exec", "time": t, "detail": {"path": "/usr/bin/python3", "access": "exec"}})
    ev.add_record({"kind": "file", "time": t, "detail": {"path": "/srv/out/a.html", "access": "write"}})
    ev.add_record({"kind": "network", "time": t, "detail": {"op": "connect", "address": "127.0.0.1", "port": 8080,
                                                             "proto": "tcp"}})
    ev.runs.append({"command": "x", "started": t, "seconds": 1.0, "ending": "exit 0"})
    return ev


def test_what_is_new_to_a_baseline() -> None:
    b = Baseline.from_evidence(evidence(), "x", None, "t")
    assert b.unseen("exec", {"path": "/usr/bin/python3"}) is None
    assert b.unseen("exec", {"path": "/usr/bin/curl"}) == ("executable", "/usr/bin/curl")
    assert b.unseen("file", {"path": "/srv/out/b.html", "access": "write"}) is None  # same folder
    assert b.unseen("file", {"path": "/srv/other/b", "access": "write"}) == ("folder", "/srv/other")
    assert b.unseen("file", {"path": "/etc/hosts", "access": "read"}) is None  # reads are not baselined
    ok = {"op": "connect", "address": "127.0.0.1", "port": 8080, "proto": "tcp"}
    assert b.unseen("network", ok) is None
    assert b.unseen("network", {**ok, "op": "send"}) is None  # a send is a connect rule
    assert b.unseen("network", {**ok, "port": 9090}) == ("destination", "127.0.0.1/32:9090/tcp")


def test_found_by_name_and_version_and_bad_files_are_precise(tmp_path: Path) -> None:
    (tmp_path / "baselines").mkdir()
    assert find(str(tmp_path), "x", "1") is None
    (tmp_path / "baselines" / "x.json").write_text(json.dumps(evidence().as_dict()))
    assert find(str(tmp_path), "x", "1").version is None  # type: ignore[union-attr]
    (tmp_path / "baselines" / "x@2.json").write_text(json.dumps(evidence().as_dict()))
    assert find(str(tmp_path), "x", "2").version == "2"  # type: ignore[union-attr]
    (tmp_path / "baselines" / "y.json").write_text("{}")
    with pytest.raises(BaselineError, match="is not learn evidence"):
        find(str(tmp_path), "y", "1")

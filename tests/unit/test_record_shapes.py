"""The record shapes (forensics/records.py): a typed view with precise errors for what is not a record, and a
table of each kind's fields that catches a field nobody declared (the engine fixtures check every record their
tests wrote against it)."""

from __future__ import annotations

from typing import Any

import pytest

from ebpfguard.errors import ForensicsError
from ebpfguard.forensics.records import DETAIL, ENVELOPE, Kind, Record, undeclared
from ebpfguard.forensics.trace import RECORD_KINDS

GOOD: dict[str, Any] = {"seq": 7, "time": "2026-12-03T10:00:00.000000001Z", "extension": "md-preview",
                        "instance": "md-preview-1", "cgroup_id": 42, "mode": "enforce", "policy_sha256": "ab" * 32,
                        "kind": "file", "pid": 10, "tgid": 10, "uid": 1000, "comm": "cat", "verdict": "denied",
                        "actions": ["eacces:landlock"], "detail": {"path": "/etc/shadow", "access": "read"}}


def test_a_record_reads_back_typed() -> None:
    r = Record.of(GOOD)
    assert r.kind is Kind.FILE and r.seq == 7 and r.actions == ("eacces:landlock",) and r.violation
    assert r.detail["path"] == "/etc/shadow" and r.as_dict() == GOOD and undeclared(GOOD) == []
    life = Record.of({**GOOD, "kind": "lifecycle", "verdict": None, "detail": {"event": "stop"}})
    assert life.event == "stop" and not life.violation


@pytest.mark.parametrize(("change", "message"), [
    ({"kind": "teleport"}, "kind 'teleport' is none of file, exec"),
    ({"seq": "7"}, "seq must be an integer, not '7'"),
    ({"pid": True}, "pid must be an integer"),
    ({"verdict": 3}, "verdict must be a string"),
    ({"actions": "kill"}, "actions must be a list of strings"),
    ({"detail": [1]}, "detail must be an object"),
])
def test_what_is_not_a_record_gets_a_precise_error(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ForensicsError, match=message):
        Record.of({**GOOD, **change})


def test_an_undeclared_field_is_named() -> None:
    assert undeclared({**GOOD, "hostname": "x"}) == ["hostname"]
    assert undeclared({**GOOD, "detail": {"path": "/x", "contents": "..."}}) == ["detail.contents"]
    assert undeclared({**GOOD, "kind": "nope"}) == ["kind='nope'"]


def test_every_kind_is_declared_and_offered_to_the_views() -> None:
    assert set(DETAIL) == set(Kind) and set(RECORD_KINDS) == {str(k) for k in Kind}
    assert {"seq", "prev_sha256", "signature", "kind", "detail"} <= ENVELOPE

"""Correlation rules: parsed with precise errors; sequences complete once, inside their window, in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from ebpfguard.common.resources import data_root
from ebpfguard.pipeline.correlate import CorrelationError, Correlator, load_rules, parse_rules

HOME = "/home/ann"
RULES = """apiVersion: ebpfguard.io/v1
kind: CorrelationRules
rules:
  - name: cred-net
    within: 10s
    response: freeze
    steps:
      - {kind: file, access: [read], path: ["~/.ssh/"]}
      - {kind: network, op: [connect]}
  - name: drop-exec
    within: 60s
    response: kill
    steps:
      - {kind: file, access: [write], path: ["/tmp/"]}
      - {kind: exec, same: path}
"""


def rec(seq: int, kind: str, **detail: object) -> dict[str, object]:
    return {"seq": seq, "kind": kind, "verdict": "allowed", "detail": detail}


def test_a_sequence_completes_once_in_order_and_inside_its_window() -> None:
    c = Correlator(parse_rules(RULES, "t"))
    assert c.feed(1, rec(1, "network", op="connect", address="127.0.0.1", port=80), HOME, now=0) == []
    assert c.feed(1, rec(2, "file", access="read", path=f"{HOME}/.ssh/id_rsa"), HOME, now=1) == []
    assert c.feed(1, rec(3, "file", access="read", path=f"{HOME}/.ssh/id_ed25519"), HOME, now=2) == []
    (m,) = c.feed(1, rec(4, "network", op="connect", address="127.0.0.1", port=80), HOME, now=3)
    assert m.rule.name == "cred-net" and m.seqs == [2, 4]
    assert c.feed(1, rec(5, "network", op="connect", address="127.0.0.1", port=80), HOME, now=4) == []  # once
    c.feed(1, rec(6, "file", access="read", path=f"{HOME}/.ssh/id_rsa"), HOME, now=10)
    assert c.feed(1, rec(7, "network", op="connect"), HOME, now=21) == []  # 11 s later: outside the window
    assert c.feed(2, rec(8, "network", op="connect"), HOME, now=10.5) == []  # another instance: its own


def test_same_path_links_a_written_file_to_its_exec() -> None:
    c = Correlator(parse_rules(RULES, "t"))
    c.feed(1, rec(1, "file", access="write", path="/tmp/x/payload"), HOME, now=0)
    assert c.feed(1, rec(2, "exec", access="exec", path="/tmp/x/other"), HOME, now=1) == []
    (m,) = c.feed(1, rec(3, "exec", access="exec", path="/tmp/x/payload"), HOME, now=2)
    assert m.rule.name == "drop-exec" and m.seqs == [1, 3]


def test_watch_paths_only_where_a_grant_reaches() -> None:
    c = Correlator(parse_rules(RULES, "t"))
    assert c.watch_for({"read": ["/usr/"], "write": [], "exec": []}, HOME) == ()
    assert c.watch_for({"read": [f"{HOME}/"], "write": [], "exec": []}, HOME) == (("read", f"{HOME}/.ssh/"),)
    assert c.watch_for({"read": [], "write": ["/tmp/x/"], "exec": []}, HOME) == (("write", "/tmp/"),)
    assert c.arm_ms == 60000


@pytest.mark.parametrize(("text", "error"), [
    ("kind: Other", "not correlation rules"),
    ("kind: CorrelationRules\nrules: []", "rules must be a non-empty list"),
    ("kind: CorrelationRules\nrules: [{name: a, response: nuke, steps: []}]", "response 'nuke' is not one of"),
    ("kind: CorrelationRules\nrules: [{name: a, steps: [{kind: file, path: [/x]}]}]", "at least two steps"),
    ("kind: CorrelationRules\nrules: [{name: a, steps: [{kind: network}, {kind: file}]}]",
     "the first step must be a file or exec step with paths"),
    ("kind: CorrelationRules\nrules: [{name: a, steps: [{kind: file, path: [x]}, {kind: exec}]}]",
     "must be absolute or start with ~/"),
    ("kind: CorrelationRules\nrules: [{name: a, within: soon, steps: [{kind: file, path: [/x]}, {kind: exec}]}]",
     "within:"),
    ("kind: CorrelationRules\nrules: [{name: a, colour: red, steps: []}]", "unknown field(s) colour"),
    ("kind: CorrelationRules\nrules: [{name: a, steps: [{kind: file, path: [/x]}, {kind: exec, member: [Ping]}]}]",
     "member apply to ipc steps only"),
    ("kind: CorrelationRules\nrules: [{name: a, steps: [{kind: file, path: [/x]}, {kind: ipc, path: [/x]}]}]",
     "an ipc step matches destination"),
    ("kind: CorrelationRules\nrules: [{name: a, steps: [{kind: ipc, member: [X]}, {kind: exec}]}]",
     "the first step must be a file or exec step with paths"),
])
def test_bad_rules_are_named_precisely(text: str, error: str) -> None:
    with pytest.raises(CorrelationError, match=error.replace("(", r"\(").replace(")", r"\)")):
        parse_rules(text, "r.yaml")


def test_the_shipped_rules_load() -> None:
    names = [r.name for r in load_rules([data_root() / "policies" / "correlation"])]
    assert names == ["credential-read-then-network", "written-then-executed", "credential-read-then-dbus"]
    assert Path(data_root() / "policies" / "correlation" / "default.yaml").exists()


DBUS_RULES = """apiVersion: ebpfguard.io/v1
kind: CorrelationRules
rules:
  - name: cred-dbus
    within: 10s
    steps:
      - {kind: file, access: [read], path: ["~/.ssh/"]}
      - {kind: ipc, op: [call], destination: ["org.freedesktop.*", "org.example.Out"],
         not_destination: [org.freedesktop.DBus]}
"""


def dbus(seq: int, dest: str, member: str = "Ping", op: str = "call") -> dict[str, object]:
    return rec(seq, "ipc", bus="session", op=op, destination=dest, interface=dest, member=member, path="/o",
               proxy="passed")


def test_an_ipc_step_matches_destination_patterns_and_leaves_the_bus_itself_out() -> None:
    c = Correlator(parse_rules(DBUS_RULES, "t"))
    assert c.wants("ipc") and not Correlator(parse_rules(RULES, "t")).wants("ipc")
    c.feed(1, rec(1, "file", access="read", path=f"{HOME}/.ssh/id_rsa"), HOME, now=0)
    assert c.feed(1, dbus(2, "org.freedesktop.DBus", "AddMatch"), HOME, now=1) == []  # the bus: not a way out
    assert c.feed(1, dbus(3, "org.other.Svc"), HOME, now=1) == []  # not named
    assert c.feed(1, dbus(4, "org.freedesktop.Notifications", op="signal"), HOME, now=1) == []  # not a call
    (m,) = c.feed(1, dbus(5, "org.freedesktop.Notifications", "Notify"), HOME, now=2)
    assert m.seqs == [1, 5]
    assert m.steps[1]["what"] == "org.freedesktop.Notifications org.freedesktop.Notifications.Notify at /o"

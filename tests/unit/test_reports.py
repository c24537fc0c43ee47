"""The other layers' reports through the one pipeline, without root: Landlock's denial reports, the D-Bus
proxy's log, the cgroup limits' counters, baseline anomalies and correlation rules each become a Report,
judged (decide.judge), acted on and recorded by the same code as a kernel event (Pipeline.conclude).
What is asserted is what the forensic log and the fixture cgroup tree hold afterwards."""

from __future__ import annotations

from typing import Any

import pytest

from ebpfguard.common.abi import Kind, Verdict
from ebpfguard.pipeline.correlate import Correlator, parse_rules
from ebpfguard.pipeline.decide import FREEZE, KILL, LadderState, Report, judge
from ebpfguard.runtime.engine import Engine, Instance
from ebpfguard.testing import ManualClock, raw_event

from .test_pipeline import freezer, killed, manifest, records, sensor, violation

ENVELOPE = ["time", "extension", "instance", "cgroup_id", "mode", "policy_sha256"]
BODY = ["kind", "pid", "tgid", "uid", "comm", "detail", "verdict", "actions"]


def landlock_report(eng: Engine, inst: Instance, path: str, ts_ns: int, blockers: str = "fs.read_file") -> None:
    """A Landlock access report for the instance's domain, as the audit reader passes it on; the instance's
    reads are left to Landlock's reports (as when the launcher restricted it with logging on)."""
    inst.landlock.reports = True
    eng.audit.domains.learn("d1", inst.cgroup_id)
    with eng.log.batch():
        for owner, r in eng.audit.landlock({"domain": "d1", "blockers": blockers, "path": path}, ts_ns):
            eng.pipeline.report(owner, r)


class Proxy:
    """An instance's D-Bus proxy as the engine reads it: the messages its log showed since the last read
    (dbusproxy.LogParser's output; the real proxy is in tests/kernel/test_ipc.py)."""

    def __init__(self, *msgs: dict[str, Any]):
        self.msgs = list(msgs)

    def messages(self) -> list[dict[str, Any]]:
        out, self.msgs = self.msgs, []
        return out


def dbus(proxy: str, member: str = "Ping") -> dict[str, Any]:
    return {"ts_ns": 1_700_000_000_000_000_000, "proxy": proxy, "op": "call", "destination": "org.example.S",
            "path": "/", "interface": "org.example.S", "member": member}


# ---- judge(), pure ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "response", "escalates", "own", "want"), [
    ("enforce", "freeze", True, (), [FREEZE]),          # the kind's response
    ("audit", "freeze", True, (), []),                  # audit mode: recorded only
    ("enforce", "block", False, (KILL,), [KILL]),       # the source's own response, no ladder
    ("audit", "block", False, (KILL,), []),             # ... only in enforce mode
    ("enforce", "freeze", True, (FREEZE,), [FREEZE]),   # asked twice (own and the kind's): done once
    ("enforce", "alert", True, (), []),
])
def test_judge_keeps_the_layers_verdict_and_adds_the_agents_steps(mode: str, response: str, escalates: bool,
                                                                   own: tuple[str, ...], want: list[str]) -> None:
    m = manifest(mode=mode, response={"file": response})
    r = Report("file", "denied", {"path": "/etc/shadow"}, 1, taken=("eacces:landlock",), own=own, escalates=escalates)
    d = judge(r, m, LadderState(mode), 5.0)
    assert d.verdict == "denied" and d.taken == ("eacces:landlock",) and list(d.todo) == want
    assert d.record and d.violation
    assert (d.window is not None) == (escalates and mode == "enforce")  # the window moved


def test_judge_does_nothing_for_an_instance_already_released() -> None:
    m = manifest(response={"file": "kill"})
    d = judge(Report("file", "denied", {}, own=(FREEZE,)), m, LadderState("enforce", live=False), 1.0)
    assert d.todo == () and d.window is None and d.record


# ---- Landlock's reports ------------------------------------------------------------------------------
@pytest.mark.parametrize(("response", "frozen"), [("freeze", True), ("block", False), ("alert", False)])
def test_a_landlock_report_is_a_denied_record_and_feeds_the_ladder(engine: Engine, response: str,
                                                                  frozen: bool) -> None:
    inst = engine.prepare(manifest(response={"file": response}))
    landlock_report(engine, inst, "/etc/shadow", 10**18)
    (rec,) = records(engine)
    assert (rec["kind"], rec["verdict"], rec["pid"]) == ("file", "denied", None)  # a domain, not a process
    assert rec["actions"] == ["eacces:landlock", *([FREEZE] if frozen else [])]
    assert rec["detail"]["path"] == "/etc/shadow" and rec["detail"]["blockers"] == ["fs.read_file"]
    assert (freezer(inst) == "FROZEN") == frozen and inst.violations == 1
    assert ("response_ns" in rec) == frozen


def test_an_identical_landlock_repeat_counts_toward_the_ladder_but_is_not_written_again(engine: Engine,
                                                                                       clock: ManualClock) -> None:
    inst = engine.prepare(manifest(escalation="{window: 60s, kill_after: 3}"))
    for i in range(3):
        landlock_report(engine, inst, "/etc/shadow", 10**18 + i)  # within a second: repeats
        clock.t += 1
    recs = records(engine)
    assert len(recs) == 1 and inst.violations == 3 and inst.landlock.repeats == 2
    assert killed(inst) and inst.state == "killed"
    landlock_report(engine, inst, "/etc/shadow", 10**18 + 2 * 10**9)  # a second later: recorded, carrying them
    assert records(engine)[-1]["detail"]["repeats_suppressed"] == 2


def test_a_network_refusal_landlock_reports_is_a_network_record(engine: Engine) -> None:
    inst = engine.prepare(manifest(quarantine=True))
    eng = engine
    eng.audit.domains.learn("d1", inst.cgroup_id)
    with eng.log.batch():
        for owner, r in eng.audit.landlock({"domain": "d1", "blockers": "net.connect_tcp", "daddr": "127.0.0.1",
                                            "dest": "9"}, 1):
            eng.pipeline.report(owner, r)
    (rec,) = records(eng)
    assert (rec["kind"], rec["detail"]["address"], rec["detail"]["port"]) == ("network", "127.0.0.1", 9)
    assert rec["actions"] == ["eacces:landlock", "quarantine"] and inst.quarantined


def test_a_report_of_another_programs_domain_is_not_recorded(engine: Engine) -> None:
    engine.prepare(manifest())
    engine.audit.domains.learn("other", None)
    assert list(engine.audit.landlock({"domain": "other", "blockers": "fs.read_file", "path": "/x"}, 1)) == []
    assert records(engine) == []


# ---- the D-Bus proxy ------------------------------------------------------------------------------
def test_a_message_the_proxy_refused_is_an_ipc_violation_and_one_it_passed_is_activity(engine: Engine) -> None:
    inst = engine.prepare(manifest(escalation="{window: 60s, freeze_after: 1}"))
    inst.leader_pid = 4242
    inst.proxies["session"] = Proxy(dbus("passed"), dbus("denied", "Steal"))
    seen: list[dict[str, Any]] = []
    engine.observers.subscribers.append(lambda cgid, item: seen.append(item))
    engine.trace_activity(inst, True)
    engine.poll(0)
    (rec,) = records(engine)
    assert (rec["kind"], rec["verdict"], rec["pid"]) == ("ipc", "denied", 4242)
    assert rec["actions"] == ["accessdenied:xdg-dbus-proxy", "cgroup.freeze:escalation(1 in 60s)"]
    assert rec["detail"]["member"] == "Steal" and rec["detail"]["bus"] == "session"
    assert inst.violations == 1 and freezer(inst) == "FROZEN"
    assert [(i["verdict"], i["detail"]["member"]) for i in seen] == [("allowed", "Ping"), ("denied", "Steal")]


# ---- the cgroup limits -----------------------------------------------------------------------------
@pytest.mark.parametrize(("file", "line", "verdict", "action", "resource"), [
    ("memory/memory.oom_control", "oom_kill 2", "killed", "oom-kill:cgroup", "memory"),
    ("pids/pids.events", "max 3", "denied", "eagain:pids.max", "pids"),
])
def test_a_limit_that_contained_the_instance_is_recorded_without_the_ladder(
        engine: Engine, file: str, line: str, verdict: str, action: str, resource: str) -> None:
    inst = engine.prepare(manifest(escalation="{window: 60s, freeze_after: 1}"))
    controller, name = file.split("/")
    (inst.cgroup.v1[controller] / name).write_text(line + "\n")
    engine.check_resources()
    engine.check_resources()  # counted once: only what is new since the last look
    (rec,) = records(engine)
    assert (rec["kind"], rec["verdict"], rec["actions"]) == ("resource", verdict, [action])
    assert rec["detail"]["resource"] == resource and rec["detail"]["count"] == int(line.split()[1])
    assert inst.violations == 1 and freezer(inst) != "FROZEN"  # the limit acted; the ladder adds nothing
    assert not inst.discard  # an OOM kill by the cap is not the agent's kill: a rollback still commits


# ---- baseline anomalies ------------------------------------------------------------------------------
class Baseline:
    def unseen(self, kind: str, d: dict[str, Any]) -> tuple[str, str] | None:
        return ("executable", d["path"]) if kind == "exec" and d.get("path") != "/usr/bin/true" else None

    def describe(self) -> dict[str, Any]:
        return {"from": "test"}


@pytest.mark.parametrize(("mode", "response", "frozen"), [
    ("enforce", "freeze", True), ("enforce", "alert", False), ("audit", "freeze", False)])
def test_an_anomaly_is_an_allowed_record_once_per_value_answered_by_its_response(
        engine: Engine, mode: str, response: str, frozen: bool) -> None:
    engine.observers.anomaly_response = response
    inst = engine.prepare(manifest(mode=mode))
    inst.baseline = Baseline()
    for path in ("/usr/bin/true", "/usr/bin/curl", "/usr/bin/curl"):
        sensor(engine).emit(raw_event(Kind.EXEC, Verdict.ACTIVITY, cgroup_id=inst.cgroup_id, slot=inst.slot,
                                      path=path, op=2))
    engine.poll(0)
    (rec,) = records(engine)
    assert (rec["kind"], rec["verdict"]) == ("anomaly", "allowed")
    assert rec["detail"]["value"] == "/usr/bin/curl" and rec["actions"] == ([FREEZE] if frozen else [])
    assert inst.violations == 0 and (freezer(inst) == "FROZEN") == frozen


# ---- correlation ---------------------------------------------------------------------------------
RULE = """kind: CorrelationRules
rules:
  - name: read-then-connect
    description: a secret read, then a connection
    within: 30s
    response: freeze
    steps:
      - {kind: file, path: [/etc/shadow]}
      - {kind: network}
"""


def test_a_completed_sequence_is_one_correlation_record_naming_its_steps(engine: Engine) -> None:
    engine.observers.correlator = Correlator(parse_rules(RULE, "test"))
    inst = engine.prepare(manifest(escalation="{window: 60s, freeze_after: 3}"))
    sensor(engine).emit(violation(inst, "file", path="/etc/shadow"))
    engine.poll(0)
    sensor(engine).emit(violation(inst, "network", Verdict.DENIED))
    engine.poll(0)
    engine.poll(0)
    recs = records(engine)
    assert [r["kind"] for r in recs] == ["file", "network", "correlation"]
    corr = recs[-1]
    assert corr["detail"]["seqs"] == [recs[0]["seq"], recs[1]["seq"]] and corr["verdict"] == "detected"
    # the rule's freeze and the ladder's (3 violations in the window) are one freeze
    assert corr["actions"] == [FREEZE] and freezer(inst) == "FROZEN" and inst.violations == 3


# ---- one record shape --------------------------------------------------------------------------------
def test_every_action_record_has_the_same_fields(engine: Engine) -> None:
    """One record type, whichever layer reported the action (the log writes keys in canonical order)."""
    inst = engine.prepare(manifest())
    inst.proxies["session"] = Proxy(dbus("denied"))
    sensor(engine).emit(violation(inst, "file"))
    engine.poll(0)
    landlock_report(engine, inst, "/etc/gshadow", 5)
    (inst.cgroup.v1["pids"] / "pids.events").write_text("max 1\n")
    engine.check_resources()
    recs = records(engine)
    assert sorted(r["kind"] for r in recs) == ["file", "file", "ipc", "resource"]
    for r in recs:
        assert set(r) - {"seq", "prev_sha256", "signature", "key_id", "response_ns"} == {*ENVELOPE, *BODY}, r


def test_a_kill_by_the_kernel_marks_the_instance_for_discard_and_a_block_does_not(engine: Engine) -> None:
    inst = engine.prepare(manifest(response={"file": "block", "exec": "kill"}))
    sensor(engine).emit(violation(inst, "file"))
    engine.poll(0)
    assert not inst.discard
    sensor(engine).emit(violation(inst, "exec", Verdict.KILLED))
    engine.poll(0)
    assert inst.discard and records(engine)[-1]["actions"][0] == "sigkill:kernel"

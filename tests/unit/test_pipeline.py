"""The decision pipeline without root: decide() on its own, and the whole path (decode -> resolve ->
decide -> act -> record) through an Engine driven by the in-memory FakeSensor, on a fixture cgroup
tree, with an injected clock. Every response x mode x kind, escalation windows, quarantine, held
processes, the verdicts' truth and when hooks hear of a record."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ebpfguard.common.abi import Access, EvFlag, Kind, LifeOp, NetOp, Verdict
from ebpfguard.forensics import read, verify
from ebpfguard.instance.lineage import LINEAGE_EVERY_S
from ebpfguard.manifest.load import Manifest, parse
from ebpfguard.pipeline.decide import (
    FREEZE,
    KILL,
    QUARANTINE,
    RESUME,
    SIGKILL_AGENT,
    THROTTLE,
    LadderState,
    Policy,
    decide,
)
from ebpfguard.pipeline.events import _MONO_TO_REAL as _MONO
from ebpfguard.pipeline.events import decode
from ebpfguard.pipeline.resolve import Resolution
from ebpfguard.runtime.engine import Engine, Instance
from ebpfguard.sandbox import landlock
from ebpfguard.testing import FakeSensor, ManualClock, raw_event

KINDS = ["file", "exec", "network", "syscall", "privilege"]
RESPONSES = ["alert", "block", "throttle", "freeze", "kill"]


def manifest(*, mode: str = "enforce", response: dict[str, str] | None = None, escalation: str = "",
             quarantine: bool = False, read_: str = "/usr/") -> Manifest:
    resp = dict(response or {})
    lines = [f"    {k}: {v}" for k, v in resp.items()]
    if quarantine:
        lines.append("    quarantine: true")
    if escalation:
        lines.append(f"    escalation: {escalation}")
    text = f"""apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {{name: t, version: "1", publisher: example.org}}
spec:
  mode: {mode}
  filesystem: {{read: [{read_}], write: [], exec: [/usr/bin/true]}}
""" + ("  response:\n" + "\n".join(lines) + "\n" if lines else "")
    return parse(text.encode(), "t.yaml", home="/nonexistent")


def sensor(eng: Engine) -> FakeSensor:
    assert isinstance(eng.sensor, FakeSensor)
    return eng.sensor


def violation(inst: Instance, kind: str, verdict: Verdict = Verdict.DETECTED, **kw: Any) -> Any:
    k = Kind[kind.upper()]
    extra: dict[str, Any] = {}
    if kind in ("file", "exec"):
        extra = {"path": kw.pop("path", "/etc/shadow"), "op": int(Access.EXEC if kind == "exec" else Access.READ)}
    elif kind == "network":
        extra = {"op": int(NetOp.CONNECT), "family": 4, "port": 9, "addr": bytes([127, 0, 0, 1]), "proto": 6}
    else:
        extra = {"syscall_nr": 101}
    extra.update(kw)
    return raw_event(k, verdict, cgroup_id=inst.cgroup_id, slot=inst.slot, **extra)


def records(eng: Engine) -> list[dict[str, Any]]:
    return [r for r in read(eng.state) if isinstance(r, dict) and r.get("kind") != "checkpoint"]


def one(eng: Engine, raw: Any) -> dict[str, Any] | None:
    got: list[dict[str, Any]] = []
    eng.subscribers.append(got.append)
    sensor(eng).emit(raw)
    eng.poll(0)
    eng.subscribers.remove(got.append)
    assert len(got) <= 1
    return got[0] if got else None


def freezer(inst: Instance) -> str:
    p = inst.cgroup.v1["freezer"] / "freezer.state"
    return p.read_text() if p.exists() else "THAWED"


def killed(inst: Instance) -> bool:
    return (inst.cgroup.v2 / "cgroup.kill").exists()


# ---- every response x mode x kind, through the whole pipeline -------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("response", RESPONSES)
@pytest.mark.parametrize("mode", ["audit", "enforce"])
def test_response_mode_kind(engine: Engine, kind: str, response: str, mode: str) -> None:
    inst = engine.prepare(manifest(mode=mode, response={kind: response}))
    # what the kernel reports for it: audit and alert are allowed and recorded; enforce denies where the
    # hook can (network), kills in the kernel on "kill", and leaves the rest detected
    if mode == "audit" or response == "alert":
        kv = Verdict.ALLOWED
    elif response == "kill":
        kv = Verdict.KILLED
    else:
        kv = Verdict.DENIED if kind == "network" else Verdict.DETECTED
    rec = one(engine, violation(inst, kind, kv))
    assert rec is not None and rec["kind"] == kind and rec["verdict"] == kv.label
    want = {"kill": [KILL], "freeze": [FREEZE], "throttle": [THROTTLE]}.get(response, []) if mode == "enforce" else []
    agent = [a for a in rec["actions"] if a in (KILL, FREEZE, THROTTLE)]
    assert agent == want
    assert killed(inst) == (KILL in want)
    assert (freezer(inst) == "FROZEN") == (FREEZE in want)
    assert inst.state == {KILL: "killed", FREEZE: "frozen", THROTTLE: "throttled"}.get(want[0] if want else "", "running")
    if THROTTLE in want:
        assert (inst.cgroup.v1["cpu"] / "cpu.cfs_quota_us").read_text() == "5000"
    if kv == Verdict.KILLED:
        assert rec["actions"][0] == "sigkill:kernel"
    if kv == Verdict.DENIED:
        assert rec["actions"][0] == "eperm:kernel"
    assert inst.violations == 1
    assert ("response_ns" in rec) == bool(want)


# ---- the deciding layer's own actions -----------------------------------------------------------
@pytest.mark.parametrize(("kind", "verdict", "flags", "action"), [
    ("syscall", Verdict.KILLED, EvFlag.SECCOMP, "sigsys:seccomp"),
    ("syscall", Verdict.KILLED, EvFlag.SECCOMP | EvFlag.AT_EXIT, "sigkill:kernel"),
    ("syscall", Verdict.DENIED, EvFlag.SECCOMP | EvFlag.AT_EXIT, "eperm:seccomp"),
    ("file", Verdict.DENIED, EvFlag.LSM, "eacces:lsm"),
    ("exec", Verdict.DENIED, EvFlag.LSM, "eacces:lsm"),
    ("privilege", Verdict.DENIED, EvFlag.LSM, "eperm:lsm"),
    ("network", Verdict.DENIED, EvFlag.QUARANTINE, "eperm:kernel"),
])
def test_kernel_actions_name_the_layer(engine: Engine, kind: str, verdict: Verdict, flags: EvFlag,
                                       action: str) -> None:
    inst = engine.prepare(manifest(response={kind: "block"}))
    rec = one(engine, violation(inst, kind, verdict, flags=flags))
    assert rec is not None and rec["verdict"] == verdict.label and rec["actions"] == [action]


# ---- pending paths, resolved through /proc of a real process ----------------------------------------
@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(["sleep", "60"], cwd="/usr")
    yield p
    p.kill()
    p.wait()


def test_pending_inside_the_rules_is_no_violation_and_the_held_process_resumes(
        engine: Engine, child: subprocess.Popen[bytes]) -> None:
    inst = engine.prepare(manifest())
    os.kill(child.pid, 19)  # as the kernel holds it
    rec = one(engine, violation(inst, "file", Verdict.PENDING, path="bin/env", pid=child.pid,
                                flags=EvFlag.RELATIVE | EvFlag.HELD))
    assert rec is None and records(engine) == []
    assert _state(child.pid) != "T"  # SIGCONT sent
    assert inst.violations == 0


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize(("mode", "response", "verdict"), [
    ("audit", "block", "allowed"), ("enforce", "alert", "allowed"), ("enforce", "block", "detected"),
    ("enforce", "freeze", "detected")])
def test_pending_outside_the_rules(engine: Engine, child: subprocess.Popen[bytes], mode: str, response: str,
                                   verdict: str) -> None:
    inst = engine.prepare(manifest(mode=mode, response={"file": response}))
    rec = one(engine, violation(inst, "file", Verdict.PENDING, path="../etc/./shadow", pid=child.pid,
                                flags=EvFlag.DOTDOT | EvFlag.RELATIVE | EvFlag.HELD))
    assert rec is not None and rec["verdict"] == verdict
    assert rec["detail"]["path"] == "/etc/shadow" and rec["detail"]["raw_path"] == "../etc/./shadow"
    assert RESUME not in rec["actions"]
    assert _state(child.pid) != "T"


def test_a_held_write_reached_by_dotdot_into_the_private_tmp_is_allowed(engine: Engine, tmp_path: Path) -> None:
    """In its own mount namespace an instance's /tmp is its private one (compile's "private" scope): a write
    there reached by a relative path with '..' is resolved in user space, and is no violation."""
    cwd = tmp_path / "w"
    cwd.mkdir()
    child = subprocess.Popen(["sleep", "30"], cwd=cwd)
    try:
        inst = engine.prepare(manifest(response={"file": "block"}))
        up = "../" * len(cwd.parts[1:])
        raw = violation(inst, "file", Verdict.PENDING, path=f"{up}tmp/scratch", pid=child.pid,
                        op=int(Access.WRITE), flags=EvFlag.DOTDOT | EvFlag.RELATIVE | EvFlag.HELD)
        inst.sandbox = {"mount": {"readonly": True, "writable": ["/tmp", "/var/tmp"]}}  # in its own namespace
        assert one(engine, raw) is None and inst.violations == 0
        inst.sandbox = {}  # an adopted process sees the host's /tmp: the same write is a violation
        rec = one(engine, raw)
        assert rec is not None and rec["detail"]["path"] == "/tmp/scratch" and rec["verdict"] == "detected"
    finally:
        child.kill()
        child.wait()


def test_pending_kill_is_killed_only_when_the_kill_landed(engine: Engine, child: subprocess.Popen[bytes]) -> None:
    inst = engine.prepare(manifest(response={"exec": "kill"}))
    rec = one(engine, violation(inst, "exec", Verdict.PENDING, path="./x", pid=child.pid,
                                flags=EvFlag.RELATIVE | EvFlag.HELD))
    assert rec is not None and rec["verdict"] == "killed" and rec["actions"][0] == SIGKILL_AGENT
    assert child.wait(timeout=5) == -9


def test_pending_kill_of_a_gone_process_is_recorded_as_detected_not_killed(engine: Engine) -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    inst = engine.prepare(manifest(response={"exec": "kill"}))
    rec = one(engine, violation(inst, "exec", Verdict.PENDING, path="./x", pid=p.pid,
                                flags=EvFlag.RELATIVE | EvFlag.HELD))
    assert rec is not None and rec["verdict"] == "detected" and SIGKILL_AGENT not in rec["actions"]
    assert "unresolved" in rec["detail"]


def test_a_held_call_whose_process_died_in_a_kill_of_the_instance_is_not_a_violation(engine: Engine) -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    inst = engine.prepare(manifest(response={"file": "block"}))
    inst.state = "killed"  # the ladder killed the cgroup while the kernel held this call for its path
    rec = one(engine, violation(inst, "file", Verdict.PENDING, path="", pid=p.pid,
                                flags=EvFlag.UNREADABLE | EvFlag.HELD))
    assert rec is None and records(engine) == [] and inst.violations == 0
    # the same held call in a live instance is still recorded, with why its path is unknown
    inst.state = "running"
    rec = one(engine, violation(inst, "file", Verdict.PENDING, path="", pid=p.pid,
                                flags=EvFlag.UNREADABLE | EvFlag.HELD))
    assert rec is not None and rec["verdict"] == "detected" and "unresolved" in rec["detail"]


# ---- escalation windows, with the injected clock -------------------------------------------------
def test_freeze_after_n_within_the_window(engine: Engine, clock: ManualClock) -> None:
    inst = engine.prepare(manifest(escalation="{window: 10s, freeze_after: 3}"))
    acts = []
    for _ in range(3):
        rec = one(engine, violation(inst, "file"))
        assert rec is not None
        acts.append(rec["actions"])
        clock.t += 1
    assert acts[:2] == [[], []] and acts[2] == ["cgroup.freeze:escalation(3 in 10s)"]
    assert freezer(inst) == "FROZEN" and inst.state == "frozen"


def test_violations_outside_the_window_do_not_escalate(engine: Engine, clock: ManualClock) -> None:
    inst = engine.prepare(manifest(escalation="{window: 10s, freeze_after: 3}"))
    for _ in range(6):
        rec = one(engine, violation(inst, "file"))
        assert rec is not None and rec["actions"] == []
        clock.t += 6  # at most two inside any 10 s
    assert inst.state == "running" and len(inst.recent) == 2


def test_kill_after_overrides_freeze(engine: Engine, clock: ManualClock) -> None:
    inst = engine.prepare(manifest(escalation="{window: 60s, freeze_after: 2, kill_after: 4}"))
    steps = []
    for _ in range(4):
        rec = one(engine, violation(inst, "network", Verdict.DENIED))
        assert rec is not None
        steps.append([a.split(":")[0] for a in rec["actions"][1:]])
    assert steps == [[], ["cgroup.freeze"], [], ["cgroup.kill"]]
    assert killed(inst) and inst.state == "killed"


def test_audit_mode_never_escalates(engine: Engine) -> None:
    inst = engine.prepare(manifest(mode="audit", escalation="{window: 60s, freeze_after: 1, kill_after: 2}"))
    for _ in range(5):
        rec = one(engine, violation(inst, "file", Verdict.ALLOWED))
        assert rec is not None and rec["actions"] == []
    assert inst.state == "running" and not killed(inst) and inst.violations == 5


def test_suppressed_repeats_count_toward_the_window(engine: Engine) -> None:
    inst = engine.prepare(manifest(escalation="{window: 60s, kill_after: 50}"))
    sensor(engine).repeats[inst.cgroup_id] = 49
    engine.poll(0)
    assert not killed(inst) and inst.violations == 49
    sensor(engine).repeats[inst.cgroup_id] = 50
    engine.poll(0)
    assert killed(inst)
    rec = records(engine)[-1]
    assert rec["detail"] == {"event": "escalation", "repeats": 1} and rec["actions"][0].startswith("cgroup.kill")


def test_thaw_clears_the_window(engine: Engine) -> None:
    inst = engine.prepare(manifest(escalation="{window: 60s, freeze_after: 2}"))
    one(engine, violation(inst, "file"))
    one(engine, violation(inst, "file"))
    assert inst.state == "frozen"
    engine.operator(inst, "thaw")
    assert inst.state == "running" and freezer(inst) == "THAWED" and not inst.recent
    rec = one(engine, violation(inst, "file"))
    assert rec is not None and rec["actions"] == []


# ---- quarantine ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "verdict", "quarantined"), [
    ("network", Verdict.DENIED, True), ("privilege", Verdict.DETECTED, True), ("file", Verdict.DETECTED, False),
    ("exec", Verdict.DETECTED, False), ("syscall", Verdict.DETECTED, False)])
def test_quarantine_on_network_and_privilege(engine: Engine, kind: str, verdict: Verdict, quarantined: bool) -> None:
    inst = engine.prepare(manifest(quarantine=True, response={"privilege": "block"}))
    rec = one(engine, violation(inst, kind, verdict))
    assert rec is not None and (QUARANTINE in rec["actions"]) == quarantined
    assert (inst.cgroup_id in sensor(engine).quarantined) == quarantined == inst.quarantined


def test_quarantine_once_and_lifted_by_hand(engine: Engine) -> None:
    inst = engine.prepare(manifest(quarantine=True))
    one(engine, violation(inst, "network", Verdict.DENIED))
    rec = one(engine, violation(inst, "network", Verdict.DENIED, port=10))
    assert rec is not None and QUARANTINE not in rec["actions"]
    engine.operator(inst, "lift")
    assert inst.cgroup_id not in sensor(engine).quarantined
    assert records(engine)[-1]["detail"] == {"event": "lift", "by": "operator"}


# ---- Landlock's verdict, inferred on the real path -----------------------------------------------
def _ll_state(grants: list[tuple[str, int]]) -> LadderState:
    return LadderState("enforce", landlock_grants=tuple(grants), landlock_handled=landlock.FS["read_file"]
                       | landlock.FS["read_dir"] | landlock.FS["write_file"])


@pytest.mark.parametrize(("real", "aux", "verdict"), [
    ("/etc/shadow", 0, "denied"),           # outside every grant: Landlock refused it
    ("/usr/lib/os-release", 0, "detected"),  # inside a read grant
    ("/etc/shadow", 0o10000000, "detected"),  # O_PATH: Landlock does not check it
])
def test_landlock_denials_are_inferred_on_the_real_path(real: str, aux: int, verdict: str) -> None:
    m = manifest()
    ev = decode(raw_event(Kind.FILE, Verdict.DETECTED, cgroup_id=7, path="/x/link", aux=aux))
    d = decide(ev, Policy(m, "enforce"), _ll_state([("/usr/", landlock.FS["read_file"])]),
               Resolution(real_path=real), 0.0)
    assert d.verdict == verdict and (d.taken == ("eacces:landlock",)) == (verdict == "denied")


@pytest.mark.parametrize(("kind", "access", "path", "real", "verdict"), [
    (Kind.EXEC, Access.EXEC, "/bin/true", "/usr/bin/true", "allowed"),  # merged /usr: the object is on the list
    (Kind.FILE, Access.READ, "/x/link", "/usr/lib/os-release", "allowed"),  # a link to a file inside the rules
    (Kind.FILE, Access.READ, "/x/link", "/etc/shadow", "denied"),     # a link out of them: Landlock refused it
    (Kind.EXEC, Access.EXEC, "/bin/sh", "/usr/bin/dash", "detected"),  # Landlock let it run; not on the list
    (Kind.EXEC, Access.EXEC, "/usr/bin/true", "/usr/bin/true", "detected"),  # on the list: another reason
])
def test_a_string_outside_the_rules_that_leads_inside_them_is_no_violation(
        kind: Kind, access: Access, path: str, real: str, verdict: str | None) -> None:
    from ebpfguard.manifest.compile import compile as compile_manifest

    m = manifest()
    ev = decode(raw_event(kind, Verdict.DETECTED, cgroup_id=7, path=path, op=int(access)))
    st = LadderState("enforce", landlock_grants=(("/usr/", landlock.FS["read_file"] | landlock.FS["execute"]),),
                     landlock_handled=landlock.FS["read_file"] | landlock.FS["execute"])
    d = decide(ev, Policy(m, "enforce", compile_manifest(m, 0)), st, Resolution(real_path=real), 0.0)
    assert d.record == (verdict != "allowed") and d.verdict == verdict, d  # allowed: no violation, no record
    # without Landlock (an adopted process) the string is what the kernel decided on
    d = decide(ev, Policy(m, "enforce", compile_manifest(m, 0)), LadderState("enforce"), Resolution(real_path=real),
               0.0)
    assert d.record and d.verdict == "detected"


@pytest.mark.parametrize("syscall", ["chmod", "fchmodat"])
def test_a_mode_change_is_never_recorded_as_refused_by_landlock(syscall: str) -> None:
    """Landlock does not govern chmod: the call succeeded, so the record must not say denied."""
    from ebpfguard.manifest.syscall_table import SYSCALLS_X86_64

    ev = decode(raw_event(Kind.FILE, Verdict.DETECTED, cgroup_id=7, path="/etc/shadow", op=int(Access.WRITE),
                          syscall_nr=SYSCALLS_X86_64[syscall]))
    d = decide(ev, Policy(manifest(), "enforce"), _ll_state([("/usr/", landlock.FS["read_file"])]),
               Resolution(real_path="/etc/shadow"), 0.0)
    assert d.verdict == "detected" and d.taken == ()


@pytest.mark.parametrize(("real", "verdict"), [
    ("/etc/passwd", "denied"),                 # read-only root
    ("/tmp/scratch", "detected"),              # the private /tmp is writable
    ("/tmp/shared/notes.txt", "denied"),       # a read grant carried into it stays read-only
    ("/tmp/shared/out/log.txt", "detected"),   # a write tree carried below that read grant
    ("/home/u/work/a.txt", "detected"),        # a write tree outside every mask
])
def test_read_only_mounts_decide_by_the_deepest_mount(real: str, verdict: str) -> None:
    ev = decode(raw_event(Kind.FILE, Verdict.DETECTED, cgroup_id=7, path=real, op=int(Access.WRITE)))
    st = LadderState("enforce", mount_writable=("/home/u/work", "/tmp", "/tmp/shared/out"),
                     mount_readonly=("/tmp/shared",))
    d = decide(ev, Policy(manifest(), "enforce"), st, Resolution(real_path=real), 0.0)
    assert d.verdict == verdict and (d.taken == ("erofs:mountns",)) == (verdict == "denied")


def test_no_landlock_no_inference() -> None:
    ev = decode(raw_event(Kind.FILE, Verdict.DETECTED, cgroup_id=7, path="/etc/shadow"))
    d = decide(ev, Policy(manifest(), "enforce"), LadderState("enforce"), Resolution(real_path="/etc/shadow"), 0.0)
    assert d.verdict == "detected" and d.taken == ()


# ---- records, hooks, metrics -----------------------------------------------------------------------
def test_hooks_hear_of_a_record_only_once_it_is_durable(engine: Engine) -> None:
    inst = engine.prepare(manifest())
    seen: list[int] = []
    engine.subscribers.append(lambda r: seen.append(r["seq"]))
    with engine.log.batch():
        sensor(engine).emit(violation(inst, "file"))
        sensor(engine).consume()
        assert seen == [] and engine.log.written == 0
    assert len(seen) == 1 and engine.log.written == 1


def test_metrics_count_durable_records(engine: Engine) -> None:
    inst = engine.prepare(manifest(response={"network": "freeze"}))
    one(engine, violation(inst, "network", Verdict.DENIED))
    violations, actions, buckets, _ = engine.stats.snapshot()
    assert violations == {("t", "network", "denied"): 1}
    assert actions == {"eperm:kernel": 1, "cgroup.freeze": 1} and sum(buckets) == 1


def test_event_of_an_unknown_cgroup_is_not_recorded(engine: Engine) -> None:
    sensor(engine).emit(raw_event(Kind.FILE, Verdict.DETECTED, cgroup_id=12345, slot=63, path="/etc/shadow"))
    engine.poll(0)
    assert records(engine) == []


def _life(inst: Instance, op: LifeOp, pid: int, aux: int, path: str = "", ts_ns: int = 0) -> Any:
    return raw_event(Kind.LIFECYCLE, Verdict.NONE, cgroup_id=inst.cgroup_id, slot=inst.slot, op=int(op), pid=pid,
                     path=path, aux=aux, ts_ns=ts_ns)


def test_execs_and_exits_become_one_processes_record_without_a_verdict_or_the_ladder(
        engine: Engine, clock: ManualClock) -> None:
    inst = engine.prepare(manifest(escalation="{window: 60s, freeze_after: 1}"))
    for pid in (100, 101):
        sensor(engine).emit(_life(inst, LifeOp.EXEC, pid, aux=99, path="/usr/bin/true", ts_ns=pid))
        sensor(engine).emit(_life(inst, LifeOp.EXIT, pid, aux=1 << 8, ts_ns=pid + 10))
    sensor(engine).emit(_life(inst, LifeOp.EXIT, 102, aux=9, ts_ns=200))  # a fork that never ran exec, killed
    engine.poll(0)
    assert records(engine) == []  # gathered, not yet due
    clock.t += LINEAGE_EVERY_S
    engine.poll(0)
    (rec,) = records(engine)
    assert rec["kind"] == "lifecycle" and rec["verdict"] is None and rec["actions"] == [] and inst.violations == 0
    assert inst.state == "running"
    assert rec["detail"]["procs"] == [
        {"pid": 100, "ppid": 99, "exe": "/usr/bin/true", "exec_ns": 100 + _MONO, "exit": 1, "exit_ns": 110 + _MONO},
        {"pid": 101, "ppid": 99, "exe": "/usr/bin/true", "exec_ns": 101 + _MONO, "exit": 1, "exit_ns": 111 + _MONO},
        {"pid": 102, "signal": "SIGKILL", "exit_ns": 200 + _MONO}]


def test_a_violations_lineage_is_on_the_log_before_it_and_the_stop_after_all(engine: Engine) -> None:
    inst = engine.prepare(manifest())
    sensor(engine).emit(_life(inst, LifeOp.EXEC, 100, aux=1, path="/usr/bin/cat"))
    sensor(engine).emit(violation(inst, "file", pid=100))
    sensor(engine).emit(_life(inst, LifeOp.EXIT, 100, aux=0))
    engine.poll(0)
    engine.release(inst)
    recs = records(engine)
    assert [r["detail"].get("event", r["kind"]) for r in recs] == ["processes", "file", "processes", "stop"]
    assert recs[0]["detail"]["procs"][0]["exe"] == "/usr/bin/cat" and recs[2]["detail"]["procs"] == [
        {"pid": 100, "exit": 0, "exit_ns": recs[2]["detail"]["procs"][0]["exit_ns"]}]


def test_record_envelope_and_chain(engine: Engine) -> None:
    inst = engine.prepare(manifest())
    engine.started(inst, os.getpid(), ["/usr/bin/true"], {"layers": []})
    one(engine, violation(inst, "exec", path="/usr/bin/curl"))
    engine.release(inst)
    recs = records(engine)
    assert [r["detail"]["event"] if r["kind"] == "lifecycle" else r["kind"] for r in recs] == ["start", "exec", "stop"]
    for r in recs:
        assert (r["extension"], r["instance"], r["cgroup_id"], r["mode"]) == ("t", inst.id, inst.cgroup_id, "enforce")
        assert r["policy_sha256"] == inst.manifest.sha256
    assert {"seq", "time", "extension", "instance", "cgroup_id"} <= set(recs[1])
    assert recs[2]["detail"]["violations"] == 1
    assert verify(engine.state).ok
    assert (engine.state.policy(inst.manifest.sha256)).read_bytes() == inst.manifest.raw


def test_instances_are_saved_and_forgotten(engine: Engine) -> None:
    inst = engine.prepare(manifest())
    saved = json.loads(engine.state.instance(inst.id).read_text())
    assert saved["id"] == inst.id and saved["manifest_text"] == inst.manifest.raw.decode()
    assert inst.cgroup_id in sensor(engine).slots and str(inst.cgroup.v2) in sensor(engine).attached
    engine.release(inst)
    assert not engine.state.instance(inst.id).exists()
    assert inst.cgroup_id not in sensor(engine).slots and not sensor(engine).attached
    assert sensor(engine).policies == {}


def test_one_slot_per_manifest_and_mode(engine: Engine) -> None:
    m = manifest()
    a, b, c = engine.prepare(m), engine.prepare(m), engine.prepare(m, "audit")
    assert a.slot == b.slot != c.slot and len(engine.slots) == 2
    engine.release(a)
    assert len(engine.slots) == 2
    engine.release(b)
    assert len(engine.slots) == 1


def test_mkdir_of_an_existing_path_is_not_a_refusal(engine: Engine, tmp_path: Path) -> None:
    """`mkdir -p` asks for every parent: one that exists fails with EEXIST before any layer is asked, so
    no record; a folder that does not exist outside the write trees is a violation."""
    inst = engine.prepare(manifest())
    write = int(Access.WRITE)
    assert one(engine, violation(inst, "file", path=str(tmp_path), op=write, syscall_nr=83)) is None
    assert one(engine, violation(inst, "file", path=str(tmp_path / "no" / "x"), op=write, syscall_nr=83)) is None
    rec = one(engine, violation(inst, "file", path=str(tmp_path / "new"), op=write, syscall_nr=83))
    assert rec is not None and rec["detail"]["path"] == str(tmp_path / "new") and rec["detail"]["syscall"] == "mkdir"


def feed_seccomp(eng: Engine, fields: dict[str, str], ts_ns: int) -> None:
    """A seccomp report as the audit reader passes it on (reports.AuditReports.seccomp)."""
    for _, ev in eng.audit.seccomp(fields, ts_ns):
        eng.pipeline.handle(ev)


def test_a_seccomp_report_is_recorded_once_as_the_gate_would_record_it(engine: Engine) -> None:
    inst = engine.prepare(manifest())
    inst.leader_pid, inst.seccomp_reports = 4242, True
    # as the kernel writes it: the action without its errno
    report = {"pid": "4242", "uid": "65534", "comm": "x", "syscall": "101", "code": "0x50000", "arch": "c000003e"}
    with engine.log.batch():
        feed_seccomp(engine, report, 1_700_000_000_000_000_000)
        feed_seccomp(engine, {**report, "syscall": "165", "code": "0x80000000"}, 1)  # a kill: its SIGSYS records it
    (rec,) = [r for r in records(engine) if r["kind"] != "lifecycle"]
    assert (rec["kind"], rec["verdict"], rec["actions"], rec["pid"]) == ("syscall", "denied", ["eperm:seccomp"], 4242)
    assert rec["detail"]["syscall"] == "ptrace" and inst.violations == 1
    with engine.log.batch():
        feed_seccomp(engine, {**report, "syscall": "435"}, 3)  # clone3: ENOSYS, libc falls back to clone
        feed_seccomp(engine, {**report, "syscall": "56"}, 4)  # clone(CLONE_NEWUSER): refused as unshare is
    clone = [r for r in records(engine) if r["kind"] != "lifecycle"][1:]
    assert [(r["kind"], r["detail"]["syscall"]) for r in clone] == [("privilege", "clone")]
    inst.seccomp_reports = False  # the gates record this instance's refusals: not twice
    with engine.log.batch():
        feed_seccomp(engine, report, 2)
    assert len([r for r in records(engine) if r["kind"] != "lifecycle"]) == 2


def test_gates_only_for_what_the_seccomp_filter_does_not_report(engine: Engine) -> None:
    engine.audit.reader = object()  # an audit reader runs
    engine.prepare(manifest(response={"privilege": "alert"}), landlock_reports=True)
    gates = sensor(engine).gates
    # ptrace is refused and reported by seccomp; setuid (alert) is recorded by its gate only; mount is never
    # allowed (killed by seccomp, recorded from its SIGSYS)
    assert "ptrace" not in gates and "setuid" in gates and "mount" not in gates
    engine.prepare(manifest(), launch=False)  # an adoption: no filter of ours
    assert "ptrace" in sensor(engine).gates


def test_rollback_without_landlock_under_bpf_lsm_is_refused_before_anything_runs(engine: Engine,
                                                                                   tmp_path: Path) -> None:
    """The BPF-LSM file hooks would take overlayfs's copy-up opens for the extension's: refused, precisely,
    and the instance's cgroup is gone again."""
    from ebpfguard.errors import EbpfguardError

    (tmp_path / "docs").mkdir()
    text = f"""apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {{name: t, version: "1"}}
spec:
  filesystem: {{read: [/usr/], write: ["{tmp_path}/docs/"], rollback: true}}
"""
    m = parse(text.encode(), "t.yaml", home="/nonexistent")
    sensor(engine).lsm = True
    with pytest.raises(EbpfguardError, match="rollback needs the launcher's Landlock layer"):
        engine.prepare(m, landlocked=False)
    assert not engine.instances
    inst = engine.prepare(m, launch=False)  # adopted processes get no overlay at all
    assert inst.rollback is None

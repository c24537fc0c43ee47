"""The decision pipeline: every action of an instance, from what reported it to its signed record.

    decode   events.py    the ring buffer's struct eg_event -> Event (reports.py: the other layers -> Report)
    resolve  resolve.py   what the kernel left to user space, read from /proc (paths, real paths, lookups)
    decide   decide.py    pure: Event or Report + policy + ladder state -> one Decision
    act      act.py       the Decision's steps applied to cgroups, maps and held processes
    record   record.py    one record shape, chained and signed; hooks hear of it once it is durable

handle() is the kernel's path and report() the other layers'; both end in conclude(), the one place a
Decision is acted on, counted and recorded. Allowed activity leaves the path for observe.py.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Any

from ebpfguard.common.abi import Access, EvFlag, LifeOp, Verdict
from ebpfguard.common.clock import now_ns
from ebpfguard.common.hashing import file_sha256
from ebpfguard.instance.slots import Slots
from ebpfguard.instance.store import Instance, parent_pid
from ebpfguard.manifest.load import Manifest
from ebpfguard.manifest.syscall_table import SYSCALLS_X86_64
from ebpfguard.pipeline.act import Actuator
from ebpfguard.pipeline.decide import RESUME, Decision, LadderState, Policy, Report, decide, judge, settle
from ebpfguard.pipeline.events import Event, Origin
from ebpfguard.pipeline.observe import Observers
from ebpfguard.pipeline.record import Recorder
from ebpfguard.pipeline.resolve import resolve

log = logging.getLogger("ebpfguard")
KILLS = ("sigkill:", "sigsys:")  # a task of the instance killed by a layer or by the agent (sigkill:agent)


class Pipeline:
    def __init__(self, instances: dict[int, Instance], slots: Slots, act: Actuator, recorder: Recorder,
                 observers: Observers, clock: Callable[[], float],
                 saw_process: Callable[[int, int], None] = lambda tgid, cgid: None):
        self.instances = instances
        self.slots = slots
        self.act = act
        self.recorder = recorder
        self.observers = observers
        self.clock = clock
        self.saw_process = saw_process  # (tgid, cgroup id): for reports that come after a process is gone

    def handle(self, ev: Event) -> dict[str, Any] | None:
        """One kernel event, from decoded to recorded."""
        inst = self.instances.get(ev.cgroup_id)
        if ev.kind == "lifecycle":
            return self.process(inst, ev) if inst is not None else None
        if ev.verdict == Verdict.ACTIVITY.label:  # allowed, and someone watches: a stream, not a record
            if inst is not None:
                self.observers.allowed(inst, ev, ev.detail())
            return None
        policy = self.policy(inst, ev)
        if policy is None:
            log.warning("event from unknown cgroup %d (pid %d): %s", ev.cgroup_id, ev.pid, ev.detail())
            return None
        try:
            res = resolve(ev, landlocked=bool(inst and inst.landlock.grants))
            d = decide(ev, policy, self.ladder_state(inst), res, self.clock())
        except BaseException:
            if ev.has(EvFlag.HELD):
                self.act.resume(ev.tgid)  # never leave a process stopped for a decision nobody made
            raise
        rec = self.conclude(inst, ev, d, policy.manifest, policy.mode)
        if inst is not None and inst.cgroup_id in self.observers.traced and d.verdict == Verdict.ALLOWED.label \
                and not d.record:  # inside the rules once resolved: activity for a tracer
            self.observers.stream(inst, ev, {**ev.detail(), "path": res.path or ev.path}, d.verdict)
        return rec

    def report(self, inst: Instance, r: Report) -> dict[str, Any] | None:
        """What another layer reported for an instance, from its Report to recorded."""
        if not (r.record or r.violation):  # let through: activity
            self.observers.allowed(inst, r, r.detail)
            return None
        return self.conclude(inst, r, judge(r, inst.manifest, self.ladder(inst), self.clock()),
                             inst.manifest, inst.mode)

    def conclude(self, inst: Instance | None, origin: Origin, d: Decision, m: Manifest,
                 mode: str) -> dict[str, Any] | None:
        """Act on a Decision, count it toward the instance's ladder, and record it (if it is a record)."""
        done = self.act.apply(inst, d.todo, origin.tgid or (inst.leader_pid if inst else None) or 0)
        agent = [s for s in done if s != RESUME]
        verdict = settle(d, done)
        if inst is not None:
            if d.window is not None:
                inst.recent = deque(d.window)
            inst.violations += d.violation
            inst.shadow_denials += d.verdict == Verdict.SHADOW.label
            if any(a.startswith(KILLS) for a in (*d.taken, *done)):
                inst.discard = True  # what it changed is rolled back (rollback.py), if its manifest asks
        if not d.record:
            return None
        ts = origin.ts_ns
        return self.recorder.event(inst, origin, verdict, d.detail, [*d.taken, *agent], manifest=m, mode=mode,
                                   response_ns=max(0, now_ns() - ts) if agent and inst and ts else None)

    def process(self, inst: Instance, ev: Event) -> dict[str, Any] | None:
        """An exec or exit in the instance: its lineage. An exec of code in the extension's signed folder that
        its publisher did not sign is an exec violation."""
        self.saw_process(ev.tgid, ev.cgroup_id)
        if ev.op == LifeOp.EXEC and not ev.aux:  # forked before it joined the cgroup: the launcher's child
            ev.aux = (inst.leader_ppid if ev.tgid == inst.leader_pid else None) or parent_pid(ev.tgid) or 0
        self.recorder.process(inst, ev, self.clock())
        if ev.op == LifeOp.EXEC and inst.files_dir and (why := unsigned_exec(inst, ev.path)) is not None:
            return self.handle(dataclasses.replace(
                ev, kind="exec", verdict=Verdict.DETECTED.label, op=int(Access.EXEC), flags=0,
                syscall_nr=SYSCALLS_X86_64["execve"], extra=why))
        return None

    def policy(self, inst: Instance | None, ev: Event) -> Policy | None:
        """The policy an event ran under: its instance's, or its slot's (an instance not this engine's)."""
        if inst is None and self.recorder.after_restart(ev.ts_ns):
            return None  # written under an earlier agent's slot numbers: not this engine's to judge
        slot = self.slots.get(ev.slot)
        if inst is None and slot is None:
            return None
        m = inst.manifest if inst else slot.manifest if slot else None
        mode = inst.mode if inst else slot.mode if slot else None
        assert m is not None and mode is not None
        return Policy(m, mode, slot.compiled if slot else None, slot.shadow.manifest if slot and slot.shadow else None)

    def ladder_state(self, inst: Instance | None) -> LadderState | None:
        return None if inst is None else self.ladder(inst)

    def ladder(self, inst: Instance) -> LadderState:
        """What a decision needs of the instance (decide.LadderState)."""
        mount = inst.sandbox.get("mount") or {}
        writable = tuple(mount.get("writable") or ()) if mount.get("readonly") else None
        return LadderState(inst.mode, inst.state, inst.quarantined, tuple(inst.recent), tuple(inst.landlock.grants),
                           inst.landlock.handled, live=inst.cgroup_id in self.instances, mount_writable=writable,
                           mount_readonly=tuple(mount.get("readonly_within") or ()))

    def repeats(self, inst: Instance, count: int, todo: list[str], window: tuple[float, ...] | None) -> list[str]:
        """Identical repeats the kernel counted but did not record: violations for the ladder (decide.repeats
        gave their steps); recorded only if a step was done."""
        if window is not None:
            inst.recent = deque(window)
        inst.violations += count
        done = self.act.apply(inst, todo, inst.leader_pid or 0)
        if done:
            self.recorder.lifecycle(inst, "escalation", repeats=count, actions=done)
        return done


def unsigned_exec(inst: Instance, path: str) -> dict[str, Any] | None:
    """An exec of a file in the extension's signed folder that is not as its publisher signed it: why, or None.
    The file is hashed as it is now (a script's interpreter is not in the folder; the script is)."""
    base = inst.files_dir.rstrip("/") + "/"
    if not path.startswith(base):
        return None
    rel = os.path.normpath(path[len(base):])
    want = inst.signed_files.get(rel)
    try:
        got: str | None = file_sha256(path)
    except OSError:
        got = None
    if want is not None and got == want:
        return None
    return {"signed": {"folder": inst.files_dir, "file": rel, "sha256": got, "signed_sha256": want,
                       "reason": "not in the signed file list" if want is None else "changed since it was signed"}}

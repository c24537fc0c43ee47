"""What the agent makes of allowed activity and of durable records, beside the verdicts: the live activity
stream (``trace --activity``), baseline anomalies (baseline.py) and sequence rules (correlate.py). Each
finding is a Report handed back to the pipeline (``conclude``), which decides, acts and records it like any
other; nothing here acts or writes on its own.

An origin is what an action came from: a kernel Event, or a Report (a D-Bus message the proxy passed).
Both carry kind, ts_ns, pid, tgid and comm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ebpfguard.common.abi import Verdict
from ebpfguard.common.clock import now_ns, rfc3339_ns
from ebpfguard.forensics.records import Kind, Record
from ebpfguard.instance.store import Instance
from ebpfguard.pipeline.correlate import KINDS, Correlator
from ebpfguard.pipeline.decide import FREEZE, KILL, QUARANTINE, Report
from ebpfguard.pipeline.events import Origin
from ebpfguard.pipeline.record import Recorder

RESPONSE_STEPS = {"freeze": (FREEZE,), "kill": (KILL,), "quarantine": (QUARANTINE,)}


Subscriber = Callable[[int, dict[str, Any]], None]  # (cgroup id, activity item)


class Observers:
    def __init__(self, instances: dict[int, Instance], recorder: Recorder,
                 conclude: Callable[[Instance, Report], Any]):
        self.instances = instances
        self.recorder = recorder
        self.conclude = conclude
        self.traced: set[int] = set()  # cgroup ids whose activity streams (trace --activity)
        self.subscribers: list[Subscriber] = []
        self.correlator: Correlator | None = None
        self.anomaly_response = "alert"  # alert | freeze | kill: what an anomaly makes the agent do
        self._queue: list[tuple[int, dict[str, Any]]] = []  # durable records for the correlator
        self._step_seqs: set[int] = set()  # records written as a completed sequence's steps: fed already

    # ---- allowed activity --------------------------------------------------------------------------
    def allowed(self, inst: Instance, origin: Origin, detail: dict[str, Any]) -> None:
        """An action the layers let through: a line for a tracer, an anomaly if its baseline never saw it, a
        step the sequence rules may be waiting for (recorded only if a sequence completes)."""
        if inst.cgroup_id in self.traced:
            self.stream(inst, origin, detail, Verdict.ALLOWED.label)
        if inst.baseline is not None:
            self._anomaly(inst, origin, detail)
        if self.correlator is not None and self.correlator.wants(origin.kind):
            item = {"kind": origin.kind, "detail": detail, "verdict": Verdict.ALLOWED.label, "seq": None,
                    "time": rfc3339_ns(origin.ts_ns or now_ns()), "tgid": origin.tgid, "_event": origin}
            for match in self.correlator.feed(inst.cgroup_id, item, inst.manifest.home):
                self._correlation(inst, match, item)

    def stream(self, inst: Instance, origin: Origin, detail: dict[str, Any], verdict: str | None) -> None:
        item = {"time": rfc3339_ns(origin.ts_ns or now_ns()), "extension": inst.manifest.name, "instance": inst.id,
                "pid": origin.tgid, "tid": origin.pid, "comm": origin.comm, "kind": origin.kind, "verdict": verdict,
                "detail": detail}
        for sub in list(self.subscribers):
            sub(inst.cgroup_id, item)

    def _anomaly(self, inst: Instance, origin: Origin, detail: dict[str, Any]) -> None:
        """An allowed action its baseline never saw: one anomaly record per instance and value."""
        new = inst.baseline.unseen(origin.kind, detail)
        if new is None or new in inst.anomalies:
            return
        inst.anomalies.add(new)
        what, value = new
        self.conclude(inst, Report(
            "anomaly", Verdict.ALLOWED.label, {"what": what, "value": value, "action": {"kind": origin.kind, **detail},
                                               "baseline": inst.baseline.describe(),
                                               "response": self.anomaly_response},
            origin.ts_ns, origin.tgid, origin.comm, own=RESPONSE_STEPS.get(self.anomaly_response, ()),
            escalates=False, violation=False))

    # ---- records ------------------------------------------------------------------------------------
    def durable(self, raw: dict[str, Any]) -> None:
        """A record made durable: activity for a tracer of its instance; queued for the correlator (fed after
        the poll's group commit, so that the records a match names are on disk)."""
        rec = Record.of(raw)  # built by the record module: always one (a ForensicsError here is a defect)
        cgid = rec.cgroup_id
        if self.traced and cgid in self.traced and _streamed(rec):
            item = {"time": rec.time, "extension": rec.extension, "instance": rec.instance,
                    "pid": rec.tgid or rec.pid, "tid": rec.pid, "comm": rec.comm, "kind": str(rec.kind),
                    "verdict": rec.verdict, "detail": raw.get("detail"), "seq": rec.seq}
            for sub in list(self.subscribers):
                sub(cgid, item)
        if self.correlator is not None and rec.kind in KINDS:
            if rec.seq in self._step_seqs:  # a step of a sequence already complete
                self._step_seqs.discard(rec.seq)
            elif cgid is not None and cgid in self.instances:
                self._queue.append((cgid, raw))

    def correlate(self) -> None:
        """Feed the queued durable records to the sequence rules."""
        if self.correlator is None or not self._queue:
            return
        queue, self._queue = self._queue, []
        for cgid, rec in queue:
            inst = self.instances.get(cgid)
            if inst is not None:
                for match in self.correlator.feed(cgid, rec, inst.manifest.home):
                    self._correlation(inst, match, rec)

    def _correlation(self, inst: Instance, match: Any, last: dict[str, Any]) -> None:
        """A completed sequence: its allowed steps, kept until now, are recorded first (verdict allowed: they
        were), then one correlation Report naming them all, answered by the rule's response and the ladder."""
        rule = match.rule
        for i, step in enumerate(match.steps):
            origin = step.pop("_event", None)
            if match.seqs[i] is None and origin is not None:
                rec = self.recorder.event(inst, origin, Verdict.ALLOWED.label, step["detail"], [],
                                          manifest=inst.manifest, mode=inst.mode)
                match.seqs[i] = step["seq"] = rec.get("seq") if rec else None
                if rec is not None:
                    self._step_seqs.add(int(rec["seq"]))
            step.pop("detail", None)
        pid = last.get("tgid") or last.get("pid") or inst.leader_pid
        self.conclude(inst, Report(
            "correlation", Verdict.DETECTED.label,
            {"rule": rule.name, "description": rule.description, "seqs": match.seqs, "steps": match.steps,
             "within_s": rule.within, "response": rule.response}, None, int(pid) if pid else None,
            own=RESPONSE_STEPS.get(rule.response, ())))

    def trace(self, inst: Instance, on: bool) -> None:
        (self.traced.add if on else self.traced.discard)(inst.cgroup_id)

    def forget(self, cgroup_id: int) -> None:
        self.traced.discard(cgroup_id)
        if self.correlator is not None:
            self.correlator.forget(cgroup_id)


def _streamed(rec: Record) -> bool:
    """Which durable records a tracer sees: refused, shadow and detected actions, and an instance's start
    and stop; not checkpoints, policy records or the other lifecycle records."""
    if rec.kind in (Kind.CHECKPOINT, Kind.POLICY):
        return False
    return rec.kind != Kind.LIFECYCLE or rec.event in ("start", "stop")

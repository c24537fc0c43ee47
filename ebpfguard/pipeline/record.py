"""Stage 5, record: every forensic record the engine writes is shaped here, in one envelope (which
extension, instance, cgroup, mode and policy), then chained, signed and made durable by the log.
Whoever wants records (the forwarder, live trace, metrics) hooks ``log.durable`` and hears of each
one once it is fsync'd, never before.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ebpfguard.common.abi import LifeOp
from ebpfguard.common.clock import now_ns, rfc3339_ns
from ebpfguard.errors import EbpfguardError
from ebpfguard.forensics import ForensicLog
from ebpfguard.instance.store import Instance
from ebpfguard.manifest.load import Manifest
from ebpfguard.pipeline.events import Event, Origin
from ebpfguard.sandbox.rollback import Layer, instance_user

log = logging.getLogger("ebpfguard")


class Recorder:
    def __init__(self, forensic_log: ForensicLog):
        self.log = forensic_log
        self.errors = 0  # records that could not be written (besides the log's own count)
        # an agent back after it was killed: what the kernel wrote before this moment (wall clock, ns) was read
        # after the restart, and its records say so
        self.unread_before_ns: int | None = None
        self.read_after_restart = 0

    def after_restart(self, ts_ns: int | None) -> bool:
        """Did the kernel write this (an Event's wall-clock time) while no agent read the ring buffer?"""
        return self.unread_before_ns is not None and ts_ns is not None and ts_ns < self.unread_before_ns

    def write(self, inst: Instance | None, body: dict[str, Any], *, manifest: Manifest | None = None,
              mode: str | None = None, cgroup_id: int | None = None,
              extension: str | None = None) -> dict[str, Any] | None:
        """The envelope, then ``body`` (kind, pid, detail, verdict, actions...): the one place a record is made
        (its fields: forensics/records.py)."""
        if inst is not None and inst.lineage and body.get("detail", {}).get("event") != "processes":
            self.lineage(inst)  # the processes behind this record are on the log before it
        m = inst.manifest if inst else manifest
        rec = {"time": rfc3339_ns(now_ns()), "extension": m.name if m else extension,
               "instance": inst.id if inst else None, "cgroup_id": inst.cgroup_id if inst else cgroup_id,
               "mode": inst.mode if inst else mode, "policy_sha256": m.sha256 if m else None, **body}
        try:
            return self.log.append(rec)
        except EbpfguardError as err:
            self.errors += 1
            log.error("%s", err)
            return None

    def flag(self, extension: str, flagged: bool, reason: str, by: str) -> dict[str, Any] | None:
        """An administrator's flag on an extension (provenance.py reads it back), or its clearing."""
        return self.write(None, {"kind": "policy", "pid": None, "verdict": None, "actions": [],
                                 "detail": {"event": "flagged" if flagged else "unflagged", "name": extension,
                                            "reason": reason, "by": by}}, extension=extension)

    def policy(self, m: Manifest, event: str, *, verdict: str | None = None, actions: list[str] | None = None,
               mode: str | None = None, **detail: Any) -> dict[str, Any] | None:
        """What became of a policy: loaded, rejected or promoted in the policy folder, a launch refused for its
        signature."""
        return self.write(None, {"kind": "policy", "pid": None, "verdict": verdict, "actions": actions or [],
                                 "detail": {"event": event, "name": m.name, "version": m.version, **detail}},
                          manifest=m, mode=mode or m.mode)

    def event(self, inst: Instance | None, origin: Origin, verdict: str | None, detail: dict[str, Any],
              actions: list[str], *, manifest: Manifest | None, mode: str | None,
              response_ns: int | None = None) -> dict[str, Any] | None:
        """The record of one action, from the kernel (an Event) or another layer (a decide.Report)."""
        if self.after_restart(origin.ts_ns):
            detail = {**detail, "read_after_restart": True}
            self.read_after_restart += 1
        body: dict[str, Any] = {"kind": origin.kind, "pid": origin.pid, "tgid": origin.tgid, "uid": origin.uid,
                                "comm": origin.comm, "detail": detail, "verdict": verdict, "actions": actions}
        if origin.ts_ns is not None:
            body["time"] = rfc3339_ns(origin.ts_ns)
        if response_ns is not None:
            body["response_ns"] = response_ns  # detection to action done
        return self.write(inst, body, manifest=manifest, mode=mode, cgroup_id=origin.cgroup_id)

    def lifecycle(self, inst: Instance, event: str, *, actions: list[str] | None = None,
                  pid: int | None = None, comm: str | None = None, **detail: Any) -> dict[str, Any] | None:
        """start, stop, adopted, readopted, escalation, and what an operator asked for."""
        pid = inst.leader_pid if pid is None else pid
        body: dict[str, Any] = {"kind": "lifecycle", "pid": pid, "tgid": pid, "detail": {"event": event, **detail},
                                "verdict": None, "actions": actions or []}
        if comm is not None:
            body["comm"] = comm
        return self.write(inst, body)

    def process(self, inst: Instance, ev: Event, now: float) -> None:
        """A kernel exec or exit event: gathered into the instance's lineage, not a record of its own."""
        if ev.op == LifeOp.EXEC:
            inst.lineage.exec(ev.tgid, int(ev.aux), ev.path, ev.ts_ns, now)
        else:
            inst.lineage.exit(ev.tgid, int(ev.aux), ev.ts_ns, now)
        if inst.lineage.due(now):
            self.lineage(inst)

    def lineage(self, inst: Instance) -> dict[str, Any] | None:
        """One ``processes`` record of what the instance's lineage gathered (lineage.py)."""
        procs = inst.lineage.take()
        if not procs:
            return None
        return self.write(inst, {"kind": "lifecycle", "pid": inst.leader_pid, "tgid": inst.leader_pid,
                                 "detail": {"event": "processes", "procs": procs}, "verdict": None, "actions": []})


KEPT_RUNNING = ("the instance was still running when the agent stopped: `ebpfguard rollback list` offers it for "
                "commit or discard")


def finish_rollback(layer: Layer, choice: str, recorder: Recorder, kept: Path, inst: Instance | None = None,
                    by: str | None = None, why: str = KEPT_RUNNING,
                    sandbox: dict[str, Any] | None = None) -> dict[str, Any]:
    """commit, discard, or keep (``keep``: the instance was still running when the agent stopped, or ended while
    none ran: ``why``) a rollback area, and write its record (kind ``rollback``). Returns the record's detail. The
    commit takes the rights of the user the instance ran as (its launcher said whom: ``sandbox``, the instance's by
    default), saved in the area when it is kept for later."""
    user = instance_user(inst.sandbox if inst else sandbox or {}) if inst or sandbox else None
    if choice == "commit":
        detail = layer.commit(kept, user)
    elif choice == "discard":
        detail = layer.discard(user)
    else:
        if user is not None:
            layer.remember(user)
        detail = {**layer.show(), "event": "kept", "why": why}
        detail.pop("instance", None)
    detail = {**detail, "trees": [t.target for t in layer.trees]}
    if by:
        detail["by"] = by
    pid = inst.leader_pid if inst else None
    body: dict[str, Any] = {"kind": "rollback", "pid": pid, "tgid": pid, "verdict": None, "actions": [],
                            "detail": detail}
    if inst is None:  # an instance gone with an earlier agent: named from its rollback area
        body["instance"], body["extension"] = layer.instance, layer.meta.get("extension")
    recorder.write(inst, body)
    conflicts = detail.get("conflicts") or []
    log.log(logging.WARNING if choice == "discard" or conflicts else logging.INFO,
            "rollback %s: %s, %d change(s)%s", layer.instance, detail["event"], detail.get("count", 0),
            f", {len(conflicts)} kept as the user left them" if conflicts else "")
    return detail

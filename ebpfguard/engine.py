"""The engine: one sensor, the policy slots in its maps, the running instances, and the pipeline each
kernel event goes through. Read handle() first: it is the whole path of a violation.

    decode   events.py    the ring buffer's struct eg_event -> Event
    resolve  resolve.py   what the kernel left pending, read from /proc (paths, real paths)
    decide   decide.py    pure: Event + policy + ladder state -> Decision
    act      act.py       apply the Decision's steps to cgroups, maps and held processes
    record   record.py    one envelope, chained and signed; log.durable hooks hear of it once fsync'd

The agent and a standalone ``ebpfguard run`` both drive an Engine; it is single-threaded: callers
call poll() in their loop.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from .act import Actuator
from .cgroups import CgroupManager, resource_events, set_limits
from .clock import now_ns, rfc3339_ns
from .correlate import KINDS, Correlator
from .decide import FREEZE, KILL, QUARANTINE, RESUME, LadderState, Policy, decide, ladder, repeats, settle
from .errors import EbpfguardError
from .events import SYSCALL_NAMES, Event, decode
from .forensics import ForensicLog
from .hashing import file_sha256
from .instances import Instance, InstanceStore, alive, cmdline, parent_pid, process_tree
from .kernel.abi import Access, EvFlag, LifeOp, Verdict, c
from .llreport import DomainMap, Repeats, blockers_of, detail_of, errno_of, kind_of, ours
from .manifest.load import Manifest
from .manifest.syscall_table import SYSCALLS_X86_64
from .record import Recorder
from .resolve import resolve
from .rollback import Layer, finish, pending
from .sandbox import landlock, seccomp_denied
from .sensor import SensorLike
from .slots import Slots
from .statedir import StateDir
from .stats import Stats

log = logging.getLogger("ebpfguard")
MAKE_SYSCALLS = frozenset({"mkdir", "mkdirat", "mknod", "mknodat"})
PID_MEMORY = 8192  # processes whose cgroup the engine remembers after their exec or exit
SECCOMP_RET_ACTION_FULL, SECCOMP_RET_ERRNO = 0xFFFF0000, 0x00050000
OVER_SHARE_EVERY_S = 1.0  # at most one over-share record a second per instance (and one at its stop)
OVER_SHARE_RECORDS = c("CG_SHARE")  # records one cgroup may hold in the ring buffer at once


class Engine:
    def __init__(self, state_dir: str | os.PathLike[str] | StateDir, *, sensor: SensorLike | None = None,
                 cgroups: CgroupManager | None = None, log: ForensicLog | None = None,
                 clock: Callable[[], float] = time.monotonic, bus_addresses: dict[str, str] | None = None,
                 landlock_audit: bool | None = None):
        """``landlock_audit``: record Landlock's own denial reports (kernel/laudit.py); by default
        where the kernel has them (Landlock ABI 7+) and the sensor is the real one."""
        self.state = StateDir.of(state_dir)
        self.state_dir = str(self.state)
        sensor_is_real = sensor is None
        if sensor is None:
            from .kernel.loader import Sensor  # noqa: PLC0415 - keep bcc out of pure imports

            sensor = Sensor()
        self.sensor: SensorLike = sensor
        self.cgroups = cgroups or CgroupManager()
        self.log = log or ForensicLog(self.state)
        self.clock = clock
        self.bus_addresses = dict(bus_addresses or {})  # bus -> address; default: the user's own
        self.slots = Slots(self.sensor, self.state)
        self.store = InstanceStore(self.state)
        self.instances: dict[int, Instance] = {}
        self.act = Actuator(self.sensor)
        self.recorder = Recorder(self.log)
        self.stats = Stats()
        self.handle_errors = 0
        self.traced: set[int] = set()  # cgroup ids whose activity streams (trace --activity)
        self.correlator: Correlator | None = None  # sequence rules (correlate.py), evaluated per instance
        self.baseline_for: Callable[[Manifest], Any] | None = None  # a manifest's baseline (baseline.find)
        self.anomaly_response = "alert"  # alert | freeze | kill: what an anomaly makes the agent do
        self._correlate_queue: list[tuple[int, dict[str, Any]]] = []
        self._step_seqs: set[int] = set()  # records written as a completed sequence's steps: fed already
        self.activity_subscribers: list[Callable[[int, dict[str, Any]], None]] = []  # (cgroup id, item)
        self.rollback_root = self.state.rollback  # where the rollback overlays' upper layers live (tmpfs in tests)
        self.log.durable.append(self.stats.observe)
        self.log.durable.append(self._activity_of_record)
        self.log.durable.append(self._queue_correlation)
        self.sensor.open_events(self._on_raw)
        self.laudit: Any = None
        self.laudit_status = "off"
        self.domains = DomainMap()
        self.landlock_repeats = Repeats()
        self._pid_cgroup: OrderedDict[int, int] = OrderedDict()  # pid -> cgroup id, from execs and exits
        self._laudit_checked = 0.0
        if landlock_audit is None:
            landlock_audit = sensor_is_real and landlock.abi() >= 7
        if landlock_audit:
            from .errors import KernelError  # noqa: PLC0415
            from .kernel.laudit import LandlockAudit  # noqa: PLC0415

            try:
                self.laudit = LandlockAudit()
                self.laudit_status = "on"
            except KernelError as err:
                self.laudit_status = f"unavailable: {err}"
                logging.getLogger("ebpfguard").warning(
                    "Landlock's denials are not recorded from its own reports: %s", err)

    @property
    def subscribers(self) -> list[Callable[[dict[str, Any]], None]]:
        """Hooks that hear of each record once it is durable (the log's own list)."""
        return self.log.durable

    @property
    def record_errors(self) -> int:
        return self.recorder.errors + self.handle_errors

    # ---- the pipeline -----------------------------------------------------------------------------
    def _on_raw(self, raw: Any) -> None:
        try:
            self.handle(decode(raw))
        except Exception:  # an exception must not vanish inside the ring-buffer callback
            self.handle_errors += 1
            log.exception("failed to handle a kernel event")

    def handle(self, ev: Event) -> dict[str, Any] | None:
        """One kernel event, from decoded to recorded."""
        inst = self.instances.get(ev.cgroup_id)
        if inst is not None and ev.kind == "lifecycle":
            self._pid_cgroup[ev.tgid] = ev.cgroup_id  # for reports about a process that is gone
            if len(self._pid_cgroup) > PID_MEMORY:
                self._pid_cgroup.popitem(last=False)
            if ev.op == LifeOp.EXEC and not ev.aux:  # forked before it joined the cgroup: the launcher's child
                ev.aux = (inst.leader_ppid if ev.tgid == inst.leader_pid else None) or parent_pid(ev.tgid) or 0
            self.recorder.process(inst, ev, self.clock())
            if ev.op == LifeOp.EXEC and inst.files_dir and (why := unsigned_exec(inst, ev.path)) is not None:
                # code in the extension's signed folder that its publisher did not sign: an exec violation
                return self.handle(dataclasses.replace(
                    ev, kind="exec", verdict=Verdict.DETECTED.label, op=int(Access.EXEC), flags=0,
                    syscall_nr=SYSCALLS_X86_64["execve"], extra=why))
            return None
        if ev.verdict == Verdict.ACTIVITY.label:  # allowed, and someone traces it: a stream, not a record
            if inst is None:
                return None
            if inst.cgroup_id in self.traced:
                self._activity(inst, ev, ev.detail(), "allowed")
            detail = ev.detail()
            if inst.baseline is not None:
                self._anomaly(inst, ev, detail)
            if self.correlator is not None:  # allowed steps are kept, and recorded only if a sequence completes
                item = {"kind": ev.kind, "detail": detail, "verdict": Verdict.ALLOWED.label, "seq": None,
                        "time": rfc3339_ns(ev.ts_ns), "tgid": ev.tgid, "_event": ev}
                for match in self.correlator.feed(inst.cgroup_id, item, inst.manifest.home):
                    self._correlation(inst, match, item)
            return None
        slot = self.slots.get(ev.slot)
        if inst is None and slot is None:
            log.warning("event from unknown cgroup %d (pid %d): %s", ev.cgroup_id, ev.pid, ev.detail())
            return None
        m = inst.manifest if inst else slot.manifest if slot else None
        mode = inst.mode if inst else slot.mode if slot else None
        assert m is not None and mode is not None
        policy = Policy(m, mode, slot.compiled if slot else None,
                        slot.shadow.manifest if slot and slot.shadow else None)
        try:
            res = resolve(ev, landlocked=bool(inst and inst.landlock_grants))
            if ev.syscall in MAKE_SYSCALLS and ev.verdict != "killed":
                made = res.path or (ev.path if ev.path.startswith("/") else None)
                if made and (os.path.lexists(made) or not os.path.isdir(os.path.dirname(made.rstrip("/")) or "/")):
                    # EEXIST (mkdir -p on an existing parent) or ENOENT (no parent): the path lookup failed
                    # before any layer was asked; not a refusal
                    if ev.has(EvFlag.HELD):
                        self.act.resume(ev.tgid)
                    return None
            d = decide(ev, policy, self._ladder_state(inst), res, self.clock())
        except BaseException:
            if ev.has(EvFlag.HELD):
                self.act.resume(ev.tgid)  # never leave a process stopped for a decision nobody made
            raise
        done = self.act.apply(inst, d.todo, ev.tgid)
        if not d.record:
            if inst is not None and inst.cgroup_id in self.traced:  # a pending path inside the rules
                self._activity(inst, ev, {**ev.detail(), "path": res.path or ev.path}, "allowed")
            return None
        if inst is not None:
            if d.window is not None:
                inst.recent = deque(d.window)
            if d.violation:
                inst.violations += 1
            if d.verdict == Verdict.SHADOW.label:
                inst.shadow_denials += 1
        agent_steps = [s for s in done if s != RESUME]
        verdict = settle(d, done)
        if inst is not None and verdict == Verdict.KILLED.label:
            inst.discard = True
        return self.recorder.event(inst, ev, verdict, d.detail, [*d.taken, *agent_steps],
                                   manifest=m, mode=mode,
                                   response_ns=now_ns() - ev.ts_ns if agent_steps and inst else None)

    # ---- baselines --------------------------------------------------------------------------------
    def _anomaly(self, inst: Instance, ev: Event, detail: dict[str, Any]) -> None:
        """An allowed action its baseline never saw: one anomaly record per instance and value."""
        new = inst.baseline.unseen(ev.kind, detail)
        if new is None or new in inst.anomalies:
            return
        inst.anomalies.add(new)
        todo = {"freeze": [FREEZE], "kill": [KILL]}.get(self.anomaly_response, []) if inst.mode == "enforce" else []
        done = self.act.apply(inst, todo, ev.tgid)
        what, value = new
        self.recorder.write(inst, {"kind": "anomaly", "pid": ev.tgid, "tgid": ev.tgid, "comm": ev.comm,
                                   "verdict": Verdict.ALLOWED.label, "actions": [a for a in done if a != RESUME],
                                   "time": rfc3339_ns(ev.ts_ns),
                                   "detail": {"what": what, "value": value, "action": {"kind": ev.kind, **detail},
                                              "baseline": inst.baseline.describe(),
                                              "response": self.anomaly_response}})

    # ---- correlation ------------------------------------------------------------------------------
    def _queue_correlation(self, rec: dict[str, Any]) -> None:
        """A durable record of an instance goes to the correlator after the poll's group commit."""
        if self.correlator is not None and rec.get("kind") in KINDS:
            cgid = rec.get("cgroup_id")
            if rec.get("seq") in self._step_seqs:  # a step of a sequence already complete
                self._step_seqs.discard(rec["seq"])
            elif isinstance(cgid, int) and cgid in self.instances:
                self._correlate_queue.append((cgid, rec))

    def _correlate(self) -> None:
        assert self.correlator is not None
        queue, self._correlate_queue = self._correlate_queue, []
        for cgid, rec in queue:
            inst = self.instances.get(cgid)
            if inst is None:
                continue
            for match in self.correlator.feed(cgid, rec, inst.manifest.home):
                self._correlation(inst, match, rec)

    def _correlation(self, inst: Instance, match: Any, last: dict[str, Any]) -> None:
        """A completed sequence: a violation of kind correlation; the rule's response, then the ladder. Its
        allowed steps, kept until now, are recorded first (verdict allowed: they were), so that it names them."""
        rule = match.rule
        for i, step in enumerate(match.steps):
            ev = step.pop("_event", None)
            if match.seqs[i] is None and ev is not None:
                rec = (self.recorder.write(inst, ev) if isinstance(ev, dict)  # a proxy's message, not the kernel's
                       else self.recorder.event(inst, ev, Verdict.ALLOWED.label, step["detail"], [],
                                                manifest=inst.manifest, mode=inst.mode))
                match.seqs[i] = step["seq"] = rec.get("seq") if rec else None
                if rec is not None:
                    self._step_seqs.add(int(rec["seq"]))
            step.pop("detail", None)
        todo: list[str] = []
        state = self._ladder_state(inst)
        if inst.mode == "enforce" and state is not None:
            own = {"freeze": [FREEZE], "kill": [KILL], "quarantine": [QUARANTINE]}.get(rule.response, [])
            steps, window = ladder(inst.manifest, state, "correlation", self.clock())
            todo = [*own, *[s for s in steps if s.split(":")[0] not in own]]
            if window is not None:
                inst.recent = deque(window)
        pid = last.get("tgid") or last.get("pid") or inst.leader_pid
        done = self.act.apply(inst, todo, int(pid) if pid else 0)
        inst.violations += 1
        self.recorder.write(inst, {"kind": "correlation", "pid": pid, "tgid": pid, "verdict": "detected",
                                   "actions": [a for a in done if a != RESUME],
                                   "detail": {"rule": rule.name, "description": rule.description,
                                              "seqs": match.seqs, "steps": match.steps, "within_s": rule.within,
                                              "response": rule.response}})

    # ---- trace --activity ---------------------------------------------------------------------------
    def trace_activity(self, inst: Instance, on: bool) -> None:
        """Stream everything the instance does (allowed and refused) to activity_subscribers, or stop."""
        (self.traced.add if on else self.traced.discard)(inst.cgroup_id)
        self.sensor.set_activity(inst.cgroup_id, on)

    def _activity(self, inst: Instance, ev: Event, detail: dict[str, Any], verdict: str | None) -> None:
        item = {"time": rfc3339_ns(ev.ts_ns), "extension": inst.manifest.name, "instance": inst.id,
                "pid": ev.tgid, "tid": ev.pid, "comm": ev.comm, "kind": ev.kind, "verdict": verdict,
                "detail": detail}
        for sub in list(self.activity_subscribers):
            sub(inst.cgroup_id, item)

    def _activity_of_record(self, rec: dict[str, Any]) -> None:
        """A refused (or shadow, or detected) action of a traced instance is activity too, from its record."""
        if not self.traced or rec.get("kind") in ("checkpoint", "policy"):
            return
        if rec.get("kind") == "lifecycle" and (rec.get("detail") or {}).get("event") not in ("start", "stop"):
            return
        cgid = rec.get("cgroup_id") or -1
        if cgid not in self.traced:
            return
        item = {"time": rec.get("time"), "extension": rec.get("extension"), "instance": rec.get("instance"),
                "pid": rec.get("tgid") or rec.get("pid"), "tid": rec.get("pid"), "comm": rec.get("comm"),
                "kind": rec.get("kind"), "verdict": rec.get("verdict"), "detail": rec.get("detail"),
                "seq": rec.get("seq")}
        for sub in list(self.activity_subscribers):
            sub(cgid, item)

    def _ladder_state(self, inst: Instance | None) -> LadderState | None:
        if inst is None:
            return None
        mount = inst.sandbox.get("mount") or {}
        writable = tuple(mount.get("writable") or ()) if mount.get("readonly") else None
        return LadderState(inst.mode, inst.state, inst.quarantined, tuple(inst.recent), tuple(inst.landlock_grants),
                           inst.landlock_handled, live=inst.cgroup_id in self.instances, mount_writable=writable,
                           mount_readonly=tuple(mount.get("readonly_within") or ()))

    def poll(self, timeout_ms: int = 100) -> None:
        """Handle what the kernel reported; the records of one poll are one group commit."""
        with self.log.batch():
            self.sensor.poll(timeout_ms)
            self.count_repeats()
            self.count_over_share()
            now = self.clock()
            for inst in list(self.instances.values()):
                if inst.lineage.due(now):
                    self.recorder.lineage(inst)
            self.proxy_messages()
            self.landlock_denials()
        if self._correlate_queue:  # after the group commit: the records it names are durable
            self._correlate()
        self.sensor.idle_check()

    def count_repeats(self) -> None:
        """Identical repeats the kernel did not record are still violations: they count toward the
        escalation window (freeze_after, kill_after) as if each had been recorded."""
        for inst in list(self.instances.values()):
            n = self.sensor.suppressed(inst.cgroup_id)
            delta = n - inst.repeats_seen
            if delta <= 0:
                continue
            inst.repeats_seen = n
            inst.violations += delta
            state = self._ladder_state(inst)
            assert state is not None
            todo, window = repeats(inst.manifest, state, delta, self.clock())
            if window is not None:
                inst.recent = deque(window)
            done = self.act.apply(inst, todo, inst.leader_pid or 0)
            if done:
                self.recorder.lifecycle(inst, "escalation", repeats=delta, actions=done)

    def count_over_share(self, inst: Instance | None = None) -> None:
        """Records an instance's cgroup could not reserve because it held its share of the ring buffer
        (its own flood): one record of how many, at most once a second per instance (and at its stop),
        so that what was not recorded is still on the record."""
        now = time.monotonic()
        for it in [inst] if inst is not None else list(self.instances.values()):
            if inst is None and now - it.over_share_at < OVER_SHARE_EVERY_S:
                continue
            n = self.sensor.over_share(it.cgroup_id)
            if n <= it.over_share_seen:
                continue
            delta, it.over_share_seen, it.over_share_at = n - it.over_share_seen, n, now
            self.recorder.lifecycle(it, "over-share", records=delta, total=n, share=OVER_SHARE_RECORDS,
                                    why="not recorded: this instance already held its share of the kernel's "
                                        "ring buffer (its own flood); other instances' records were not "
                                        "affected")

    def proxy_messages(self) -> None:
        """What each instance's D-Bus proxies saw it send. A call or signal the proxy refused: a record of kind
        ``ipc`` and a violation for the ladder like any other. One it passed: activity for a tracer, and a
        step the correlation rules may be waiting for (recorded only if a sequence completes)."""
        for inst in list(self.instances.values()):
            for bus, proxy in inst.proxies.items():
                for msg in proxy.messages():
                    ts_ns = msg.pop("ts_ns")
                    detail = {"bus": bus, **msg}
                    if msg["proxy"] != "passed":
                        self._proxy_refusal(inst, detail, ts_ns)
                        continue
                    body = {"kind": "ipc", "pid": inst.leader_pid, "tgid": inst.leader_pid, "detail": detail,
                            "verdict": Verdict.ALLOWED.label, "actions": [], "time": rfc3339_ns(ts_ns)}
                    if inst.cgroup_id in self.traced:
                        item = {"extension": inst.manifest.name, "instance": inst.id, "comm": None, **body}
                        del item["actions"]
                        for sub in list(self.activity_subscribers):
                            sub(inst.cgroup_id, item)
                    if self.correlator is not None and self.correlator.wants("ipc"):
                        step = {**body, "seq": None, "_event": body}
                        for match in self.correlator.feed(inst.cgroup_id, step, inst.manifest.home):
                            self._correlation(inst, match, step)

    def _proxy_refusal(self, inst: Instance, detail: dict[str, Any], ts_ns: int) -> None:
        state = self._ladder_state(inst)
        assert state is not None
        todo, window = ladder(inst.manifest, state, "ipc", self.clock())
        if window is not None:
            inst.recent = deque(window)
        inst.violations += 1
        done = self.act.apply(inst, todo, inst.leader_pid or 0)
        self.recorder.write(inst, {"kind": "ipc", "pid": inst.leader_pid, "tgid": inst.leader_pid,
                                   "detail": detail, "verdict": "denied", "time": rfc3339_ns(ts_ns),
                                   "actions": ["accessdenied:xdg-dbus-proxy", *done]})

    def landlock_denials(self, settle_s: float = 0.0) -> None:
        """Each refusal Landlock reported for an instance's domain (llreport.py says which are this
        layer's to record): a record, and a violation for the ladder. ``settle_s``: keep reading until
        the audit queue has been quiet that long (the kernel's audit thread delivers asynchronously)."""
        if self.laudit is None:
            return
        from .kernel.laudit import AUDIT_LANDLOCK_DOMAIN, AUDIT_SECCOMP  # noqa: PLC0415

        now = time.monotonic()
        if now - self._laudit_checked >= 1.0:  # an audit daemon that started meanwhile owns audit now
            self._laudit_checked = now
            try:
                self.laudit.maintain()
            except EbpfguardError as err:
                log.warning("audit: %s", err)

        while True:
            reports = self.laudit.read()
            for rec in reports:
                if rec.type == 0:
                    self.stats.landlock_reports_lost += 1
                    continue
                if rec.type == AUDIT_SECCOMP:
                    self._seccomp_report(rec.fields, rec.ts_ns)
                    continue
                dom = rec.fields.get("domain", "")
                if rec.type == AUDIT_LANDLOCK_DOMAIN:
                    if rec.fields.get("status") == "allocated":
                        inst = self._instance_of_pid(int(rec.fields.get("pid", "0") or 0))
                        if inst is not None and dom not in inst.landlock_domains:
                            # the kernel says "allocated" once per domain: an agent that restarts
                            # learns it from the instance's saved state
                            inst.landlock_domains.append(dom)
                            self.store.save(inst)
                        for held in self.domains.learn(dom, inst.cgroup_id if inst else None):
                            self._landlock_record(held, rec.ts_ns)
                    continue
                if dom in self.domains.known:
                    self._landlock_record(rec.fields, rec.ts_ns)
                else:
                    self.domains.hold(rec.fields)
            if not reports and settle_s <= 0:
                return
            if not reports:
                time.sleep(settle_s)
                settle_s = 0.0

    def _seccomp_report(self, fields: dict[str, str], ts_ns: int) -> None:
        """A call the launcher's seccomp filter refused with EPERM, from the kernel's own report: one
        record, as the syscall gate would have written it, for an instance whose filter reports. A
        call it killed is recorded by the SIGSYS it raised (syscalls.bpf.c), not here."""
        try:
            code, nr, pid = int(fields.get("code", ""), 16), int(fields.get("syscall", "")), int(fields.get("pid", ""))
        except ValueError:
            self.stats.landlock_reports_lost += 1
            return
        # the report carries the action, not its errno: the filter's only errno other than EPERM is clone3's
        # ENOSYS, which sends libc back to clone(), whose flags it can read; that is no refusal
        if code & SECCOMP_RET_ACTION_FULL != SECCOMP_RET_ERRNO or SYSCALL_NAMES.get(nr) == "clone3":
            return
        inst = self._instance_of_pid(pid)
        if inst is None or not inst.seccomp_reports:  # another program's filter, or recorded by the gates
            return
        denied = inst.manifest.all_denied_syscalls()
        name = SYSCALL_NAMES.get(nr, "")
        # clone() is refused only with a CLONE_NEW* flag, as unshare() by the other door
        kind = denied.get(name) or (denied.get("unshare") if name == "clone" else None)
        if kind is None:
            return
        uid = fields.get("uid", "")
        ev = Event(ts_ns=ts_ns, cgroup_id=inst.cgroup_id, pid=pid, tgid=pid, uid=int(uid) if uid.isdigit() else 0,
                   slot=inst.slot, kind=kind, verdict=Verdict.DENIED.label, syscall_nr=nr,
                   flags=int(EvFlag.SECCOMP | EvFlag.AT_EXIT), dirfd=0, op=0, comm=fields.get("comm", "")[:15],
                   aux=-errno.EPERM)
        self.handle(ev)

    def _instance_of_pid(self, pid: int) -> Instance | None:
        for inst in self.instances.values():
            if inst.leader_pid == pid:
                return inst
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                v2 = next((line.split(":", 2)[2].strip() for line in f if line.startswith("0::")), None)
        except OSError:
            v2 = None
        found = next((i for i in self.instances.values() if v2 and str(i.cgroup.v2).endswith(v2)), None)
        if found is None and pid in self._pid_cgroup:  # gone already: its exec or exit named its cgroup
            found = self.instances.get(self._pid_cgroup[pid])
        return found

    def _landlock_record(self, fields: dict[str, str], ts_ns: int) -> None:
        inst = self.instances.get(self.domains.known.get(fields.get("domain", ""), -1))
        if inst is None:
            return
        blockers = blockers_of(fields)
        kind = kind_of(blockers)
        reads_to_landlock = inst.landlock_reports and inst.manifest.response.get(kind) != "kill"
        if not ours(blockers, reads_to_landlock):
            return
        detail = detail_of(fields, blockers)
        key = (inst.cgroup_id, tuple(blockers), detail.get("path"), detail.get("target_pid"), detail.get("address"),
               detail.get("port"))
        carried = self.landlock_repeats.seen(key, ts_ns)
        if carried is None:
            inst.landlock_repeats += 1
        elif carried:
            detail["repeats_suppressed"] = carried
        state = self._ladder_state(inst)
        assert state is not None
        todo, window = ladder(inst.manifest, state, kind, self.clock())
        if window is not None:
            inst.recent = deque(window)
        inst.violations += 1
        done = self.act.apply(inst, todo, inst.leader_pid or 0)
        if carried is None:
            return  # a repeat: counted toward the ladder, and in the stop record
        # the report names the domain, not the process: pid stays unknown rather than guessed
        body: dict[str, Any] = {"kind": kind, "pid": None, "tgid": None, "detail": detail,
                                "verdict": "denied", "actions": [f"{errno_of(blockers)}:landlock", *done],
                                "time": rfc3339_ns(ts_ns)}
        if done:
            body["response_ns"] = max(0, now_ns() - ts_ns)  # the report's time (ms) to the action done
        self.recorder.write(inst, body)

    def start_proxies(self, inst: Instance) -> None:
        """One xdg-dbus-proxy per bus the manifest names, as the extension's user (enforce mode)."""
        from .dbusproxy import Proxy, default_address  # noqa: PLC0415
        from .sandbox import extension_user  # noqa: PLC0415

        m = inst.manifest
        if inst.mode != "enforce" or not m.ipc.dbus:
            return
        pw = extension_user(m)
        for bus, rules in m.ipc.dbus.items():
            proxy = Proxy(inst.id, bus, self.bus_addresses.get(bus) or default_address(bus, m.runtime_dir), rules,
                          pw.pw_uid, pw.pw_gid)
            proxy.start()
            inst.proxies[bus] = proxy

    def stop_proxies(self, inst: Instance) -> None:
        for proxy in inst.proxies.values():
            proxy.stop()  # its log read to the end
        self.proxy_messages()
        inst.proxies.clear()

    def check_resources(self) -> None:
        """Record each containment by a limit since the last look: an OOM kill inside the
        instance's memory cap, or a fork its pids cap refused."""
        for inst in list(self.instances.values()):
            for key, value in resource_events(inst.cgroup).items():
                delta = value - inst.resource_seen.get(key, 0)
                if delta <= 0:
                    continue
                inst.resource_seen[key] = value
                inst.violations += 1
                resource = "memory" if key == "oom_kill" else "pids"
                limit = inst.limits.get("memory_bytes" if resource == "memory" else "pids_max")
                self.recorder.resource(inst, resource, key, delta, limit)

    # ---- instances --------------------------------------------------------------------------------
    def prepare(self, m: Manifest, mode: str | None = None, *, launch: bool = True, landlocked: bool = False,
                landlock_reports: bool = False, shadow: Manifest | None = None) -> Instance:
        """A new instance cgroup under ``m``, bound and attached. For a ``launch`` (not an adoption): its
        D-Bus proxies running, and the kernel told, before the first of its processes runs, that they
        will be in their own mount namespace and, with ``landlocked`` (sandbox.landlock_confines), under
        a Landlock ruleset for files that reports its denials with ``landlock_reports``."""
        mode = mode or m.mode
        watch: tuple[tuple[str, str], ...] = ()
        if self.correlator is not None:
            watch = self.correlator.watch_for({"read": m.read + m.write, "write": m.write, "exec": m.exec}, m.home)
        baseline = self.baseline_for(m) if self.baseline_for is not None else None
        slot = self.slots.acquire(m, mode, shadow, watch, self.correlator.arm_ms if self.correlator else 0,
                                  baseline=baseline is not None)
        try:
            cg = self.cgroups.create(m.name)
        except EbpfguardError:
            self.slots.release(slot.index)
            raise
        # the launcher's seccomp filter reports what it refuses where the audit reader runs: no syscall
        # gate for those (sandbox.seccomp_denied); the rest are recorded by the gates, attached first
        reported = set(seccomp_denied(m, mode)) if launch and landlock_reports and self.laudit is not None else set()
        try:
            limits = set_limits(cg, m.resources)
            cgid = cg.id
            self.sensor.ensure_syscall_gates(set(slot.compiled.syscalls) - reported)
            self.sensor.set_seccomp_reports(cgid, bool(reported))
            self.sensor.attach_cgroup(cg.v2)
            self.sensor.bind(cgid, slot.index)
        except EbpfguardError:
            self.sensor.detach_cgroup(cg.v2)
            cg.remove()
            self.slots.release(slot.index)
            raise
        inst = Instance(cg.name, m, mode, slot.index, cg, cgid, limits=limits, seccomp_reports=bool(reported),
                        baseline=baseline)
        self.instances[cgid] = inst
        self.store.save(inst)
        if launch and m.rollback and mode != "audit":
            if self.sensor.lsm and not landlocked:
                # the BPF-LSM file hooks stand down only for Landlock-confined instances; they would take
                # overlayfs's own opens of its upper layer (copy-up) for the extension's and refuse them
                self.release(inst)
                raise EbpfguardError(f"{m.name}: spec.filesystem.rollback needs the launcher's Landlock layer "
                                     "where the BPF-LSM programs decide (this kernel has no Landlock for files)")
            try:
                inst.rollback = Layer.create(self.rollback_root / inst.id, inst.id, m.name,
                                             [w.rstrip("/") for w in m.write], inst.started_ns)
            except (OSError, EbpfguardError) as err:
                self.release(inst)
                raise EbpfguardError(f"cannot make the rollback area of {inst.id}: {err}") from err
        if launch:
            if (mode or m.mode) != "audit":
                self.sensor.set_mountns(cgid, True)
            # before the first process runs: with reports, the file programs leave reads and execs to
            # Landlock (or a refusal would be recorded twice); under BPF-LSM, the LSM file hooks leave the
            # instance to Landlock and the tracepoints (or a refusal Landlock made first would go unseen)
            if landlocked or landlock_reports:
                self._set_landlocked(inst, reports=landlock_reports)
            try:
                self.start_proxies(inst)
            except EbpfguardError:
                self.release(inst)
                raise
        return inst

    def adopt(self, m: Manifest, pid: int, mode: str | None = None) -> Instance:
        """Move a running process and its descendants into a new instance. The in-kernel layers
        apply from then on; the launcher's layers cannot be imposed from outside, and the record and
        status say so."""
        if not alive(pid):
            raise EbpfguardError(f"no process {pid}")
        inst = self.prepare(m, mode, launch=False)
        moved: list[int] = []
        try:
            for _ in range(3):  # a process may fork while we move its tree: go again until stable
                todo = [p for p in process_tree(pid) if p not in moved]
                if not todo:
                    break
                for p in todo:
                    try:
                        inst.cgroup.join(p)
                        moved.append(p)
                    except EbpfguardError:
                        if alive(p):
                            raise
        except EbpfguardError:
            self.release(inst)
            raise
        inst.leader_pid = pid
        inst.launcher_done = True
        inst.argv = cmdline(pid)
        inst.sandbox = {"layers": [], "not_enforced": [
            "landlock: cannot be imposed on a running process from outside",
            "seccomp: cannot be imposed on a running process from outside",
            "user and no_new_privs: the process keeps its own",
            "mount namespace: a running process cannot be moved into one; it can still change modes, owners, "
            "times and attributes outside the write trees, and sees the real /tmp and socket folders",
            *(["d-bus proxy: the process keeps its own bus connection; spec.ipc.dbus is not enforced"]
              if m.ipc.dbus else [])]}
        self.store.save(inst)
        self.recorder.lifecycle(inst, "adopted", pid=pid, actions=["cgroup.procs"], pids=moved, argv=inst.argv,
                                not_enforced=inst.sandbox["not_enforced"])
        return inst

    def readopt(self) -> list[Instance]:
        """Take back the instances an earlier agent left running (it was killed, or restarted): bind
        their cgroups to their policies again, re-attach the network programs, resume any process
        that was held for a decision nobody will make, and record it. Empty ones are removed."""
        from .manifest.load import parse  # noqa: PLC0415

        adopted = []
        by_name = {cg.name: cg for cg in self.cgroups.existing()}
        for path, meta in self.store.saved():
            try:
                cg = by_name.get(meta["id"])
                if cg is None or not cg.populated():
                    if cg is not None:
                        cg.remove()
                    path.unlink()
                    continue
                m = parse(meta["manifest_text"].encode(), meta["manifest_path"], home=meta.get("home") or None)
                slot = self.slots.acquire(m, meta["mode"])
                reports = bool((meta.get("sandbox") or {}).get("seccomp_reports")) and self.laudit is not None
                reported = set(seccomp_denied(m, meta["mode"])) if reports else set()
                self.sensor.ensure_syscall_gates(set(slot.compiled.syscalls) - reported)
                self.sensor.set_seccomp_reports(cg.id, bool(reported))
                self.sensor.attach_cgroup(cg.v2)
                self.sensor.bind(cg.id, slot.index)
            except (OSError, ValueError, KeyError, EbpfguardError) as err:
                log.error("cannot re-adopt instance from %s: %s", path.name, err)
                continue
            inst = Instance(cg.name, m, meta["mode"], slot.index, cg, cg.id, leader_pid=meta.get("leader_pid"),
                            argv=meta.get("argv") or [], launcher_done=True, sandbox=meta.get("sandbox") or {},
                            limits=meta.get("limits") or {}, started_ns=meta.get("started_ns") or now_ns())
            inst.resource_seen = resource_events(cg)
            inst.repeats_seen = self.sensor.suppressed(cg.id)
            if m.rollback and (self.rollback_root / inst.id / "meta.json").exists():
                try:
                    inst.rollback = Layer.open(self.rollback_root / inst.id)
                except EbpfguardError as err:
                    log.error("instance %s: %s", inst.id, err)
            inst.seccomp_reports = bool(reported)
            inst.landlock_domains = [str(d) for d in meta.get("landlock_domains") or []]
            for dom in inst.landlock_domains:
                self.domains.learn(dom, cg.id)
            try:  # the old proxies exited with the old engine; new ones in the same folders
                self.start_proxies(inst)
            except EbpfguardError as err:
                log.error("instance %s: %s", inst.id, err)
            self._note_landlock(inst)
            if inst.landlock_reports and not inst.landlock_domains:
                # its domain never reported a denial to an agent (the kernel names a domain once): its
                # reports cannot be told apart, so the file programs record its refusals again
                self._set_landlocked(inst, reports=False)
            self.instances[cg.id] = inst
            for pid in cg.pids():
                self.act.resume(pid)
            self.recorder.lifecycle(inst, "readopted", pids=cg.pids())
            adopted.append(inst)
        return adopted

    def started(self, inst: Instance, pid: int, argv: list[str], sandbox: dict[str, Any] | None = None) -> None:
        """The launcher started ``argv`` as ``pid`` inside the instance; ``sandbox`` says what it enforced."""
        inst.leader_pid = pid
        inst.leader_ppid = parent_pid(pid)
        inst.argv = list(argv)
        inst.sandbox = dict(sandbox or {})
        self._note_landlock(inst)
        self.store.save(inst)
        detail: dict[str, Any] = {"argv": list(argv), "cgroup": str(inst.cgroup.v2)}
        if sandbox is not None:
            detail["sandbox"] = inst.sandbox
        self.recorder.lifecycle(inst, "start", pid=pid, comm=os.path.basename(argv[0])[:15], **detail)

    def _note_landlock(self, inst: Instance) -> None:
        """What the instance's Landlock ruleset grants (to tell its denials apart), and the kernel flag
        that spares its processes the hold for a pending path. Also whether it runs in its own mount
        namespace, where the D-Bus proxy's socket grants hold."""
        if "mountns" in inst.sandbox.get("layers", []):
            self.sensor.set_mountns(inst.cgroup_id, True)
        if "landlock-fs" not in inst.sandbox.get("layers", []):
            if inst.landlock_grants:  # predicted at prepare, but the launcher did not enforce it
                inst.landlock_grants, inst.landlock_handled, inst.landlock_reports = [], 0, False
                self.sensor.set_landlocked(inst.cgroup_id, False)
            return
        self._set_landlocked(inst, reports=bool(inst.sandbox.get("landlock_reports", False)))

    def _set_landlocked(self, inst: Instance, reports: bool) -> None:
        ll = landlock.plan(inst.manifest, 5, inst.mode)
        inst.landlock_grants = [(os.path.realpath(p) + ("/" if p.endswith("/") else ""), r) for p, r in ll.paths]
        inst.landlock_handled = ll.handled_fs
        # Landlock reports its denials (ABI 7+, restricted with LOG_NEW_EXEC_ON): the file programs leave
        # reads and execs to it
        inst.landlock_reports = reports and self.laudit is not None
        self.sensor.set_landlocked(inst.cgroup_id, True, reports=inst.landlock_reports)

    def leader_exited(self, inst: Instance, status: int) -> None:
        inst.exit_status = status
        inst.launcher_done = True

    def release(self, inst: Instance, *, kill: bool = False) -> None:
        """Forget an instance: stop its processes if asked, detach, remove its cgroup, record it. Its rollback
        overlays: committed after a clean stop, discarded after a kill by the agent, and left for an operator
        when it was still running (the agent stops)."""
        interrupted = kill and inst.cgroup.populated() and not inst.discard and inst.rollback_choice is None
        if kill and inst.cgroup.populated():
            inst.cgroup.kill()
            deadline = time.monotonic() + 5
            while inst.cgroup.populated() and time.monotonic() < deadline:
                time.sleep(0.01)
        self.sensor.consume()  # attribute the last events while the cgroup is still bound
        self.landlock_denials(settle_s=0.02 if self.laudit is not None and inst.landlock_grants else 0.0)
        self.check_resources()
        self.stop_proxies(inst)
        suppressed = self.sensor.suppressed(inst.cgroup_id)
        self.count_over_share(inst)
        self.sensor.unbind(inst.cgroup_id)
        self.sensor.detach_cgroup(inst.cgroup.v2)
        try:
            inst.cgroup.remove()
        except EbpfguardError as err:
            log.error("%s", err)
        self.instances.pop(inst.cgroup_id, None)
        self.domains.forget(inst.cgroup_id)
        self.store.forget(inst.id)
        self.slots.release(inst.slot)
        self.recorder.lifecycle(inst, "stop", actions=["cgroup.kill"] if kill else [], exit_status=inst.exit_status,
                                violations=inst.violations, repeats_suppressed=suppressed + inst.landlock_repeats,
                                over_share=inst.over_share_seen, killed_by_agent=kill)
        if inst.rollback is not None:
            choice = inst.rollback_choice or ("discard" if inst.discard else "keep" if interrupted else "commit")
            self.finish_rollback(inst.rollback, choice, inst)
        self.traced.discard(inst.cgroup_id)  # after its stop record: a trace hears the instance ended
        if self.correlator is not None:
            self.correlator.forget(inst.cgroup_id)

    # ---- rollback ---------------------------------------------------------------------------------
    def finish_rollback(self, layer: Layer, choice: str, inst: Instance | None = None,
                        by: str | None = None) -> dict[str, Any]:
        """commit, discard, or keep (for an operator, after a restart) an instance's rollback overlays; recorded."""
        return finish(layer, choice, self.recorder, self.state.rollback_kept, inst, by)

    def pending_rollbacks(self) -> list[Layer]:
        """Rollback areas on disk with no running instance here: left by an agent or host that went down."""
        return pending(self.rollback_root, {i.id for i in self.instances.values()})

    def reap(self) -> None:
        """Release every instance whose launcher is done and whose cgroup has emptied."""
        self.check_resources()
        for inst in list(self.instances.values()):
            if inst.launcher_done and not inst.cgroup.populated():
                self.release(inst)

    def close(self) -> None:
        for inst in list(self.instances.values()):
            self.release(inst, kill=True)
        if self.laudit is not None:
            self.laudit.close()
            self.laudit = None
        self.sensor.close()
        try:  # how far the log goes, signed: a run's tail cut off is then detected by verify
            self.log.checkpoint()
        except EbpfguardError as err:
            log.error("%s", err)

    # ---- by hand ------------------------------------------------------------------------------------
    def kill(self, inst: Instance) -> None:
        self.act.kill(inst)

    def operator(self, inst: Instance, action: str) -> None:
        """An action asked for by hand (ebpfguard freeze/thaw/kill/quarantine), recorded as such."""
        {"freeze": self.act.freeze, "thaw": self.act.thaw, "kill": self.act.kill,
         "quarantine": lambda i: self.act.quarantine(i, True),
         "lift": lambda i: self.act.quarantine(i, False)}[action](inst)
        self.recorder.lifecycle(inst, action, by="operator", actions=[action])


__all__ = ["Engine", "Instance"]


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

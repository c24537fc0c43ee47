"""The engine: one sensor, the policy slots in its maps, the running instances and their lives (prepare,
adopt, re-adopt, start, release), and the one pipeline (pipeline.py) every report goes through.

poll() is the whole of a round: the kernel's ring buffer (each event through Pipeline.handle), then what
the other layers reported (reports.py: Landlock and seccomp through audit, the D-Bus proxies, the cgroup
limits; each through Pipeline.report), as one group commit of the forensic log. The agent and a standalone
``ebpfguard run`` both drive an Engine; it is single-threaded: callers call poll() in their loop.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from ebpfguard.common.abi import c
from ebpfguard.common.clock import now_ns
from ebpfguard.common.statedir import StateDir
from ebpfguard.errors import EbpfguardError, KernelError
from ebpfguard.forensics import ForensicLog
from ebpfguard.instance.slots import Slots
from ebpfguard.instance.store import Instance, InstanceStore, alive, cmdline, parent_pid, process_tree
from ebpfguard.kernel.cgroups import CgroupManager, resource_events, set_limits
from ebpfguard.kernel.sensor import SensorLike
from ebpfguard.manifest.load import Manifest, Mode
from ebpfguard.pipeline.act import Actuator
from ebpfguard.pipeline.correlate import Correlator
from ebpfguard.pipeline.decide import Report, repeats
from ebpfguard.pipeline.events import Event, decode
from ebpfguard.pipeline.flow import Pipeline
from ebpfguard.pipeline.observe import Observers
from ebpfguard.pipeline.record import Recorder, finish_rollback
from ebpfguard.pipeline.reports import AuditReports, proxy_reports, resource_reports
from ebpfguard.pipeline.stats import Stats
from ebpfguard.sandbox import extension_user, landlock, seccomp_denied
from ebpfguard.sandbox.rollback import Layer, pending

log = logging.getLogger("ebpfguard")
OVER_SHARE_EVERY_S = 1.0  # at most one over-share record a second per instance (and one at its stop)
OVER_SHARE_RECORDS = c("CG_SHARE")  # records one cgroup may hold in the ring buffer at once


class Engine:
    def __init__(self, state_dir: str | os.PathLike[str] | StateDir, *, sensor: SensorLike | None = None,
                 cgroups: CgroupManager | None = None, log: ForensicLog | None = None,
                 clock: Callable[[], float] = time.monotonic, bus_addresses: dict[str, str] | None = None,
                 landlock_audit: bool | None = None, correlator: Correlator | None = None,
                 keep_for: str | None = ""):
        """``landlock_audit``: record Landlock's own denial reports (kernel/laudit.py); by default
        where the kernel has them (Landlock ABI 7+) and the sensor is the real one. ``correlator``: the
        sequence rules its instances are watched for (pipeline/correlate.py; None: none). ``keep_for``: who the
        real sensor's kept programs are kept for (kernel/kept.py: the agent's state folder; "" anyone)."""
        self.state = StateDir.of(state_dir)
        self.state_dir = str(self.state)
        sensor_is_real = sensor is None
        if sensor is None:
            from ebpfguard.kernel.loader import Sensor  # noqa: PLC0415 - keep bcc out of pure imports

            sensor = Sensor(owner=keep_for)
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
        self.baseline_for: Callable[[Manifest], Any] | None = None  # a manifest's baseline (baseline.find)
        self.rollback_root = self.state.rollback  # where the rollback overlays' upper layers live (tmpfs in tests)
        self.audit = AuditReports(None, self.instances, self.store, self.stats)
        self.observers = Observers(self.instances, self.recorder, self._report)
        self.observers.correlator = correlator
        self.pipeline = Pipeline(self.instances, self.slots, self.act, self.recorder, self.observers, clock,
                                 saw_process=self.audit.saw_process)
        self.log.durable.append(self.stats.observe)
        self.log.durable.append(self.observers.durable)
        self.sensor.open_events(self._on_raw)
        # an agent back after it was killed reads on in its kept programs' ring buffer (kernel/kept.py): what
        # they wrote until now is marked, and the first poll that finds no more of it records the outage
        self.outage: dict[str, Any] | None = None
        if getattr(self.sensor, "kept_state", False):
            self.recorder.unread_before_ns = time.time_ns()
            self.outage = {"links": int(getattr(self.sensor, "adopted", 0)),
                           "drops": int(self.sensor.counters().get("drops", 0))}
        self.laudit_status = "off"
        if landlock_audit is None:
            landlock_audit = sensor_is_real and landlock.abi() >= 7
        if landlock_audit:
            from ebpfguard.kernel.laudit import LandlockAudit  # noqa: PLC0415

            try:
                self.audit.reader = LandlockAudit()
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

    # ---- a round -----------------------------------------------------------------------------------
    def _report(self, inst: Instance, r: Report) -> dict[str, Any] | None:
        """What the observers find goes back through the pipeline (made after them)."""
        return self.pipeline.report(inst, r)

    def _on_raw(self, raw: Any) -> None:
        try:
            self.pipeline.handle(decode(raw))
        except Exception:  # an exception must not vanish inside the ring-buffer callback
            self.handle_errors += 1
            log.exception("failed to handle a kernel event")

    def poll(self, timeout_ms: int = 100) -> None:
        """Handle what the kernel and the other layers reported; the records of one poll are one group commit."""
        with self.log.batch():
            before = self.recorder.read_after_restart
            self.sensor.poll(timeout_ms)
            if self.outage is not None and self.recorder.read_after_restart == before:
                self._record_outage()
            self.count_repeats()
            self.count_over_share()
            now = self.clock()
            for inst in list(self.instances.values()):
                if inst.lineage.due(now):
                    self.recorder.lineage(inst)
            self.proxy_messages()
            self.landlock_denials()
        self.observers.correlate()  # after the group commit: the records a match names are durable
        self.sensor.idle_check()

    def landlock_denials(self, settle_s: float = 0.0) -> None:
        """What Landlock and the launcher's seccomp filter reported through audit (reports.AuditReports)."""
        for inst, r in self.audit.read(settle_s):
            if isinstance(r, Event):  # a seccomp refusal: the event its syscall gate would have sent
                self.pipeline.handle(r)
            else:
                self.pipeline.report(inst, r)

    def proxy_messages(self) -> None:
        """What each instance's D-Bus proxies saw it send (reports.proxy_reports)."""
        for inst in list(self.instances.values()):
            for r in proxy_reports(inst):
                self.pipeline.report(inst, r)

    def check_resources(self) -> None:
        """Each containment by a cgroup limit since the last look (reports.resource_reports)."""
        for inst in list(self.instances.values()):
            for r in resource_reports(inst):
                self.pipeline.report(inst, r)

    def count_repeats(self) -> None:
        """Identical repeats the kernel did not record are still violations: they count toward the
        escalation window (freeze_after, kill_after) as if each had been recorded."""
        for inst in list(self.instances.values()):
            n = self.sensor.suppressed(inst.cgroup_id)
            delta = n - inst.repeats_seen
            if delta <= 0:
                continue
            inst.repeats_seen = n
            self.pipeline.repeats(inst, delta, *repeats(inst.manifest, self.pipeline.ladder(inst), delta, self.clock()))

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

    def trace_activity(self, inst: Instance, on: bool) -> None:
        """Stream everything the instance does (allowed and refused) to observers.subscribers, or stop."""
        self.observers.trace(inst, on)
        self.sensor.set_activity(inst.cgroup_id, on)

    # ---- instances ---------------------------------------------------------------------------------
    def start_proxies(self, inst: Instance) -> None:
        """One xdg-dbus-proxy per bus the manifest names, as the extension's user (enforce mode)."""
        from ebpfguard.sandbox import extension_user  # noqa: PLC0415
        from ebpfguard.sandbox.dbusproxy import Proxy, default_address  # noqa: PLC0415

        m = inst.manifest
        if inst.mode != Mode.ENFORCE or not m.ipc.dbus:
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

    def prepare(self, m: Manifest, mode: str | None = None, *, launch: bool = True, landlocked: bool = False,
                landlock_reports: bool = False, shadow: Manifest | None = None, sandboxed: bool = True) -> Instance:
        """A new instance cgroup under ``m``, bound and attached. For a ``launch`` (not an adoption): its
        D-Bus proxies running, and the kernel told, before the first of its processes runs, that they
        will be in their own mount namespace (unless not ``sandboxed``: a launch without the launcher's layers
        sees the host's /tmp and buses, so the grants that hold only in the namespace are not its) and, with
        ``landlocked`` (sandbox.landlock_confines), under a Landlock ruleset for files that reports its denials
        with ``landlock_reports``."""
        run_mode = Mode(mode) if mode else m.mode
        watch: tuple[tuple[str, str], ...] = ()
        correlator = self.observers.correlator
        if correlator is not None:
            watch = correlator.watch_for({"read": m.read + m.write, "write": m.write, "exec": m.exec}, m.home)
        baseline = self.baseline_for(m) if self.baseline_for is not None else None
        slot = self.slots.acquire(m, run_mode, shadow, watch, correlator.arm_ms if correlator else 0,
                                  baseline=baseline is not None)
        try:
            cg = self.cgroups.create(m.name)
        except EbpfguardError:
            self.slots.release(slot.index)
            raise
        # the launcher's seccomp filter reports what it refuses where the audit reader runs: no syscall
        # gate for those (sandbox.seccomp_denied); the rest are recorded by the gates, attached first
        audited = launch and landlock_reports and self.audit.reader is not None
        reported = set(seccomp_denied(m, run_mode)) if audited else set()
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
        inst = Instance(cg.name, m, run_mode, slot.index, cg, cgid, limits=limits, seccomp_reports=bool(reported),
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
                pw = extension_user(m)  # whose rights the commit, keep-aside and discard use
                inst.rollback = Layer.create(self.rollback_root / inst.id, inst.id, m.name,
                                             [w.rstrip("/") for w in m.write], inst.started_ns,
                                             user=(pw.pw_uid, pw.pw_gid))
            except (OSError, EbpfguardError) as err:
                self.release(inst)
                raise EbpfguardError(f"cannot make the rollback area of {inst.id}: {err}") from err
        if launch:
            if (mode or m.mode) != "audit" and sandboxed:
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
        from ebpfguard.manifest.load import parse  # noqa: PLC0415

        adopted = []
        by_name = {cg.name: cg for cg in self.cgroups.existing()}
        for path, meta in self.store.saved():
            try:
                cg = by_name.get(meta["id"])
                if cg is None or not cg.populated():
                    self._ended_unwatched(meta, cg)
                    if cg is not None:
                        cg.remove()
                    path.unlink()
                    continue
                m = parse(meta["manifest_text"].encode(), meta["manifest_path"], home=meta.get("home") or None)
                slot = self.slots.acquire(m, meta["mode"])
                reports = bool((meta.get("sandbox") or {}).get("seccomp_reports")) and self.audit.reader is not None
                reported = set(seccomp_denied(m, meta["mode"])) if reports else set()
                self.sensor.ensure_syscall_gates(set(slot.compiled.syscalls) - reported)
                self.sensor.set_seccomp_reports(cg.id, bool(reported))
                # bound before the network programs are attached: a program that replaces an older one (an
                # upgrade) finds the cgroup's slot before its own storage is written (net.bpf.c: cgroup_policy)
                self.sensor.bind(cg.id, slot.index)
                self.sensor.attach_cgroup(cg.v2)
            except (OSError, ValueError, KeyError, EbpfguardError) as err:
                log.error("cannot re-adopt instance from %s: %s", path.name, err)
                continue
            inst = Instance(cg.name, m, Mode(meta["mode"]), slot.index, cg, cg.id, leader_pid=meta.get("leader_pid"),
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
            inst.landlock.domains = [str(d) for d in meta.get("landlock_domains") or []]
            for dom in inst.landlock.domains:
                self.audit.domains.learn(dom, cg.id)
            try:  # the old proxies exited with the old engine; new ones in the same folders
                self.start_proxies(inst)
            except EbpfguardError as err:
                log.error("instance %s: %s", inst.id, err)
            self._note_landlock(inst)
            if inst.landlock.reports and not inst.landlock.domains:
                # its domain never reported a denial to an agent (the kernel names a domain once): its
                # reports cannot be told apart, so the file programs record its refusals again
                self._set_landlocked(inst, reports=False)
            self.instances[cg.id] = inst
            for pid in cg.pids():
                self.act.resume(pid)
            self.recorder.lifecycle(inst, "readopted", pids=cg.pids())
            adopted.append(inst)
        settle = getattr(self.sensor, "settle", None)
        if settle is not None:
            settle()
        return adopted

    def _record_outage(self) -> None:
        """One record of what was read after the restart: the records the kernel kept meanwhile, the links that never
        stopped, and the kernel's count of records it could not keep (the ring buffer was full), all time."""
        assert self.outage is not None
        detail = {"event": "outage", "records": self.recorder.read_after_restart, **self.outage}
        self.outage = None
        self.recorder.write(None, {"kind": "lifecycle", "pid": None, "tgid": None, "verdict": None, "actions": [],
                                   "detail": detail})
        log.info("read %d record(s) the kernel kept while no agent ran (%d links never stopped; kernel drops, all "
                 "time: %d)", detail["records"], detail["links"], detail["drops"])

    def _ended_unwatched(self, meta: dict[str, Any], cg: Any) -> None:
        """An instance an earlier agent left running ended while no agent ran: its stop record (nobody saw its exit
        status: the leader's parent was that agent), and its rollback area kept aside for `rollback commit|discard`
        (a clean exit nobody watched is never committed blindly)."""
        from ebpfguard.manifest.load import parse  # noqa: PLC0415

        try:
            m = parse(meta["manifest_text"].encode(), meta["manifest_path"], home=meta.get("home") or None)
        except (EbpfguardError, KeyError, ValueError) as err:
            m = None
            log.error("instance %s ended while no agent ran; its manifest no longer reads: %s", meta.get("id"), err)
        pid = meta.get("leader_pid")
        detail: dict[str, Any] = {"event": "stop", "exit_status": None, "ended": "while no agent ran",
                                  "killed_by_agent": False}
        if cg is None:
            detail["cgroup"] = "gone"  # removed by someone else; nothing of it is left to read
        self.recorder.write(None, {"kind": "lifecycle", "pid": pid, "tgid": pid, "verdict": None, "actions": [],
                                   "instance": meta.get("id"), "detail": detail},
                            manifest=m, mode=meta.get("mode"),
                            cgroup_id=meta.get("cgroup_id") or (cg.id if cg else None),
                            extension=None if m else meta.get("extension"))
        log.warning("instance %s of %s ended while no agent ran: recorded", meta.get("id"), m.name if m else "?")
        area = self.rollback_root / str(meta.get("id"))
        if (area / "meta.json").exists():
            try:
                self.finish_rollback(Layer.open(area), "keep", sandbox=meta.get("sandbox") or {},
                                     why="the instance ended while no agent ran, so nobody saw whether it exited "
                                         "cleanly: `ebpfguard rollback show|commit|discard` decides")
            except EbpfguardError as err:
                log.error("instance %s: %s", meta.get("id"), err)

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
            # the kernel it ran on and which eBPF hooks decided: what an incident summary says of the layers
            kernel = {"release": os.uname().release, "ebpf": "bpf-lsm" if self.sensor.lsm else "tracepoints"}
            detail["sandbox"] = {**inst.sandbox, "kernel": kernel}
        self.recorder.lifecycle(inst, "start", pid=pid, comm=os.path.basename(argv[0])[:15], **detail)

    def _note_landlock(self, inst: Instance) -> None:
        """What the instance's Landlock ruleset grants (to tell its denials apart), and the kernel flag
        that spares its processes the hold for a pending path. Also whether it runs in its own mount
        namespace, where the D-Bus proxy's socket grants hold."""
        if "mountns" in inst.sandbox.get("layers", []):
            self.sensor.set_mountns(inst.cgroup_id, True)
        if "landlock-fs" not in inst.sandbox.get("layers", []):
            if inst.landlock.grants:  # predicted at prepare, but the launcher did not enforce it
                inst.landlock.grants, inst.landlock.handled, inst.landlock.reports = [], 0, False
                self.sensor.set_landlocked(inst.cgroup_id, False)
            return
        self._set_landlocked(inst, reports=bool(inst.sandbox.get("landlock_reports", False)))

    def _set_landlocked(self, inst: Instance, reports: bool) -> None:
        ll = landlock.plan(inst.manifest, 5, inst.mode)
        inst.landlock.grants = [(os.path.realpath(p) + ("/" if p.endswith("/") else ""), r) for p, r in ll.paths]
        inst.landlock.handled = ll.handled_fs
        # Landlock reports its denials (ABI 7+, restricted with LOG_NEW_EXEC_ON): the file programs leave
        # reads and execs to it
        inst.landlock.reports = reports and self.audit.reader is not None
        self.sensor.set_landlocked(inst.cgroup_id, True, reports=inst.landlock.reports)

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
        self.landlock_denials(settle_s=0.02 if self.audit.reader is not None and inst.landlock.grants else 0.0)
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
        self.audit.domains.forget(inst.cgroup_id)
        self.store.forget(inst.id)
        self.slots.release(inst.slot)
        self.recorder.lifecycle(inst, "stop", actions=["cgroup.kill"] if kill else [], exit_status=inst.exit_status,
                                violations=inst.violations, repeats_suppressed=suppressed + inst.landlock.repeats,
                                over_share=inst.over_share_seen, killed_by_agent=kill)
        if inst.rollback is not None:
            choice = inst.rollback_choice or ("discard" if inst.discard else "keep" if interrupted else "commit")
            self.finish_rollback(inst.rollback, choice, inst)
        self.observers.forget(inst.cgroup_id)  # after its stop record: a trace hears the instance ended

    # ---- rollback ---------------------------------------------------------------------------------
    def finish_rollback(self, layer: Layer, choice: str, inst: Instance | None = None,
                        by: str | None = None, **keep: Any) -> dict[str, Any]:
        """commit, discard, or keep (for an operator, after a restart) an instance's rollback overlays; recorded.
        ``keep``: why it is kept, and the launcher's account of the instance (pipeline/record.py)."""
        return finish_rollback(layer, choice, self.recorder, self.state.rollback_kept, inst, by, **keep)

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
        self.audit.close()
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

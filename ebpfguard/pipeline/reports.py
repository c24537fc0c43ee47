"""Stage 1 for the layers outside the ring buffer: what each of them reports, read and turned into the
pipeline's input, a Report (decide.py) or, where a kernel program would have sent it, an Event.

    Landlock   its own denial reports, through audit (kernel/laudit.py; llreport.py says which are ours)
    seccomp    the launcher's filter's EPERM reports, through the same audit socket: an Event, as the gate's
    D-Bus      each xdg-dbus-proxy's log: a refused message is a Report; one it passed is activity
    cgroups    the memory and pids caps' own counters: an OOM kill, a refused fork

Nothing here decides, acts or records: the engine sends what these yield through the one pipeline.
"""

from __future__ import annotations

import errno
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from ebpfguard.common.abi import EvFlag, Verdict
from ebpfguard.errors import EbpfguardError
from ebpfguard.instance.store import Instance, InstanceStore
from ebpfguard.kernel.cgroups import resource_events
from ebpfguard.pipeline.decide import Report
from ebpfguard.pipeline.events import SYSCALL_NAMES, Event
from ebpfguard.pipeline.llreport import DomainMap, Repeats, blockers_of, detail_of, errno_of, kind_of, ours
from ebpfguard.pipeline.stats import Stats

log = logging.getLogger("ebpfguard")
SECCOMP_RET_ACTION_FULL, SECCOMP_RET_ERRNO = 0xFFFF0000, 0x00050000
PID_MEMORY = 8192  # processes whose cgroup is remembered after their exec or exit
MAINTAIN_EVERY_S = 1.0
FENCE_WAIT_S = 1.0  # at most this long for the audit thread to deliver what an ended instance reported


class AuditReports:
    """Landlock's and seccomp's reports for the instances in ``instances`` (the engine's own map, by cgroup
    id). ``reader`` is a kernel/laudit.LandlockAudit, or None where the kernel has no such reports."""

    def __init__(self, reader: Any, instances: dict[int, Instance], store: InstanceStore, stats: Stats):
        self.reader = reader
        self.instances = instances
        self.store = store
        self.domains = DomainMap()
        self.repeats = Repeats()
        self.stats = stats  # its landlock_reports_lost: reports the kernel dropped or that did not parse
        self._pid_cgroup: OrderedDict[int, int] = OrderedDict()  # pid -> cgroup id, from execs and exits
        self._maintained = 0.0

    def saw_process(self, tgid: int, cgroup_id: int) -> None:
        """A process of an instance exec'd or exited: a report about it may come after it is gone."""
        self._pid_cgroup[tgid] = cgroup_id
        if len(self._pid_cgroup) > PID_MEMORY:
            self._pid_cgroup.popitem(last=False)

    def read(self, settle_s: float = 0.0) -> Iterator[tuple[Instance, Report | Event]]:
        """Everything reported since the last read. ``settle_s``: keep reading until the audit queue has been
        quiet that long (the kernel's audit thread delivers asynchronously)."""
        if self.reader is None:
            return
        from ebpfguard.kernel.laudit import AUDIT_LANDLOCK_DOMAIN, AUDIT_SECCOMP, FENCE  # noqa: PLC0415

        now = time.monotonic()
        if now - self._maintained >= MAINTAIN_EVERY_S:  # an audit daemon that started meanwhile owns audit now
            self._maintained = now
            try:
                if (what := self.reader.maintain()) is not None:
                    log.warning("audit: %s", what)
            except EbpfguardError as err:
                log.warning("audit: %s", err)
        fenced = settle_s > 0 and hasattr(self.reader, "fence") and self._fence()
        deadline = time.monotonic() + FENCE_WAIT_S
        while True:
            reports = self.reader.read()
            for rec in reports:
                if rec.type == FENCE:
                    fenced = False  # every report made before it is in
                    settle_s = 0.0
                elif rec.type == 0:
                    self.stats.landlock_reports_lost += 1
                elif rec.type == AUDIT_SECCOMP:
                    yield from self.seccomp(rec.fields, rec.ts_ns)
                elif rec.type == AUDIT_LANDLOCK_DOMAIN:
                    if rec.fields.get("status") == "allocated":
                        for held in self._allocated(rec.fields.get("domain", ""), rec.fields.get("pid", "")):
                            yield from self.landlock(held, rec.ts_ns)
                elif rec.fields.get("domain", "") in self.domains.known:
                    yield from self.landlock(rec.fields, rec.ts_ns)
                else:
                    self.domains.hold(rec.fields)
            if fenced:  # the kernel's audit thread has not delivered the fence yet: wait for it, bounded
                if time.monotonic() > deadline:
                    log.warning("audit: reports took over %.1f s to arrive; later ones are read at the next poll",
                                FENCE_WAIT_S)
                    return
                if not reports:
                    time.sleep(0.002)
                continue
            if not reports and settle_s <= 0:
                return
            if not reports:
                time.sleep(settle_s)
                settle_s = 0.0

    def _fence(self) -> bool:
        """Ask the kernel to queue a fence behind the reports it holds (audit on); False if none will come."""
        assert self.reader is not None
        try:
            return bool(self.reader.status()["enabled"]) and self.reader.fence()
        except EbpfguardError as err:
            log.warning("audit: %s", err)
            return False

    def _allocated(self, dom: str, pid: str) -> list[dict[str, str]]:
        """The kernel names a domain's creator once ("allocated"): an agent that restarts learns the domain
        from the instance's saved state. Returns the reports held until then."""
        inst = self.instance_of_pid(int(pid or 0) if pid.isdigit() else 0)
        if inst is not None and dom not in inst.landlock.domains:
            inst.landlock.domains.append(dom)
            self.store.save(inst)
        return self.domains.learn(dom, inst.cgroup_id if inst else None)

    def landlock(self, fields: dict[str, str], ts_ns: int) -> Iterator[tuple[Instance, Report]]:
        """A refusal Landlock made for an instance's domain, when it is this layer's to record. An identical
        repeat is still a violation for the ladder, counted in the stop record, not written again."""
        inst = self.instances.get(self.domains.known.get(fields.get("domain", ""), -1))
        if inst is None:
            return
        blockers = blockers_of(fields)
        kind = kind_of(blockers)
        if not ours(blockers, inst.landlock.reports and inst.manifest.response.get(kind) != "kill"):
            return
        detail = detail_of(fields, blockers)
        key = (inst.cgroup_id, tuple(blockers), detail.get("path"), detail.get("target_pid"), detail.get("address"),
               detail.get("port"))
        carried = self.repeats.seen(key, ts_ns)
        if carried is None:
            inst.landlock.repeats += 1
        elif carried:
            detail["repeats_suppressed"] = carried
        # the report names the domain, not the process: pid stays unknown rather than guessed
        yield inst, Report(kind, Verdict.DENIED.label, detail, ts_ns, taken=(f"{errno_of(blockers)}:landlock",),
                           record=carried is not None)

    def seccomp(self, fields: dict[str, str], ts_ns: int) -> Iterator[tuple[Instance, Event]]:
        """A call the launcher's seccomp filter refused with EPERM, for an instance whose filter reports: the
        event the syscall gate would have sent. A call it killed is recorded by the SIGSYS it raised
        (syscalls.bpf.c), not here."""
        try:
            code, nr, pid = int(fields.get("code", ""), 16), int(fields.get("syscall", "")), int(fields.get("pid", ""))
        except ValueError:
            self.stats.landlock_reports_lost += 1
            return
        # the report carries the action, not its errno: the filter's only errno other than EPERM is clone3's
        # ENOSYS, which sends libc back to clone(), whose flags it can read; that is no refusal
        if code & SECCOMP_RET_ACTION_FULL != SECCOMP_RET_ERRNO or SYSCALL_NAMES.get(nr) == "clone3":
            return
        inst = self.instance_of_pid(pid)
        if inst is None or not inst.seccomp_reports:  # another program's filter, or recorded by the gates
            return
        denied = inst.manifest.all_denied_syscalls()
        name = SYSCALL_NAMES.get(nr, "")
        # clone() is refused only with a CLONE_NEW* flag, as unshare() by the other door
        kind = denied.get(name) or (denied.get("unshare") if name == "clone" else None)
        if kind is None:
            return
        uid = fields.get("uid", "")
        yield inst, Event(ts_ns=ts_ns, cgroup_id=inst.cgroup_id, pid=pid, tgid=pid,
                          uid=int(uid) if uid.isdigit() else 0, slot=inst.slot, kind=kind,
                          verdict=Verdict.DENIED.label, syscall_nr=nr, flags=int(EvFlag.SECCOMP | EvFlag.AT_EXIT),
                          dirfd=0, op=0, comm=fields.get("comm", "")[:15], aux=-errno.EPERM)

    def instance_of_pid(self, pid: int) -> Instance | None:
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

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None


def proxy_reports(inst: Instance) -> Iterator[Report]:
    """What the instance's D-Bus proxies saw it send, in order. A call or signal the proxy refused is a
    violation like any other; one it passed is activity (for a tracer, and a step correlation rules may wait
    for), never a violation."""
    for bus, proxy in inst.proxies.items():
        for msg in proxy.messages():
            ts_ns = msg.pop("ts_ns")
            detail = {"bus": bus, **msg}
            if msg["proxy"] != "passed":
                yield Report("ipc", Verdict.DENIED.label, detail, ts_ns, inst.leader_pid,
                             taken=("accessdenied:xdg-dbus-proxy",))
            else:
                yield Report("ipc", Verdict.ALLOWED.label, detail, ts_ns, inst.leader_pid, escalates=False,
                             violation=False, record=False)


def resource_reports(inst: Instance) -> Iterator[Report]:
    """Each containment by a limit since the last look: an OOM kill inside the memory cap, or forks its pids
    cap refused. The limit decided and acted; the ladder does not add to it."""
    for key, value in resource_events(inst.cgroup).items():
        delta = value - inst.resource_seen.get(key, 0)
        if delta <= 0:
            continue
        inst.resource_seen[key] = value
        killed = key == "oom_kill"
        resource = "memory" if killed else "pids"
        limit = inst.limits.get("memory_bytes" if killed else "pids_max")
        yield Report("resource", Verdict.KILLED.label if killed else Verdict.DENIED.label,
                     {"resource": resource, "event": key, "count": delta, "limit": limit}, pid=inst.leader_pid,
                     taken=("oom-kill:cgroup" if killed else "eagain:pids.max",), escalates=False)

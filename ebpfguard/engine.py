"""The engine: one sensor, the policy slots in its maps, the running instances, and what happens to
each event (resolve what the kernel left pending, decide, record, tell subscribers).

The agent and a standalone ``ebpfguard run`` both drive an Engine; it is single-threaded: callers
call poll() in their loop.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cgroups import Cgroup, CgroupManager, freeze, resource_events, set_limits, throttle
from .errors import EbpfguardError
from .events import Event, decode, now_ns, rfc3339_ns
from .forensics import ForensicLog
from .kernel.abi import c
from .manifest.compile import CompiledPolicy, compile
from .manifest.load import Manifest
from .metrics import Stats
from .sandbox import landlock

log = logging.getLogger("ebpfguard")
AT_FDCWD = -100
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """"60s" -> 60.0 (the manifest's window syntax, which the schema has checked)."""
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * _UNITS[unit]
    raise ValueError(f"not a duration: {text!r}")


@dataclass
class Slot:
    index: int
    manifest: Manifest
    mode: str
    compiled: CompiledPolicy
    refs: int = 0


@dataclass
class Instance:
    id: str
    manifest: Manifest
    mode: str
    slot: int
    cgroup: Cgroup
    cgroup_id: int
    started_ns: int = field(default_factory=now_ns)
    leader_pid: int | None = None
    argv: list[str] = field(default_factory=list)
    violations: int = 0
    launcher_done: bool = False
    exit_status: int | None = None
    sandbox: dict[str, Any] = field(default_factory=dict)  # what the launcher enforced (Sandbox.describe)
    limits: dict[str, Any] = field(default_factory=dict)
    resource_seen: dict[str, int] = field(default_factory=dict)
    state: str = "running"        # running | throttled | frozen (| quarantined, shown apart)
    quarantined: bool = False
    recent: deque[float] = field(default_factory=deque)  # monotonic times of violations in the window
    repeats_seen: int = 0  # identical repeats the kernel suppressed, as last counted (count_repeats)
    landlock_grants: list[tuple[str, int]] = field(default_factory=list)
    landlock_handled: int = 0

    def summary(self) -> dict[str, Any]:
        return {"instance": self.id, "extension": self.manifest.name, "version": self.manifest.version,
                "mode": self.mode, "cgroup": str(self.cgroup.v2), "cgroup_id": self.cgroup_id,
                "pid": self.leader_pid, "pids": self.cgroup.pids(),
                "state": self.state + (", quarantined" if self.quarantined else ""),
                "violations": self.violations, "started": rfc3339_ns(self.started_ns),
                "layers": ["cgroup", "cgroup-sock-addr", "tracepoints", *self.sandbox.get("layers", [])],
                "not_enforced": self.sandbox.get("not_enforced", []), "user": self.sandbox.get("user"),
                "policy_sha256": self.manifest.sha256, "argv": self.argv}


def process_tree(pid: int) -> list[int]:
    """pid and every descendant (from /proc/*/stat parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


class Engine:
    def __init__(self, state_dir: str, *, sensor: Any = None, cgroups: CgroupManager | None = None,
                 log: ForensicLog | None = None):
        self.state_dir = state_dir
        if sensor is None:
            from .kernel.loader import Sensor  # noqa: PLC0415 - keep bcc out of pure imports

            sensor = Sensor()
        self.sensor = sensor
        self.cgroups = cgroups or CgroupManager()
        self.log = log or ForensicLog(state_dir)
        self.slots: dict[int, Slot] = {}
        self.instances: dict[int, Instance] = {}
        self.subscribers: list[Callable[[dict[str, Any]], None]] = []
        self.record_errors = 0
        self.stats = Stats()
        self.sensor.open_events(self._on_raw)

    # ---- policy slots ---------------------------------------------------------------------------
    def _acquire_slot(self, m: Manifest, mode: str) -> Slot:
        for s in self.slots.values():
            if s.manifest.sha256 == m.sha256 and s.mode == mode:
                s.refs += 1
                return s
        free = [i for i in range(c("MAX_SLOTS")) if i not in self.slots]
        if not free:
            raise EbpfguardError(f"all {c('MAX_SLOTS')} policy slots are in use")
        cp = compile(m, free[0], mode)
        self._archive(m)
        self.sensor.write_policy(cp)
        s = Slot(free[0], m, mode, cp, refs=1)
        self.slots[s.index] = s
        return s

    def _archive(self, m: Manifest) -> None:
        """Keep the exact manifest bytes each record's policy_sha256 names: STATE/policies/<sha256>."""
        path = Path(self.state_dir) / "policies" / m.sha256
        if path.exists():
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{m.sha256}.{os.getpid()}")
            tmp.write_bytes(m.raw)
            os.replace(tmp, path)
        except OSError as err:
            log.error("failed to archive policy %s: %s", m.sha256[:12], err.strerror)

    def _release_slot(self, index: int) -> None:
        s = self.slots.get(index)
        if s is None:
            return
        s.refs -= 1
        if s.refs <= 0:
            self.sensor.clear_policy(s.compiled)
            del self.slots[index]

    # ---- instances ------------------------------------------------------------------------------
    def prepare(self, m: Manifest, mode: str | None = None) -> Instance:
        mode = mode or m.mode
        slot = self._acquire_slot(m, mode)
        try:
            cg = self.cgroups.create(m.name)
        except EbpfguardError:
            self._release_slot(slot.index)
            raise
        try:
            limits = set_limits(cg, m.resources)
            cgid = cg.id
            self.sensor.attach_cgroup(cg.v2)
            self.sensor.bind(cgid, slot.index)
        except EbpfguardError:
            self.sensor.detach_cgroup(cg.v2)
            cg.remove()
            self._release_slot(slot.index)
            raise
        inst = Instance(cg.name, m, mode, slot.index, cg, cgid, limits=limits)
        self.instances[cgid] = inst
        self._persist(inst)
        return inst

    def adopt(self, m: Manifest, pid: int, mode: str | None = None) -> Instance:
        """Move a running process and its descendants into a new instance. The in-kernel layers
        apply from then on; the launcher's layers cannot be imposed from outside, and the record and
        status say so."""
        if not os.path.isdir(f"/proc/{pid}"):
            raise EbpfguardError(f"no process {pid}")
        inst = self.prepare(m, mode)
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
                        if os.path.isdir(f"/proc/{p}"):
                            raise
        except EbpfguardError:
            self.release(inst)
            raise
        inst.leader_pid = pid
        inst.launcher_done = True
        inst.argv = _cmdline(pid)
        inst.sandbox = {"layers": [], "not_enforced": [
            "landlock: cannot be imposed on a running process from outside",
            "seccomp: cannot be imposed on a running process from outside",
            "user and no_new_privs: the process keeps its own"]}
        self._persist(inst)
        self._write(inst, None, {"kind": "lifecycle", "pid": pid, "tgid": pid,
                                 "detail": {"event": "adopted", "pids": moved, "argv": inst.argv,
                                            "not_enforced": inst.sandbox["not_enforced"]},
                                 "verdict": None, "actions": ["cgroup.procs"]})
        return inst

    # ---- instances outlive the agent ------------------------------------------------------------
    def _meta(self, inst_id: str) -> Path:
        return Path(self.state_dir) / "instances" / f"{inst_id}.json"

    def _persist(self, inst: Instance) -> None:
        """What a restarted agent needs to take the instance back: the exact manifest bytes and more."""
        meta = {"id": inst.id, "manifest_text": inst.manifest.raw.decode(), "manifest_path": inst.manifest.source,
                "home": inst.manifest.home, "mode": inst.mode, "leader_pid": inst.leader_pid, "argv": inst.argv,
                "sandbox": inst.sandbox, "limits": inst.limits, "started_ns": inst.started_ns,
                "owner_pid": os.getpid()}
        path = self._meta(inst.id)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(meta))
            os.replace(tmp, path)
        except OSError as err:
            log.error("failed to save instance %s: %s", inst.id, err.strerror)

    def readopt(self) -> list[Instance]:
        """Take back the instances an earlier agent left running (it was killed, or restarted): bind
        their cgroups to their policies again, re-attach the network programs, resume any process
        that was held for a decision nobody will make, and record it. Empty ones are removed."""
        from .manifest.load import parse  # noqa: PLC0415

        adopted = []
        by_name = {cg.name: cg for cg in self.cgroups.existing()}
        meta_dir = Path(self.state_dir) / "instances"
        for path in sorted(meta_dir.glob("*.json")) if meta_dir.is_dir() else []:
            try:
                meta = json.loads(path.read_text())
                if _alive(meta.get("owner_pid")):
                    continue  # another live engine (a standalone run) owns it
                cg = by_name.get(meta["id"])
                if cg is None or not cg.populated():
                    if cg is not None:
                        cg.remove()
                    path.unlink()
                    continue
                m = parse(meta["manifest_text"].encode(), meta["manifest_path"], home=meta.get("home") or None)
                slot = self._acquire_slot(m, meta["mode"])
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
            self._note_landlock(inst)
            self.instances[cg.id] = inst
            for pid in cg.pids():
                self._resume(pid)
            self._write(inst, None, {"kind": "lifecycle", "pid": inst.leader_pid, "tgid": inst.leader_pid,
                                     "detail": {"event": "readopted", "pids": cg.pids()}, "verdict": None,
                                     "actions": []})
            adopted.append(inst)
        return adopted

    def check_resources(self) -> None:
        """Record each containment by a limit since the last look: an OOM kill inside the
        instance's memory cap, or a fork its pids cap refused."""
        for inst in list(self.instances.values()):
            now = resource_events(inst.cgroup)
            for key, value in now.items():
                delta = value - inst.resource_seen.get(key, 0)
                if delta <= 0:
                    continue
                inst.resource_seen[key] = value
                inst.violations += 1
                self.stats.violation(inst.manifest.name, "resource", "killed" if key == "oom_kill" else "denied",
                                     ["oom-kill:cgroup" if key == "oom_kill" else "eagain:pids.max"])
                resource = "memory" if key == "oom_kill" else "pids"
                limit = inst.limits.get("memory_bytes" if resource == "memory" else "pids_max")
                self._write(inst, None, {
                    "kind": "resource", "pid": inst.leader_pid, "tgid": inst.leader_pid,
                    "detail": {"resource": resource, "event": key, "count": delta, "limit": limit},
                    "verdict": "killed" if key == "oom_kill" else "denied",
                    "actions": ["oom-kill:cgroup" if key == "oom_kill" else "eagain:pids.max"]})

    def started(self, inst: Instance, pid: int, argv: list[str], sandbox: dict[str, Any] | None = None) -> None:
        """The launcher started ``argv`` as ``pid`` inside the instance; ``sandbox`` says what it enforced."""
        inst.leader_pid = pid
        inst.argv = list(argv)
        inst.sandbox = dict(sandbox or {})
        self._note_landlock(inst)
        self._persist(inst)
        detail: dict[str, Any] = {"event": "start", "argv": list(argv), "cgroup": str(inst.cgroup.v2)}
        if sandbox is not None:
            detail["sandbox"] = inst.sandbox
        self._write(inst, None, {"kind": "lifecycle", "pid": pid, "tgid": pid, "comm": os.path.basename(argv[0])[:15],
                                 "detail": detail, "verdict": None, "actions": []})

    def _note_landlock(self, inst: Instance) -> None:
        """What the instance's Landlock ruleset grants (to tell its denials apart), and the kernel flag
        that spares its processes the hold for a pending path."""
        if "landlock-fs" not in inst.sandbox.get("layers", []):
            return
        ll = landlock.plan(inst.manifest, 5, inst.mode)
        inst.landlock_grants = [(os.path.realpath(p) + ("/" if p.endswith("/") else ""), r) for p, r in ll.paths]
        inst.landlock_handled = ll.handled_fs
        self.sensor.set_landlocked(inst.cgroup_id, True)

    def leader_exited(self, inst: Instance, status: int) -> None:
        inst.exit_status = status
        inst.launcher_done = True

    def release(self, inst: Instance, *, kill: bool = False) -> None:
        """Forget an instance: stop its processes if asked, detach, remove its cgroup, record it."""
        if kill and inst.cgroup.populated():
            inst.cgroup.kill()
            deadline = time.monotonic() + 5
            while inst.cgroup.populated() and time.monotonic() < deadline:
                time.sleep(0.01)
        self.sensor.consume()  # attribute the last events while the cgroup is still bound
        self.check_resources()
        repeats = self.sensor.suppressed(inst.cgroup_id)
        self.sensor.unbind(inst.cgroup_id)
        self.sensor.detach_cgroup(inst.cgroup.v2)
        try:
            inst.cgroup.remove()
        except EbpfguardError as err:
            log.error("%s", err)
        self.instances.pop(inst.cgroup_id, None)
        self._meta(inst.id).unlink(missing_ok=True)
        self._release_slot(inst.slot)
        self._write(inst, None, {"kind": "lifecycle", "pid": inst.leader_pid, "tgid": inst.leader_pid,
                                 "detail": {"event": "stop", "exit_status": inst.exit_status,
                                            "violations": inst.violations, "repeats_suppressed": repeats,
                                            "killed_by_agent": kill},
                                 "verdict": None, "actions": ["cgroup.kill"] if kill else []})

    def reap(self) -> None:
        """Release every instance whose launcher is done and whose cgroup has emptied."""
        self.check_resources()
        for inst in list(self.instances.values()):
            if inst.launcher_done and not inst.cgroup.populated():
                self.release(inst)

    def poll(self, timeout_ms: int = 100) -> None:
        """Handle what the kernel reported; the records of one poll are one group commit."""
        with self.log.batch():
            self.sensor.poll(timeout_ms)
            self.count_repeats()

    def count_repeats(self) -> None:
        """Identical repeats the kernel did not record are still violations: they count toward the
        escalation window (freeze_after, kill_after) as if each had been recorded."""
        for inst in list(self.instances.values()):
            n = self.sensor.suppressed(inst.cgroup_id)
            d = n - inst.repeats_seen
            if d <= 0:
                continue
            inst.repeats_seen = n
            inst.violations += d
            if inst.mode != "enforce" or not inst.manifest.escalation or inst.cgroup_id not in self.instances:
                continue
            limit = max(int(inst.manifest.escalation.get("kill_after", 0)),
                        int(inst.manifest.escalation.get("freeze_after", 0))) + 1
            now = time.monotonic()
            inst.recent.extend([now] * min(d, limit))
            actions = self._escalate(inst, now)
            if actions:
                self._write(inst, None, {"kind": "lifecycle", "pid": inst.leader_pid, "tgid": inst.leader_pid,
                                         "detail": {"event": "escalation", "repeats": d}, "verdict": None,
                                         "actions": actions})

    def close(self) -> None:
        for inst in list(self.instances.values()):
            self.release(inst, kill=True)
        self.sensor.close()

    # ---- events ---------------------------------------------------------------------------------
    def _on_raw(self, raw: Any) -> None:
        try:
            self.handle(decode(raw))
        except Exception:  # an exception must not vanish inside the ring-buffer callback
            self.record_errors += 1
            log.exception("failed to handle a kernel event")

    def handle(self, ev: Event) -> dict[str, Any] | None:
        inst = self.instances.get(ev.cgroup_id)
        slot = self.slots.get(ev.slot)
        if inst is None and slot is None:
            log.warning("event from unknown cgroup %d (pid %d): %s", ev.cgroup_id, ev.pid, ev.detail())
            return None
        actions: list[str] = []
        if ev.verdict == "pending":
            try:
                violation = slot is not None and self._resolve(ev, slot)
            finally:
                if ev.flags & c("EV_HELD") and ev.verdict != "killed":
                    self._resume(ev.tgid)
            if not violation:
                return None
            actions.extend(ev.extra.pop("_actions", []))
        if ev.verdict == "detected" and inst is not None and self._landlock_denied(inst, ev):
            ev.verdict = "denied"
            actions.append("eacces:landlock")
        seccomp = bool(ev.flags & c("EV_SECCOMP"))
        if ev.verdict == "killed" and not actions:
            actions.append("sigsys:seccomp" if seccomp and not ev.flags & c("EV_AT_EXIT") else "sigkill:kernel")
        elif ev.verdict == "denied" and not actions:
            if ev.flags & c("EV_LSM"):
                actions.append("eacces:lsm" if ev.kind in ("file", "exec") else "eperm:lsm")
            else:
                actions.append("eperm:seccomp" if seccomp else "eperm:kernel")
        rec = {"kind": ev.kind, "pid": ev.pid, "tgid": ev.tgid, "uid": ev.uid, "comm": ev.comm,
               "detail": ev.detail(), "verdict": ev.verdict, "actions": actions, "time": rfc3339_ns(ev.ts_ns)}
        if ev.kind != "lifecycle" and inst is not None:
            inst.violations += 1
            taken = self.respond(inst, ev.kind)
            if taken:
                actions.extend(taken)
                rec["response_ns"] = now_ns() - ev.ts_ns  # detection to action done
                self.stats.response(rec["response_ns"] / 1e9)
        if ev.kind != "lifecycle":
            m = inst.manifest if inst else slot.manifest if slot else None
            self.stats.violation(m.name if m else "?", ev.kind, ev.verdict or "?", actions)
        return self._write(inst, slot, rec, cgroup_id=ev.cgroup_id)

    # ---- the escalation ladder ------------------------------------------------------------------
    def respond(self, inst: Instance, kind: str) -> list[str]:
        """The user-space steps after a violation in enforce mode: the kind's response (throttle,
        freeze, kill), the escalation window (freeze_after, kill_after) and network quarantine."""
        if inst.mode != "enforce" or inst.cgroup_id not in self.instances:
            return []
        m = inst.manifest
        now = time.monotonic()
        inst.recent.append(now)
        step = m.response.get(kind)
        if step == "kill":
            self.kill(inst)
            return ["cgroup.kill"]
        actions = self._escalate(inst, now)
        if actions and actions[0].startswith("cgroup.kill"):
            return actions
        if step == "freeze" and inst.state != "frozen":
            self.freeze(inst)
            actions.append("cgroup.freeze")
        elif step == "throttle" and inst.state == "running" and not actions:
            throttle(inst.cgroup)
            inst.state = "throttled"
            actions.append("throttle")
        if m.quarantine and kind in ("network", "privilege") and not inst.quarantined:
            self.quarantine(inst, True)
            actions.append("quarantine")
        return actions

    def _escalate(self, inst: Instance, now: float) -> list[str]:
        """The escalation window alone: kill_after, then freeze_after violations within it."""
        esc = inst.manifest.escalation
        window = parse_duration(str(esc.get("window", "60s")))
        while inst.recent and now - inst.recent[0] > window:
            inst.recent.popleft()
        n = len(inst.recent)
        if n >= esc.get("kill_after", 1 << 30):
            self.kill(inst)
            return [f"cgroup.kill:escalation({n} in {window:g}s)"]
        if n >= esc.get("freeze_after", 1 << 30) and inst.state != "frozen":
            self.freeze(inst)
            return [f"cgroup.freeze:escalation({n} in {window:g}s)"]
        return []

    def freeze(self, inst: Instance) -> None:
        freeze(inst.cgroup, True)
        inst.state = "frozen"

    def thaw(self, inst: Instance) -> None:
        freeze(inst.cgroup, False)
        inst.state = "running"
        inst.recent.clear()

    def kill(self, inst: Instance) -> None:
        if inst.state == "frozen":  # a frozen task dies only once thawed
            freeze(inst.cgroup, False)
        inst.cgroup.kill()
        inst.state = "killed"

    def quarantine(self, inst: Instance, on: bool) -> None:
        self.sensor.quarantine(inst.cgroup_id, on)
        inst.quarantined = on

    def operator(self, inst: Instance, action: str) -> None:
        """An action asked for by hand (ebpfguard freeze/thaw/kill/quarantine), recorded as such."""
        {"freeze": self.freeze, "thaw": self.thaw, "kill": self.kill,
         "quarantine": lambda i: self.quarantine(i, True), "lift": lambda i: self.quarantine(i, False)}[action](inst)
        self._write(inst, None, {"kind": "lifecycle", "pid": inst.leader_pid, "tgid": inst.leader_pid,
                                 "detail": {"event": action, "by": "operator"}, "verdict": None,
                                 "actions": [action]})

    def _resolve(self, ev: Event, slot: Slot) -> bool:
        """Finish a decision the kernel left pending. True when it is a violation."""
        raw_path = ev.path
        try:
            path = self._full_path(ev)
        except OSError as err:
            path = None
            ev.extra["unresolved"] = f"{err.strerror}: the process is gone or the fd is closed"
        if path is not None:
            ev.path = path
            if path != raw_path:
                ev.extra["raw_path"] = raw_path
            if slot.compiled.allows_path(path, ev.access):
                return False
        if slot.mode != "enforce" or slot.manifest.response.get(ev.kind) == "alert":
            ev.verdict = "allowed"
        elif slot.manifest.response.get(ev.kind) == "kill":
            try:
                os.kill(ev.tgid, signal.SIGKILL)
                ev.verdict = "killed"
                ev.extra["_actions"] = ["sigkill:agent"]
            except ProcessLookupError:
                ev.verdict = "detected"
        else:
            ev.verdict = "detected"
        return True

    @staticmethod
    def _landlock_denied(inst: Instance, ev: Event) -> bool:
        """Did the instance's Landlock ruleset refuse this access? (It decides on resolved objects:
        compare the real path with the real paths of the grants.) O_PATH opens are not checked."""
        if not inst.landlock_grants or ev.kind not in ("file", "exec") or not ev.path.startswith("/"):
            return False
        if ev.aux & 0o10000000:  # O_PATH
            return False
        need = {"read": landlock.FS["read_file"] | landlock.FS["read_dir"], "write": landlock.FS["write_file"]
                | landlock.FS["make_reg"] | landlock.FS["remove_file"], "exec": landlock.FS["execute"]}[ev.access]
        if not inst.landlock_handled & need:
            return False
        real = os.path.realpath(ev.path)
        for path, rights in inst.landlock_grants:
            covers = real.startswith(path) or real == path.rstrip("/") if path.endswith("/") else real == path
            if covers and rights & need:
                return False
        return True

    @staticmethod
    def _resume(tgid: int) -> None:
        try:
            os.kill(tgid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def _full_path(self, ev: Event) -> str:
        path = ev.path
        if ev.flags & c("EV_UNREADABLE"):
            try:
                with open(f"/proc/{ev.pid}/mem", "rb", buffering=0) as mem:
                    mem.seek(ev.uptr)
                    path = mem.read(4096).split(b"\0", 1)[0].decode(errors="surrogateescape")
            except OSError:
                # a held execve stops only once the new program is in place: the old memory is gone,
                # and /proc/PID/exe is what it executed
                if ev.kind != "exec":
                    raise
                return os.readlink(f"/proc/{ev.tgid}/exe")
            if not path:
                if ev.kind == "exec":  # the new program's memory is at that address now: same answer
                    return os.readlink(f"/proc/{ev.tgid}/exe")
                raise OSError(errno.EFAULT, "the path's user memory reads as empty")
        if not path and ev.flags & c("EV_EMPTY_PATH"):
            return os.readlink(f"/proc/{ev.tgid}/fd/{ev.dirfd}")
        if not path.startswith("/"):
            base = os.readlink(f"/proc/{ev.pid}/cwd" if ev.dirfd == AT_FDCWD else f"/proc/{ev.tgid}/fd/{ev.dirfd}")
            path = os.path.join(base, path)
        return "/" + os.path.normpath(path).lstrip("/")  # normpath keeps a leading "//"

    def _write(self, inst: Instance | None, slot: Slot | None, rec: dict[str, Any],
               cgroup_id: int | None = None) -> dict[str, Any] | None:
        m = inst.manifest if inst else slot.manifest if slot else None
        full = {"time": rfc3339_ns(now_ns()), "extension": m.name if m else None,
                "instance": inst.id if inst else None,
                "cgroup_id": inst.cgroup_id if inst else cgroup_id,
                "mode": inst.mode if inst else slot.mode if slot else None,
                "policy_sha256": m.sha256 if m else None, "prev_sha256": None, "signature": None, **rec}
        try:
            written = self.log.append(full)
        except EbpfguardError as err:
            self.record_errors += 1
            log.error("%s", err)
            return None
        for sub in list(self.subscribers):
            try:
                sub(written)
            except Exception:
                self.subscribers.remove(sub)
        return written

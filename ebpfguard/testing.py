"""A sensor that satisfies the backend contract (sensor.SensorLike) in memory, for tests that drive
the whole pipeline without root: they queue kernel events with emit() and read back what the engine
wrote to the maps. Like httpx's MockTransport, it ships with the library so that users' tests can
use it too."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ebpfguard.common.abi import EvFlag, Kind, Verdict, c
from ebpfguard.manifest.compile import CompiledPolicy


class ManualClock:
    """A monotonic clock that moves only when a test moves it (``clock.t += 60``), for the ladder's windows."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def raw_event(kind: Kind, verdict: Verdict, *, cgroup_id: int, slot: int = 0, pid: int = 4242,
              tgid: int | None = None, uid: int = 65534, comm: str = "ext", path: str = "", op: int = 0,
              flags: EvFlag | int = 0, syscall_nr: int = -1, dirfd: int = -100, family: int = 0, port: int = 0,
              proto: int = 0, addr: bytes = b"", uptr: int = 0, aux: int = 0, repeats: int = 0,
              ts_ns: int | None = None) -> SimpleNamespace:
    """An object shaped like the struct eg_event bcc hands over (events.h), as decode() reads it."""
    return SimpleNamespace(
        ts_ns=time.monotonic_ns() if ts_ns is None else ts_ns, cgroup_id=cgroup_id, pid=pid,
        tgid=pid if tgid is None else tgid, uid=uid, slot=slot, kind=int(kind), verdict=int(verdict),
        syscall_nr=syscall_nr, flags=int(flags), dirfd=dirfd, op=op, family=family, port=port, proto=proto,
        addr=addr.ljust(16, b"\0"), comm=comm.encode()[:15].ljust(16, b"\0"),
        path=path.encode()[: c("PATH_MAX") - 1].ljust(c("PATH_MAX"), b"\0"), uptr=uptr, aux=aux,
        repeats=repeats)


class FakeSensor:
    """The maps as dicts, the ring buffer as a list."""

    def __init__(self) -> None:
        self.lsm = False
        self.gates: set[str] = set()
        self.missing_gates: set[str] = set()
        self.policies: dict[int, CompiledPolicy] = {}
        self.slots: dict[int, int] = {}          # cgroup id -> slot
        self.attached: set[str] = set()
        self.quarantined: set[int] = set()
        self.traced: set[int] = set()
        self.landlocked: set[int] = set()
        self.landlock_reports: set[int] = set()
        self.mountns: set[int] = set()
        self.seccomp_reports: set[int] = set()
        self.repeats: dict[int, int] = {}        # cgroup id -> suppressed
        self.over: dict[int, int] = {}           # cgroup id -> records over its share
        self.ring: list[Any] = []
        self.kernel_counters = {"events": 0, "drops": 0, "kills": 0, "denials": 0, "suppressed": 0,
                                "over_share": 0}
        self.prog_stats: dict[str, tuple[int, int]] = {}  # program -> (run ns, runs)
        self.closed = False
        self._callback: Callable[[Any], None] | None = None

    def emit(self, raw: Any) -> None:
        self.ring.append(raw)
        self.kernel_counters["events"] += 1

    def open_events(self, callback: Callable[[Any], None]) -> None:
        self._callback = callback

    def poll(self, timeout_ms: int) -> None:
        self.consume()

    def consume(self) -> None:
        while self.ring and self._callback is not None:
            self._callback(self.ring.pop(0))

    def idle_check(self, now: float | None = None) -> None:
        pass

    def write_policy(self, cp: CompiledPolicy) -> None:
        self.policies[cp.slot] = cp

    def ensure_syscall_gates(self, names: Iterable[str]) -> None:
        self.gates |= set(names)

    def clear_policy(self, cp: CompiledPolicy) -> None:
        self.policies.pop(cp.slot, None)

    def attach_cgroup(self, path: Path) -> None:
        self.attached.add(str(path))

    def detach_cgroup(self, path: Path) -> None:
        self.attached.discard(str(path))

    def bind(self, cgroup_id: int, slot: int) -> None:
        self.slots[cgroup_id] = slot

    def unbind(self, cgroup_id: int) -> None:
        self.slots.pop(cgroup_id, None)
        self.quarantined.discard(cgroup_id)
        self.landlocked.discard(cgroup_id)
        self.mountns.discard(cgroup_id)
        self.seccomp_reports.discard(cgroup_id)
        self.repeats.pop(cgroup_id, None)
        self.over.pop(cgroup_id, None)

    def suppressed(self, cgroup_id: int) -> int:
        return self.repeats.get(cgroup_id, 0)

    def over_share(self, cgroup_id: int) -> int:
        return self.over.get(cgroup_id, 0)

    def set_seccomp_reports(self, cgroup_id: int, on: bool) -> None:
        (self.seccomp_reports.add if on else self.seccomp_reports.discard)(cgroup_id)

    def set_landlocked(self, cgroup_id: int, on: bool, reports: bool = False) -> None:
        (self.landlocked.add if on else self.landlocked.discard)(cgroup_id)
        (self.landlock_reports.add if on and reports else self.landlock_reports.discard)(cgroup_id)

    def set_mountns(self, cgroup_id: int, on: bool) -> None:
        (self.mountns.add if on else self.mountns.discard)(cgroup_id)

    def quarantine(self, cgroup_id: int, on: bool) -> None:
        (self.quarantined.add if on else self.quarantined.discard)(cgroup_id)

    def set_activity(self, cgroup_id: int, on: bool) -> None:
        (self.traced.add if on else self.traced.discard)(cgroup_id)

    def counters(self) -> dict[str, int]:
        return dict(self.kernel_counters)

    def program_stats(self) -> dict[str, tuple[int, int]]:
        return dict(self.prog_stats)

    def close(self) -> None:
        self.closed = True

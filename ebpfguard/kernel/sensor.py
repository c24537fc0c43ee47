"""The backend contract between the engine and the kernel: what a sensor must do. kernel/loader.py's
Sensor is the real one (bcc, real programs and maps); ebpfguard.testing.FakeSensor satisfies the same
contract in memory, so that the pipeline, the ladder and escalation are tested without root."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from ebpfguard.manifest.compile import CompiledPolicy


class SensorLike(Protocol):
    lsm: bool
    gates: set[str]            # syscalls whose gate programs are attached
    missing_gates: set[str]    # denied syscalls this kernel has no tracepoint for

    def open_events(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback`` with each raw kernel event (an eg_event) that poll() or consume() reads."""

    def poll(self, timeout_ms: int) -> None: ...

    def consume(self) -> None:
        """Read what is already in the ring buffer, without waiting."""

    def idle_check(self, now: float | None = None) -> None:
        """Detach what nothing needs any more (the syscall tracepoints, once no cgroup is bound)."""

    def write_policy(self, cp: CompiledPolicy) -> None: ...

    def ensure_syscall_gates(self, names: Iterable[str]) -> None:
        """Record these denied syscalls at sys_enter/sys_exit (for instances whose seccomp filter does
        not report its refusals: adopted, audit mode, alert responses, no audit reader)."""

    def clear_policy(self, cp: CompiledPolicy) -> None: ...

    def attach_cgroup(self, path: Path) -> None:
        """Attach the network programs to a cgroup (they then decide for every process in it)."""

    def detach_cgroup(self, path: Path) -> None: ...

    def bind(self, cgroup_id: int, slot: int) -> None:
        """Put a cgroup under a policy slot: the hooks start deciding for it."""

    def unbind(self, cgroup_id: int) -> None:
        """Forget a cgroup: slot, filter, quarantine, landlocked and repeat counts."""

    def suppressed(self, cgroup_id: int) -> int:
        """Identical repeats the kernel counted but did not record, for this cgroup, in total."""

    def over_share(self, cgroup_id: int) -> int:
        """Records this cgroup could not reserve because it held its share of the ring buffer, in total."""

    def set_landlocked(self, cgroup_id: int, on: bool, reports: bool = False) -> None: ...

    def set_seccomp_reports(self, cgroup_id: int, on: bool) -> None:
        """The cgroup's seccomp filter reports its refusals to audit: the sys_exit gate skips them."""

    def set_mountns(self, cgroup_id: int, on: bool) -> None:
        """The cgroup's processes run in the instance's own mount namespace (its _NS unix grants hold)."""

    def quarantine(self, cgroup_id: int, on: bool) -> None: ...

    def set_activity(self, cgroup_id: int, on: bool) -> None:
        """Stream the cgroup's allowed actions as activity events (trace --activity)."""

    def counters(self) -> dict[str, int]:
        """events, drops, kills, denials, suppressed, over_share: the kernel's global counters."""

    def program_stats(self) -> dict[str, tuple[int, int]]: ...

    def close(self) -> None: ...

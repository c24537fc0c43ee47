"""Decoded kernel events and the forensic record they become.

The kernel's struct eg_event (bpf/include/events.h) arrives as the ctypes type bcc builds from the compiled
program; decode() copies it into an Event at once, because the ring-buffer memory is reused.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from ebpfguard.common.abi import Access, EvFlag, LifeOp, NetOp, c, kind_name, verdict_name
from ebpfguard.common.clock import now_ns, rfc3339_ns
from ebpfguard.manifest.syscall_table import SYSCALL_NAMES_X86_64

__all__ = ["Event", "Origin", "decode", "now_ns", "rfc3339_ns"]

SYSCALL_NAMES = SYSCALL_NAMES_X86_64
PROTO_NAMES = {0: "any", 6: "tcp", 17: "udp"}
UNIX_TYPES = {1: "stream", 2: "dgram", 5: "seqpacket"}
FAMILY_UNIX = c("FAMILY_UNIX")

# bpf_ktime_get_ns() is CLOCK_MONOTONIC; records carry wall-clock time.
_MONO_TO_REAL = time.clock_gettime_ns(time.CLOCK_REALTIME) - time.clock_gettime_ns(time.CLOCK_MONOTONIC)


_FLAG_LABELS = [(int(f), f.labels()[0]) for f in EvFlag]


def _name(enum: Any, value: int) -> str:
    try:
        return str(enum(value).name.lower())
    except ValueError:
        return str(value)


class Origin(Protocol):
    """What a record's action came from: a kernel Event, or a Report of another layer (decide.Report)."""

    @property
    def kind(self) -> str: ...
    @property
    def ts_ns(self) -> int | None: ...
    @property
    def pid(self) -> int | None: ...
    @property
    def tgid(self) -> int | None: ...
    @property
    def uid(self) -> int | None: ...
    @property
    def comm(self) -> str | None: ...
    @property
    def cgroup_id(self) -> int | None: ...


@dataclass
class Event:
    ts_ns: int            # wall clock, ns since the epoch
    cgroup_id: int
    pid: int
    tgid: int
    uid: int
    slot: int
    kind: str
    verdict: str | None
    syscall_nr: int
    flags: int
    dirfd: int
    op: int
    family: int = 0
    port: int = 0
    proto: int = 0
    addr: bytes = b""
    comm: str = ""
    path: str = ""
    uptr: int = 0
    aux: int = 0
    repeats: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def syscall(self) -> str | None:
        return SYSCALL_NAMES.get(self.syscall_nr) if self.syscall_nr >= 0 else None

    @property
    def access(self) -> str:
        return _name(Access, self.op)

    def flag_names(self) -> list[str]:
        return [label for bit, label in _FLAG_LABELS if self.flags & bit]

    def has(self, flag: EvFlag) -> bool:
        return bool(self.flags & flag.value)

    def address(self) -> str:
        if self.family == 4:
            return str(ipaddress.IPv4Address(self.addr[:4]))
        if self.family == 6:
            return str(ipaddress.IPv6Address(self.addr[:16]))
        return ""

    def detail(self) -> dict[str, Any]:
        if self.kind in ("file", "exec"):
            d: dict[str, Any] = {"path": self.path, "access": self.access, "syscall": self.syscall}
            if self.flag_names():
                d["flags"] = self.flag_names()
        elif self.kind == "network" and self.family == FAMILY_UNIX:
            d = {"op": _name(NetOp, self.op), "socket": "unix", "path": self.path,
                 "type": UNIX_TYPES.get(self.proto, str(self.proto))}
            if self.flag_names():
                d["flags"] = self.flag_names()
        elif self.kind == "network":
            d = {"op": _name(NetOp, self.op), "address": self.address(), "port": self.port,
                 "proto": PROTO_NAMES.get(self.proto, str(self.proto))}
            if self.flag_names():
                d["flags"] = self.flag_names()
        elif self.kind in ("syscall", "privilege"):
            d = {"syscall": self.syscall, "nr": self.syscall_nr}
            if self.syscall == "kill" and self.has(EvFlag.LSM):  # task_kill: the process out of its reach
                d["target_pid"], d["signal"] = self.aux, self.op
            if self.flag_names():
                d["flags"] = self.flag_names()
        elif self.kind == "lifecycle":
            d = {"event": _name(LifeOp, self.op)}
            if self.path:
                d["path"] = self.path
        else:
            d = {}
        if self.repeats:
            d["repeats_suppressed"] = self.repeats
        d.update(self.extra)
        return d


def decode(raw: Any) -> Event:
    """Copy a kernel struct eg_event into an Event."""
    return Event(
        ts_ns=int(raw.ts_ns) + _MONO_TO_REAL, cgroup_id=int(raw.cgroup_id), pid=int(raw.pid),
        tgid=int(raw.tgid), uid=int(raw.uid), slot=int(raw.slot), kind=kind_name(int(raw.kind)),
        verdict=verdict_name(int(raw.verdict)), syscall_nr=int(raw.syscall_nr), flags=int(raw.flags),
        dirfd=int(raw.dirfd), op=int(raw.op), family=int(raw.family), port=int(raw.port),
        proto=int(raw.proto), addr=bytes(raw.addr), comm=bytes(raw.comm).split(b"\0", 1)[0].decode(errors="replace"),
        path=bytes(raw.path).split(b"\0", 1)[0].decode(errors="surrogateescape"), uptr=int(raw.uptr),
        aux=int(raw.aux), repeats=int(raw.repeats),
    )

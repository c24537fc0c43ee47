"""The constants of bpf/include/ (events.h: the record; maps.h: the maps), read from those headers so that
they are defined once.

This module does not import bcc: the pure manifest compiler uses it too.
"""

from __future__ import annotations

import re
from enum import IntEnum, IntFlag
from functools import lru_cache

from ebpfguard.common.resources import bpf_include_dir

_DEFINE = re.compile(r"^#define\s+(EG_[A-Z0-9_]+)\s+(-?\d+)\s*(?:/\*.*)?$")


@lru_cache(maxsize=1)
def constants() -> dict[str, int]:
    """Every "#define EG_NAME integer" of the shared headers (bpf/include/*.h); a name defined twice is an
    error."""
    out: dict[str, int] = {}
    for header in sorted(bpf_include_dir().glob("*.h")):
        for line in header.read_text().splitlines():
            m = _DEFINE.match(line.strip())
            if not m:
                continue
            if m.group(1) in out:
                raise ValueError(f"{m.group(1)} is defined twice in bpf/include/ ({header.name})")
            out[m.group(1)] = int(m.group(2))
    return out


def c(name: str) -> int:
    """The value of EG_<name> in bpf/include/."""
    return constants()["EG_" + name]


class Kind(IntEnum):
    """Violation kinds (EG_KIND_*); the record's "kind" is the lower-case name."""

    FILE = c("KIND_FILE")
    EXEC = c("KIND_EXEC")
    NETWORK = c("KIND_NETWORK")
    SYSCALL = c("KIND_SYSCALL")
    PRIVILEGE = c("KIND_PRIVILEGE")
    RESOURCE = c("KIND_RESOURCE")
    LIFECYCLE = c("KIND_LIFECYCLE")

    @property
    def label(self) -> str:
        return self.name.lower()


class Verdict(IntEnum):
    """What the kernel reached (EG_V_*); NONE (lifecycle) is recorded as null."""

    NONE = c("V_NONE")
    ALLOWED = c("V_ALLOWED")
    DETECTED = c("V_DETECTED")
    DENIED = c("V_DENIED")
    KILLED = c("V_KILLED")
    PENDING = c("V_PENDING")
    SHADOW = c("V_SHADOW")
    ACTIVITY = c("V_ACTIVITY")

    @property
    def label(self) -> str | None:
        return None if self is Verdict.NONE else self.name.lower()


class EvFlag(IntFlag):
    """eg_event.flags (EG_EV_*); records list the set ones by their lower-case, dashed names."""

    RELATIVE = c("EV_RELATIVE")
    DOTDOT = c("EV_DOTDOT")
    TRUNCATED = c("EV_TRUNCATED")
    UNREADABLE = c("EV_UNREADABLE")
    EMPTY_PATH = c("EV_EMPTY_PATH")
    HELD = c("EV_HELD")
    SECCOMP = c("EV_SECCOMP")
    AT_EXIT = c("EV_AT_EXIT")
    QUARANTINE = c("EV_QUARANTINE")
    LSM = c("EV_LSM")

    def labels(self) -> list[str]:
        return [f.name.lower().replace("_", "-") for f in EvFlag if f.name and self & f]


class Access(IntEnum):
    READ = c("ACC_READ")
    WRITE = c("ACC_WRITE")
    EXEC = c("ACC_EXEC")
    UNIX = c("ACC_UNIX")
    UNIX_NS = c("ACC_UNIX_NS")
    WATCH = c("ACC_WATCH")  # + READ, WRITE or EXEC: a path where a correlation rule starts


class NetOp(IntEnum):
    CONNECT = c("NET_CONNECT")
    SEND = c("NET_SEND")
    BIND = c("NET_BIND")


class LifeOp(IntEnum):
    EXEC = c("LIFE_EXEC")
    EXIT = c("LIFE_EXIT")


def _label(enum: type[IntEnum], value: int, fallback: str) -> str:
    try:
        return enum(value).name.lower()
    except ValueError:
        return f"{fallback}{value}"


def kind_name(value: int) -> str:
    return _label(Kind, value, "kind")


def kind_value(name: str) -> int:
    return int(Kind[name.upper()])


def verdict_name(value: int) -> str | None:
    try:
        return Verdict(value).label
    except ValueError:
        return f"verdict{value}"

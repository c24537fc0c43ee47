"""The constants of bpf/events.h, read from that file so that they are defined once.

This module does not import bcc: the pure manifest compiler uses it too.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ..resources import bpf_dir

_DEFINE = re.compile(r"^#define\s+(EG_[A-Z0-9_]+)\s+(-?\d+)\s*(?:/\*.*)?$")


@lru_cache(maxsize=1)
def constants() -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (bpf_dir() / "events.h").read_text().splitlines():
        m = _DEFINE.match(line.strip())
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def c(name: str) -> int:
    """The value of EG_<name> in events.h."""
    return constants()["EG_" + name]


KIND_NAMES = {"FILE": "file", "EXEC": "exec", "NETWORK": "network", "SYSCALL": "syscall",
              "PRIVILEGE": "privilege", "RESOURCE": "resource", "LIFECYCLE": "lifecycle"}


def kind_name(value: int) -> str:
    for key, name in KIND_NAMES.items():
        if c("KIND_" + key) == value:
            return name
    return f"kind{value}"


def kind_value(name: str) -> int:
    for key, n in KIND_NAMES.items():
        if n == name:
            return c("KIND_" + key)
    raise KeyError(name)


VERDICTS = {"V_NONE": None, "V_ALLOWED": "allowed", "V_DETECTED": "detected", "V_DENIED": "denied",
            "V_KILLED": "killed", "V_PENDING": "pending"}


def verdict_name(value: int) -> str | None:
    for key, name in VERDICTS.items():
        if c(key) == value:
            return name
    return f"verdict{value}"

"""The exception tree of ebpfguard. Lower-layer errors (bcc, OSError) are translated at one boundary
each (manifest loading, kernel loader, cgroups, control socket) with ``raise ... from err``.

    EbpfguardError
    ├── ManifestError          a manifest is invalid; carries every problem found, each precise
    ├── KernelError            eBPF could not be compiled, loaded or attached
    ├── CgroupError            a cgroup could not be created, joined or removed
    ├── ControlError           the agent's control socket refused or failed a request
    └── ForensicsError         the forensic log could not be written or read
"""

from __future__ import annotations

from dataclasses import dataclass


class EbpfguardError(Exception):
    """Base class of every error ebpfguard raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One precise manifest problem: where, which field, what is wrong."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ManifestError(EbpfguardError):
    exit_code = 2  # bad input

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class KernelError(EbpfguardError):
    errno: int = 0  # the kernel's errno, where a request was refused with one


class CgroupError(EbpfguardError):
    pass


class ControlError(EbpfguardError):
    pass


class ForensicsError(EbpfguardError):
    pass

"""x86-64 system call names and numbers, read from libseccomp (Debian's python3-seccomp).

libseccomp carries the kernel's syscall tables for every architecture and follows each kernel release;
this module reads its x86-64 table once, at import, into two read-only mappings:
SYSCALLS_X86_64 (name -> number: manifest validation, the compiler, the seccomp filter, the simulator)
and SYSCALL_NAMES_X86_64 (number -> name: event decoding). A name libseccomp does not know is not a
syscall here: a manifest naming one is refused with a precise error, and an event carrying such a
number has no name. Debian 12's libseccomp (2.5.4) knows the calls up to futex_requeue (456, Linux 6.7).

x86-64, whatever the machine: the agent is x86-64 only. The launcher's seccomp filter admits only
AUDIT_ARCH_X86_64 calls (so the numbers it compares must be x86-64's), and bpf/include/events.h's
EG_NR_* and the event layout are x86-64's. On another architecture this module gives the same answers
(libseccomp knows x86-64's table on any host), so a manifest validates the same everywhere; the agent
does not run there (the seccomp filter would kill an extension at its first call).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

try:
    import seccomp
except ImportError as err:  # an install without its Debian dependency
    raise ImportError("ebpfguard needs libseccomp's Python binding: apt-get install python3-seccomp") from err

# x86-64's own calls are numbered below 512: the kernel's syscall_64.tbl numbers x32's from 512 up.
_NR_LIMIT = 512
# Calls bpf/files.bpf.c hooks (kernel/loader.py's OPTIONAL_TRACEPOINTS, Linux 6.13) that Debian 12's
# libseccomp predates; their events must still be named (decide.py treats them apart). libseccomp's
# own answer wins once it knows them; tests/unit/test_syscalls.py checks that the two agree.
_HOOKED_NEWER_THAN_LIBSECCOMP = {"setxattrat": 463, "removexattrat": 466}


def _read() -> dict[str, int]:
    table = dict(_HOOKED_NEWER_THAN_LIBSECCOMP)
    for nr in range(_NR_LIMIT):
        try:
            name = seccomp.resolve_syscall(seccomp.Arch.X86_64, nr)
        except ValueError:  # no call has this number
            continue
        table[name.decode()] = nr
    return table


SYSCALLS_X86_64: Mapping[str, int] = MappingProxyType(_read())
SYSCALL_NAMES_X86_64: Mapping[int, str] = MappingProxyType({nr: n for n, nr in SYSCALLS_X86_64.items()})

"""The syscall table read from libseccomp: it agrees with the kernel, and what it does not know stays an error."""

from __future__ import annotations

import ctypes
import os
import platform
import re
import threading
from pathlib import Path

import pytest
import seccomp as libseccomp

from ebpfguard.errors import ManifestError
from ebpfguard.kernel.loader import OPTIONAL_TRACEPOINTS
from ebpfguard.manifest import parse
from ebpfguard.manifest.syscall_table import _HOOKED_NEWER_THAN_LIBSECCOMP, SYSCALL_NAMES_X86_64, SYSCALLS_X86_64

UNISTD_64 = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")  # linux-libc-dev
M = """apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {name: t}
spec:
  syscalls: {deny: [ptrace, NAME]}
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="asks the running x86-64 kernel")
def test_the_running_kernel_answers_to_the_numbers() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    asked = {"getpid": os.getpid(), "getppid": os.getppid(), "getuid": os.getuid(), "geteuid": os.geteuid(),
             "getgid": os.getgid(), "gettid": threading.get_native_id()}
    assert {name: libc.syscall(SYSCALLS_X86_64[name]) for name in asked} == asked


@pytest.mark.skipif(not UNISTD_64.is_file(), reason=f"no {UNISTD_64} (linux-libc-dev)")
def test_the_kernel_headers_agree() -> None:
    header = {m[1]: int(m[2]) for m in re.finditer(r"^#define __NR_(\w+) (\d+)$", UNISTD_64.read_text(), re.M)}
    both = header.keys() & SYSCALLS_X86_64.keys()
    assert len(both) > 300, "the header and the table should share almost every call"
    assert {n: SYSCALLS_X86_64[n] for n in both} == {n: header[n] for n in both}


def test_both_directions_and_the_calls_the_agent_names() -> None:
    assert all(SYSCALL_NAMES_X86_64[nr] == name for name, nr in SYSCALLS_X86_64.items())
    assert len(SYSCALL_NAMES_X86_64) == len(SYSCALLS_X86_64)
    assert (SYSCALLS_X86_64["read"], SYSCALLS_X86_64["bpf"], SYSCALLS_X86_64["clone3"]) == (0, 321, 435)
    # the optional tracepoints' events must be named (pipeline/decide.py's NOT_LANDLOCK is by name)
    assert set(OPTIONAL_TRACEPOINTS) <= SYSCALLS_X86_64.keys()


def test_the_supplement_yields_to_libseccomp() -> None:
    """The calls added for a libseccomp that predates them: where it knows them, it says the same number."""
    for name, nr in _HOOKED_NEWER_THAN_LIBSECCOMP.items():
        known = libseccomp.resolve_syscall(libseccomp.Arch.X86_64, name)
        assert known < 0 or known == nr, (name, known, nr)


@pytest.mark.parametrize("name", ["frobnicate", "socketcall", "waitpid"])
def test_an_unknown_name_is_a_precise_error(name: str) -> None:
    """socketcall and waitpid are calls of other architectures: libseccomp gives them a negative
    pseudo-number on x86-64, which is no call."""
    with pytest.raises(ManifestError) as exc:
        parse(M.replace("NAME", repr(name)).encode(), "m.yaml")
    assert f"m.yaml:5: spec.syscalls.deny[1]: unknown syscall {name!r} (x86-64)" in str(exc.value)


def test_libseccomp_still_cannot_kill_with_the_number() -> None:
    """Why sandbox/seccomp.py builds its filter by hand (its docstring): the kill carries the syscall
    number in SECCOMP_RET_DATA, and libseccomp refuses any data with a kill. Should this start to pass
    through, the filter could be built with libseccomp."""
    f = libseccomp.SyscallFilter(defaction=libseccomp.ALLOW)
    with pytest.raises(RuntimeError):
        f.add_rule(libseccomp.KILL_PROCESS | SYSCALLS_X86_64["bpf"], "bpf")
    with pytest.raises(RuntimeError):
        libseccomp.SyscallFilter(defaction=libseccomp.KILL_PROCESS | 0xFFFF)

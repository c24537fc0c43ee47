"""A seccomp filter for an extension: EPERM for its denied syscalls, kill for the never-allowed set.

build() is pure (a classic-BPF program as bytes) and unit-tested; install() runs in the child after
no_new_privs. A killed call carries its syscall number in SECCOMP_RET_DATA, which the kernel puts in
the SIGSYS's si_errno: that is how the eBPF side records which call it was (the signal:signal_generate
tracepoint shows the siginfo's errno, not its si_syscall); another architecture or the x32 ABI is
killed with 0xFFFF there.

Built by hand, not with libseccomp (whose syscall table syscall_table.py reads): libseccomp's kill
actions carry no data. KILL_PROCESS and KILL must be exactly SECCOMP_RET_KILL_PROCESS and
SECCOMP_RET_KILL_THREAD: add_rule(KILL_PROCESS | nr, ...) and a default or bad-architecture action of
KILL_PROCESS | 0xFFFF are refused with EINVAL (sys_chk_seccomp_action() in libseccomp's src/system.c takes
data only with ERRNO(n) and TRACE(n)). A filter built there could not tell the eBPF side which call
was killed.
"""

from __future__ import annotations

import ctypes
import os
import struct

from ebpfguard.common.abi import c
from ebpfguard.manifest.syscall_table import SYSCALLS_X86_64

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000
EPERM, ENOSYS = 1, 38
LD_W_ABS, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
OFF_NR, OFF_ARCH, OFF_ARG0 = 0, 4, 16  # struct seccomp_data; OFF_ARG0 is args[0]'s low word (little endian)
# CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWTIME (events.h, shared with lsm.bpf.c)
CLONE_NS_FLAGS = c("CLONE_NS")
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2

_INSN = struct.Struct("<HBBI")


def _i(code: int, jt: int, jf: int, k: int) -> bytes:
    return _INSN.pack(code, jt, jf, k)


def build(deny: dict[str, str]) -> bytes:
    """``deny``: syscall name -> "errno" or "kill". Other syscalls are allowed; other architectures
    and the x32 ABI are killed (they would bypass the numbers below).

    When unshare is denied, so are new namespaces by the other door: clone() with a CLONE_NEW* flag
    gets EPERM, and clone3() (whose flags sit in user memory, out of seccomp's reach) gets ENOSYS,
    on which libc falls back to clone()."""
    prog = [
        _i(LD_W_ABS, 0, 0, OFF_ARCH),
        _i(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        _i(RET_K, 0, 0, RET_KILL_PROCESS | 0xFFFF),
        _i(LD_W_ABS, 0, 0, OFF_NR),
        _i(JGE_K, 0, 1, X32_SYSCALL_BIT),
        _i(RET_K, 0, 0, RET_KILL_PROCESS | 0xFFFF),
    ]
    if "unshare" in deny:
        prog += [
            _i(JEQ_K, 0, 1, SYSCALLS_X86_64["clone3"]),
            _i(RET_K, 0, 0, RET_ERRNO | ENOSYS),
            _i(JEQ_K, 0, 3, SYSCALLS_X86_64["clone"]),
            _i(LD_W_ABS, 0, 0, OFF_ARG0),
            _i(JSET_K, 0, 1, CLONE_NS_FLAGS),
            _i(RET_K, 0, 0, RET_ERRNO | EPERM),
            _i(LD_W_ABS, 0, 0, OFF_NR),
        ]
    for name in sorted(deny, key=lambda n: SYSCALLS_X86_64[n]):
        nr = SYSCALLS_X86_64[name]
        action = RET_KILL_PROCESS | nr if deny[name] == "kill" else RET_ERRNO | EPERM
        prog += [_i(JEQ_K, 0, 1, nr), _i(RET_K, 0, 0, action)]
    prog.append(_i(RET_K, 0, 0, RET_ALLOW))
    return b"".join(prog)


_libc = ctypes.CDLL(None, use_errno=True)


def no_new_privs() -> None:
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"PR_SET_NO_NEW_PRIVS: {os.strerror(e)}")


SYS_SECCOMP = SYSCALLS_X86_64["seccomp"]
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_LOG = 2


def install(prog: bytes, log: bool = False) -> None:
    """In the child, after no_new_privs. With ``log`` (SECCOMP_FILTER_FLAG_LOG), each call the filter
    refuses is also reported to audit (an AUDIT_SECCOMP record: pid, syscall, action), which the
    agent's audit reader records: the refusing layer's own report, with nothing attached to the
    syscall tracepoints for it."""
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = ctypes.create_string_buffer(struct.pack("<H6xQ", len(prog) // 8, ctypes.addressof(buf)))
    if log:
        if _libc.syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_LOG, fprog) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_LOG): {os.strerror(e)}")
        return
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fprog, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"PR_SET_SECCOMP: {os.strerror(e)}")

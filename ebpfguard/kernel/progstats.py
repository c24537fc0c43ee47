"""The kernel's own statistics for our BPF programs: run time and run count per program, read with
BPF_OBJ_GET_INFO_BY_FD (ctypes; the same numbers ``bpftool prog show`` prints).

The kernel counts them only while statistics are enabled: ``sysctl kernel.bpf_stats_enabled=1``, or,
held for the agent's lifetime, the fd that BPF_ENABLE_STATS returns (``ebpfguard agent --bpf-stats``).
Counting costs each program run two clock reads (tens of ns), which is why it is off by default.
"""

from __future__ import annotations

import ctypes
import os
import struct

from ebpfguard.errors import KernelError
from ebpfguard.manifest.syscall_table import SYSCALLS_X86_64

SYS_BPF = SYSCALLS_X86_64["bpf"]
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0
INFO_SIZE = 232             # sizeof(struct bpf_prog_info) in the 6.1 UAPI; older kernels take a prefix
OFF_NAME, OFF_RUN_TIME_NS, OFF_RUN_CNT = 64, 192, 200

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


def _bpf(cmd: int, attr: ctypes.Structure | ctypes.Array[ctypes.c_char]) -> int:
    ret = _libc.syscall(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise KernelError(f"bpf({cmd}): {os.strerror(err)}")
    return int(ret)


def prog_run_stats(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of the program behind ``fd``."""
    buf = ctypes.create_string_buffer(INFO_SIZE)
    attr = _InfoAttr(fd, INFO_SIZE, ctypes.addressof(buf))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    run_ns, runs = struct.unpack_from("<QQ", buf.raw, OFF_RUN_TIME_NS)
    if attr.info_len < OFF_RUN_CNT + 8:  # a kernel older than the counters: nothing to report
        return 0, 0
    return run_ns, runs


def enable_stats() -> int:
    """Turn the kernel's BPF run-time statistics on for as long as the returned fd stays open."""
    attr = ctypes.create_string_buffer(struct.pack("<I", BPF_STATS_RUN_TIME), 8)
    return _bpf(BPF_ENABLE_STATS, attr)


def stats_enabled() -> bool:
    try:
        with open("/proc/sys/kernel/bpf_stats_enabled") as fh:
            return fh.read().strip() != "0"
    except OSError:
        return False

"""What this host can do, probed at run time (never assumed from a kernel version).

``python -m ebpfguard.kernel.probe --require`` loads the real programs once and exits 1 with the
reason when eBPF cannot be loaded: CI runs it before the kernel tier so that tier never skips.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from pathlib import Path
from typing import Any


def landlock_abi() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    v = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return int(v) if v > 0 else 0


def active_lsms() -> list[str]:
    p = Path("/sys/kernel/security/lsm")
    if not p.exists():
        os.system("mount -t securityfs securityfs /sys/kernel/security 2>/dev/null")
    try:
        return p.read_text().strip().split(",")
    except OSError:
        return []


_LSM_PROBE: bool | None = None


def bpf_lsm_available() -> bool:
    """BPF-LSM needs "bpf" among the active LSMs *and* BPF trampolines: load a tiny LSM program to
    know (it fails with EPERM on kernels that forbid text patching, as on these machines)."""
    global _LSM_PROBE
    if _LSM_PROBE is None:
        _LSM_PROBE = False
        if "bpf" in active_lsms():
            try:
                from bcc import BPF  # noqa: PLC0415

                b = BPF(text='LSM_PROBE(file_open, struct file *file) { return 0; }')
                b.cleanup()
                _LSM_PROBE = True
            except Exception:
                _LSM_PROBE = False
    return _LSM_PROBE


def probe() -> dict[str, Any]:
    from ..cgroups import CgroupManager
    from ..errors import CgroupError

    release = os.uname().release
    try:
        cg_mode = CgroupManager().mode
    except CgroupError as err:
        cg_mode = f"unusable: {err}"
    return {
        "kernel": release,
        "root": os.geteuid() == 0,
        "btf": Path("/sys/kernel/btf/vmlinux").exists(),
        "headers": Path(f"/lib/modules/{release}/build/include").exists(),
        "cgroups": cg_mode,
        "landlock_abi": landlock_abi(),
        "lsm": active_lsms(),
        # BPF-LSM needs "bpf" active *and* trampolines; the LSM backend probes the latter by loading.
        "bpf_lsm_listed": "bpf" in active_lsms(),
        "bpf_lsm_usable": bpf_lsm_available() if os.geteuid() == 0 else "unknown (needs root)",
    }


def require() -> int:
    from ..errors import KernelError
    from .loader import Sensor

    info = probe()
    for k, v in info.items():
        print(f"{k:>16}: {v}")
    if not info["root"]:
        print("eBPF unavailable: the kernel tier needs root", file=sys.stderr)
        return 1
    try:
        s = Sensor()
    except KernelError as err:
        print(f"eBPF unavailable: {err}", file=sys.stderr)
        return 1
    n = len(s.bpf.tracepoint_fds)
    s.close()
    print(f"{'ebpf':>16}: loaded ({n} tracepoints, 6 cgroup sock_addr programs)")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--require", action="store_true", help="load the real programs; exit 1 if impossible")
    args = ap.parse_args()
    if args.require:
        sys.exit(require())
    for k, v in probe().items():
        print(f"{k:>16}: {v}")

"""``python -m ebpfguard.kernel.probe [--require]``: print what this host can do (kernel/features.py);
with --require, load the real programs once and exit 1 with the reason when eBPF cannot be loaded.
CI runs it before the kernel tier so that tier never skips."""

from __future__ import annotations

import argparse
import sys

from ..errors import KernelError
from .features import active_lsms, bpf_lsm_available, bpf_lsm_status, headers_match, landlock_abi, probe
from .loader import Sensor

__all__ = ["active_lsms", "bpf_lsm_available", "bpf_lsm_status", "headers_match", "landlock_abi", "probe",
           "require"]


def require() -> int:
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
    files = len(s.syscall_tracepoints)
    net = len(s.cgroup_programs)
    unix = s.unix_hooks
    s.close()
    print(f"{'ebpf':>16}: loaded ({n} tracepoints attached now, {files} syscall tracepoints attached while an "
          f"extension runs, {net} cgroup sock_addr programs)")
    if unix:
        print(f"{'unix sockets':>16}: not enforced in the kernel: {unix}")
    if info["landlock_abi"] >= 7:
        from .laudit import LandlockAudit  # noqa: PLC0415

        try:
            LandlockAudit().close()
            print(f"{'landlock audit':>16}: readable (its denials are recorded from its own reports)")
        except KernelError as err:
            print(f"{'landlock audit':>16}: unavailable: {err}")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--require", action="store_true", help="load the real programs; exit 1 if impossible")
    args = ap.parse_args()
    if args.require:
        sys.exit(require())
    for k, v in probe().items():
        print(f"{k:>16}: {v}")

"""``python -m ebpfguard.kernel.probe [--require]``: print what this host can do (kernel/features.py);
with --require, load the real programs once and exit 1 with the reason when eBPF cannot be loaded.
CI runs it before the kernel tier so that tier never skips."""

from __future__ import annotations

import argparse
import sys

from ebpfguard.errors import KernelError
from ebpfguard.kernel.features import active_lsms, bpf_lsm_available, bpf_lsm_status, headers_match, landlock_abi, probe
from ebpfguard.kernel.loader import Sensor

__all__ = ["active_lsms", "bpf_lsm_available", "bpf_lsm_status", "headers_match", "landlock_abi", "probe",
           "require"]


def require(lsm: bool = False) -> int:
    """Exit status for --require: 1 when the programs cannot be loaded (and, with ``lsm``, when the
    BPF-LSM programs cannot: the VM tier's BPF-LSM guest must fail, not skip, without them)."""
    info = probe()
    for k, v in info.items():
        print(f"{k:>16}: {v}")
    if not info["root"]:
        print("eBPF unavailable: the kernel tier needs root", file=sys.stderr)
        return 1
    if lsm and not bpf_lsm_available():
        print(f"BPF-LSM required but unavailable: {bpf_lsm_status()[1]}", file=sys.stderr)
        return 1
    try:
        s = Sensor()
    except KernelError as err:
        print(f"eBPF unavailable: {err}", file=sys.stderr)
        return 1
    if lsm and not s.lsm:
        print("BPF-LSM required, but the programs were loaded without it", file=sys.stderr)
        s.close()
        return 1
    n = len(s.bpf.tracepoint_fds)
    files = len(s.syscall_tracepoints)
    net = len(s.cgroup_programs)
    unix = s.unix_hooks
    unix_lsm = s.unix_by_lsm
    lsm = s.lsm
    s.close()
    print(f"{'ebpf':>16}: loaded ({n} tracepoints attached now, {files} syscall tracepoints attached while an "
          f"extension runs, {net} cgroup sock_addr programs)")
    if lsm:
        print(f"{'bpf-lsm':>16}: its programs loaded (file_open, bprm_check_security, ptrace, task_alloc)")
    if unix_lsm:
        print(f"{'unix sockets':>16}: decided by the BPF-LSM socket hooks (no cgroup unix programs before 6.7)")
    if unix:
        print(f"{'unix sockets':>16}: not enforced in the kernel: {unix}")
    if info["landlock_abi"] >= 7:
        from ebpfguard.kernel.laudit import LandlockAudit  # noqa: PLC0415

        try:
            LandlockAudit().close()
            print(f"{'landlock audit':>16}: readable (its denials are recorded from its own reports)")
        except KernelError as err:
            print(f"{'landlock audit':>16}: unavailable: {err}")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--require", action="store_true", help="load the real programs; exit 1 if impossible")
    ap.add_argument("--require-lsm", action="store_true", help="with --require: the BPF-LSM programs too")
    args = ap.parse_args()
    if args.require or args.require_lsm:
        sys.exit(require(lsm=args.require_lsm))
    for k, v in probe().items():
        print(f"{k:>16}: {v}")

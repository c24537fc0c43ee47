"""What this host can do, probed at run time (never assumed from a kernel version): Landlock's ABI,
the active LSMs, whether BPF-LSM programs load, the cgroup mode. The loader and the agent ask here;
``python -m ebpfguard.kernel.probe`` prints it."""

from __future__ import annotations

import ctypes
import json
import os
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


_LSM_STATUS: tuple[bool, str] | None = None


def headers_match() -> bool:
    """Are /lib/modules/$(uname -r)/build this kernel's own headers (not a generic set linked in,
    as make setup does when no package matches)? Programs that read kernel structs need them."""
    release = os.uname().release
    build = Path(f"/lib/modules/{release}/build")
    if not (build / "include").exists():
        return False
    real = os.path.realpath(build)
    return release in real or not build.is_symlink()


PROBE_CACHE = Path("/run/ebpfguard/sets/lsm-probe.json")  # beside the kept programs (kernel/kept.py)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _cached_lsm_status() -> tuple[bool, str] | None:
    """What the loading probe found earlier in this boot (it compiles a program: seconds under emulation)."""
    try:
        d = json.loads(PROBE_CACHE.read_text())
        if PROBE_CACHE.stat().st_uid == 0 and d["boot"] == _boot_id() and d["release"] == os.uname().release:
            return bool(d["usable"]), str(d["why"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _cache_lsm_status(status: tuple[bool, str]) -> None:
    try:
        PROBE_CACHE.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = PROBE_CACHE.with_suffix(f".{os.getpid()}")
        tmp.write_text(json.dumps({"boot": _boot_id(), "release": os.uname().release, "usable": status[0],
                                   "why": status[1]}))
        os.replace(tmp, PROBE_CACHE)
    except OSError:
        pass  # a cache: the next start probes again


def bpf_lsm_status() -> tuple[bool, str]:
    """(usable, why not). BPF-LSM needs "bpf" among the active LSMs, BPF trampolines (known only by
    loading an LSM program: it fails with EPERM on kernels that forbid text patching, as on these
    machines) and, because the programs read kernel structs, the running kernel's own headers. The
    loading probe's answer is kept for the boot (root's, in /run)."""
    global _LSM_STATUS
    if _LSM_STATUS is None and "bpf" in active_lsms() and os.geteuid() == 0:
        _LSM_STATUS = _cached_lsm_status()
        if _LSM_STATUS is not None and _LSM_STATUS[0] != headers_match():
            _LSM_STATUS = None  # the headers changed since: probe again
    if _LSM_STATUS is None:
        if "bpf" not in active_lsms():
            _LSM_STATUS = (False, "bpf is not among the active LSMs (boot with lsm=...,bpf)")
        elif os.geteuid() != 0:
            _LSM_STATUS = (False, "unknown: probing needs root")
        else:
            saved = os.dup(2)
            try:
                from bcc import BPF  # noqa: PLC0415

                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 2)  # libbpf prints the expected refusal; the reason is returned instead
                os.close(devnull)
                b = BPF(text="LSM_PROBE(file_open, struct file *file) { return 0; }")
                b.cleanup()
                _LSM_STATUS = (True, "") if headers_match() else (
                    False, f"the kernel headers are not {os.uname().release}'s own; the LSM programs read "
                           "kernel structs")
            except Exception as err:  # bcc raises bare Exception on load failures
                msg = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
                if "super-user" in msg or "ermission" in msg:  # bcc's words for EPERM
                    _LSM_STATUS = (False, "loading an LSM program fails with EPERM, as root: this kernel "
                                          "forbids BPF trampolines")
                else:
                    _LSM_STATUS = (False, f"loading an LSM program fails: {msg}")
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            _cache_lsm_status(_LSM_STATUS)
    return _LSM_STATUS


def bpf_lsm_available() -> bool:
    return bpf_lsm_status()[0]


def probe() -> dict[str, Any]:
    from ebpfguard.errors import CgroupError
    from ebpfguard.kernel.cgroups import CgroupManager

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
        "landlock_reports": "audit (ABI 7+)" if landlock_abi() >= 7 else "none before Landlock ABI 7",
        "lsm": active_lsms(),
        # BPF-LSM needs "bpf" active *and* trampolines; the LSM backend probes the latter by loading.
        "bpf_lsm_listed": "bpf" in active_lsms(),
        "bpf_lsm": "usable" if bpf_lsm_available() else f"unavailable: {bpf_lsm_status()[1]}",
        "headers_match": headers_match(),
    }

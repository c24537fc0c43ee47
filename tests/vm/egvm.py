#!/usr/bin/env python3
"""egvm: run a command in a guest on a stock distribution kernel (qemu, software emulation).

The guest boots Debian's own kernel (linux-image-amd64) with no disk image: the host's root is shared
read-only over virtio-9p and mounted under a tmpfs overlay by a small initramfs (static busybox and that
kernel's 9p and overlay modules), so the guest runs the host's bcc, Python, compiler and this
repository at the same paths, and writes nothing back to the host. A second, writable 9p share carries
the command in and its exit status out; the command's output is the guest's serial console, streamed
here. The guest has pure cgroup v2 with its controllers, a real tmpfs on /tmp, securityfs, bpffs and
tracefs (tests/vm/stage2). With --systemd, the host's systemd boots instead as PID 1, straight into a
target that runs the command as a service (tests/vm/init), for what only a real service manager shows.

    egvm.py run [--lsm | --no-lsm] [--systemd] [--timeout S] [--env K=V ...] -- COMMAND...
    egvm.py build            build (or reuse) the initramfs and print its path
    egvm.py kernel           print the guest kernel's release

Exit status: the command's own; 124 when the guest ran out of time; 125 when the guest could not run it
(no kernel, no initramfs, no status back: the console's last lines say why).

Examples:
    tests/vm/egvm.py run --lsm -- cat /sys/kernel/security/lsm
    tests/vm/egvm.py run --no-lsm --timeout 600 -- .venv/bin/pytest -q tests/kernel
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("EGVM_CACHE", "/var/cache/ebpfguard-vm"))
MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
LSM_ON = "lockdown,capability,landlock,yama,apparmor,bpf"
LSM_OFF = "lockdown,capability,landlock,yama,apparmor"
FORWARD_ENV = ("CI", "PYTEST_ADDOPTS", "EG_DEBUG")


class VMError(Exception):
    pass


def kernel_release() -> str:
    """The newest /boot/vmlinuz-* whose headers are installed (bcc in the guest compiles against them)."""
    found = []
    for k in Path("/boot").glob("vmlinuz-*"):
        rel = k.name[len("vmlinuz-"):]
        if Path(f"/lib/modules/{rel}/build/include").exists() and Path(f"/lib/modules/{rel}/modules.dep").exists():
            found.append(rel)
    if not found:
        raise VMError("no guest kernel: install linux-image-amd64 and linux-headers-amd64 together "
                      "(make test-vm does)")
    return sorted(found, key=lambda r: [int(x) if x.isdigit() else x for x in r.replace("-", ".").split(".")])[-1]


def module_files(release: str) -> list[Path]:
    """The .ko files to insmod, dependencies first, as modprobe would load them."""
    out: list[Path] = []
    for mod in MODULES:
        try:
            deps = subprocess.run(["modprobe", "-S", release, "--show-depends", mod], check=True,
                                  capture_output=True, text=True).stdout
        except FileNotFoundError as err:
            raise VMError("modprobe is missing: install kmod") from err
        except subprocess.CalledProcessError as err:
            raise VMError(f"modprobe cannot resolve {mod} for {release}: {err.stderr.strip()}") from err
        for line in deps.splitlines():
            parts = line.split()
            if parts and parts[0] == "insmod":
                p = Path(parts[1])
                if p not in out:
                    out.append(p)
            # "builtin MOD" lines need nothing
    return out


def _cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (name, mode, data); directories have no data."""
    buf = bytearray()
    ino = 1
    for name, mode, data in [*entries, ("TRAILER!!!", 0, b"")]:
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
        buf += hdr.encode() + nb
        buf += b"\0" * (-len(buf) % 4)
        buf += data
        buf += b"\0" * (-len(buf) % 4)
        ino += 1
    return bytes(buf)


def build_initramfs(release: str) -> Path:
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise VMError("no /bin/busybox: install busybox-static")
    if shutil.which("ldd") and subprocess.run(["ldd", str(busybox)], capture_output=True).returncode == 0:
        raise VMError("/bin/busybox is dynamically linked: install busybox-static")
    mods = module_files(release)
    parts = [(HERE / "init").read_bytes(), (HERE / "stage2").read_bytes(), busybox.read_bytes()]
    parts += [m.read_bytes() for m in mods]
    digest = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    out = CACHE / f"initramfs-{release}-{digest}.cpio.gz"
    if out.exists():
        return out
    dirs = ["bin", "dev", "proc", "sys", "modules"]
    entries: list[tuple[str, int, bytes]] = [(d, 0o40755, b"") for d in dirs]
    entries.append(("dev/console", 0o20600, b""))  # replaced by devtmpfs; here for the kernel's first open
    entries += [("init", 0o100755, parts[0]), ("stage2", 0o100755, parts[1]), ("bin/busybox", 0o100755, parts[2])]
    for m, data in zip(mods, parts[3:], strict=True):
        entries.append((f"modules/{m.name}", 0o100644, data))
    entries.append(("modules.list", 0o100644, "".join(f"{m.name}\n" for m in mods).encode()))
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(_cpio_newc(entries), 6))
    tmp.replace(out)
    for old in CACHE.glob(f"initramfs-{release}-*.cpio.gz"):
        if old != out:
            old.unlink()
    return out


def run(cmd: list[str], lsm: bool, timeout: float, env: list[str], mem: str, cpus: int,
        systemd: bool = False) -> int:
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        raise VMError("qemu-system-x86_64 is missing: install qemu-system-x86")
    release = kernel_release()
    initrd = build_initramfs(release)
    job = Path(tempfile.mkdtemp(prefix="egvm-", dir="/var/tmp"))
    try:
        exports = [f"export {k}={shlex.quote(os.environ[k])}" for k in FORWARD_ENV if k in os.environ]
        for kv in env:
            k, sep, v = kv.partition("=")
            if not sep or not k.isidentifier():
                raise VMError(f"--env wants NAME=VALUE, got {kv!r}")
            exports.append(f"export {k}={shlex.quote(v)}")
        (job / "cmd").write_text("\n".join([*exports, f"export EGVM_KERNEL={release}",
                                            f"export EGVM_LSM={int(lsm)}", shlex.join(cmd)]) + "\n")
        (job / "cwd").write_text(os.getcwd())
        append = " ".join([
            "console=ttyS0", "quiet", "loglevel=3", "panic=-1", "mitigations=off", "nokaslr",
            f"lsm={LSM_ON if lsm else LSM_OFF}", "cgroup_no_v1=all", "systemd.unified_cgroup_hierarchy=1",
            *(["egvm.init=systemd"] if systemd else []),
        ])
        argv = [
            "nice", "-n", "10", qemu, "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", str(cpus),
            "-m", mem, "-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none", "-serial", "stdio",
            "-kernel", f"/boot/vmlinuz-{release}", "-initrd", str(initrd), "-append", append,
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={job},mount_tag=egjob,security_model=none,multidevs=remap",
        ]
        init = "systemd as PID 1, " if systemd else ""
        print(f"egvm: booting {release} ({init}{'with' if lsm else 'without'} BPF-LSM, pure cgroup v2) for: "
              f"{shlex.join(cmd)}", flush=True)
        t0 = time.monotonic()
        tail: collections.deque[str] = collections.deque(maxlen=40)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        timed_out = False

        def on_alarm(_sig: int, _frm: object) -> None:
            nonlocal timed_out
            timed_out = True
            proc.kill()

        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            for raw in proc.stdout:
                line = raw.decode(errors="replace").replace("\r", "")
                tail.append(line)
                sys.stdout.write(line)
                sys.stdout.flush()
            proc.wait()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        took = time.monotonic() - t0
        if timed_out:
            print(f"egvm: the guest ran out of time ({timeout:.0f} s): killed", file=sys.stderr)
            return 124
        status = job / "status"
        if not status.exists():
            print(f"egvm: the guest ended without an exit status after {took:.0f} s (qemu exit {proc.returncode}); "
                  "its console's last lines are above", file=sys.stderr)
            return 125
        rc = int(status.read_text().strip() or "125")
        print(f"egvm: exit {rc} after {took:.0f} s in the guest ({release})", flush=True)
        return rc
    finally:
        shutil.rmtree(job, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(prog="egvm.py", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__[__doc__.index("Examples:"):],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run", help="run a command in the guest, from this directory")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--lsm", dest="lsm", action="store_true", default=True, help="bpf among the LSMs (default)")
    g.add_argument("--no-lsm", dest="lsm", action="store_false", help="no BPF-LSM: tracepoints and Landlock")
    r.add_argument("--timeout", type=float, default=1800.0, help="seconds before the guest is killed (1800)")
    r.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="set in the guest")
    r.add_argument("--systemd", action="store_true",
                   help="boot the host's systemd as PID 1 and run the command as a service (egvm-job)")
    r.add_argument("--mem", default="4G", help="guest memory (4G)")
    r.add_argument("--cpus", type=int, default=max(1, os.cpu_count() or 1), help="guest CPUs (the host's)")
    r.add_argument("cmd", nargs=argparse.REMAINDER)
    sub.add_parser("build", help="build (or reuse) the initramfs; print its path")
    sub.add_parser("kernel", help="print the guest kernel's release")
    a = ap.parse_args()
    try:
        if a.what == "kernel":
            print(kernel_release())
            return 0
        if a.what == "build":
            print(build_initramfs(kernel_release()))
            return 0
        cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
        if not cmd:
            ap.error("run needs a command after --")
        if os.geteuid() != 0:
            raise VMError("run as root: the guest kernel (/boot/vmlinuz-*) is readable by root only")
        return run(cmd, a.lsm, a.timeout, a.env, a.mem, a.cpus, a.systemd)
    except VMError as err:
        print(f"egvm: {err}", file=sys.stderr)
        return 125


if __name__ == "__main__":
    sys.exit(main())

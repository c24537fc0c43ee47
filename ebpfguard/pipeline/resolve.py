"""Stage 2, resolve: what the kernel could not know, read from /proc while the process still holds
it. A pending path (relative, "..", an unreadable user page, an fd exec) becomes the absolute path
the process named; a file or exec event of a Landlock-confined instance gets the real path its
ruleset decided on. Nothing is decided here."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

import psutil

from ebpfguard.common.abi import EvFlag, Verdict
from ebpfguard.pipeline.events import Event

AT_FDCWD = -100
MAKE_SYSCALLS = frozenset({"mkdir", "mkdirat", "mknod", "mknodat"})


@dataclass(frozen=True)
class Resolution:
    path: str | None = None        # the absolute path of a pending event; None when it could not be read
    unresolved: str | None = None  # why not
    real_path: str | None = None   # symlinks resolved, for comparing with the Landlock grants
    lookup_failed: bool = False    # the call failed in its path lookup, before any layer was asked


def resolve(ev: Event, landlocked: bool) -> Resolution:
    path: str | None = None
    unresolved = None
    if ev.verdict == Verdict.PENDING.label:
        try:
            path = full_path(ev)
        except OSError as err:
            unresolved = f"{err.strerror}: the process is gone or the fd is closed"
    real = None
    # only a call left "detected" is checked against the Landlock grants (decide.landlock_denied):
    # an allowed, denied or killed one needs no realpath on the per-event path
    may_be_detected = ev.verdict in (Verdict.PENDING.label, Verdict.DETECTED.label)
    if landlocked and may_be_detected and ev.kind in ("file", "exec"):
        p = path or ev.path
        if p.startswith("/"):
            real = os.path.realpath(p)
    return Resolution(path, unresolved, real, _lookup_failed(ev, path))


def _lookup_failed(ev: Event, path: str | None) -> bool:
    """A mkdir or mknod of a path that exists (EEXIST: `mkdir -p` asks for every parent) or under a folder
    that does not (ENOENT) failed in the VFS's lookup: no layer refused it, there is nothing to record."""
    if ev.syscall not in MAKE_SYSCALLS or ev.verdict == Verdict.KILLED.label:
        return False
    made = path or (ev.path if ev.path.startswith("/") else None)
    if not made:
        return False
    return os.path.lexists(made) or not os.path.isdir(os.path.dirname(made.rstrip("/")) or "/")


def full_path(ev: Event) -> str:
    """The absolute, normalised path of a pending file or exec event, read through /proc."""
    path = ev.path
    if ev.has(EvFlag.UNREADABLE):
        try:
            with open(f"/proc/{ev.pid}/mem", "rb", buffering=0) as mem:
                mem.seek(ev.uptr)
                path = mem.read(4096).split(b"\0", 1)[0].decode(errors="surrogateescape")
        except OSError:
            # a held execve stops only once the new program is in place: the old memory is gone,
            # and /proc/PID/exe is what it executed
            if ev.kind != "exec":
                raise
            return _exe(ev.tgid)
        if not path:
            if ev.kind == "exec":  # the new program's memory is at that address now: same answer
                return _exe(ev.tgid)
            raise OSError(errno.EFAULT, "the path's user memory reads as empty")
    if not path and ev.has(EvFlag.EMPTY_PATH):
        return os.readlink(f"/proc/{ev.tgid}/fd/{ev.dirfd}")
    if not path.startswith("/"):
        base = _cwd(ev.pid) if ev.dirfd == AT_FDCWD else os.readlink(f"/proc/{ev.tgid}/fd/{ev.dirfd}")
        path = os.path.join(base, path)
    return "/" + os.path.normpath(path).lstrip("/")  # normpath keeps a leading "//"


def _exe(pid: int) -> str:
    try:
        return psutil.Process(pid).exe()
    except psutil.Error as err:
        raise OSError(errno.ESRCH, f"no executable for pid {pid} ({err.__class__.__name__})") from err


def _cwd(pid: int) -> str:
    try:
        return psutil.Process(pid).cwd()
    except psutil.Error as err:
        raise OSError(errno.ESRCH, f"no cwd for pid {pid} ({err.__class__.__name__})") from err

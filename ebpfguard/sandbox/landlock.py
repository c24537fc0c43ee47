"""Landlock rulesets built from a manifest (ctypes; syscalls 444-446): file trees, and signal and
abstract-unix scoping.

plan() is pure: manifest + ABI -> the rules, what is handled, and what this ABI cannot enforce.
build() runs in the launcher (parent): it opens each path O_PATH and fills a ruleset fd, which the
child enforces with restrict_self() between fork and exec. Older ABIs are downgraded right by right;
every right that is not enforced is named, so the start record can say so.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass, field

from ebpfguard.errors import EbpfguardError
from ebpfguard.manifest.compile import private_tmp
from ebpfguard.manifest.load import Manifest

SYS_CREATE, SYS_ADD_RULE, SYS_RESTRICT = 444, 445, 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH, RULE_NET_PORT = 1, 2

FS = {name: 1 << i for i, name in enumerate((
    "execute", "write_file", "read_file", "read_dir", "remove_dir", "remove_file", "make_char", "make_dir",
    "make_reg", "make_sock", "make_fifo", "make_block", "make_sym", "refer", "truncate", "ioctl_dev"))}
SCOPE_ABSTRACT_UNIX, SCOPE_SIGNAL = 1, 2
# landlock_restrict_self() flags (ABI 7): keep reporting denials to audit after execve, which is when the
# extension itself starts (by default Landlock reports only until the restricting program execs)
RESTRICT_SELF_LOG_NEW_EXEC_ON = 1 << 1

# the filesystem rights each ABI knows
ABI_FS = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
FILE_RIGHTS = FS["execute"] | FS["write_file"] | FS["read_file"] | FS["truncate"] | FS["ioctl_dev"]
READ = FS["read_file"] | FS["read_dir"]
WRITE = (READ | FS["write_file"] | FS["remove_dir"] | FS["remove_file"] | FS["make_dir"] | FS["make_reg"]
         | FS["make_sym"] | FS["make_sock"] | FS["make_fifo"] | FS["refer"] | FS["truncate"])
EXEC = FS["execute"] | FS["read_file"]  # the kernel opens an executable for reading too

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def abi() -> int:
    v = _libc.syscall(SYS_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION))
    return int(v) if v > 0 else 0


def fs_rights(abi_version: int) -> int:
    return ABI_FS.get(abi_version, ABI_FS[5]) if abi_version > 0 else 0


@dataclass
class Plan:
    abi: int
    handled_fs: int
    handled_net: int
    scoped: int
    paths: list[tuple[str, int]] = field(default_factory=list)   # (path, rights)
    not_enforced: list[str] = field(default_factory=list)
    private: list[str] = field(default_factory=list)  # paths that name the private /tmp once it is mounted

    @property
    def enforced(self) -> list[str]:
        out = []
        if self.handled_fs:
            out.append("fs")
        if self.scoped & SCOPE_SIGNAL:
            out.append("signal-scope")
        if self.scoped & SCOPE_ABSTRACT_UNIX:
            out.append("abstract-unix-scope")
        return out


def _interpreter(path: str) -> str | None:
    """The ELF interpreter (PT_INTERP) of a dynamic executable: the kernel execs it too."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:
                if head[:2] == b"#!":
                    return head[2:].split(b"\n")[0].strip().split()[0].decode() or None
                return None
            phoff, = struct.unpack_from("<Q", head, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
            for i in range(phnum):
                fh.seek(phoff + i * phentsize)
                ph = fh.read(phentsize)
                p_type, = struct.unpack_from("<I", ph, 0)
                if p_type == 3:
                    off, = struct.unpack_from("<Q", ph, 8)
                    size, = struct.unpack_from("<Q", ph, 32)
                    fh.seek(off)
                    return fh.read(size).rstrip(b"\0").decode()
    except (OSError, struct.error, UnicodeDecodeError, IndexError):
        return None
    return None


def _interpreters_in(folder: str, limit: int = 4096) -> set[str]:
    """The ELF interpreters of the executables directly in ``folder`` (an exec tree): usually just the
    dynamic loader. At most ``limit`` entries are looked at."""
    found: set[str] = set()
    try:
        with os.scandir(folder) as it:
            for i, entry in enumerate(it):
                if i >= limit:
                    break
                try:
                    if entry.is_file() and os.access(entry.path, os.X_OK):
                        interp = _interpreter(entry.path)
                        if interp and interp.startswith("/"):
                            found.add(interp)
                except OSError:
                    continue
    except OSError:
        pass
    return found


def plan(m: Manifest, abi_version: int, mode: str | None = None) -> Plan:
    """The ruleset for ``m``. Audit mode denies nothing, so it handles nothing; a kind whose response
    is "alert" (record only) is left unhandled too, so that Landlock never denies what the manifest
    only wants recorded."""
    handled = fs_rights(abi_version)
    if (mode or m.mode) == "audit":
        return Plan(abi_version, 0, 0, 0, not_enforced=["landlock: audit mode denies nothing"])
    if m.response.get("file") == "alert":
        handled &= FS["execute"]
    if m.response.get("exec") == "alert":
        handled &= ~FS["execute"]
    p = Plan(abi_version, handled, 0, 0)
    if abi_version <= 0:
        p.not_enforced.append("landlock: not available in this kernel")
        return p
    if abi_version < 2:
        p.not_enforced.append("landlock fs refer (cross-directory link/rename): needs ABI 2")
    if abi_version < 3:
        p.not_enforced.append("landlock fs truncate: needs ABI 3")
    rights: dict[str, int] = {}
    for path in m.read:
        rights[path] = rights.get(path, 0) | READ
    for path in m.write:
        # a device the extension may write it may also ask what it is: isatty() on /dev/null is an ioctl
        # (TCGETS), which Landlock's ioctl_dev right (ABI 5) would refuse and report
        rights[path] = rights.get(path, 0) | WRITE | (FS["ioctl_dev"] if path.startswith("/dev/") else 0)
    for path in m.exec:
        rights[path] = rights.get(path, 0) | EXEC
        interps = _interpreters_in(path) if path.endswith("/") else {_interpreter(path) or ""} - {""}
        for interp in interps:
            rights[interp] = rights.get(interp, 0) | EXEC
    # the private /tmp and /var/tmp (mountns.py): the instance's own tmpfs, where temporary files are made.
    # A rule holds an inode: these must be added once that tmpfs is mounted (in the child, see private)
    for folder in private_tmp(m, mode):
        rights[folder + "/"] = rights.get(folder + "/", 0) | WRITE
        p.private.append(folder + "/")
    for path, r in rights.items():
        if path.endswith("/"):
            r &= handled
        elif os.path.isdir(path):  # an exact entry naming a folder: listing it, never the files below
            r &= handled & FS["read_dir"]
        else:
            r &= handled & FILE_RIGHTS
        p.paths.append((path, r))
    # TCP ports are left to the cgroup sock_addr programs on purpose: they deny by address *and* port,
    # record every attempt, and stay attached when the agent is gone. Landlock's port rules would deny
    # first (at security_socket_connect, before the cgroup hook runs) and so hide the attempt.
    p.not_enforced.append("landlock tcp ports: not used; the cgroup programs deny and record connect/bind")
    if abi_version >= 6:
        p.scoped = SCOPE_SIGNAL | SCOPE_ABSTRACT_UNIX
    else:
        p.not_enforced.append("landlock signal and abstract-unix scoping: needs ABI 6")
    return p


class LandlockError(EbpfguardError):
    pass


def _add(fd: int, rule_type: int, attr: bytes) -> int:
    buf = ctypes.create_string_buffer(attr)
    return int(_libc.syscall(SYS_ADD_RULE, fd, rule_type, buf, ctypes.c_uint32(0)))


def build(p: Plan) -> tuple[int, list[str]]:
    """Create the ruleset (in the launcher). Returns its fd and the paths that could not be granted."""
    size = 8 if p.abi < 4 else 16 if p.abi < 6 else 24
    attr = struct.pack("<QQQ", p.handled_fs, p.handled_net, p.scoped)[:size]
    buf = ctypes.create_string_buffer(attr)
    fd = int(_libc.syscall(SYS_CREATE, buf, ctypes.c_size_t(size), ctypes.c_uint32(0)))
    if fd < 0:
        raise LandlockError(f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}")
    skipped: list[str] = []
    try:
        for path, rights in p.paths:
            if not rights:
                continue
            try:
                pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError as err:
                skipped.append(f"{path} ({err.strerror})")
                continue
            try:
                if not os.path.isdir(path):
                    rights &= FILE_RIGHTS
                elif not path.endswith("/"):
                    # an exact entry that names a folder grants listing it, never the files below it: a rule
                    # on a folder covers what is beneath, so read_file there would make it a tree
                    rights &= FS["read_dir"]
                if _add(fd, RULE_PATH_BENEATH, struct.pack("<Qi", rights, pfd)) < 0:
                    e = ctypes.get_errno()
                    skipped.append(f"{path} ({os.strerror(e)})")
            finally:
                os.close(pfd)
    except BaseException:
        os.close(fd)
        raise
    return fd, skipped


def restrict_self(fd: int, abi_version: int = 0) -> None:
    """In the child, after no_new_privs: enforce the ruleset on this process and its descendants; from
    ABI 7 on, its denials are reported to audit (kernel/laudit.py reads them) after the exec too."""
    flags = RESTRICT_SELF_LOG_NEW_EXEC_ON if abi_version >= 7 else 0
    if _libc.syscall(SYS_RESTRICT, fd, ctypes.c_uint32(flags)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"landlock_restrict_self: {os.strerror(e)}")


__all__ = ["Plan", "abi", "build", "plan", "restrict_self"]

"""Each launched instance in a mount namespace of its own, set up by the root launcher before it drops
privileges (the order bubblewrap follows: new namespace, no propagation back, masks, binds, then
read-only).

- Everything outside the write trees is read-only: chmod, chown, utimes, xattrs and writes fail with
  EROFS in the VFS, on the object, for every descendant, whatever path or fd reaches it. Landlock does
  not govern those calls; a read-only mount does.
- Socket folders (``$XDG_RUNTIME_DIR``, ``/tmp/.X11-unix``, ``/tmp/.ICE-unix``, ``/run/dbus``) are
  replaced by empty tmpfs holding only the sockets the manifest grants and the instance's D-Bus proxy,
  mounted at the real bus's path.
- Every other pathname unix socket bound when the instance starts (``/proc/net/unix``: ssh-agent's, an
  IDE's, another program's control socket) and not granted is covered by ``/dev/null``: a connect finds
  no socket (ECONNREFUSED). Where the kernel decides unix sockets itself (the cgroup unix programs, 6.7+,
  or BPF-LSM) it refuses first, with a record; on older kernels without BPF-LSM this is what keeps them
  out of reach. Sockets bound later, and those in the extension's own write trees, are not covered.
- ``/tmp`` and ``/var/tmp`` are private (empty tmpfs, as systemd's PrivateTmp=), writable by the
  instance and thrown away with it, unless a grant names the folder itself or one above it
  (compile.private_tmp); granted paths under them are carried in, writable only if write grants. Landlock
  and the file programs grant the private folders too (landlock.plan, compile.py's "private" scope).
- With ``spec.filesystem.rollback``, each write tree is an overlay whose lower layer is the real folder and
  whose upper layer is the instance's rollback area (rollback.py): the real tree is not written while the
  instance runs. One under a private /tmp is mounted on its real path first, then carried in like any
  other grant under a mask (the overlay itself, not the real folder).
- The real bus's path in a masked folder is a symlink to the instance's D-Bus proxy: it is never one of
  the bound sockets covered by ``/dev/null``, nor is any socket a mask hides already.

plan() is pure (manifest -> what to mount); enter() runs in the child, as root, between fork and the
privilege drop. Mount, umount, pivot_root and setns stay killed by the seccomp filter afterwards, so the
extension cannot undo any of it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from ebpfguard.errors import EbpfguardError
from ebpfguard.manifest.compile import private_tmp
from ebpfguard.manifest.load import Manifest

CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_SLAVE = 0x2, 0x4, 0x1000, 0x4000, 0x80000
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442
OPEN_TREE_CLONE, AT_RECURSIVE, MOVE_MOUNT_F_EMPTY_PATH = 0x1, 0x8000, 0x4
MOUNT_ATTR_RDONLY = 0x1
AT_FDCWD = -100

SOCKET_FOLDERS = ("/tmp/.X11-unix", "/tmp/.ICE-unix", "/run/dbus")
ROLLBACK_OPTIONS = "redirect_dir=off,index=off,metacopy=off,xino=off"  # the upper layer as rollback.py reads it

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class MountNsError(EbpfguardError):
    pass


@dataclass(frozen=True)
class Mask:
    """An empty tmpfs over ``folder``."""

    folder: str
    mode: int
    uid: int = 0
    gid: int = 0
    writable: bool = False


@dataclass(frozen=True)
class Carry:
    """``source`` (as the host sees it) mounted at ``target`` inside the namespace."""

    source: str
    target: str
    writable: bool


@dataclass
class MountPlan:
    masks: list[Mask] = field(default_factory=list)
    carry: list[Carry] = field(default_factory=list)
    writable: list[str] = field(default_factory=list)   # write trees outside every mask: bound rw
    links: list[tuple[str, str]] = field(default_factory=list)  # (symlink made in a mask, what it points to)
    readonly: bool = False
    skipped: list[str] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)  # bound unix sockets covered by /dev/null
    overlays: list[tuple[str, str, str]] = field(default_factory=list)  # (write tree, upper, work): rollback

    def summary(self) -> dict[str, object]:
        """What records and decisions need: is it read-only, and where can it still write."""
        writable = {*self.writable, *(m.folder for m in self.masks if m.writable)}
        return {"readonly": self.readonly, "writable": sorted(writable),
                # read-only copies carried into a writable mask (a read grant under a private /tmp)
                "readonly_within": sorted({c.target for c in self.carry if not c.writable} - writable),
                "masked": [m.folder for m in self.masks],
                "rollback": [t for t, _, _ in self.overlays]}

    def describe(self) -> list[str]:
        out = ["mountns"]
        if self.readonly:
            out.append("mountns-readonly")
        out += [f"mountns-mask:{m.folder}" for m in self.masks]
        if self.sockets:
            out.append(f"mountns-sockets:{len(self.sockets)}")
        out += [f"rollback-overlay:{t}" for t, _, _ in self.overlays]
        return out


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def bound_sockets(table: str = "/proc/net/unix") -> list[str]:
    """The pathname unix sockets bound in this network namespace that are sockets at their path now
    (not abstract, not unnamed, not since replaced by another file)."""
    out = []
    try:
        with open(table, encoding="utf-8", errors="surrogateescape") as f:
            next(f, None)  # the header
            for line in f:
                parts = line.rstrip("\n").split(None, 7)
                if len(parts) == 8 and parts[7].startswith("/"):
                    try:
                        if stat.S_ISSOCK(os.lstat(parts[7]).st_mode):
                            out.append(parts[7])
                    except OSError:
                        continue
    except OSError:
        return []
    return sorted(set(out))


def plan(m: Manifest, mode: str | None, uid: int, gid: int, proxies: dict[str, str] | None = None,
         exists: object = os.path.lexists, sockets: Iterable[str] | None = None,
         overlays: dict[str, tuple[str, str]] | None = None) -> MountPlan:
    """What the namespace of an instance of ``m`` holds. ``proxies`` maps the path where a D-Bus proxy
    must appear (the real bus's) to the proxy's folder: the folder is mounted beside that path and the
    path is a symlink to its socket, so that a proxy restarted in the same folder is reached again.
    ``overlays``: write tree -> (upper, work) of its rollback overlay."""
    check = exists if callable(exists) else os.path.lexists
    proxies = dict(proxies or {})
    p = MountPlan(readonly=m.response.get("file") != "alert" and "/" not in m.write)
    grants = [(path, path in m.write) for path in dict.fromkeys([*m.write, *m.read, *m.exec])]
    for tmp in private_tmp(m, mode):
        p.masks.append(Mask(tmp, 0o1777, writable=True))
    runtime = m.runtime_dir
    if check(runtime):
        p.masks.append(Mask(runtime, 0o700, uid, gid))
    elif any(_under(t, runtime) for t in proxies) and check(os.path.dirname(runtime)):
        p.masks.append(Mask(os.path.dirname(runtime), 0o755))
    for folder in SOCKET_FOLDERS:
        if check(folder) and not any(_under(folder, mk.folder) for mk in p.masks):
            p.masks.append(Mask(folder, 0o1777 if folder.startswith("/tmp") else 0o755))
    masked = [mk.folder for mk in p.masks]

    def masked_by(path: str) -> bool:
        return any(_under(path.rstrip("/") or "/", f) for f in masked)

    for path, writable in grants:
        real = path.rstrip("/") or "/"
        if not check(real):
            if writable:
                p.skipped.append(f"{path} (does not exist)")
            continue
        if masked_by(path):
            p.carry.append(Carry(real, real, writable))
        elif writable and p.readonly:
            p.writable.append(real)
    for sock in m.ipc.unix:
        real = sock.rstrip("/")
        if masked_by(sock) and check(real):
            p.carry.append(Carry(real, real, False))
    for target, folder in proxies.items():
        beside = f"{os.path.dirname(target)}/.ebpfguard-dbus-{os.path.basename(folder.rstrip('/'))}"
        p.carry.append(Carry(folder, beside, False))
        p.links.append((target, f"{os.path.basename(beside)}/bus"))
    if p.readonly:
        p.writable += [c.target for c in p.carry if c.writable]
    for target, (upper, work) in (overlays or {}).items():
        # under a mask, the write tree is carried in (above): enter() carries the overlay, not the real folder
        p.overlays.append((target, upper, work))
        if p.readonly and target not in p.writable:
            p.writable.append(target)
    granted = {u.rstrip("/") for u in m.ipc.unix}
    carried = [c.target for c in p.carry]
    for sock in bound_sockets() if sockets is None else sockets:
        if sock in granted or any(_under(sock, w.rstrip("/") or "/") for w in m.write) or sock in proxies:
            continue
        if masked_by(sock) and not any(_under(sock, t) for t in carried):
            continue  # an empty tmpfs hides it already (and at the bus's path is the proxy's link)
        p.sockets.append(sock)
    return p


# ---- the child's side (root, between fork and the privilege drop) --------------------------------
def _check(rc: int, what: str) -> None:
    if rc < 0:
        e = ctypes.get_errno()
        raise MountNsError(f"{what}: {os.strerror(e)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    rc = _libc.mount(source.encode() if source else None, target.encode(), fstype.encode() if fstype else None,
                     ctypes.c_ulong(flags), data.encode() if data else None)
    _check(rc, f"mount {fstype or source or ''} on {target}")


def _setattr(path: str, recursive: bool, attr_set: int = 0, attr_clr: int = 0) -> None:
    attr = ctypes.create_string_buffer(struct.pack("<QQQQ", attr_set, attr_clr, 0, 0))
    rc = _libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), ctypes.c_uint(AT_RECURSIVE if recursive else 0),
                       attr, ctypes.c_size_t(32))
    _check(int(rc), f"mount_setattr {path}")


def _mountpoint(target: str, is_dir: bool) -> None:
    if is_dir:
        os.makedirs(target, exist_ok=True)
        return
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if not os.path.lexists(target):
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))


def enter(p: MountPlan) -> None:
    """Unshare the mount namespace and set it up as planned. Runs in the child, as root."""
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = "/"
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_SLAVE)  # nothing done here propagates back to the host
    trees = []
    overlaid = {t for t, _, _ in p.overlays}

    def clone(c: Carry) -> None:
        fd = int(_libc.syscall(SYS_OPEN_TREE, AT_FDCWD, c.source.encode(),
                               ctypes.c_uint(OPEN_TREE_CLONE | AT_RECURSIVE | os.O_CLOEXEC)))
        _check(fd, f"open_tree {c.source}")
        trees.append((fd, c, os.path.isdir(c.source)))

    # detached copies, taken before the masks hide their sources; a rollback tree's once its overlay is on it
    for c in p.carry:
        if not (c.writable and c.target in overlaid):
            clone(c)
    for w in p.writable:
        if not any(c.target == w for c in p.carry) and w not in overlaid:
            _mount(w, w, None, MS_BIND | MS_REC)  # MS_BIND: its own mount, so that it can stay writable
    for target, upper, work in p.overlays:  # the real folder below, the rollback area above
        _mount("overlay", target, "overlay", MS_NOSUID | MS_NODEV,
               f"lowerdir={target},upperdir={upper},workdir={work},{ROLLBACK_OPTIONS}")
    for c in p.carry:
        if c.writable and c.target in overlaid:
            clone(c)
    for mk in p.masks:
        _mount("tmpfs", mk.folder, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mk.mode:o},uid={mk.uid},gid={mk.gid}")
    trees.sort(key=lambda t: t[1].target.count("/"))  # parents before what they hold
    for fd, c, is_dir in trees:
        _mountpoint(c.target, is_dir)
        rc = _libc.syscall(SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, c.target.encode(), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH))
        _check(int(rc), f"move_mount {c.source} to {c.target}")
        os.close(fd)
    for link, dest in p.links:
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(dest, link)
    for sock in p.sockets:  # after the masks and carries: one under a mask is gone already (ENOENT)
        if os.path.islink(sock):  # mount(2) would follow it, to what it leads to (a proxy's socket)
            continue
        rc = _libc.mount(b"/dev/null", sock.encode(), None, ctypes.c_ulong(MS_BIND), None)
        if rc < 0 and ctypes.get_errno() != errno.ENOENT:
            _check(rc, f"mount /dev/null on {sock}")
    if p.readonly:
        _setattr("/", True, attr_set=MOUNT_ATTR_RDONLY)
        for w in dict.fromkeys(p.writable):
            _setattr(w, True, attr_clr=MOUNT_ATTR_RDONLY)
        for mk in p.masks:
            if mk.writable:
                _setattr(mk.folder, False, attr_clr=MOUNT_ATTR_RDONLY)
    try:  # re-walk the cwd inside the namespace: the old one could reach what the masks hide
        os.chdir(cwd)
    except OSError as err:
        if err.errno not in (errno.ENOENT, errno.EACCES, errno.ENOTDIR):
            raise
        os.chdir("/")

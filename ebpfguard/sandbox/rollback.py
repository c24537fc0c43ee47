"""Rollback: each write tree of an instance (``spec.filesystem.rollback: true``) is an overlay in the instance's
own mount namespace. The real tree is its lower layer and is never written while the instance runs; every
change lands in an upper layer under STATE/rollback/<instance>/<n>/upper.

- A clean stop (the extension ended by itself) commits the upper layer to the real tree: new and changed
  files (each written beside its target, fsynced, then renamed over it: a reader sees the old file or the
  new one, never half of one), symlinks, new folders, deletions (overlayfs whiteouts) and replaced
  folders (opaque folders: what the real folder held and the upper one does not is removed).
- A kill by the agent (the ladder, a correlation, an operator) discards it: the real tree is as it was.
- An instance still running when the agent stops, or when the host goes down, leaves it on disk: the next
  agent lists it (``ebpfguard rollback list``) for an operator to ``show``, ``commit`` or ``discard``.

The conflict rule: a change the user (or anyone outside the instance) made to the real tree while the
instance ran wins. A path whose real file changed after the instance started (its ctime, which no
unprivileged program can set back, is newer than the start) is left as the user made it; the extension's
version is kept aside under STATE/rollback-kept/<instance>/ and the record names both. A real entry the
extension changed (overlayfs copied it up and marked it with ``trusted.overlay.origin``) that the user then
deleted stays deleted, and so does a folder the user removed: what the extension wrote there is kept aside.

Root never acts for the user unsafely. The real tree's root is opened once (O_PATH, no symlink as its last
component, the same folder, device and inode, the instance started with) and every path below it is resolved
with openat2(2) RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV, then changed
with the *at calls on its folder's descriptor; all of it with the instance user's filesystem rights (this
thread's fsuid, fsgid and groups: _UserRights), so what is created belongs to that user and the kernel refuses
what the user could not do. A path that does not resolve so (one of its folders became a symlink, a mount point
is crossed) is a conflict: nothing is written there, and the record says why. The upper layer was written by
the extension and is read as hostile too (``refusal``): a file that is not the instance user's (a hard link to
someone else's file) is never read, copied nor handed back; a symlink is recreated, as a symlink, only when its
target stays inside the write tree; a FIFO, socket or device node is never opened. Each of those is a conflict.
Upper files are opened O_NOFOLLOW | O_NONBLOCK and checked with fstat before a byte is read.

Overlay options: redirect_dir, index, metacopy and xino off, so that the upper layer is plain files,
folders, whiteouts (character devices 0/0) and opaque markers (``trusted.overlay.opaque``), which this
module reads as root; a renamed folder is copied then deleted (EXDEV to the renamer, which ``mv`` handles).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import platform
import posixpath
import pwd
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ebpfguard.errors import EbpfguardError

log = logging.getLogger("ebpfguard")

OPAQUE = "trusted.overlay.opaque"
ORIGIN = "trusted.overlay.origin"  # set on copy-up: the upper entry began as a real one (absent: made new)
LIST_MAX = 2000  # changes named one by one in a record; the rest are counted (and digested)
_TMP = ".ebpfguard-commit-"
MS_NOSUID, MS_NODEV, MNT_DETACH = 2, 4, 2
RULE = "a path the user changed while the instance ran keeps the user's version"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class RollbackError(EbpfguardError):
    pass


@dataclass(frozen=True)
class Tree:
    target: str  # the real folder, where the overlay is mounted in the namespace
    upper: str
    work: str
    dev: int | None = None  # the real folder's device and inode when the instance started (None: an older area)
    ino: int | None = None


@dataclass
class Change:
    op: str     # write | symlink | mkdir | delete | replace-dir | special (a FIFO, socket or device: refused)
    path: str   # in the real tree
    sha256: str | None = None
    size: int | None = None
    upper: str = field(default="", repr=False)
    # the real entry the extension changed (overlayfs copied it up): "there" (it still exists, under this name or
    # another), "gone" (deleted since), "unknown" (its filesystem gives no file handles); None: the entry is new
    origin: str | None = field(default=None, repr=False)
    rel: str = field(default="", repr=False)  # the path below the write tree (and below the upper layer)
    target: str | None = None  # a symlink's
    refused: str | None = field(default=None, repr=False)  # why it never reaches the real tree (refusal())
    mode: int = field(default=0, repr=False)
    ino: int = field(default=0, repr=False)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "path": self.path}
        if self.sha256 is not None:
            out["sha256"], out["size"] = self.sha256, self.size
        if self.target is not None:
            out["target"] = self.target
        return out


# ---- what may go from the upper layer to the real tree (pure) ---------------------------------------------------
def link_stays_inside(rel: str, target: str, tree: str) -> bool:
    """Whether a symlink at ``rel`` (below the write tree ``tree``) pointing to ``target`` names a path inside
    the tree, read lexically (the kernel would follow the links it meets; each of those is judged on its own)."""
    if not target or "\0" in target:
        return False
    if target.startswith("/"):
        return _under(posixpath.normpath(target), tree.rstrip("/") or "/")
    inside = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    return inside != ".." and not inside.startswith("../") and not inside.startswith("/")


def refusal(mode: int, uid: int, user: int, *, rel: str = "", target: str | None = None, tree: str = "/",
            rdev: int = 0) -> str | None:
    """Why an entry of the upper layer (its lstat mode and owner) may not reach the real tree of an instance run
    as ``user``; None when it may. The extension wrote the upper layer, so: a regular file is copied only when
    it is the user's (a hard link to a file of root's or another user's is never read); a symlink is recreated
    (never followed) only when it points inside the write tree; a FIFO, socket or device node is never opened;
    a folder is made as the user whoever owns the upper one."""
    if stat.S_ISREG(mode):
        return None if uid == user else (f"a file of uid {uid}, not the instance user's ({user}): a hard link to "
                                         "another's file is never read nor handed on")
    if stat.S_ISDIR(mode):
        return None
    if stat.S_ISLNK(mode):
        return None if target is not None and link_stays_inside(rel, target, tree) else \
            f"a symlink out of the write tree (to {target!r}): not recreated"
    if stat.S_ISCHR(mode) and rdev == 0:
        return None  # an overlayfs whiteout: a deletion
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "a device node" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else f"a file of type {stat.S_IFMT(mode):o}")
    return f"{kind}: never opened nor made in the real tree"


def unresolved(err: OSError) -> str:
    """What an openat2 failure below the write tree means, for a conflict's record."""
    return {errno.ELOOP: "one of its folders is now a symlink: not followed",
            errno.EXDEV: "it crosses a mount point or leaves the write tree",
            errno.ENOTDIR: "one of its folders is now something else",
            errno.ENOENT: "one of its folders is gone",
            errno.EACCES: "the instance user may not reach it",
            errno.EPERM: "the instance user may not reach it",
            errno.EAGAIN: "the kernel could not resolve it safely (a rename raced it)"}.get(
        err.errno or 0, os.strerror(err.errno or 0) if err.errno else str(err))


# ---- paths beneath a folder, never through a link ---------------------------------------------------------------
_SYS_OPENAT2 = 437  # the same number on every architecture (the syscall table was unified at 424)
RESOLVE_NO_XDEV, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH = 0x01, 0x02, 0x04, 0x08
BENEATH = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = BENEATH) -> int:
    """openat2(2) (Python has no wrapper): ``path`` below ``dirfd``, by default no symlink, magic link, mount
    point nor ``..`` above it on the way; O_CLOEXEC always."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & (os.O_CREAT | os.O_TMPFILE) == os.O_CREAT else 0, resolve)
    fd = _libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd), os.fsencode(path), ctypes.byref(how),
                       ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    return int(fd)


def _parent(root: int, rel: str) -> tuple[int, str]:
    """An O_PATH descriptor of ``rel``'s folder, resolved beneath ``root``, and its last component."""
    folder, name = posixpath.split(rel)
    return openat2(root, folder or ".", os.O_PATH | os.O_DIRECTORY), name


def _lstat_at(fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove_at(fd: int, name: str) -> None:
    """Remove ``name`` in the folder ``fd``, a folder with all it holds; never through a symlink nor across a
    mount point (EXDEV)."""
    st = _lstat_at(fd, name)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=fd)
        return
    sub = openat2(fd, name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for n in os.listdir(sub):
            _remove_at(sub, n)
    finally:
        os.close(sub)
    os.rmdir(name, dir_fd=fd)


def _makedirs_at(root: int, rel: str, mode: int = 0o700) -> int:
    """``rel`` below ``root`` made as needed, each folder resolved beneath; an O_PATH descriptor of it."""
    fd = os.dup(root)
    try:
        for part in [p for p in rel.split("/") if p]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, mode, dir_fd=fd)
            nxt = openat2(fd, part, os.O_PATH | os.O_DIRECTORY)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_upper(root: int, rel: str) -> tuple[int, os.stat_result]:
    """An upper file opened for reading without following a link and without blocking (a FIFO would), and its
    fstat: the caller reads it only if that says a regular file."""
    fd = openat2(root, rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        return fd, os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise


def _sha256_fd(fd: int) -> str:
    h = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        h.update(chunk)
    return h.hexdigest()


def _copy_fd(src: int, dst: int) -> None:
    os.lseek(src, 0, os.SEEK_SET)
    while chunk := os.read(src, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view):]


# ---- the instance user's filesystem rights, on this thread only -------------------------------------------------
_SETGROUPS = {"x86_64": 116, "aarch64": 159, "riscv64": 159, "ppc64le": 81, "s390x": 206}


class _UserRights:
    """While entered, this thread acts on files as ``uid``/``gid`` with that user's groups: setfsuid(2),
    setfsgid(2) and the raw setgroups(2) change the calling thread's credentials only (glibc's setgroups would
    change every thread's), and a non-zero fsuid drops the filesystem capabilities (CAP_DAC_OVERRIDE,
    CAP_CHOWN, CAP_FOWNER...) until it is 0 again. Not root: nothing to change (the caller acts as itself)."""

    def __init__(self, uid: int, gid: int):
        self.uid, self.gid = uid, gid
        self.active = os.geteuid() == 0 and uid != 0
        self.groups: list[int] = []
        if self.active:
            try:
                self.groups = os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
            except KeyError:
                self.groups = [gid]
            self.nr = _SETGROUPS.get(platform.machine())
            if self.nr is None:
                raise RollbackError(f"no setgroups syscall number known for {platform.machine()}: the commit "
                                    "cannot take the instance user's rights")
            self.saved = os.getgroups()

    def _setgroups(self, groups: list[int]) -> None:
        arr = (ctypes.c_uint * max(1, len(groups)))(*groups)
        if _libc.syscall(ctypes.c_long(self.nr or 0), ctypes.c_size_t(len(groups)), arr) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setgroups: {os.strerror(e)}")

    def __enter__(self) -> _UserRights:
        if self.active:
            self._setgroups(self.groups)
            _libc.setfsgid(self.gid)
            _libc.setfsuid(self.uid)
            if _libc.setfsuid(-1) != self.uid or _libc.setfsgid(-1) != self.gid:
                self.__exit__(None, None, None)
                raise RollbackError(f"setfsuid({self.uid})/setfsgid({self.gid}) did not take")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active:
            _libc.setfsuid(0)
            _libc.setfsgid(0)
            self._setgroups(self.saved)
            if _libc.setfsuid(-1) != 0:
                raise RollbackError("this thread could not take root's file rights back (setfsuid(0))")


# ---- the upper layer, read as root ------------------------------------------------------------------------------
def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE, follow_symlinks=False) == b"y"
    except OSError:
        return False


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int), ("f_handle", ctypes.c_ubyte * 128)]


def _origin(upper: str, real_fd: int) -> str | None:
    """Whether the real entry an upper one was copied up from still exists. overlayfs stores the real inode's
    file handle in ``trusted.overlay.origin`` (struct ovl_fb: version, magic 0xfb, length, flags, handle type,
    the filesystem's uuid, then the handle; empty when the filesystem cannot give handles), and
    open_by_handle_at(2) on the real tree finds that inode, whatever its name now, or fails with ESTALE."""
    try:
        fb = os.getxattr(upper, ORIGIN, follow_symlinks=False)
    except OSError:
        return None
    if real_fd < 0 or len(fb) < 21 or fb[1] != 0xFB or fb[2] != len(fb) or len(fb) - 21 > 128:
        return "unknown"
    fh = _FileHandle(len(fb) - 21, fb[4])
    ctypes.memmove(fh.f_handle, fb[21:], len(fb) - 21)
    fd = _libc.open_by_handle_at(real_fd, ctypes.byref(fh), os.O_PATH)
    if fd >= 0:
        os.close(fd)
        return "there"
    return "gone" if ctypes.get_errno() in (errno.ESTALE, errno.ENOENT) else "unknown"


def _try_overlay(target: str, upper: Path, work: Path, probe: Path) -> None:
    """Mount the overlay once here, on a probe folder only root can reach, and unmount it: a filesystem that
    overlayfs refuses (an upper layer on overlayfs, NFS or FUSE, a lower one it cannot stack on) is a precise
    error before the extension starts, not a failure in its launcher."""
    from ebpfguard.sandbox.mountns import ROLLBACK_OPTIONS, MountNsError, _mount  # noqa: PLC0415

    probe.mkdir(mode=0o700, exist_ok=True)
    try:
        _mount("overlay", str(probe), "overlay", MS_NOSUID | MS_NODEV,
               f"lowerdir={target},upperdir={upper},workdir={work},{ROLLBACK_OPTIONS}")
    except MountNsError as err:
        probe.rmdir()
        raise RollbackError(f"overlayfs refuses {target} as the lower layer or {upper.parent.parent} as the upper "
                            f"one ({_fstype(target)} below, {_fstype(str(upper))} above): {err}. The rollback "
                            "area (STATE/rollback) must be on a filesystem with trusted xattrs and whiteouts "
                            "(ext4, xfs, btrfs, tmpfs); the kernel's log names the reason") from None
    if _libc.umount2(str(probe).encode(), MNT_DETACH) != 0:
        raise RollbackError(f"umount {probe}: {os.strerror(ctypes.get_errno())}")
    probe.rmdir()


def _fstype(path: str) -> str:
    """The filesystem type of the mount holding ``path`` (the longest mount point above it)."""
    best, kind = "", "?"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                mnt = left.split()[4].replace("\\040", " ")
                if _under(path, mnt) and len(mnt) >= len(best):
                    best, kind = mnt, right.split()[0]
    except (OSError, IndexError):
        pass
    return kind


def _whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _check_option_path(p: str) -> None:
    if any(c in p for c in ",:\\\n"):
        raise RollbackError(f"{p}: a path with ',', ':' or '\\' cannot be an overlay layer")


def instance_user(sandbox: dict[str, Any] | None) -> tuple[int, int] | None:
    """The user an instance ran as (its launcher's Sandbox.describe() says the uid) and that user's group."""
    uid = (sandbox or {}).get("uid")
    if not isinstance(uid, int) or isinstance(uid, bool):
        return None
    try:
        return uid, pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid, uid


class Layer:
    """One instance's rollback area: STATE/rollback/<instance>/ with meta.json and one upper and work folder
    per write tree."""

    def __init__(self, root: Path, meta: dict[str, Any]):
        self.root, self.meta = root, meta

    @property
    def instance(self) -> str:
        return str(self.meta["instance"])

    @property
    def trees(self) -> list[Tree]:
        return [Tree(**t) for t in self.meta["trees"]]

    @property
    def started_ns(self) -> int:
        return int(self.meta["started_ns"])

    @classmethod
    def create(cls, root: Path, instance: str, extension: str, targets: list[str], started_ns: int,
               user: tuple[int, int] | None = None) -> Layer:
        """The upper and work folders for each existing folder in ``targets``; the upper folder takes the
        real folder's owner and mode (the overlay's root shows the upper's). ``user``: the uid and gid the
        instance runs as (Layer.user says who is taken without it)."""
        trees = []
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(root, 0o700)  # the changes are the extension's data: root only, until committed
        for i, target in enumerate(targets):
            try:
                st = os.stat(target)
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                continue
            for p in (target, str(root)):
                _check_option_path(p)
            if _under(str(root), target):
                raise RollbackError(f"{target}: the rollback area {root} is inside this write tree")
            upper, work = root / str(i) / "upper", root / str(i) / "work"
            upper.mkdir(parents=True, exist_ok=True)
            work.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chown(upper, st.st_uid, st.st_gid)
            os.chmod(upper, stat.S_IMODE(st.st_mode))
            _try_overlay(target, upper, work, root / str(i) / "probe")
            trees.append({"target": target, "upper": str(upper), "work": str(work), "dev": st.st_dev,
                          "ino": st.st_ino})
        meta: dict[str, Any] = {"instance": instance, "extension": extension, "started_ns": started_ns,
                                "trees": trees}
        if user is not None:
            meta["user"] = list(user)
        layer = cls(root, meta)
        layer.save()
        return layer

    @classmethod
    def open(cls, root: Path) -> Layer:
        try:
            meta = json.loads((root / "meta.json").read_text())
            if not isinstance(meta, dict) or not isinstance(meta.get("trees"), list):
                raise ValueError("not a rollback area")
        except (OSError, ValueError) as err:
            raise RollbackError(f"{root}: {err}") from err
        return cls(root, meta)

    def save(self) -> None:
        tmp = self.root / "meta.json.tmp"
        tmp.write_text(json.dumps(self.meta))
        os.replace(tmp, self.root / "meta.json")

    def overlays(self) -> dict[str, tuple[str, str]]:
        """target -> (upper, work), as mountns.plan takes them."""
        return {t.target: (t.upper, t.work) for t in self.trees}

    def user(self, given: tuple[int, int] | None = None) -> tuple[int, int]:
        """Whose rights a commit takes, and whose files in the upper layer it may copy: ``given`` (the agent
        knows whom it launched the instance as), else the user saved in the area (``remember``), else the owner
        of the first upper folder (the write tree's owner when the area was made), else nobody."""
        if given is not None:
            return int(given[0]), int(given[1])
        saved = self.meta.get("user")
        if isinstance(saved, list) and len(saved) == 2 and all(isinstance(x, int) for x in saved):
            return saved[0], saved[1]
        for t in self.trees:
            with contextlib.suppress(OSError):
                st = os.lstat(t.upper)
                if stat.S_ISDIR(st.st_mode):
                    return st.st_uid, st.st_gid
        return 65534, 65534

    def remember(self, user: tuple[int, int]) -> None:
        """Save whom the instance ran as, for a commit by a later agent or ``ebpfguard rollback``."""
        if self.meta.get("user") != list(user) and self.root.is_dir():
            self.meta["user"] = list(user)
            self.save()

    # ---- what changed ---------------------------------------------------------------------------
    def changes(self, user: tuple[int, int] | None = None) -> list[Change]:
        """Every entry of the upper layers, as a change of the real trees; each one ``refusal`` refuses says
        why. Read as root, from descriptors: no link in the upper layer is followed, no file is opened but a
        regular one of the instance user's (for its sha256)."""
        uid = self.user(user)[0]
        out: list[Change] = []
        for t in self.trees:
            try:
                ufd = os.open(t.upper, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:  # not O_PATH: open_by_handle_at refuses one
                rfd = os.open(t.target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError:
                rfd = -1
            try:
                self._walk(t, ufd, rfd, rfd, "", out, uid)
            finally:
                os.close(ufd)
                if rfd >= 0:
                    os.close(rfd)
        return out

    def _walk(self, t: Tree, ufd: int, rfd: int, handles: int, rel: str, out: list[Change], uid: int) -> None:
        """The upper folder ``ufd`` at ``rel``; ``rfd``: the real folder there (-1: none), to tell a new folder."""
        try:
            names = sorted(os.listdir(ufd))
        except OSError:
            return
        for name in names:
            r = posixpath.join(rel, name)
            path, upath, xpath = posixpath.join(t.target, r), os.path.join(t.upper, r), f"/proc/self/fd/{ufd}/{name}"
            st = _lstat_at(ufd, name)
            if st is None:
                continue
            if _whiteout(st):
                out.append(Change("delete", path, upper=upath, rel=r))
            elif stat.S_ISDIR(st.st_mode):
                real = _lstat_at(rfd, name) if rfd >= 0 else None
                if _opaque(xpath):
                    out.append(Change("replace-dir", path, upper=upath, rel=r, mode=st.st_mode))
                elif real is None or not stat.S_ISDIR(real.st_mode):
                    out.append(Change("mkdir", path, upper=upath, origin=_origin(xpath, handles), rel=r,
                                      mode=st.st_mode))
                try:
                    sub = openat2(ufd, name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                except OSError:
                    continue
                rsub = -1
                if real is not None and stat.S_ISDIR(real.st_mode):
                    with contextlib.suppress(OSError):
                        rsub = openat2(rfd, name, os.O_PATH | os.O_DIRECTORY)
                try:
                    self._walk(t, sub, rsub, handles, r, out, uid)
                finally:
                    os.close(sub)
                    if rsub >= 0:
                        os.close(rsub)
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(name, dir_fd=ufd)
                out.append(Change("symlink", path, upper=upath, origin=_origin(xpath, handles), rel=r, target=target,
                                  refused=refusal(st.st_mode, st.st_uid, uid, rel=r, target=target, tree=t.target)))
            elif stat.S_ISREG(st.st_mode):
                ch = Change("write", path, None, st.st_size, upath, _origin(xpath, handles), r, mode=st.st_mode,
                            ino=st.st_ino, refused=refusal(st.st_mode, st.st_uid, uid))
                if ch.refused is None:
                    try:
                        fd, fst = _open_upper(ufd, name)
                    except OSError as err:
                        ch.refused = f"the upper file cannot be opened: {err.strerror}"
                    else:
                        try:
                            ch.refused = _changed_under(fst, st, uid)
                            if ch.refused is None:
                                ch.sha256, ch.size = _sha256_fd(fd), fst.st_size
                        finally:
                            os.close(fd)
                out.append(ch)
            else:
                out.append(Change("special", path, upper=upath, rel=r, mode=st.st_mode,
                                  refused=refusal(st.st_mode, st.st_uid, uid, rdev=st.st_rdev)))

    # ---- commit and discard ---------------------------------------------------------------------
    def commit(self, kept: Path, user: tuple[int, int] | None = None) -> dict[str, Any]:
        """Apply the upper layers to the real trees, as the instance user (``user``, else Layer.user), each path
        resolved beneath its tree without following a link; the user's newer changes win, and what cannot go
        in safely is a conflict: the extension's version goes to ``kept`` when it is the user's file or a
        symlink, and nowhere when it is not (refusal). Each file is written beside its target, all of them are
        made durable at once (syncfs), then each is renamed over its target (atomic: a reader sees the old file
        or the new one), and each folder touched is fsynced. Returns what a record says: ``changes`` what was
        applied, ``conflicts`` (each with ``why``) what was not, ``errors`` what failed half way."""
        uid, gid = self.user(user)
        rights = _UserRights(uid, gid)
        done: list[Change] = []
        conflicts: list[dict[str, Any]] = []
        errors: list[str] = []
        changes = self.changes((uid, gid))
        for t in self.trees:
            mine = [c for c in changes if c.upper == t.upper or c.upper.startswith(t.upper.rstrip("/") + "/")]
            aside = self._commit_tree(t, mine, rights, done, errors)
            for ch, why, by_user in aside:
                conflicts.append(self._keep_aside(t, ch, kept, why, by_user, uid))
        self._remove()
        order = {id(c): i for i, c in enumerate(done)}
        done.sort(key=lambda c: (c.path, order[id(c)]))
        return {"event": "committed", **_listing(done), "conflicts": conflicts, "errors": errors, "rule": RULE,
                "user": {"uid": uid, "gid": gid}}

    def _commit_tree(self, t: Tree, changes: list[Change], rights: _UserRights, done: list[Change],
                     errors: list[str]) -> list[tuple[Change, str, str | None]]:
        """One write tree's changes applied with the user's rights; the conflicts (change, why, what the user
        did) returned for keeping aside, which is root's."""
        aside: list[tuple[Change, str, str | None]] = []
        try:
            with rights:
                root = os.open(t.target, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as err:
            why = f"the write tree cannot be opened as the instance user: {err.strerror}"
            return [(ch, why, "changed") for ch in changes]
        try:
            st = os.fstat(root)
            if t.dev is not None and (st.st_dev, st.st_ino) != (t.dev, t.ino):
                why = "the write tree is no longer the folder the instance started with"
                return [(ch, why, "changed") for ch in changes]
            upper = os.open(t.upper, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                self._apply_all(changes, root, upper, rights, done, errors, aside)
            finally:
                os.close(upper)
        finally:
            os.close(root)
        return aside

    def _apply_all(self, changes: list[Change], root: int, upper: int, rights: _UserRights, done: list[Change],
                   errors: list[str], aside: list[tuple[Change, str, str | None]]) -> None:
        blocked: dict[str, str | None] = {}  # folders (below the tree) not made: nothing goes in them
        folders: dict[str, int] = {}  # folder -> its O_PATH descriptor, resolved beneath the tree
        renames: list[tuple[int, str, str, Change]] = []
        try:
            for ch in changes:
                folder, name = posixpath.split(ch.rel)
                over = next((b for b in blocked if _under(ch.rel, b)), None)
                why, by_user = (ch.refused, None) if ch.refused else \
                    ("its folder is a conflict", blocked[over]) if over is not None else (None, None)
                src, fst = -1, None
                if why is None and ch.op == "write":
                    try:
                        src, fst = _open_upper(upper, ch.rel)
                        why = _changed_under(fst, None, rights.uid)
                    except OSError as err:
                        why = f"the upper file cannot be opened: {err.strerror}"
                try:
                    if why is None:
                        with rights:
                            why, by_user, tmp = self._apply_one(ch, folders, root, folder, name, src, fst)
                        if why is None and tmp is None:
                            done.append(ch)
                        elif why is None and tmp is not None:
                            renames.append((folders[folder], tmp, name, ch))
                except OSError as err:
                    errors.append(f"{ch.op} {ch.path}: {err.strerror or err}")
                    if ch.op in ("mkdir", "replace-dir"):
                        blocked[ch.rel] = None
                finally:
                    if src >= 0:
                        os.close(src)
                if why is not None:
                    aside.append((ch, why, by_user))
                    if ch.op in ("mkdir", "replace-dir"):
                        blocked[ch.rel] = by_user
            with contextlib.suppress(OSError):
                fd = openat2(root, ".", os.O_RDONLY | os.O_DIRECTORY)
                try:
                    if _libc.syncfs(fd) != 0:
                        os.sync()
                finally:
                    os.close(fd)
            touched: set[int] = set()
            with rights:
                for pfd, tmp, name, ch in renames:
                    try:
                        _replace_at(pfd, tmp, name)
                        done.append(ch)
                        touched.add(pfd)
                    except OSError as err:
                        errors.append(f"{ch.op} {ch.path}: {err.strerror or err}")
                        with contextlib.suppress(OSError):
                            os.unlink(tmp, dir_fd=pfd)
                for pfd in touched:
                    _fsync_at(pfd)
        finally:
            for fd in folders.values():
                os.close(fd)

    def _apply_one(self, ch: Change, folders: dict[str, int], root: int, folder: str, name: str, src: int,
                   fst: os.stat_result | None) -> tuple[str | None, str | None, str | None]:
        """With the user's rights: (why not, what the user did, None) for a conflict, else (None, None, the
        temporary name to rename over ``name`` or None when done)."""
        pfd = folders.get(folder)
        if pfd is None:
            try:
                pfd = openat2(root, folder or ".", os.O_PATH | os.O_DIRECTORY)
            except OSError as err:
                return unresolved(err), "changed", None
            folders[folder] = pfd
        user = self._user_changed(ch, pfd, name)
        if user:
            return ("the user changed it while the instance ran" if user == "changed" else
                    "the user deleted it while the instance ran"), user, None
        return None, None, _apply(ch, pfd, name, src, fst)

    def discard(self, user: tuple[int, int] | None = None) -> dict[str, Any]:
        """Throw the upper layers away; the real trees are not touched. The record lists what was thrown away."""
        changes = self.changes(user)
        self._remove()
        out = {"event": "discarded", **_listing(changes)}
        if self.root.exists():
            out["errors"] = [f"{self.root} could not be removed entirely"]
        return out

    def show(self) -> dict[str, Any]:
        return {"instance": self.instance, "extension": self.meta.get("extension"), "trees":
                [t.target for t in self.trees], "started_ns": self.started_ns, **_listing(self.changes())}

    def _user_changed(self, ch: Change, pfd: int, name: str) -> str | None:
        """``changed`` when the real path changed after the instance started, ``deleted`` when the real entry the
        extension changed (under this name or, renamed, another) has been deleted since; None when the
        extension's change may go in."""
        st = _lstat_at(pfd, name)
        if st is None:
            return "deleted" if ch.origin == "gone" else None
        return "changed" if st.st_ctime_ns > self.started_ns else None

    def _keep_aside(self, t: Tree, ch: Change, kept: Path, why: str, by_user: str | None,
                    uid: int) -> dict[str, Any]:
        """A conflict's record entry; the extension's version moved to ``kept`` (root's) when it is a file of
        the instance user's or a symlink (as a symlink), never anything else."""
        out: dict[str, Any] = {**ch.as_dict(), "kept": "user", "why": why}
        if by_user:
            out["user"] = by_user
        if ch.op not in ("write", "symlink") or (ch.op == "write" and ch.refused):
            return out
        dest = kept / self.instance / ch.path.lstrip("/")
        try:
            kept.mkdir(parents=True, exist_ok=True, mode=0o700)
            top = os.open(kept, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                pfd = _makedirs_at(top, posixpath.dirname(f"{self.instance}/{ch.path.lstrip('/')}"))
            finally:
                os.close(top)
            try:
                with contextlib.suppress(FileNotFoundError):
                    _remove_at(pfd, dest.name)
                if ch.op == "symlink":
                    os.symlink(ch.target or "", dest.name, dir_fd=pfd)
                else:
                    _keep_file(t, ch, pfd, dest.name, uid)
            finally:
                os.close(pfd)
            out["extension_version"] = str(dest)
        except (OSError, RollbackError) as err:
            out["why"] = f"{why}; the extension's version could not be kept aside: {err}"
        return out

    def _remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _changed_under(fst: os.stat_result, st: os.stat_result | None, uid: int) -> str | None:
    """An opened upper file that is not what its lstat said, or not a regular file of the instance user's."""
    if st is not None and (fst.st_ino, fst.st_dev) != (st.st_ino, st.st_dev):
        return "the upper file changed while it was read"
    return refusal(fst.st_mode, fst.st_uid, uid)


def _apply(ch: Change, pfd: int, name: str, src: int, fst: os.stat_result | None) -> str | None:
    """Folders and deletions at once; a file or symlink is written beside its target, and its temporary
    name returned for the rename that follows. Everything is relative to the folder ``pfd``."""
    if ch.op == "delete":
        _remove_at(pfd, name)
    elif ch.op in ("mkdir", "replace-dir"):
        real = _lstat_at(pfd, name)
        if real is not None and (ch.op == "replace-dir" or not stat.S_ISDIR(real.st_mode)):
            _remove_at(pfd, name)
            real = None
        if real is None:
            os.mkdir(name, 0o700, dir_fd=pfd)
        fd = openat2(pfd, name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, stat.S_IMODE(ch.mode))
        finally:
            os.close(fd)
    elif ch.op == "symlink":
        tmp = _tmp_name(name)
        os.symlink(ch.target or "", tmp, dir_fd=pfd)
        return tmp
    elif ch.op == "write" and fst is not None:
        tmp = _tmp_name(name)
        fd = openat2(pfd, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            _copy_fd(src, fd)
            with contextlib.suppress(PermissionError):
                os.fchown(fd, -1, fst.st_gid)
            os.fchmod(fd, stat.S_IMODE(fst.st_mode))
            os.utime(fd, ns=(fst.st_atime_ns, fst.st_mtime_ns))
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=pfd)
            raise
        os.close(fd)
        return tmp
    return None


def _keep_file(t: Tree, ch: Change, pfd: int, name: str, uid: int) -> None:
    """The extension's version of a file copied from the upper layer into the folder ``pfd``: only a regular
    file of the instance user's, opened without following a link nor blocking."""
    ufd = os.open(t.upper, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        src, fst = _open_upper(ufd, ch.rel)
    finally:
        os.close(ufd)
    try:
        why = _changed_under(fst, None, uid)
        if why:
            raise RollbackError(why)
        fd = openat2(pfd, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            _copy_fd(src, fd)
            os.fchown(fd, fst.st_uid, fst.st_gid)
            os.fchmod(fd, stat.S_IMODE(fst.st_mode) & 0o777)
            os.utime(fd, ns=(fst.st_atime_ns, fst.st_mtime_ns))
        finally:
            os.close(fd)
    finally:
        os.close(src)


def _listing(changes: list[Change]) -> dict[str, Any]:
    listed = [c.as_dict() for c in changes[:LIST_MAX]]
    digest = hashlib.sha256(json.dumps([c.as_dict() for c in changes], sort_keys=True).encode()).hexdigest()
    counts: dict[str, int] = {}
    for c in changes:
        counts[c.op] = counts.get(c.op, 0) + 1
    return {"changes": listed, "count": len(changes), "counts": counts, "changes_sha256": digest,
            "listed": len(listed)}


def _under(path: str, folder: str) -> bool:
    folder = folder.rstrip("/") or "/"
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _tmp_name(name: str) -> str:
    return f"{_TMP}{os.getpid()}-{name}"[:255]


def _replace_at(pfd: int, tmp: str, name: str) -> None:
    """rename(2) over ``name`` in the folder ``pfd`` (a folder in the way is removed first)."""
    try:
        os.replace(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
    except IsADirectoryError:
        _remove_at(pfd, name)
        os.replace(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)


def _fsync_at(pfd: int) -> None:
    with contextlib.suppress(OSError):
        fd = openat2(pfd, ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def pending(root: Path, live: set[str]) -> list[Layer]:
    """Rollback areas on disk whose instance is not running here (an agent or host that went down)."""
    out: list[Layer] = []
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        if d.name in live or not d.is_dir():
            continue
        try:
            out.append(Layer.open(d))
        except RollbackError:
            continue
    return out

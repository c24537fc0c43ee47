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
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ebpfguard.common.hashing import file_sha256
from ebpfguard.errors import EbpfguardError

log = logging.getLogger("ebpfguard")

OPAQUE = "trusted.overlay.opaque"
ORIGIN = "trusted.overlay.origin"  # set on copy-up: the upper entry began as a real one (absent: made new)
LIST_MAX = 2000  # changes named one by one in a record; the rest are counted (and digested)
_TMP = ".ebpfguard-commit-"
MS_NOSUID, MS_NODEV, MNT_DETACH = 2, 4, 2


class RollbackError(EbpfguardError):
    pass


@dataclass(frozen=True)
class Tree:
    target: str  # the real folder, where the overlay is mounted in the namespace
    upper: str
    work: str


@dataclass
class Change:
    op: str     # write | symlink | mkdir | delete | replace-dir
    path: str   # in the real tree
    sha256: str | None = None
    size: int | None = None
    upper: str = field(default="", repr=False)
    # the real entry the extension changed (overlayfs copied it up): "there" (it still exists, under this name or
    # another), "gone" (deleted since), "unknown" (its filesystem gives no file handles); None: the entry is new
    origin: str | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "path": self.path}
        if self.sha256 is not None:
            out["sha256"], out["size"] = self.sha256, self.size
        return out


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
    if len(fb) < 21 or fb[1] != 0xFB or fb[2] != len(fb) or len(fb) - 21 > 128:
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
    def create(cls, root: Path, instance: str, extension: str, targets: list[str], started_ns: int) -> Layer:
        """The upper and work folders for each existing folder in ``targets``; the upper folder takes the
        real folder's owner and mode (the overlay's root shows the upper's)."""
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
            trees.append({"target": target, "upper": str(upper), "work": str(work)})
        layer = cls(root, {"instance": instance, "extension": extension, "started_ns": started_ns, "trees": trees})
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

    # ---- what changed ---------------------------------------------------------------------------
    def changes(self) -> list[Change]:
        out: list[Change] = []
        for t in self.trees:
            try:
                real_fd = os.open(t.target, os.O_RDONLY | os.O_DIRECTORY)  # not O_PATH: open_by_handle_at refuses one
            except OSError:
                real_fd = -1
            try:
                self._walk(t.upper, t.target, out, real_fd)
            finally:
                if real_fd >= 0:
                    os.close(real_fd)
        return out

    def _walk(self, upper: str, real: str, out: list[Change], real_fd: int) -> None:
        try:
            names = sorted(os.listdir(upper))
        except OSError:
            return
        for name in names:
            u, r = os.path.join(upper, name), os.path.join(real, name)
            try:
                st = os.lstat(u)
            except OSError:
                continue
            if _whiteout(st):
                out.append(Change("delete", r, upper=u))
            elif stat.S_ISDIR(st.st_mode):
                if _opaque(u):
                    out.append(Change("replace-dir", r, upper=u))
                elif not os.path.isdir(r) or os.path.islink(r):
                    out.append(Change("mkdir", r, upper=u, origin=_origin(u, real_fd)))
                self._walk(u, r, out, real_fd)
            elif stat.S_ISLNK(st.st_mode):
                out.append(Change("symlink", r, os.readlink(u), upper=u, origin=_origin(u, real_fd)))
            elif stat.S_ISREG(st.st_mode):
                out.append(Change("write", r, file_sha256(u), st.st_size, upper=u, origin=_origin(u, real_fd)))

    # ---- commit and discard ---------------------------------------------------------------------
    def commit(self, kept: Path) -> dict[str, Any]:
        """Apply the upper layers to the real trees; the user's newer changes win (the extension's version goes
        to ``kept``). Each file is written beside its target, all of them are made durable at once (syncfs),
        then each is renamed over its target (atomic: a reader sees the old file or the new one), and each
        folder touched is fsynced. Returns what a record says."""
        done: list[Change] = []
        conflicts: list[dict[str, Any]] = []
        errors: list[str] = []
        renames: list[tuple[str, Change]] = []
        gone: list[str] = []  # real folders the user removed while the extension changed what they held
        for ch in self.changes():
            if any(_under(ch.path, g) for g in gone):
                conflicts.append(self._keep_aside(ch, kept, "deleted"))
                continue
            user = self._user_changed(ch)
            if user:
                if user == "deleted" and ch.op == "mkdir":
                    gone.append(ch.path)
                conflicts.append(self._keep_aside(ch, kept, user))
                continue
            try:
                tmp = self._apply(ch)
            except OSError as err:
                errors.append(f"{ch.op} {ch.path}: {err.strerror or err}")
                continue
            if tmp is None:
                done.append(ch)
            else:
                renames.append((tmp, ch))
        for t in self.trees:
            _syncfs(t.target)
        folders: set[str] = set()
        for tmp, ch in renames:
            try:
                _replace(tmp, ch.path)
                done.append(ch)
                folders.add(os.path.dirname(ch.path) or "/")
            except OSError as err:
                errors.append(f"{ch.op} {ch.path}: {err.strerror or err}")
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        for folder in sorted(folders):
            _fsync_dir(folder)
        self._remove()
        order = {id(c): i for i, c in enumerate(done)}
        done.sort(key=lambda c: (c.path, order[id(c)]))
        return {"event": "committed", **_listing(done), "conflicts": conflicts, "errors": errors,
                "rule": "a path the user changed while the instance ran keeps the user's version"}

    def discard(self) -> dict[str, Any]:
        changes = self.changes()
        self._remove()
        return {"event": "discarded", **_listing(changes)}

    def show(self) -> dict[str, Any]:
        return {"instance": self.instance, "extension": self.meta.get("extension"), "trees":
                [t.target for t in self.trees], "started_ns": self.started_ns, **_listing(self.changes())}

    def _user_changed(self, ch: Change) -> str | None:
        """``changed`` when the real path changed after the instance started, ``deleted`` when the real entry the
        extension changed (under this name or, renamed, another) has been deleted since; None when the
        extension's change may go in."""
        try:
            return "changed" if os.lstat(ch.path).st_ctime_ns > self.started_ns else None
        except FileNotFoundError:
            return "deleted" if ch.origin == "gone" else None

    def _keep_aside(self, ch: Change, kept: Path, user: str) -> dict[str, Any]:
        out: dict[str, Any] = {**ch.as_dict(), "kept": "user", "user": user}
        if ch.op in ("write", "symlink"):
            dest = kept / self.instance / ch.path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.move(ch.upper, dest)
            out["extension_version"] = str(dest)
        return out

    def _apply(self, ch: Change) -> str | None:
        """Folders and deletions at once; a file or symlink is written beside its target, and its temporary
        name returned for the rename that follows."""
        if ch.op == "delete":
            _remove_path(ch.path)
        elif ch.op in ("mkdir", "replace-dir"):
            st = os.lstat(ch.upper)
            if ch.op == "replace-dir" or (os.path.lexists(ch.path) and not os.path.isdir(ch.path)):
                _remove_path(ch.path)
            os.mkdir(ch.path, stat.S_IMODE(st.st_mode))
            os.chown(ch.path, st.st_uid, st.st_gid)
            os.chmod(ch.path, stat.S_IMODE(st.st_mode))
        elif ch.op == "symlink":
            tmp = _tmp_beside(ch.path)
            os.symlink(os.readlink(ch.upper), tmp)
            st = os.lstat(ch.upper)
            os.chown(tmp, st.st_uid, st.st_gid, follow_symlinks=False)
            return tmp
        elif ch.op == "write":
            tmp = _tmp_beside(ch.path)
            st = os.lstat(ch.upper)
            with open(ch.upper, "rb") as src, open(tmp, "xb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                os.fchown(dst.fileno(), st.st_uid, st.st_gid)
                os.fchmod(dst.fileno(), stat.S_IMODE(st.st_mode))
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
            return tmp
        return None

    def _remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


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


def _tmp_beside(path: str) -> str:
    return os.path.join(os.path.dirname(path), f"{_TMP}{os.getpid()}-{os.path.basename(path)}")[:4000]


def _replace(tmp: str, path: str) -> None:
    """rename(2) over ``path`` (a folder in the way is removed first)."""
    try:
        os.replace(tmp, path)
    except IsADirectoryError:
        shutil.rmtree(path)
        os.replace(tmp, path)


def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)


def _syncfs(path: str) -> None:
    """Every file written beside its target on this filesystem durable, in one call (not one fsync each)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        os.sync()
        return
    try:
        if _libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _remove_path(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


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

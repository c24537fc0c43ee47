"""Programs compiled and verified once, and kept in bpffs for the next Sensor.

A *set* is everything one Sensor loads: its programs and its maps. The first Sensor of a kind compiles it with
bcc, as before, and pins every program and map under ``/sys/fs/bpf/ebpfguard/<hash>/<n>/``; a later Sensor
(an agent restarted or upgraded in place, a standalone ``run``, the next test) opens the pins instead of
compiling and verifying again. The hash covers all that decides the programs: the joined source, the compiler
flags (without the cgroup-storage map's descriptor number, which the pins replace), the kernel release and the
probed features. What bcc knows of the maps and bpffs cannot hold (their C types, as ctypes descriptions) is
kept beside, in ``/run/ebpfguard/sets/<hash>/<n>/meta.json``: both live exactly as long as the boot.

A set's maps are one Sensor's at a time: ``<n>/lock`` is held (flock) for as long as a Sensor uses the set, and a
Sensor that cannot take a free set compiles a new one (``n`` + 1). A set belongs to an *owner*: the agent's
state folder for an agent, nothing for any other Sensor. A free set is taken by its own owner, or by anyone when
it has no owner or its owner's folder is gone; an agent's set waits for that agent while it is away, because the
agent's cgroup programs still use its maps. A set taken is emptied first (every map; its ring buffer drained),
except the cgroup storage, which belongs to the cgroups its programs are attached to and is written again when
they are re-attached. Sets of another hash, free and not kept for a live owner, are removed: their programs stay
in the kernel for as long as a cgroup still has them attached, and go with the last.

Only this module and kernel/loader.py touch bcc's internals; failures become KernelError (the loader then
compiles as before, and says why).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ebpfguard.errors import KernelError

PIN_ROOT = Path("/sys/fs/bpf/ebpfguard")
META_ROOT = Path("/run/ebpfguard/sets")
FORMAT = 1  # of meta.json; part of the hash, so that a new layout never reads an old one

# enum bpf_map_type (uapi/linux/bpf.h)
HASH, ARRAY, PERCPU_HASH, PERCPU_ARRAY, LRU_HASH, LPM_TRIE, CGROUP_STORAGE, RINGBUF = 1, 2, 5, 6, 9, 11, 19, 27


def set_hash(source: str, cflags: list[str], features: dict[str, Any]) -> str:
    """The name of the set these inputs compile to (hex, 24 digits)."""
    h = hashlib.sha256()
    for part in (str(FORMAT), os.uname().release, source, "\0".join(cflags), json.dumps(features, sort_keys=True)):
        h.update(part.encode())
        h.update(b"\0\0")
    return h.hexdigest()[:24]


# ---- ctypes types as JSON (the maps' keys and values, the record) --------------------------------------
def describe(t: Any) -> Any:
    """A ctypes type as JSON: a simple type by name, an array, a struct or union with its fields."""
    if hasattr(t, "_length_") and hasattr(t, "_type_") and not isinstance(t._type_, str):
        return {"array": describe(t._type_), "n": t._length_}
    if hasattr(t, "_fields_"):
        fields = [[f[0], describe(f[1]), *f[2:]] for f in t._fields_]
        return {"name": t.__name__, "union": issubclass(t, ctypes.Union), "pack": getattr(t, "_pack_", 0),
                "anon": list(getattr(t, "_anonymous_", [])), "fields": fields}
    name = str(getattr(t, "__name__", ""))
    if not name or getattr(ctypes, name, None) is not t:
        raise KernelError(f"cannot describe the ctypes type {t!r}")
    return name


def build(d: Any) -> Any:
    """The ctypes type describe() described."""
    if isinstance(d, str):
        t = getattr(ctypes, d, None)
        if t is None or not d.startswith("c_"):
            raise KernelError(f"not a ctypes type: {d!r}")
        return t
    if "array" in d:
        return build(d["array"]) * int(d["n"])
    ns: dict[str, Any] = {}
    if d["pack"]:
        ns["_pack_"] = d["pack"]
    if d["anon"]:
        ns["_anonymous_"] = d["anon"]
    ns["_fields_"] = [(f[0], build(f[1]), *f[2:]) for f in d["fields"]]
    return type(str(d["name"]), (ctypes.Union if d["union"] else ctypes.Structure,), ns)


# ---- the set's folders -----------------------------------------------------------------------------
def _libbcc() -> Any:
    from bcc import lib  # noqa: PLC0415 - bcc stays out of pure imports

    if lib.bpf_table_name.restype is not ctypes.c_char_p:  # bcc's Python binding declares neither
        lib.bpf_num_tables.restype, lib.bpf_num_tables.argtypes = ctypes.c_ulonglong, [ctypes.c_void_p]
        lib.bpf_table_name.restype = ctypes.c_char_p
        lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_ulonglong]
    return lib


def ensure_bpffs() -> None:
    if os.path.ismount("/sys/fs/bpf"):
        return
    if os.system("mount -t bpf bpf /sys/fs/bpf 2>/dev/null") != 0 or not os.path.ismount("/sys/fs/bpf"):
        raise KernelError("bpffs is not mounted at /sys/fs/bpf and could not be mounted: nothing can be kept")


def _owner_alive(owner: str) -> bool:
    return bool(owner) and os.path.isdir(owner)


@dataclass
class Member:
    """One set of one hash: its pins, its description, the lock held while a Sensor uses it. ``previous_owner``:
    whose it was before this Sensor took it (the same owner: an agent back after it was killed)."""

    hash: str
    n: int
    lock_fd: int
    previous_owner: str = ""
    clean: bool = False  # its previous user closed it (nothing was left unread)

    @property
    def pins(self) -> Path:
        return PIN_ROOT / self.hash / str(self.n)

    @property
    def meta_dir(self) -> Path:
        return META_ROOT / self.hash / str(self.n)

    def meta(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.meta_dir / "meta.json").read_text()))
        except (OSError, ValueError):
            return None

    def set_owner(self, owner: str) -> None:
        tmp = self.meta_dir / "owner.tmp"
        tmp.write_text(owner)
        os.replace(tmp, self.meta_dir / "owner")

    def mark_clean(self) -> None:
        (self.meta_dir / "clean").touch()

    def release(self) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)  # the flock goes with the last descriptor of its open file
            self.lock_fd = -1

    def remove(self) -> None:
        """Drop the pins and the description (the caller holds the lock)."""
        shutil.rmtree(self.pins, ignore_errors=True)  # unlinking a pin drops a reference, nothing more
        shutil.rmtree(self.meta_dir, ignore_errors=True)
        self.release()


def _try_lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return -1
        raise
    return fd


def _read_owner(d: Path) -> str:
    try:
        return (d / "owner").read_text()
    except OSError:
        return ""


def acquire(h: str, owner: str) -> tuple[Member, bool]:
    """A set of hash ``h`` for ``owner`` ("" for none), locked: (member, it holds a complete set to open).
    When it holds none, the caller compiles and calls pin() (or remove() on failure)."""
    ensure_bpffs()
    top = META_ROOT / h
    top.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(META_ROOT, 0o700)
    guard = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)  # one chooser at a time; compiling happens outside
        numbers = sorted(int(p.name) for p in top.iterdir() if p.name.isdigit())
        own = [n for n in numbers if _read_owner(top / str(n)) == owner]
        others = [n for n in numbers if n not in own]
        for n in [*own, *others]:
            d = top / str(n)
            o = _read_owner(d)
            if o != owner and _owner_alive(o):
                continue  # kept for its owner, which is away
            fd = _try_lock(d / "lock")
            if fd < 0:
                continue  # in use
            m = Member(h, n, fd, o, (d / "clean").exists())
            (d / "clean").unlink(missing_ok=True)
            if m.meta() is None or not m.pins.is_dir():  # never finished, or its pins are gone
                shutil.rmtree(m.pins, ignore_errors=True)
                m.set_owner(owner)
                return m, False
            m.set_owner(owner)
            return m, True
        n = (numbers[-1] + 1) if numbers else 0
        d = top / str(n)
        d.mkdir(mode=0o700)
        m = Member(h, n, _try_lock(d / "lock"))
        m.set_owner(owner)
        return m, False
    finally:
        os.close(guard)


def _remove_free(spare: Callable[[str, str], bool]) -> list[str]:
    """Remove every set no Sensor holds but those ``spare(hash, owner)`` keeps, and the pins whose description
    went (a /run wiped by hand: nothing can open them). Returns what went."""
    gone: list[str] = []
    if META_ROOT.is_dir():
        for top in sorted(p for p in META_ROOT.iterdir() if p.is_dir()):
            for d in sorted(p for p in top.iterdir() if p.name.isdigit()):
                if spare(top.name, _read_owner(d)):
                    continue
                fd = _try_lock(d / "lock")
                if fd < 0:
                    continue
                Member(top.name, int(d.name), fd).remove()
                gone.append(f"{top.name}/{d.name}")
            if not any(top.iterdir()):
                top.rmdir()
                shutil.rmtree(PIN_ROOT / top.name, ignore_errors=True)
    if PIN_ROOT.is_dir():
        for p in PIN_ROOT.iterdir():
            if not (META_ROOT / p.name).is_dir():
                shutil.rmtree(p, ignore_errors=True)
                gone.append(p.name)
    return gone


def remove_stale(current: str, owner: str) -> list[str]:
    """Remove the free sets of other hashes that no live owner keeps: the programs of an older version, once
    nothing runs them from the pins (an unlinked link pin detaches its program). Returns what went."""
    return _remove_free(lambda h, o: h == current or (o != owner and _owner_alive(o)))


def unload() -> list[str]:
    """Remove every kept set no Sensor holds, detaching the programs its links kept attached (`ebpfguard agent
    --unload`; the package does it when it is removed). A set an agent killed keeps for itself goes too: its
    instances' cgroup programs stay attached to their cgroups, holding what they use. Returns what went."""
    return _remove_free(lambda _h, _o: False)


# ---- pinning a compiled set, and opening it again ------------------------------------------------------
def _pin(fd: int, path: Path) -> None:
    rc = _libbcc().bpf_obj_pin(fd, str(path).encode())
    if rc < 0:
        err = -rc if rc < -1 else ctypes.get_errno()
        raise KernelError(f"cannot pin {path}: {os.strerror(err) if err else 'failed'}")


def _get(path: Path) -> int:
    fd = int(_libbcc().bpf_obj_get(str(path).encode()))
    if fd < 0:
        raise KernelError(f"cannot open the pinned {path}")
    return fd


def pin(m: Member, bpf: Any, extra_maps: dict[str, int], info: dict[str, Any]) -> None:
    """Pin every program bpf has loaded and every map of its module (and ``extra_maps``: name -> fd, maps
    made outside bcc), then write the description: the set is complete once meta.json exists."""
    from bcc import table as bcc_table  # noqa: PLC0415

    lib = _libbcc()
    tables: dict[str, Any] = {}
    for i in range(lib.bpf_num_tables(bpf.module)):
        raw = lib.bpf_table_name(bpf.module, i)
        name, tid = raw.decode(), lib.bpf_table_id(bpf.module, raw)
        entry = {"type": int(lib.bpf_table_type_id(bpf.module, tid)), "flags": int(lib.bpf_table_flags_id(
                     bpf.module, tid)), "max_entries": int(lib.bpf_table_max_entries_id(bpf.module, tid)),
                 "fd": int(lib.bpf_table_fd(bpf.module, raw)),
                 "key": json.loads(lib.bpf_table_key_desc(bpf.module, raw).decode() or "null"),
                 "leaf": json.loads(lib.bpf_table_leaf_desc(bpf.module, raw).decode() or "null")}
        if entry["type"] == RINGBUF:
            ev = bcc_table._get_event_class(bpf[name])
            entry["event"] = describe(ev)
            if ctypes.sizeof(build(entry["event"])) != ctypes.sizeof(ev):
                raise KernelError(f"the record type of map {name} does not survive its description")
        tables[name] = entry
    base = m.pins
    (base / "maps").mkdir(parents=True, exist_ok=True)
    (base / "progs").mkdir(exist_ok=True)
    for name, entry in tables.items():
        _pin(entry.pop("fd"), base / "maps" / name)
    for name, fd in extra_maps.items():
        _pin(fd, base / "maps" / name)
    progs = {}
    for fname, fn in bpf.funcs.items():
        name = fname.decode() if isinstance(fname, bytes) else str(fname)
        _pin(fn.fd, base / "progs" / name)
        progs[name] = True
    meta = {"hash": m.hash, "tables": tables, "extra_maps": sorted(extra_maps), "progs": sorted(progs), **info}
    tmp = m.meta_dir / "meta.json.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, m.meta_dir / "meta.json")


def kept_class(bpf_class: Any) -> Any:
    """bcc's BPF class, made from a kept set's pins instead of a compile: bcc's own attach, detach, table and
    ring-buffer code runs on it unchanged; only what needs bcc's compiled module is answered here."""
    from bcc import BPF  # noqa: PLC0415
    from bcc import table as bcc_table  # noqa: PLC0415

    classes = {HASH: bcc_table.HashTable, ARRAY: bcc_table.Array, PERCPU_ARRAY: bcc_table.PerCpuArray,
               PERCPU_HASH: bcc_table.PerCpuHash, LRU_HASH: bcc_table.LruHash, LPM_TRIE: bcc_table.LpmTrie,
               RINGBUF: bcc_table.RingBuf}

    class KeptBPF(bpf_class):
        def __init__(self, member: Member, meta: dict[str, Any]) -> None:  # noqa: PLR0915 - bcc's fields
            self.kprobe_fds: dict[Any, Any] = {}
            self.uprobe_fds: dict[Any, Any] = {}
            self.tracepoint_fds: dict[Any, Any] = {}
            self.raw_tracepoint_fds: dict[Any, Any] = {}
            self.kfunc_entry_fds: dict[Any, Any] = {}
            self.kfunc_exit_fds: dict[Any, Any] = {}
            self.lsm_fds: dict[Any, Any] = {}
            self.perf_buffers: dict[Any, Any] = {}
            self.open_perf_events: dict[Any, Any] = {}
            self._ringbuf_manager = None
            self.tracefile = None
            self.debug = 0
            self.funcs: dict[bytes, Any] = {}
            self.tables: dict[Any, Any] = {}
            self.module = None
            self.member, self.meta = member, meta
            self.map_fds: dict[str, int] = {}
            import atexit  # noqa: PLC0415

            atexit.register(self.cleanup)
            try:
                for name in [*meta["tables"], *meta["extra_maps"]]:
                    self.map_fds[name] = _get(member.pins / "maps" / name)
                for name in meta["progs"]:
                    self.funcs[name.encode()] = BPF.Function(self, name.encode(),
                                                            _get(member.pins / "progs" / name))
            except KernelError:
                self.cleanup()
                raise

        def get_table(self, name: Any, keytype: Any = None, leaftype: Any = None, reducer: Any = None) -> Any:
            key = name.decode() if isinstance(name, bytes) else str(name)
            d = self.meta["tables"].get(key)
            if d is None:
                raise KeyError(name)
            cls = classes.get(d["type"])
            if cls is None:
                raise KernelError(f"map {key} has a type ({d['type']}) a kept set cannot open")
            t = cls.__new__(cls)
            t.bpf, t.map_id, t.map_fd = self, -1, self.map_fds[key]
            t.Key = keytype or BPF._decode_table_type(d["key"])
            t.Leaf = leaftype or BPF._decode_table_type(d["leaf"])
            t.ttype, t.flags, t._cbs, t._name, t.max_entries = d["type"], d["flags"], {}, key.encode(), d["max_entries"]
            if d["type"] in (PERCPU_ARRAY, PERCPU_HASH):
                t.reducer, t.sLeaf = reducer, t.Leaf
                t.total_cpu = len(bcc_table.get_possible_cpus())
                t.alignment = ctypes.sizeof(t.sLeaf) % 8
                if t.alignment:
                    raise IndexError("Leaf must be aligned to 8 bytes")  # as bcc says it
                t.Leaf = t.sLeaf * t.total_cpu
            if d["type"] == RINGBUF:
                t._ringbuf, t._event_class = None, build(d["event"])
            return t

        def load_func(self, func_name: Any, prog_type: Any, device: Any = None, attach_type: Any = -1) -> Any:
            key = func_name if isinstance(func_name, bytes) else str(func_name).encode()
            if key not in self.funcs:
                raise Exception(f"program {key.decode()} is not in the kept set")  # as bcc raises
            return self.funcs[key]

        def close(self) -> None:
            super().close()
            for fd in self.map_fds.values():
                os.close(fd)
            self.map_fds = {}

    return KeptBPF


def empty(bpf: Any, keep: tuple[str, ...] = ()) -> None:
    """Empty the maps of a set taken from someone else, as a new set's maps are: hashes and tries lose their
    keys, arrays are zeroed, the ring buffer is read to its end. ``keep``: the maps an agent back after it was
    killed reads on (what the kernel wrote while it was away)."""
    lib = _libbcc()
    for name, d in bpf.meta["tables"].items():
        if name in keep:
            continue
        try:
            t = bpf[name]
        except IndexError:  # a per-CPU scratch value bcc cannot read (path_scratch): nothing is kept in it
            continue
        if d["type"] == RINGBUF:
            from bcc.libbcc import _RINGBUF_CB_TYPE  # noqa: PLC0415

            cb = _RINGBUF_CB_TYPE(lambda _c, _d, _s: 0)
            mgr = lib.bpf_new_ringbuf(t.map_fd, cb, None)
            if mgr:
                lib.bpf_consume_ringbuf(mgr)
                lib.bpf_free_ringbuf(mgr)
        elif d["type"] in (ARRAY, PERCPU_ARRAY):
            zero = t.Leaf()
            for i in range(t.max_entries):
                t[t.Key(i)] = zero
        else:
            for k in list(t.keys()):
                try:
                    del t[k]
                except KeyError:
                    pass


# ---- attachments that outlive their process: BPF links, pinned -----------------------------------------
PERF_TYPE_TRACEPOINT = 2
BPF_PERF_EVENT = 41  # enum bpf_attach_type
PERF_FLAG_FD_CLOEXEC = 8
PERF_EVENT_IOC_ENABLE = 0x2400
_ATTR = 128  # sizeof(struct perf_event_attr), PERF_ATTR_SIZE_VER7: what every kernel since 5.4 knows


def tracepoint_link(prog_fd: int, category: str, event: str, tracefs: Path = Path("/sys/kernel/tracing")) -> int:
    """Attach a tracepoint program as a BPF link (BPF_LINK_CREATE on the tracepoint's perf event, Linux 5.15+),
    which can be pinned, and so outlive this process: bcc's own attach ends with it. Returns the link's fd."""
    import fcntl as _fcntl  # noqa: PLC0415
    import struct  # noqa: PLC0415

    try:
        tp_id = int((tracefs / "events" / category / event / "id").read_text())
    except (OSError, ValueError) as err:
        raise KernelError(f"no tracepoint {category}:{event}: {err}") from err
    attr = ctypes.create_string_buffer(_ATTR)
    # type, size, config (the tracepoint), sample_period 1; flags 0 (enabled); wakeup_events 1
    struct.pack_into("<IIQQQQQI", attr, 0, PERF_TYPE_TRACEPOINT, _ATTR, tp_id, 1, 0, 0, 0, 1)
    libc = ctypes.CDLL(None, use_errno=True)
    pfd = int(libc.syscall(298, attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC))  # perf_event_open: any task, CPU 0
    if pfd < 0:
        raise KernelError(f"perf_event_open({category}:{event}): {os.strerror(ctypes.get_errno())}")
    try:
        lib = _libbcc()
        lib.bpf_link_create.restype = ctypes.c_int
        lib.bpf_link_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        deadline = time.monotonic() + 5
        while True:
            fd = int(lib.bpf_link_create(prog_fd, pfd, BPF_PERF_EVENT, None))
            code = 0 if fd >= 0 else -fd if fd < -1 else ctypes.get_errno()
            # EEXIST: this program's previous link to the tracepoint is still being released (the kernel frees
            # a link whose last reference was its pin in a worker, after RCU grace periods)
            if code != errno.EEXIST or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if fd < 0:
            raise KernelError(f"cannot link a program to {category}:{event}: {os.strerror(code)}")
        try:
            _fcntl.ioctl(pfd, PERF_EVENT_IOC_ENABLE, 0)
        except OSError:
            pass  # created enabled
        return fd
    finally:
        os.close(pfd)  # the link holds the perf event


def pin_link(fd: int, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    _pin(fd, path)


def link_pins(m: Member) -> dict[str, Path]:
    """The member's pinned links by name ("category:event@program", "lsm@program")."""
    d = m.pins / "links"
    return {p.name: p for p in sorted(d.iterdir())} if d.is_dir() else {}


def get(path: Path) -> int:
    return _get(path)

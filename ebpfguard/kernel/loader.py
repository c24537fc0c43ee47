"""The sensor: compiles bpf/*.bpf.c with bcc, attaches the programs, owns their maps.

bpf/ holds one *.bpf.c file per hook family, the kernel-side helpers they share in bpf/lib/*.bpf.h and
what the agent shares with them (the record, the maps' layout) in bpf/include/*.h. program_source() joins
them into the one program bcc compiles.

This is the only module that imports bcc. bcc and OSError failures become KernelError here.
The tracepoints (bcc's TRACEPOINT_PROBE) attach when the program is compiled; they cost one hash miss
for any task outside an extension cgroup. The cgroup sock_addr programs attach per extension cgroup.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ebpfguard.common.abi import c
from ebpfguard.common.resources import bpf_dir
from ebpfguard.errors import KernelError
from ebpfguard.kernel import kept
from ebpfguard.kernel.features import bpf_lsm_status, headers_match
from ebpfguard.manifest.compile import CompiledPolicy

SOURCES = ("files.bpf.c", "net.bpf.c", "syscalls.bpf.c", "lifecycle.bpf.c", "lsm.bpf.c")  # the hook families
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
TRACEFS = Path("/sys/kernel/tracing")
# syscalls whose SYSCALL_DEFINE (and so tracepoint) name differs from the x86-64 table's name
TRACEPOINT_NAMES = {"umount2": "umount"}
OPTIONAL_TRACEPOINTS = ("fchmodat2", "setxattrat", "removexattrat")
# enum bpf_attach_type (uapi/linux/bpf.h, 6.7+); bcc 0.26's BPFAttachType predates them
UNIX_ATTACH = {"eg_connect_unix": 49, "eg_sendmsg_unix": 50}  # BPF_CGROUP_UNIX_CONNECT, _SENDMSG
BPF_MAP_TYPE_CGROUP_STORAGE = 19
CG_LOCAL = struct.Struct("<II")  # struct eg_cg_local (bpf/include/maps.h): slot + 1, EG_CG_* flags
GATE_NAMES = {v: k for k, v in TRACEPOINT_NAMES.items()}  # tracepoint name -> syscall name
# what an agent back after it was killed reads on in its kept set: the records the kernel wrote meanwhile, the
# counters (drops while it was away) and each cgroup's share of the ring buffer and repeats suppressed
KEPT_ACROSS = ("events", "counters", "share", "consumed", "suppressed")
IDLE_DETACH_S = 10.0  # the syscall tracepoints go this long after the last instance (Sensor.idle_check)
# The network tracepoints only kill (the cgroup programs decide and record): attached while some loaded
# policy answers network violations with kill, so that no process pays for them otherwise
NET_KILL_TRACEPOINTS = ("syscalls:sys_enter_connect", "syscalls:sys_enter_sendto", "syscalls:sys_enter_sendmsg",
                        "syscalls:sys_enter_bind")


log = logging.getLogger("ebpfguard")
POLL_MAX = 2048  # records one poll takes at most (one group commit, then the agent's other duties)


def _parallel_loader(bpf_class: Any) -> Any:
    """bcc's BPF, loading the tracepoint programs on every CPU at once; the Sensor attaches them (as links it
    can keep), bcc attaches the LSM programs. Loading is the kernel verifying each program (~100 ms each here,
    0.4 s for the open family: ~6 s in all, one after another); the verifier runs in the loading thread and
    bcc's load call releases the GIL, so threads verify in parallel."""

    class ParallelBPF(bpf_class):
        def _trace_autoload(self) -> None:
            from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

            from bcc import lib  # noqa: PLC0415

            names = [lib.bpf_function_name(self.module, i) for i in range(lib.bpf_num_functions(self.module))]
            names = [n for n in names if n.startswith(b"tracepoint__")]
            with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
                loaded = {n: pool.submit(bpf_class.load_func, self, n, bpf_class.TRACEPOINT) for n in names}
            for name, fut in loaded.items():
                self.funcs[name] = fut.result()  # a failure is raised here, as bcc would raise it
            for i in range(lib.bpf_num_functions(self.module)):  # the Sensor attaches the tracepoints (links)
                name = lib.bpf_function_name(self.module, i)
                if name.startswith(b"lsm__"):
                    self.attach_lsm(fn_name=name)

    return ParallelBPF


def _unlink_after_close(fd: int, pin: Path) -> None:
    os.close(fd)
    pin.unlink(missing_ok=True)


def ensure_tracefs() -> Path:
    if not (TRACEFS / "events").is_dir():
        rc = os.system(f"mount -t tracefs tracefs {TRACEFS} 2>/dev/null")
        if rc != 0 or not (TRACEFS / "events").is_dir():
            raise KernelError(f"tracefs is not mounted at {TRACEFS} and could not be mounted")
    return TRACEFS


def has_tracepoint(category: str, event: str) -> bool:
    return (TRACEFS / "events" / category / event).is_dir()


def tracepoint_has_field(category: str, event: str, name: str) -> bool:
    """Does the tracepoint's format (tracefs) have this field? Fields come and go between kernels."""
    try:
        fmt = (TRACEFS / "events" / category / event / "format").read_text()
    except OSError:
        return False
    return any(f" {name};" in line for line in fmt.splitlines() if line.strip().startswith("field:"))


def _strerror(rc: int) -> str:
    """libbpf returns -errno; older bcc wrappers return -1 and leave errno."""
    err = -rc if rc < -1 else ctypes.get_errno()
    return os.strerror(err) if err else "failed"


def program_source(directory: Path | None = None) -> str:
    """The hook families as one program, so that they share one set of maps, with the project's own headers
    (an #include "..." found beside the including file or under bpf/) written in where each is first
    included, and only there. bcc rewrites map calls (``counters.lookup(...)``) only in the text it is
    given, not in a header the compiler finds. The expansion does not evaluate #if, so a family's project
    includes stay outside its #if blocks (lsm.bpf.c)."""
    d = directory or bpf_dir()
    done: set[Path] = set()

    def expand(path: Path) -> list[str]:
        done.add(path)
        out = [f"/* ---- {path.relative_to(d)} ---- */"]
        for line in path.read_text().splitlines():
            m = _INCLUDE.match(line)
            found = [p for p in (path.parent / m.group(1), d / m.group(1)) if p.is_file()] if m else []
            if not found:
                out.append(line)
                continue
            target = Path(os.path.normpath(found[0]))
            if target in done:
                out.append(f"/* {line.strip()}: above */")
            else:
                out.extend([*expand(target), f"/* ---- {path.relative_to(d)}, continued ---- */"])
        return out

    return "\n".join(line for name in SOURCES for line in expand(d / name)) + "\n"


class Sensor:
    """All of ebpfguard's kernel programs and maps, loaded and unloaded as one unit."""

    def __init__(self, directory: Path | None = None, lsm: bool | None = None, owner: str | None = ""):
        """``lsm``: compile in the BPF-LSM programs (lsm.bpf.c); by default when the probe says they
        can run here (kernel/probe.py: bpf_lsm_status). ``owner``: whose kept set to take or make
        (kernel/kept.py: an agent's state folder, "" for none); None compiles afresh and keeps nothing."""
        try:
            from bcc import BPF, BPFAttachType  # noqa: PLC0415 - the one place bcc is imported
        except ImportError as err:
            raise KernelError("cannot import bcc: install Debian's python3-bpfcc (make setup does)") from err
        self._BPF = BPF
        d = directory or bpf_dir()
        ensure_tracefs()
        from bcc import lib as libbcc  # noqa: PLC0415
        self._lib = libbcc
        if os.environ.get("EBPFGUARD_KEEP") == "0":  # compile afresh and keep nothing (bench --startup's cold)
            owner = None
        cflags = [f"-I{d}", "-Wno-macro-redefined", "-Wno-unused-function"]
        for name in OPTIONAL_TRACEPOINTS:  # syscalls newer than the oldest kernel supported
            if has_tracepoint("syscalls", f"sys_enter_{name}"):
                cflags.append(f"-DEG_HAVE_{name.upper()}")
        if tracepoint_has_field("sched", "sched_process_exit", "group_dead"):  # 6.13+
            cflags.append("-DEG_HAVE_GROUP_DEAD")
        if headers_match():  # the programs may read kernel structs (lifecycle.bpf.c, lsm.bpf.c)
            cflags.append("-DEG_KERNEL_STRUCTS")
        if lsm is None:
            lsm = bpf_lsm_status()[0]
        self.lsm = lsm
        if lsm:
            cflags.append("-DEG_LSM")
        source = program_source(d)
        at = BPFAttachType
        self._net_types = {
            "eg_connect4": at.CGROUP_INET4_CONNECT, "eg_connect6": at.CGROUP_INET6_CONNECT,
            "eg_sendmsg4": at.CGROUP_UDP4_SENDMSG, "eg_sendmsg6": at.CGROUP_UDP6_SENDMSG,
            "eg_bind4": at.CGROUP_INET4_BIND, "eg_bind6": at.CGROUP_INET6_BIND,
        }
        # the program is its joined source; where the sources lie (a copy, a wheel, the .deb) is not part of it
        self.set_hash = kept.set_hash(source, ["-I<bpf>" if f == f"-I{d}" else f for f in cflags], {})
        self.kept = "not kept"  # how the programs came: "reused" (a kept set), "compiled and kept", "not kept: why"
        member, complete = None, False
        if owner is not None:
            try:
                member, complete = kept.acquire(self.set_hash, owner)
            except (KernelError, OSError) as err:
                self.kept = f"not kept: {err}"
        self._member = member
        self._BPF = BPF
        self._tp_pins: dict[str, Path] = {}  # tracepoint -> its link's pin, while attached as a kept link
        self._lsm_pins: dict[bytes, Path] = {}
        self.gates: set[str] = set()
        self.adopted = 0  # links an agent killed left attached, taken back
        # an agent back after it was killed: its set's links stayed attached and its ring buffer, counters and
        # shares hold what the kernel wrote while it was away (read on, not emptied)
        self.kept_state = bool(member is not None and complete and owner and member.previous_owner == owner
                               and not member.clean)
        if member is not None and complete:
            try:
                self._open_kept(BPF, member, adopt=self.kept_state)
            except (KernelError, OSError) as err:  # the pins or their description are damaged: compile
                log.warning("the kept eBPF set %s/%d cannot be opened (%s): compiling", self.set_hash, member.n, err)
                member.remove()
                self._member = member = None
                complete = False
                self.kept_state = False
                self.kept = f"not kept: {err}"
        if not complete:
            self._compile(BPF, source, cflags, member)
        try:
            self._attach_initial()
        except Exception as err:
            self.bpf.cleanup()
            os.close(self._cg_local_fd)
            if self._member is not None:
                self._member.release()
            raise KernelError(f"failed to attach the eBPF programs: {err}") from err
        if owner is not None:
            try:
                kept.remove_stale(self.set_hash, owner)
            except OSError as err:
                log.warning("cannot remove stale eBPF sets: %s", err)
        self.missing_gates: set[str] = set()
        self._net_kill_slots: set[int] = set()
        self._net_kill_attached = any(tp in self._attached() for tp in NET_KILL_TRACEPOINTS)
        self._init_state()

    def _compile(self, BPF: Any, source: str, cflags: list[str], member: kept.Member | None) -> None:
        """Compile, load and attach the programs with bcc; keep them in ``member`` when one is given."""
        libbcc = self._lib
        # cg_local (bpf/include/maps.h): bcc declares no cgroup-storage table, so the map is made here and the
        # programs reach it by its fd. A u64 key (the cgroup id alone) shares one value among every
        # program attached to a cgroup (Linux 5.9+).
        self._cg_local_fd = libbcc.bcc_create_map(BPF_MAP_TYPE_CGROUP_STORAGE, b"cg_local", 8, CG_LOCAL.size,
                                                   0, 0)
        if self._cg_local_fd < 0:
            if member is not None:
                member.remove()
            raise KernelError(f"cannot create the cgroup storage map: {_strerror(self._cg_local_fd)}")
        try:
            self.bpf = _parallel_loader(BPF)(text=source, cflags=[*cflags, f"-DEG_CG_LOCAL_FD={self._cg_local_fd}"])
        except Exception as err:  # bcc raises bare Exception for compile and load failures
            os.close(self._cg_local_fd)
            if member is not None:
                member.remove()
            raise KernelError(f"failed to compile or load the eBPF programs: {err}") from err
        try:
            self._net_fns = {name: self.bpf.load_func(name, BPF.CGROUP_SOCK_ADDR, attach_type=t)
                             for name, t in self._net_types.items()}
        except Exception as err:
            raise KernelError(f"failed to load the cgroup network programs: {err}") from err
        # pathname unix sockets: kernel >= 6.7 (BPF_CGROUP_UNIX_CONNECT/_SENDMSG); older kernels refuse
        # the attach type at load: then the BPF-LSM socket hooks decide them where BPF-LSM runs, and
        # elsewhere only the mount namespace keeps them out of reach (sandbox/mountns.py)
        self.unix_hooks: str | None = None  # why the kernel does not decide pathname unix sockets
        self.unix_by_lsm = False  # the BPF-LSM socket hooks decide them (no cgroup unix programs)
        try:
            for name, t in UNIX_ATTACH.items():
                self._net_fns[name] = self.bpf.load_func(name, BPF.CGROUP_SOCK_ADDR, attach_type=t)
                self._net_types[name] = t
        except Exception as err:
            for name in UNIX_ATTACH:
                self._net_fns.pop(name, None)
                self._net_types.pop(name, None)
            self.unix_hooks = f"the kernel refused the cgroup unix-socket programs ({err}); needs Linux 6.7"
            if self.lsm:  # the BPF-LSM socket hooks decide them instead (lsm.bpf.c: lsm_unix)
                self.unix_hooks = None
                self.unix_by_lsm = True
        self._lsm_unix()
        for fn in (b"syscall_gate", b"syscall_exit_gate"):  # loaded now, so that a kept set has them
            try:
                self.bpf.load_func(fn, BPF.TRACEPOINT)
            except Exception as err:
                raise KernelError(f"failed to load {fn.decode()}: {err}") from err
        if member is None:
            return
        try:
            kept.pin(member, self.bpf, {"cg_local": self._cg_local_fd},
                     {"lsm": self.lsm, "unix_hooks": self.unix_hooks, "unix_by_lsm": self.unix_by_lsm})
            self.kept = "compiled and kept"
        except Exception as err:  # keeping is an economy: whatever fails, the programs loaded still serve
            log.warning("the eBPF programs cannot be kept in bpffs (%s): the next start compiles again", err)
            member.remove()
            self._member = None
            self.kept = f"not kept: {err}"

    def _lsm_unix(self) -> None:
        if self.unix_by_lsm:
            t = self.bpf["lsm_unix_on"]
            t[t.Key(0)] = t.Leaf(1)

    def _open_kept(self, BPF: Any, member: kept.Member, adopt: bool) -> None:
        """Open a kept set: its maps emptied, or, for its owner back after it was killed (``adopt``), all but what
        the kernel wrote meanwhile (KEPT_ACROSS). The links its previous user left attached are taken over
        (_attach_initial): an attachment holds no state, the maps do."""
        meta = member.meta() or {}
        self.bpf = kept.kept_class(_parallel_loader(BPF))(member, meta)
        try:
            kept.empty(self.bpf, keep=KEPT_ACROSS if adopt else ())
            self._cg_local_fd = os.dup(self.bpf.map_fds["cg_local"])
            self.lsm = bool(meta["lsm"])
            self.unix_hooks, self.unix_by_lsm = meta["unix_hooks"], bool(meta["unix_by_lsm"])
            self._net_fns = {name: self.bpf.funcs[name.encode()] for name in self._net_types}
            for name, t in UNIX_ATTACH.items():
                if name.encode() in self.bpf.funcs:
                    self._net_fns[name] = self.bpf.funcs[name.encode()]
                    self._net_types[name] = t
            self._lsm_unix()
        except Exception as err:
            self.bpf.cleanup()
            raise KernelError(f"{err}") from err
        self.kept = "reused"

    def _attached(self) -> set[str]:
        return {tp.decode() if isinstance(tp, bytes) else tp for tp in self.bpf.tracepoint_fds}

    def _attach_initial(self) -> None:
        """Attach what a Sensor starts with: the LSM programs, and every tracepoint program but the network kill
        ones (they wait for a policy that kills). The links the set's previous user left are taken over first
        (an agent back after it was killed, or restarted: they never stopped, nothing to attach, no window)."""
        funcs = set(self.bpf.funcs)
        if self._member is not None:
            for name, path in kept.link_pins(self._member).items():
                where, _, fn = name.partition("@")
                if fn.encode() not in funcs:
                    path.unlink(missing_ok=True)
                    continue
                fd = kept.get(path)
                if where == "lsm":
                    self.bpf.lsm_fds[fn.encode()] = fd
                    self._lsm_pins[fn.encode()] = path
                else:
                    self.bpf.tracepoint_fds[where.encode()] = fd
                    self._tp_pins[where] = path
                    if fn == "syscall_gate" and where.startswith("syscalls:sys_enter_"):
                        gate = where.removeprefix("syscalls:sys_enter_")
                        self.gates.add(GATE_NAMES.get(gate, gate))
                self.adopted += 1
        for fname in sorted(f for f in funcs if f.startswith(b"lsm__")):
            if fname not in self.bpf.lsm_fds:
                self.bpf.attach_lsm(fn_name=fname)
            if self._member is not None and fname not in self._lsm_pins:
                path = self._member.pins / "links" / f"lsm@{fname.decode()}"
                kept.pin_link(self.bpf.lsm_fds[fname], path)
                self._lsm_pins[fname] = path
        attached = self._attached()
        for fname in sorted(f for f in funcs if f.startswith(b"tracepoint__")):
            tp = fname[len(b"tracepoint__"):].replace(b"__", b":").decode()
            if tp not in NET_KILL_TRACEPOINTS and tp not in attached:
                self._attach_tp(tp, fname)

    def _attach_tp(self, tp: str, fn: bytes) -> None:
        """Attach program ``fn`` to tracepoint ``tp``: a pinned BPF link when the set is kept (it outlives the
        agent: a killed agent's extensions stay watched and their records wait in the ring buffer), else bcc's."""
        if self._member is None:
            self.bpf.attach_tracepoint(tp=tp.encode(), fn_name=fn)
            return
        prog = self.bpf.load_func(fn, self._BPF.TRACEPOINT)
        category, event = tp.split(":")
        fd = kept.tracepoint_link(prog.fd, category, event, TRACEFS)
        path = self._member.pins / "links" / f"{tp}@{fn.decode()}"
        try:
            kept.pin_link(fd, path)
        except KernelError:
            os.close(fd)
            raise
        self.bpf.tracepoint_fds[tp.encode()] = fd
        self._tp_pins[tp] = path

    def _init_state(self) -> None:
        # Once any syscall tracepoint is attached, every task on the host takes the slow syscall path, so
        # the syscall families (files, gates, network kill) are attached only while a cgroup is bound, or
        # was bound less than IDLE_DETACH_S ago
        names = sorted(f.decode() for f in self.bpf.funcs if f.startswith(b"tracepoint__syscalls__"))
        self._file_tps = [n[len("tracepoint__"):].replace("__", ":") for n in names]
        self._file_tps = [tp for tp in self._file_tps if tp not in NET_KILL_TRACEPOINTS]
        self._bound: set[int] = set()
        self._closer: Any = None
        self._closing: list[Any] = []
        self._watching = True  # bcc attached them at load; they go once nothing has been bound for a while
        self._idle_since = time.monotonic()
        self._sync_net_kill()  # no policy kills yet
        self._cgroup_fds: dict[str, int] = {}
        self._attached_ids: dict[int, str] = {}  # cgroup id -> path, while the cgroup programs are attached
        self._cg_slot: dict[int, int] = {}  # what cg_local holds for each cgroup, written again at attach
        self._consumed: dict[int, int] = {}  # records of each bound cgroup taken from the ring buffer
        self._taken: Counter[int] = Counter()  # ... in this poll, not yet told to the kernel
        self._in_poll = 0  # records taken in this poll, all cgroups
        self._cg_flags: dict[int, int] = {}
        self._traced: set[int] = set()  # cgroups whose activity streams (trace --activity)
        self._filter: dict[int, set[int]] = {}  # cgroup_filter index -> bound cgroup ids
        self._ring_open = False

    # ---- policies -------------------------------------------------------------------------------
    def _put(self, table: str, key: bytes, value: bytes) -> None:
        t = self.bpf[table]
        t[t.Key.from_buffer_copy(key)] = t.Leaf.from_buffer_copy(value)

    def _delete(self, table: str, key: bytes) -> None:
        t = self.bpf[table]
        try:
            del t[t.Key.from_buffer_copy(key)]
        except KeyError:
            pass

    def ensure_syscall_gates(self, names: Iterable[str]) -> None:
        """Attach the syscall gates to sys_enter_<name> and sys_exit_<name> for each syscall an
        instance needs them for (Engine.prepare: what its seccomp filter does not report), not yet
        covered. They stay until the syscall tracepoints go idle."""
        for name in sorted(set(names) - self.gates - self.missing_gates):
            tp = TRACEPOINT_NAMES.get(name, name)
            if not has_tracepoint("syscalls", f"sys_enter_{tp}"):
                # not built into this kernel (the call returns ENOSYS), or has no tracepoint
                self.missing_gates.add(name)
                continue
            if self._watching:
                self._attach_gate(tp)
            self.gates.add(name)

    def _attach_gate(self, tp: str) -> None:
        self._wait_closes()
        for event, fn in ((f"sys_enter_{tp}", b"syscall_gate"), (f"sys_exit_{tp}", b"syscall_exit_gate")):
            try:
                self._attach_tp(f"syscalls:{event}", fn)
            except Exception as err:
                raise KernelError(f"failed to attach the syscall gate to {event}: {err}") from err

    def idle_check(self, now: float | None = None) -> None:
        """Detach the syscall tracepoints once no cgroup has been bound for IDLE_DETACH_S (so that a
        run of short instances does not attach and detach each time); call it now and then."""
        now = time.monotonic() if now is None else now
        if self._watching and not self._bound and now - self._idle_since >= IDLE_DETACH_S:
            self._sync_watch(force_off=True)

    def _wait_closes(self) -> None:
        """A tracepoint cannot take the same program twice: pending closes finish before an attach."""
        for f in self._closing:
            f.result()
        self._closing = []

    def _sync_watch(self, force_off: bool = False) -> None:
        """Attach the syscall tracepoints when a cgroup is bound; detach them when asked to, with none."""
        want = bool(self._bound)
        if not want:
            self._idle_since = time.monotonic()
            if not force_off:
                return
        if want == self._watching:
            return
        gate_tps = [TRACEPOINT_NAMES.get(n, n) for n in sorted(self.gates)]
        try:
            if want:
                self.attach_tracepoints(self._file_tps)
                for tp in gate_tps:
                    self._attach_gate(tp)
            else:
                gates = [f"syscalls:sys_{d}_{g}" for g in gate_tps for d in ("enter", "exit")]
                self._detach_many([*self._file_tps, *gates])
                self.gates.clear()  # the next instance asks again for the gates it needs
        except KernelError:
            raise
        except Exception as err:
            raise KernelError(f"failed to {'attach' if want else 'detach'} the syscall tracepoints: {err}") from err
        self._watching = want
        self._sync_net_kill()

    def _detach_many(self, tps: list[str]) -> None:
        """Detach tracepoints without waiting: each close waits for an RCU grace period (~70 ms here),
        which one after another makes seconds. The fds leave bcc's table at once (a new attach of the
        same tracepoint is a new perf event); their closes run on worker threads (ctypes drops the GIL),
        and close() waits for them."""
        pins = {tp: self._tp_pins.pop(tp) for tp in tps if tp in self._tp_pins}
        fds = [(self.bpf.tracepoint_fds.pop(tp.encode()), pins.get(tp)) for tp in tps
               if tp.encode() in self.bpf.tracepoint_fds]
        if not fds:
            return
        if self._closer is None:
            from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

            self._closer = ThreadPoolExecutor(max_workers=16, thread_name_prefix="ebpfguard-detach")
        for fd, pin in fds:
            if pin is None:
                self._closing.append(self._closer.submit(self._lib.bpf_close_perf_event_fd, fd))
            else:  # a kept link: its fd, then its pin, the last reference (newer kernels free it in a worker)
                self._closing.append(self._closer.submit(_unlink_after_close, fd, pin))
        self._closing = [f for f in self._closing if not f.done()]

    @property
    def syscall_tracepoints(self) -> list[str]:
        """The file family's syscall tracepoints, attached while some cgroup is bound."""
        return list(self._file_tps)

    @property
    def watching(self) -> bool:
        """Are the syscall tracepoints attached (some cgroup is bound)?"""
        return self._watching

    def _sync_net_kill(self) -> None:
        want = bool(self._net_kill_slots) and self._watching
        if want == self._net_kill_attached:
            return
        if not want:
            self._detach_many(list(NET_KILL_TRACEPOINTS))
        else:
            self._wait_closes()
            for tp in NET_KILL_TRACEPOINTS:
                try:
                    fn = f"tracepoint__{tp.replace(':', '__')}".encode()
                    self._attach_tp(tp, fn)
                except Exception as err:
                    raise KernelError(f"failed to attach {tp}: {err}") from err
        self._net_kill_attached = want

    @property
    def net_kill_attached(self) -> bool:
        """Are the network kill tracepoints attached (some policy kills on network violations)?"""
        return self._net_kill_attached

    def write_policy(self, cp: CompiledPolicy) -> None:
        (self._net_kill_slots.add if cp.kills_network else self._net_kill_slots.discard)(cp.slot)
        self._sync_net_kill()
        for k, v in cp.path_items():
            self._put("path_rules", k, v)
        for k, v in cp.net_items():
            self._put("net_rules", k, v)
        t = self.bpf["ext_policy"]
        t[ctypes.c_int(cp.slot)] = t.Leaf.from_buffer_copy(cp.ext_policy)

    def clear_policy(self, cp: CompiledPolicy) -> None:
        self._net_kill_slots.discard(cp.slot)
        self._sync_net_kill()
        for k, _ in cp.path_items():
            self._delete("path_rules", k)
        for k, _ in cp.net_items():
            self._delete("net_rules", k)

    def _set_filter(self, cgroup_id: int, add: bool) -> None:
        idx = cgroup_id & (c("FILTER_SLOTS") - 1)
        users = self._filter.setdefault(idx, set())
        (users.add if add else users.discard)(cgroup_id)
        value = 0 if not users else next(iter(users)) if len(users) == 1 else c("FILTER_SHARED")
        t = self.bpf["cgroup_filter"]
        t[t.Key(idx)] = t.Leaf(value)
        if not users:
            del self._filter[idx]

    def bind(self, cgroup_id: int, slot: int) -> None:
        """Put a cgroup under a policy slot: the slot first, then the filter that lets hooks look."""
        self._bound.add(cgroup_id)
        self._sync_watch()  # before the slot: nothing the instance does goes unwatched
        t = self.bpf["cgroup_slot"]
        t[t.Key(cgroup_id)] = t.Leaf(slot)
        self._set_filter(cgroup_id, True)
        self._cg_slot[cgroup_id] = slot
        self._sync_cg_local(cgroup_id)
        if cgroup_id not in self._consumed:  # a share of the ring buffer, from nothing reserved
            sh, done = self.bpf["share"], self.bpf["consumed"]
            if self.kept_state and sh.get(sh.Key(cgroup_id)) is not None:
                # taken back: its records still in the ring buffer count against its share until read
                left = done.get(done.Key(cgroup_id))
                self._consumed[cgroup_id] = int(left.value) if left is not None else 0
                return
            self._consumed[cgroup_id] = 0
            done[done.Key(cgroup_id)] = done.Leaf(0)
            sh[sh.Key(cgroup_id)] = sh.Leaf(0, 0)

    def settle(self) -> int:
        """After the instances were taken back: forget the kept per-cgroup counts of cgroups that were not (they
        ended while no agent ran). Returns how many."""
        gone = 0
        for name in ("share", "consumed", "suppressed"):
            t = self.bpf[name]
            for k in list(t.keys()):
                if int(k.value) not in self._bound:
                    try:
                        del t[k]
                        gone += name == "share"
                    except KeyError:
                        pass
        return gone

    def unbind(self, cgroup_id: int) -> None:
        self._set_filter(cgroup_id, False)
        self.quarantine(cgroup_id, False)
        self.set_landlocked(cgroup_id, False)
        self.set_mountns(cgroup_id, False)
        if cgroup_id in self._traced:
            self.set_activity(cgroup_id, False)
        self._flag("suppressed", cgroup_id, False)
        self._flag("seccomp_reports", cgroup_id, False)
        for name in ("share", "consumed"):
            t = self.bpf[name]
            try:
                del t[t.Key(cgroup_id)]
            except KeyError:
                pass
        self._consumed.pop(cgroup_id, None)
        t = self.bpf["cgroup_slot"]
        try:
            del t[t.Key(cgroup_id)]
        except KeyError:
            pass
        self._cg_slot.pop(cgroup_id, None)
        self._sync_cg_local(cgroup_id)
        self._cg_flags.pop(cgroup_id, None)
        self._bound.discard(cgroup_id)
        self._sync_watch()

    def _cg_count(self, table: str, cgroup_id: int, name: str) -> int:
        t = self.bpf[table]
        try:
            return int(getattr(t[t.Key(cgroup_id)], name))
        except KeyError:
            return 0

    def over_share(self, cgroup_id: int) -> int:
        """Records this cgroup could not reserve: it held its share of the ring buffer (lib/record.bpf.h)."""
        return self._cg_count("share", cgroup_id, "over")

    def suppressed(self, cgroup_id: int) -> int:
        """Identical repeats the kernel suppressed for this cgroup (repeat_gate in lib/record.bpf.h)."""
        return self._cg_count("suppressed", cgroup_id, "value")

    def set_landlocked(self, cgroup_id: int, on: bool, reports: bool = False) -> None:
        """Tell the file programs that Landlock decides for this cgroup, so they need not hold; with
        ``reports``, that Landlock's own denial reports are recorded, so reads and execs are left to it."""
        t = self.bpf["landlocked"]
        if on:
            t[t.Key(cgroup_id)] = t.Leaf(c("LL_REPORTS") if reports else c("LL_DECIDES"))
        else:
            self._flag("landlocked", cgroup_id, False)

    def set_seccomp_reports(self, cgroup_id: int, on: bool) -> None:
        """This cgroup's seccomp filter reports its refusals (audit): the sys_exit gate skips them."""
        self._flag("seccomp_reports", cgroup_id, on)

    def set_mountns(self, cgroup_id: int, on: bool) -> None:
        """Tell the unix-socket programs that this cgroup's processes run in their own mount namespace."""
        self._flag("mountns", cgroup_id, on)
        self._set_cg_flag(cgroup_id, c("CG_MOUNTNS"), on)

    def set_activity(self, cgroup_id: int, on: bool) -> None:
        """Stream this cgroup's allowed actions (trace --activity); the count lets the hooks skip the lookup
        entirely while no one traces anything."""
        (self._traced.add if on else self._traced.discard)(cgroup_id)
        self._flag("activity", cgroup_id, on)
        t = self.bpf["activity_on"]
        t[ctypes.c_int(0)] = t.Leaf(len(self._traced))

    def quarantine(self, cgroup_id: int, on: bool) -> None:
        """Deny every address of this cgroup's network (the cgroup programs read it from cg_local)."""
        self._set_cg_flag(cgroup_id, c("CG_QUARANTINE"), on)

    def _set_cg_flag(self, cgroup_id: int, bit: int, on: bool) -> None:
        old = self._cg_flags.get(cgroup_id, 0)
        new = old | bit if on else old & ~bit
        if new != old:
            self._cg_flags[cgroup_id] = new
            self._sync_cg_local(cgroup_id)

    def _sync_cg_local(self, cgroup_id: int) -> None:
        """Write the cgroup's cg_local value, if its programs are attached (the storage lives as long as
        they are)."""
        if cgroup_id not in self._attached_ids:
            return
        slot = self._cg_slot.get(cgroup_id)
        value = CG_LOCAL.pack(0 if slot is None else slot + 1, self._cg_flags.get(cgroup_id, 0))
        key = ctypes.c_uint64(cgroup_id)
        buf = ctypes.create_string_buffer(value, len(value))
        rc = self._lib.bpf_update_elem(self._cg_local_fd, ctypes.byref(key), buf, 0)
        if rc < 0:
            raise KernelError(f"cannot set the network programs' state of cgroup {cgroup_id} "
                              f"({self._attached_ids[cgroup_id]}): {_strerror(rc)}")

    def _flag(self, table: str, cgroup_id: int, on: bool) -> None:
        t = self.bpf[table]
        if on:
            t[t.Key(cgroup_id)] = t.Leaf(1)
        else:
            try:
                del t[t.Key(cgroup_id)]
            except KeyError:
                pass

    # ---- cgroup network programs ----------------------------------------------------------------
    @property
    def cgroup_programs(self) -> list[str]:
        """The cgroup sock_addr programs loaded (the unix ones only where the kernel accepts them)."""
        return sorted(self._net_fns)

    def attach_cgroup(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as err:
            raise KernelError(f"failed to open cgroup {path}: {err.strerror}") from err
        try:
            for name, fn in self._net_fns.items():
                self.bpf.attach_func(fn, fd, self._net_types[name])
        except Exception as err:
            os.close(fd)
            raise KernelError(f"failed to attach network programs to {path}: {err}") from err
        self._cgroup_fds[str(path)] = fd
        cgroup_id = os.fstat(fd).st_ino
        self._attached_ids[cgroup_id] = str(path)
        self._sync_cg_local(cgroup_id)

    def detach_cgroup(self, path: Path) -> None:
        fd = self._cgroup_fds.pop(str(path), None)
        if fd is None:
            return
        self._attached_ids = {i: p for i, p in self._attached_ids.items() if p != str(path)}
        for name, fn in self._net_fns.items():
            try:
                self.bpf.detach_func(fn, fd, self._net_types[name])
            except Exception:  # the cgroup may be gone already, which detaches by itself
                pass
        os.close(fd)

    # ---- events and counters --------------------------------------------------------------------
    def open_events(self, callback: Callable[[Any], None]) -> None:
        events = self.bpf["events"]

        taken = self._taken

        def _cb(_ctx: Any, data: Any, _size: int) -> int:
            raw = events.event(data)
            taken[raw.cgroup_id] += 1
            self._in_poll += 1
            callback(raw)
            # libbpf reads on for as long as records keep coming: a flood would keep one poll (and its
            # group commit, and every periodic duty) from ever ending. A negative return stops it.
            return -1 if self._in_poll >= POLL_MAX else 0

        events.open_ring_buffer(_cb)
        self._ring_open = True

    def _hand_back(self) -> None:
        """Tell the kernel how many records of each cgroup were taken: its share frees up."""
        done = self.bpf["consumed"]
        for cg, n in self._taken.items():
            if cg in self._consumed:
                self._consumed[cg] += n
                done[done.Key(cg)] = done.Leaf(self._consumed[cg])
        self._taken.clear()
        self._in_poll = 0

    def poll(self, timeout_ms: int) -> None:
        if self._ring_open:
            self.bpf.ring_buffer_poll(timeout_ms)
            if self._in_poll < POLL_MAX:
                self.bpf.ring_buffer_consume()  # what was submitted without a wakeup (lifecycle.bpf.c)
            self._hand_back()

    def consume(self) -> None:
        """Read everything the ring buffer holds now (in polls of at most POLL_MAX records)."""
        while self._ring_open:
            self.bpf.ring_buffer_consume()
            full = self._in_poll >= POLL_MAX
            self._hand_back()
            if not full:
                break

    def counters(self) -> dict[str, int]:
        t = self.bpf["counters"]
        names = {"events": c("CTR_EVENTS"), "drops": c("CTR_DROPS"), "kills": c("CTR_KILLS"),
                 "denials": c("CTR_DENIALS"), "suppressed": c("CTR_SUPPRESSED"), "over_share": c("CTR_OVER_SHARE")}
        return {n: int(t.sum(t.Key(i)).value) for n, i in names.items()}

    def program_stats(self) -> dict[str, tuple[int, int]]:
        """{program: (run_time_ns, run_cnt)} from the kernel's BPF statistics (zero while they are off)."""
        from ebpfguard.kernel.progstats import prog_run_stats  # noqa: PLC0415

        out = {}
        for name, fn in list(self.bpf.funcs.items()):
            label = name.decode() if isinstance(name, bytes) else str(name)
            try:
                out[label.removeprefix("tracepoint__")] = prog_run_stats(fn.fd)
            except KernelError:
                continue
        return out

    def map_sizes(self) -> dict[str, tuple[int, int]]:
        """(key size, value size) of each map, as the compiled program defines them."""
        out = {}
        for name in ("cgroup_slot", "ext_policy", "path_rules", "net_rules", "counters"):
            t = self.bpf[name]
            out[name] = (ctypes.sizeof(t.Key), ctypes.sizeof(t.Leaf))
        return out

    # ---- tracepoints, for the benchmark's unloaded rounds ---------------------------------------
    def tracepoints(self) -> list[tuple[str, str]]:
        return [(tp.decode() if isinstance(tp, bytes) else tp, "") for tp in self.bpf.tracepoint_fds]

    def detach_tracepoints(self) -> list[str]:
        """Detach every tracepoint and wait until none runs any more; returns them, to attach again."""
        tps = [tp.decode() if isinstance(tp, bytes) else tp for tp in list(self.bpf.tracepoint_fds)]
        self._detach_many(tps)
        self._wait_closes()
        return tps

    def attach_tracepoints(self, tps: list[str]) -> None:
        self._wait_closes()
        for tp in tps:
            category, event = tp.split(":")
            gated = {TRACEPOINT_NAMES.get(n, n) for n in self.gates}
            name = event.split("_", 2)[-1] if event.startswith(("sys_enter_", "sys_exit_")) else None
            if name in gated:
                fn = b"syscall_gate" if event.startswith("sys_enter_") else b"syscall_exit_gate"
            else:
                fn = f"tracepoint__{category}__{event}".encode()
            self._attach_tp(tp, fn)

    def close(self) -> None:
        """Detach the cgroup programs; the tracepoint and LSM programs of a kept set stay attached, idle (nothing is
        bound), for the next Sensor to take over without attaching or detaching anything (a detach waits for the
        kernel's RCU grace periods, one tracepoint after another: seconds); `ebpfguard agent --unload` detaches
        them for good. Programs bcc attached (a set not kept) are detached."""
        for path in list(self._cgroup_fds):
            self.detach_cgroup(Path(path))
        linked = [tp for tp in self._tp_pins if tp.encode() in self.bpf.tracepoint_fds]
        for tp in linked:  # the pin holds each link: its fd is closed, nothing is detached
            os.close(self.bpf.tracepoint_fds.pop(tp.encode()))
        self._tp_pins.clear()
        # every other tracepoint at once (bcc's cleanup would close them one grace period after another)
        self._detach_many([tp.decode() if isinstance(tp, bytes) else tp for tp in list(self.bpf.tracepoint_fds)])
        if self._closer is not None:
            self._closer.shutdown(wait=True)
        self._lsm_pins.clear()  # their pins hold them likewise
        self.bpf.cleanup()
        os.close(self._cg_local_fd)
        if self._member is not None:
            # closed cleanly, nothing of its owner's runs on its programs any more: anyone may take it now (an agent
            # killed keeps its set, which its instances' cgroup programs still use, until it is back)
            try:
                self._member.set_owner("")
                self._member.mark_clean()
            except OSError:
                pass
            self._member.release()

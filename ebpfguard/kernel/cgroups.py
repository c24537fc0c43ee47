"""One cgroup per running extension instance, under the agent's own subtree.

Under systemd (the unit has Delegate=yes): inside the subtree systemd delegated to the service, as its
delegation rules ask (systemd's docs/CGROUP_DELEGATION.md): the agent moves itself into <own>/agent (a
cgroup with processes may not also give controllers to children) and makes each instance in
<own>/instances/<instance>/, with memory, cpu and pids enabled in <own> and <own>/instances; nothing is
written outside <own>. Started another way (a terminal, `ebpfguard run` on its own): pure v2 hosts use
/sys/fs/cgroup/ebpfguard.slice/<instance>/, with the controllers enabled down to the slice.
Hybrid hosts (v2 mounted at /sys/fs/cgroup/unified, controllers on v1): the v2
group carries the identity the eBPF programs key on (its inode is bpf_get_current_cgroup_id()), plus
cgroup.freeze and cgroup.kill; a v1 group per controller (memory, cpu, pids, freezer) is made beside it
for the limits that later layers set. Those v1 groups stay at each controller's root
(<controller>/ebpfguard.slice/<instance>) under systemd too: the delegation model systemd documents is the
unified hierarchy's, and the agent does not write into the v1 groups systemd made for its unit.
The root is injectable so unit tests can use a fixture tree.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ebpfguard.errors import CgroupError

if TYPE_CHECKING:
    from ebpfguard.manifest.load import Resources

SLICE = "ebpfguard.slice"
V1_CONTROLLERS = ("memory", "cpu", "pids", "freezer")


@dataclass
class Cgroup:
    name: str
    v2: Path
    v1: dict[str, Path] = field(default_factory=dict)

    @property
    def id(self) -> int:
        """The v2 cgroup id the kernel programs see: the inode number of the v2 directory."""
        return os.stat(self.v2).st_ino

    def procs_files(self) -> list[str]:
        return [str(self.v2 / "cgroup.procs")] + [str(p / "cgroup.procs") for p in self.v1.values()]

    def join(self, pid: int = 0) -> None:
        """Move ``pid`` (0: the calling process) into every hierarchy of this cgroup."""
        for f in self.procs_files():
            try:
                with open(f, "w") as fh:
                    fh.write(str(pid))
            except OSError as err:
                raise CgroupError(f"failed to move pid {pid or os.getpid()} into {f}: {err.strerror}") from err

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in (self.v2 / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def populated(self) -> bool:
        try:
            for line in (self.v2 / "cgroup.events").read_text().splitlines():
                if line.startswith("populated "):
                    return line.split()[1] == "1"
        except FileNotFoundError:
            return False
        return bool(self.pids())

    def kill(self) -> None:
        """Kill every process inside: cgroup.kill where the kernel has it, else SIGKILL each pid."""
        try:
            (self.v2 / "cgroup.kill").write_text("1")
            return
        except OSError:
            pass
        for _ in range(50):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    def remove(self, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        for path in [self.v2, *self.v1.values()]:
            while True:
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as err:
                    # a just-exited process can keep the group busy for a moment
                    if err.errno == errno.EBUSY and time.monotonic() < deadline:
                        time.sleep(0.01)
                        continue
                    raise CgroupError(f"failed to remove {path}: {err.strerror}") from err


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as err:
        raise CgroupError(f"failed to write {value!r} to {path}: {err.strerror}") from err


def _counter(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == key:
                return int(v)
    except (OSError, ValueError):
        pass
    return 0


def set_limits(cg: Cgroup, resources: Resources) -> dict[str, Any]:
    """Apply a manifest's resources (memory, cpu, pids) to ``cg``: v2 files on pure v2 hosts, the v1
    memory, cpu and pids controllers on hybrid ones. Returns what was applied."""
    applied: dict[str, Any] = {}
    v2 = not cg.v1
    if resources.memory is not None:
        n = resources.memory
        if v2:
            _write(cg.v2 / "memory.max", str(n))
            _write(cg.v2 / "memory.swap.max", "0") if (cg.v2 / "memory.swap.max").exists() else None
        elif "memory" in cg.v1:
            _write(cg.v1["memory"] / "memory.limit_in_bytes", str(n))
            if (cg.v1["memory"] / "memory.memsw.limit_in_bytes").exists():
                _write(cg.v1["memory"] / "memory.memsw.limit_in_bytes", str(n))
        applied["memory_bytes"] = n
    if resources.cpu is not None:
        period = 100_000
        quota = max(1000, int(resources.cpu * period))
        if v2:
            _write(cg.v2 / "cpu.max", f"{quota} {period}")
        elif "cpu" in cg.v1:
            _write(cg.v1["cpu"] / "cpu.cfs_period_us", str(period))
            _write(cg.v1["cpu"] / "cpu.cfs_quota_us", str(quota))
        applied["cpu_quota_us"] = quota
    if resources.pids is not None:
        n = resources.pids
        if v2:
            _write(cg.v2 / "pids.max", str(n))
        elif "pids" in cg.v1:
            _write(cg.v1["pids"] / "pids.max", str(n))
        applied["pids_max"] = n
    return applied


def cpu_quota_us(cg: Cgroup) -> int | None:
    """The CPU quota per 100 ms period in force (None: unlimited), from v2's cpu.max or v1's cpu controller."""
    try:
        if not cg.v1:
            quota, _, _period = (cg.v2 / "cpu.max").read_text().partition(" ")
        elif "cpu" in cg.v1:
            quota = (cg.v1["cpu"] / "cpu.cfs_quota_us").read_text()
        else:
            return None
    except OSError as err:
        raise CgroupError(f"cannot read the CPU quota of {cg.name}: {err.strerror}") from err
    quota = quota.strip()
    return None if quota in ("max", "-1") else int(quota)


def pids_max(cg: Cgroup) -> int | None:
    """The process limit in force (None: unlimited)."""
    f = cg.v2 / "pids.max" if not cg.v1 else cg.v1["pids"] / "pids.max" if "pids" in cg.v1 else None
    if f is None:
        return None
    try:
        v = f.read_text().strip()
    except OSError as err:
        raise CgroupError(f"cannot read the process limit of {cg.name}: {err.strerror}") from err
    return None if v == "max" else int(v)


def resource_events(cg: Cgroup) -> dict[str, int]:
    """The kernel's own counters of containment by limits: OOM kills and refused forks."""
    if cg.v1:
        mem = cg.v1.get("memory")
        pids = cg.v1.get("pids")
        return {"oom_kill": _counter(mem / "memory.oom_control", "oom_kill") if mem else 0,
                "fork_refused": _counter(pids / "pids.events", "max") if pids else 0}
    return {"oom_kill": _counter(cg.v2 / "memory.events", "oom_kill"),
            "fork_refused": _counter(cg.v2 / "pids.events", "max")}


def freeze(cg: Cgroup, on: bool) -> None:
    """cgroup.freeze on the v2 group (it works on hybrid hosts too); the v1 freezer otherwise."""
    if (cg.v2 / "cgroup.freeze").exists():
        _write(cg.v2 / "cgroup.freeze", "1" if on else "0")
        want = "1" if on else "0"
        for _ in range(200):  # freezing completes asynchronously; wait until it has
            if _counter(cg.v2 / "cgroup.events", "frozen") == int(want):
                return
            time.sleep(0.005)
        return
    if "freezer" in cg.v1:
        _write(cg.v1["freezer"] / "freezer.state", "FROZEN" if on else "THAWED")
        return
    raise CgroupError(f"no freezer for {cg.name}")


def frozen(cg: Cgroup) -> bool:
    if (cg.v2 / "cgroup.events").exists():
        return _counter(cg.v2 / "cgroup.events", "frozen") == 1
    return "freezer" in cg.v1 and (cg.v1["freezer"] / "freezer.state").read_text().strip() == "FROZEN"


THROTTLED_CPU = 0.05  # of one CPU


def throttle(cg: Cgroup) -> dict[str, int]:
    """Lower the CPU quota to THROTTLED_CPU and stop further forks: pids.max = the current count."""
    from ebpfguard.manifest.load import Resources  # noqa: PLC0415 - manifests are parsed long before a throttle

    return set_limits(cg, Resources(cpu=THROTTLED_CPU, pids=max(1, len(cg.pids()))))


def own_cgroup(proc_cgroup: str = "/proc/self/cgroup") -> str | None:
    """This process's v2 cgroup path ("0::/system.slice/ebpfguard.service"), or None."""
    try:
        for line in Path(proc_cgroup).read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        pass
    return None


class CgroupManager:
    def __init__(self, root: str | os.PathLike[str] = "/sys/fs/cgroup", slice_name: str = SLICE,
                 delegated: str | os.PathLike[str] | None = None):
        """``delegated``: the service's own v2 cgroup (absolute, under the v2 root) that systemd delegated;
        instances then go in its instances/ folder (see for_service)."""
        self.root = Path(root)
        self.slice_name = slice_name
        self.delegated = Path(delegated) if delegated else None
        if (self.root / "cgroup.controllers").exists():
            self.mode = "v2"
            self.v2_root = self.root
            self.v1_roots: dict[str, Path] = {}
        elif (self.root / "unified" / "cgroup.procs").exists():
            self.mode = "hybrid"
            self.v2_root = self.root / "unified"
            self.v1_roots = {c: self.root / c for c in V1_CONTROLLERS if (self.root / c / "cgroup.procs").exists()}
        else:
            raise CgroupError(f"no cgroup v2 hierarchy under {self.root}: ebpfguard keys extensions on v2 cgroup ids")

    @classmethod
    def for_service(cls, root: str | os.PathLike[str] = "/sys/fs/cgroup",
                    proc_cgroup: str = "/proc/self/cgroup") -> CgroupManager:
        """The agent's manager. Started by systemd (INVOCATION_ID) in a unit of its own: move this process
        into <own>/agent and use the delegated subtree; otherwise the root slice, as before."""
        plain = cls(root)
        own = own_cgroup(proc_cgroup)
        # the unit's main process: systemd's child, with the invocation id systemd gives it (a process
        # that merely inherited INVOCATION_ID, such as a test under a CI runner's unit, is not)
        if not os.environ.get("INVOCATION_ID") or os.getppid() != 1 or not own or not own.endswith(".service"):
            return plain
        base = plain.v2_root / own.lstrip("/")
        agent = base / "agent"
        try:
            agent.mkdir(exist_ok=True)
            (agent / "cgroup.procs").write_text("0")  # this process (every thread) into the leaf
        except OSError as err:
            raise CgroupError(f"cannot use the cgroup subtree systemd delegated ({base}): {err.strerror}; "
                              "is Delegate=yes set in the unit?") from err
        return cls(root, plain.slice_name, base)

    @property
    def slice_v2(self) -> Path:
        if self.delegated is not None:
            return self.delegated / "instances"
        return self.v2_root / self.slice_name

    def _ensure_slice(self) -> None:
        try:
            self.slice_v2.mkdir(exist_ok=True)
            for root in self.v1_roots.values():
                (root / self.slice_name).mkdir(exist_ok=True)
        except OSError as err:
            raise CgroupError(f"failed to create {self.slice_name}: {err.strerror}") from err
        if self.mode == "v2":
            # delegate the limit controllers to the instances (best effort: a controller may be absent);
            # under systemd only inside the subtree it delegated, from the service's own cgroup down
            top = self.delegated if self.delegated is not None else self.v2_root
            for ctl in ("memory", "cpu", "pids"):
                for f in (top / "cgroup.subtree_control", self.slice_v2 / "cgroup.subtree_control"):
                    try:
                        f.write_text(f"+{ctl}")
                    except OSError:
                        pass

    def create(self, extension: str) -> Cgroup:
        self._ensure_slice()
        name = f"{extension}-{secrets.token_hex(4)}"
        cg = Cgroup(name, self.slice_v2 / name, {c: r / self.slice_name / name for c, r in self.v1_roots.items()})
        try:
            cg.v2.mkdir()
            for p in cg.v1.values():
                p.mkdir()
        except OSError as err:
            cg.remove()
            raise CgroupError(f"failed to create cgroup {name}: {err.strerror}") from err
        return cg

    def sweep(self, known: set[int], min_age: float = 60.0) -> list[str]:
        """Remove instance cgroups nobody owns: empty, not in ``known`` (cgroup ids someone manages),
        and older than ``min_age`` seconds, so that a cgroup another engine has just prepared and not
        yet populated is never taken away from it. Returns the names removed."""
        removed = []
        now = time.time()
        for cg in self.existing():
            try:
                if cg.id in known or cg.populated() or now - cg.v2.stat().st_mtime < min_age:
                    continue
                cg.remove()
                removed.append(cg.name)
            except (OSError, CgroupError):
                continue
        return removed

    def existing(self) -> list[Cgroup]:
        """Instance cgroups left under the slice (e.g. by an agent that was killed)."""
        if not self.slice_v2.is_dir():
            return []
        out = []
        for d in sorted(p for p in self.slice_v2.iterdir() if p.is_dir()):
            out.append(Cgroup(d.name, d, {c: r / self.slice_name / d.name for c, r in self.v1_roots.items()
                                          if (r / self.slice_name / d.name).is_dir()}))
        return out

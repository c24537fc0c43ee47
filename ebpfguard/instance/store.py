"""Running extension instances: what each one is, its saved form under STATE/instances (so that a
restarted agent can take it back), and the process facts (trees, liveness, argv) read through psutil.
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import psutil

from ebpfguard.common.clock import now_ns, rfc3339_ns
from ebpfguard.common.statedir import StateDir
from ebpfguard.instance.lineage import Lineage
from ebpfguard.kernel.cgroups import Cgroup
from ebpfguard.manifest.load import Manifest, Mode

log = logging.getLogger("ebpfguard")


@dataclass
class LandlockPart:
    """What the instance's Landlock ruleset grants and how its refusals reach the agent."""

    grants: list[tuple[str, int]] = field(default_factory=list)  # (real path, rights) of its file rules
    handled: int = 0              # the filesystem rights the ruleset handles
    reports: bool = False         # the file programs leave reads and execs to Landlock's own reports
    domains: list[str] = field(default_factory=list)  # its Landlock domain ids, as learned from the audit reports
    repeats: int = 0              # identical Landlock reports counted, not recorded (llreport.Repeats)


class State(StrEnum):
    """Where an instance stands on the ladder (quarantine is apart: it holds in any state)."""

    RUNNING = "running"
    THROTTLED = "throttled"
    FROZEN = "frozen"
    KILLED = "killed"


@dataclass
class Instance:
    id: str
    manifest: Manifest
    mode: Mode
    slot: int
    cgroup: Cgroup
    cgroup_id: int
    started_ns: int = field(default_factory=now_ns)
    leader_pid: int | None = None
    leader_ppid: int | None = None  # who launched it (the kernel's lineage starts inside the cgroup)
    argv: list[str] = field(default_factory=list)
    violations: int = 0
    shadow_denials: int = 0  # what the shadow version would have refused (recorded, never acted on)
    files_dir: str = ""  # launched with --files: the extension's folder, checked against its signed list
    baseline: Any = None  # baseline.Baseline: its normal activity; what it never saw is an anomaly
    anomalies: set[tuple[str, str]] = field(default_factory=set)  # (what, value) already recorded
    signed_files: dict[str, str] = field(default_factory=dict)  # relative path -> the sha256 its publisher signed
    launcher_done: bool = False
    exit_status: int | None = None
    sandbox: dict[str, Any] = field(default_factory=dict)  # what the launcher enforced (Sandbox.describe)
    limits: dict[str, Any] = field(default_factory=dict)
    resource_seen: dict[str, int] = field(default_factory=dict)
    state: State = State.RUNNING
    quarantined: bool = False
    recent: deque[float] = field(default_factory=deque)  # monotonic times of violations in the window
    repeats_seen: int = 0  # identical repeats the kernel suppressed, as last counted
    over_share_seen: int = 0  # records the kernel could not reserve over the cgroup's share, as last recorded
    over_share_at: float = 0.0  # monotonic time of that record
    lineage: Lineage = field(default_factory=Lineage)  # execs and exits not yet in a processes record
    seccomp_reports: bool = False  # its seccomp filter reports refusals to audit: recorded from there
    landlock: LandlockPart = field(default_factory=LandlockPart)
    proxies: dict[str, Any] = field(default_factory=dict)  # bus -> its running dbusproxy.Proxy
    rollback: Any = None  # rollback.Layer: its write trees as overlays (spec.filesystem.rollback)
    discard: bool = False  # the agent killed it (or the kernel killed one of its tasks): its changes are discarded
    rollback_choice: str | None = None  # commit | discard, as an operator said (ebpfguard rollback)

    @property
    def launched_by(self) -> int:
        """The uid of who launched it: a user through the agent (launch), else 0 (root's launcher, an adoption).
        Kept in what the launcher enforced (Sandbox.describe), so that a restarted agent knows it too."""
        return int(self.sandbox.get("launched_by", 0))

    def proxy_folders(self) -> dict[str, str]:
        """Where each D-Bus proxy must appear in the namespace (the real bus's path) -> its folder."""
        from ebpfguard.manifest.compile import bus_sockets  # noqa: PLC0415

        where = bus_sockets(self.manifest)
        return {where[bus]: str(p.folder) for bus, p in self.proxies.items()}

    def watch_signed(self, folder: str, files: list[dict[str, Any]]) -> None:
        """Launched with --files: an exec of a file in ``folder`` not in the signed list is a violation."""
        self.files_dir = os.path.realpath(folder)
        self.signed_files = {f["path"]: f["sha256"] for f in files if "sha256" in f}

    def summary(self) -> dict[str, Any]:
        return {"instance": self.id, "extension": self.manifest.name, "version": self.manifest.version,
                "mode": self.mode, "cgroup": str(self.cgroup.v2), "cgroup_id": self.cgroup_id,
                "pid": self.leader_pid, "pids": self.cgroup.pids(),
                "state": self.state + (", quarantined" if self.quarantined else ""),
                "violations": self.violations, "shadow_denials": self.shadow_denials,
                "started": rfc3339_ns(self.started_ns),
                "layers": ["cgroup", "cgroup-sock-addr", "tracepoints", *self.sandbox.get("layers", [])],
                "not_enforced": self.sandbox.get("not_enforced", []), "user": self.sandbox.get("user"),
                "policy_sha256": self.manifest.sha256, "argv": self.argv, "launched_by": self.launched_by}


class InstanceStore:
    """STATE/instances/<id>.json: the exact manifest bytes and what else a restarted agent needs."""

    def __init__(self, state: StateDir):
        self.state = state

    def save(self, inst: Instance) -> None:
        meta = {"id": inst.id, "manifest_text": inst.manifest.raw.decode(), "manifest_path": inst.manifest.source,
                "home": inst.manifest.home, "mode": inst.mode, "leader_pid": inst.leader_pid, "argv": inst.argv,
                "sandbox": inst.sandbox, "limits": inst.limits, "started_ns": inst.started_ns,
                "landlock_domains": inst.landlock.domains, "cgroup_id": inst.cgroup_id,
                "owner_pid": os.getpid()}
        path = self.state.instance(inst.id)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(meta))
            os.replace(tmp, path)
        except OSError as err:
            log.error("failed to save instance %s: %s", inst.id, err.strerror)

    def forget(self, inst_id: str) -> None:
        self.state.instance(inst_id).unlink(missing_ok=True)

    def saved(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        """(file, its saved meta) for each instance left by an engine that is gone; a file that does
        not parse is reported and skipped."""
        d = self.state.instances
        for path in sorted(d.glob("*.json")) if d.is_dir() else []:
            try:
                meta = json.loads(path.read_text())
                if not isinstance(meta, dict):
                    raise ValueError("not an object")
            except (OSError, ValueError) as err:
                log.error("cannot read saved instance %s: %s", path.name, err)
                continue
            if alive(meta.get("owner_pid")):
                continue  # another live engine (a standalone run) owns it
            yield path, meta


# ---- processes ---------------------------------------------------------------------------------
def process_tree(pid: int) -> list[int]:
    """pid and every descendant; [] when pid is gone."""
    try:
        p = psutil.Process(pid)
        return [pid, *(c.pid for c in p.children(recursive=True))]
    except psutil.Error:
        return []


def alive(pid: Any) -> bool:
    """A live process other than this one (a zombie counts as gone)."""
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def parent_pid(pid: int) -> int | None:
    """The parent of a live (or not yet reaped) process."""
    try:
        return int(psutil.Process(pid).ppid())
    except psutil.Error:
        return None


def cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []

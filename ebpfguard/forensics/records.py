"""One record shape per kind, declared once: the envelope every record carries, the fields each kind's detail
may hold, and a typed view (Record) that readers (trace, explain, provenance, learn, observe) use instead of
re-parsing dicts. Records are built by the pipeline's record module (pipeline/record.py) and chained, signed
and written by the log (log.py); a record on disk is the dict ``Record.as_dict()`` gives back, byte for byte
what was signed (the chain covers canonical JSON, chain.py).

A kind's detail fields are declared here so that a field cannot appear without a reader knowing it: the
kernel tier checks every record its session wrote against this table (``undeclared``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ebpfguard.errors import ForensicsError


class Kind(StrEnum):
    FILE = "file"
    EXEC = "exec"
    NETWORK = "network"
    SYSCALL = "syscall"
    PRIVILEGE = "privilege"
    IPC = "ipc"
    RESOURCE = "resource"
    LIFECYCLE = "lifecycle"
    CHECKPOINT = "checkpoint"
    POLICY = "policy"
    CORRELATION = "correlation"
    ANOMALY = "anomaly"
    ROLLBACK = "rollback"


# what an extension did that a layer judged (the rest is the agent's own account: lifecycle, rollback, policy)
VIOLATION_KINDS = frozenset({Kind.FILE, Kind.EXEC, Kind.NETWORK, Kind.IPC, Kind.SYSCALL, Kind.PRIVILEGE,
                             Kind.RESOURCE, Kind.CORRELATION, Kind.ANOMALY})

# The envelope: who, when, under which policy, and the chain (seq, prev_sha256, key_id, signature: log.py)
ENVELOPE = frozenset({"seq", "time", "extension", "instance", "cgroup_id", "mode", "policy_sha256", "kind", "pid",
                      "tgid", "uid", "comm", "detail", "verdict", "actions", "response_ns", "prev_sha256", "key_id",
                      "signature"})

# any judged action may carry these (read_after_restart: the kernel wrote it while no agent read the ring buffer)
_ACTION = frozenset({"flags", "repeats_suppressed", "shadow", "read_after_restart"})
_PATH = _ACTION | {"path", "access", "syscall", "raw_path", "unresolved", "signed", "real_path"}
_LANDLOCK = frozenset({"blockers", "domain", "path", "dev", "ino", "name", "target_pid", "target_comm", "address",
                       "port", "ioctl", "op", "repeats_suppressed"})  # from Landlock's own report (llreport.py)
DETAIL: dict[Kind, frozenset[str]] = {
    Kind.FILE: _PATH | _LANDLOCK,
    Kind.EXEC: _PATH | _LANDLOCK,
    Kind.NETWORK: _ACTION | _LANDLOCK | {"op", "address", "port", "proto", "socket", "path", "type"},
    Kind.IPC: _ACTION | _LANDLOCK | {"bus", "destination", "interface", "member", "op", "path", "proxy", "sender",
                                     "serial", "type", "name"},
    Kind.SYSCALL: _ACTION | _LANDLOCK | {"syscall", "nr", "signal", "target_pid", "seccomp"},
    Kind.PRIVILEGE: _ACTION | _LANDLOCK | {"syscall", "nr", "signal", "target_pid", "seccomp"},
    Kind.RESOURCE: frozenset({"resource", "event", "count", "limit"}),
    Kind.CORRELATION: frozenset({"rule", "description", "seqs", "steps", "within_s", "response"}),
    Kind.ANOMALY: frozenset({"what", "value", "baseline", "response", "action"}),
    Kind.LIFECYCLE: frozenset({
        "event", "argv", "cgroup", "sandbox", "pids", "path", "not_enforced",       # start, adopted, readopted
        "exit_status", "killed_by_agent", "over_share", "repeats_suppressed", "violations",  # stop
        "ended",                                                                    # stop, while no agent ran
        "drops", "links",                                                           # outage (and records)
        "procs",                                                                    # processes (lineage)
        "repeats", "by", "why",                                                     # escalation, operator steps
        "records", "total", "share"}),                                              # over-share
    Kind.ROLLBACK: frozenset({"event", "trees", "by", "changes", "changes_sha256", "conflicts", "count", "counts",
                              "errors", "listed", "rule", "why", "upper", "extension", "started_ns",
                              "user"}),  # user: {uid, gid} whose rights a commit took
    Kind.POLICY: frozenset({"event", "name", "version", "file", "files", "reason", "signature", "replaces", "by",
                            "errors", "sha256", "previous"}),
    Kind.CHECKPOINT: frozenset({"records"}),
}


def undeclared(rec: Mapping[str, Any]) -> list[str]:
    """The fields of ``rec`` this table does not declare ("detail.x" for a detail field), or its unknown kind."""
    try:
        kind = Kind(str(rec.get("kind")))
    except ValueError:
        return [f"kind={rec.get('kind')!r}"]
    out = sorted(k for k in rec if k not in ENVELOPE)
    detail = rec.get("detail")
    if isinstance(detail, Mapping):
        out += sorted(f"detail.{k}" for k in detail if k not in DETAIL[kind])
    return out


@dataclass(frozen=True)
class Record:
    """A record as readers use it: the envelope typed, the detail as its kind declares it."""

    kind: Kind
    seq: int | None = None
    time: str | None = None
    extension: str | None = None
    instance: str | None = None
    cgroup_id: int | None = None
    mode: str | None = None
    policy_sha256: str | None = None
    pid: int | None = None
    tgid: int | None = None
    uid: int | None = None
    comm: str | None = None
    verdict: str | None = None
    actions: tuple[str, ...] = ()
    detail: Mapping[str, Any] = field(default_factory=dict)
    response_ns: int | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def violation(self) -> bool:
        return self.kind in VIOLATION_KINDS

    @property
    def event(self) -> str | None:
        """A lifecycle, rollback or policy record's event (start, stop, discarded, promoted...)."""
        ev = self.detail.get("event")
        return str(ev) if ev is not None else None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.raw)

    @classmethod
    def of(cls, rec: Mapping[str, Any]) -> Record:
        """The typed view of a record read from a log or a bundle; a precise ForensicsError when it is not one."""
        if not isinstance(rec, Mapping):
            raise ForensicsError(f"a record is a JSON object, not {type(rec).__name__}")
        where = f"record seq {rec.get('seq')!r}"
        try:
            kind = Kind(str(rec.get("kind")))
        except ValueError:
            raise ForensicsError(f"{where}: kind {rec.get('kind')!r} is none of {', '.join(Kind)}") from None
        ints = {k: rec.get(k) for k in ("seq", "cgroup_id", "pid", "tgid", "uid", "response_ns")}
        for k, v in ints.items():
            if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
                raise ForensicsError(f"{where}: {k} must be an integer, not {v!r}")
        strs = {k: rec.get(k) for k in ("time", "extension", "instance", "mode", "policy_sha256", "comm", "verdict")}
        for k, v in strs.items():
            if v is not None and not isinstance(v, str):
                raise ForensicsError(f"{where}: {k} must be a string, not {v!r}")
        actions = rec.get("actions") or []
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise ForensicsError(f"{where}: actions must be a list of strings")
        detail = rec.get("detail") or {}
        if not isinstance(detail, Mapping):
            raise ForensicsError(f"{where}: detail must be an object")
        return cls(kind, ints["seq"], strs["time"], strs["extension"], strs["instance"], ints["cgroup_id"],
                   strs["mode"], strs["policy_sha256"], ints["pid"], ints["tgid"], ints["uid"], strs["comm"],
                   strs["verdict"], tuple(actions), detail, ints["response_ns"], rec)

"""Landlock's denial reports (kernel/laudit.py) turned into records: which instance a report belongs
to, whether it is this layer's to record, and what the record says. Pure: unit-tested without root.

A report names a Landlock domain, not a process. The domain's first report is followed by a second
record naming the process that created the domain (its ``pid``): the launcher's child, which called
landlock_restrict_self before exec, so the instance's leader. Reports that come before that record are
held until it arrives; a domain that is no instance's (one an extension made for itself) is not ours
to record, and its reports are dropped once the hold is full.

Which layer records what, so that each refusal is recorded once:
- reads and execs: Landlock, where it reports (the file programs stand down for them) unless the
  response is kill, when the tracepoint must act before the syscall returns and so records it;
- writes, removals, renames, links, mkdir, mknod, metadata changes: the tracepoints (most of them fail
  with EROFS on the read-only mount, before Landlock is asked);
- what no tracepoint watches: binding a unix socket path, device ioctls, signals and abstract sockets
  across the domain's scope, TCP rules: Landlock.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

READS = frozenset({"fs.read_file", "fs.read_dir", "fs.execute"})
UNTRACED = frozenset({"fs.make_sock", "fs.ioctl_dev"})  # bind() of a unix socket path; device ioctls
HOLD_DOMAINS = 64
HOLD_REPORTS = 256


def blockers_of(fields: dict[str, str]) -> list[str]:
    return [b for b in fields.get("blockers", "").split(",") if b]


def kind_of(blockers: list[str]) -> str:
    if "fs.execute" in blockers:
        return "exec"
    if all(b.startswith("fs.") for b in blockers):
        return "file"
    if all(b.startswith("net.") for b in blockers):
        return "network"
    if blockers == ["ptrace"]:
        return "privilege"
    return "ipc"  # scope.signal, scope.abstract_unix_socket


def errno_of(blockers: list[str]) -> str:
    """What the refused call returned, as Landlock refuses it: EACCES for files and TCP, EPERM for a
    signal, a ptrace or an abstract socket across the scope."""
    return "eperm" if any(b.startswith("scope.") or b == "ptrace" for b in blockers) else "eacces"


def ours(blockers: list[str], reads_left_to_landlock: bool) -> bool:
    """Is this report the record of its refusal (and not a tracepoint's)?"""
    if not blockers:
        return False
    fs = [b for b in blockers if b.startswith("fs.")]
    if not fs:
        return True
    if all(b in UNTRACED for b in fs):
        return True
    return reads_left_to_landlock and all(b in READS for b in fs)


def detail_of(fields: dict[str, str], blockers: list[str]) -> dict[str, Any]:
    d: dict[str, Any] = {"blockers": blockers, "domain": fields.get("domain")}
    for src, dst in (("path", "path"), ("dev", "dev"), ("ino", "ino"), ("name", "name"), ("opid", "target_pid"),
                     ("ocomm", "target_comm"), ("daddr", "address"), ("dest", "port"), ("saddr", "address"),
                     ("src", "port"), ("ioctlcmd", "ioctl")):
        if src in fields:
            v: Any = fields[src]
            if dst in ("ino", "target_pid", "port") and v.isdigit():
                v = int(v)
            d[dst] = v
    if "fs.execute" in blockers:
        d["op"] = "exec"
    return d


@dataclass
class DomainMap:
    """Landlock domain id -> instance key, learned from each domain's ``status=allocated`` record; the
    reports that came before it wait here."""

    known: dict[str, int] = field(default_factory=dict)
    held: OrderedDict[str, list[dict[str, str]]] = field(default_factory=OrderedDict)
    dropped: int = 0  # held reports pushed out before their domain was known
    foreign: int = 0  # reports of domains that are no instance's (a sandbox some other program made)

    def hold(self, fields: dict[str, str]) -> None:
        dom = fields.get("domain", "")
        reports = self.held.setdefault(dom, [])
        if len(reports) >= HOLD_REPORTS:
            self.dropped += 1
            return
        reports.append(fields)
        while len(self.held) > HOLD_DOMAINS:
            _, gone = self.held.popitem(last=False)
            self.dropped += len(gone)

    def learn(self, domain: str, key: int | None) -> list[dict[str, str]]:
        """The domain is ``key``'s (None: no instance's); returns its held reports, to record if ours."""
        held = self.held.pop(domain, [])
        if key is None:
            self.foreign += len(held)
            return []
        self.known[domain] = key
        return held

    def forget(self, key: int) -> None:
        for dom in [d for d, k in self.known.items() if k == key]:
            del self.known[dom]


REPEAT_WINDOW_NS = 1_000_000_000  # the kernel's repeat gate (bpf/lib/record.bpf.h): a record a second per violation


@dataclass
class Repeats:
    """Identical Landlock reports (same instance, blockers and object) within REPEAT_WINDOW_NS of the
    last recorded one are counted, not recorded; the next record says how many it stands for."""

    last: dict[tuple[Any, ...], int] = field(default_factory=dict)
    pending: dict[tuple[Any, ...], int] = field(default_factory=dict)

    def seen(self, key: tuple[Any, ...], ts_ns: int) -> int | None:
        """None: a repeat, counted; else record it, carrying this many suppressed repeats."""
        t = self.last.get(key)
        if t is not None and 0 <= ts_ns - t < REPEAT_WINDOW_NS:
            self.pending[key] = self.pending.get(key, 0) + 1
            return None
        self.last[key] = ts_ns
        if len(self.last) > 4096:  # forget what is older than the window
            self.last = {k: v for k, v in self.last.items() if ts_ns - v < REPEAT_WINDOW_NS}
        return self.pending.pop(key, 0)

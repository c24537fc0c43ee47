"""Process lineage: what a forensic reader needs of the processes inside an instance (the binary each
exec ran, its parent, how each process ended) for a fraction of a record each. Pure: no kernel, no I/O.

The kernel reports every exec and every process exit in an extension cgroup (bpf/lifecycle.bpf.c: the
parent's pid with an exec, the exit code with an exit). Rather than a signed record for each, the
engine gathers them per instance and writes them as the ``procs`` of one ``processes`` record:

- before any other record of that instance (a violation's lineage is in the log before it),
- once LINEAGE_EVERY_S has passed since the first one gathered, or LINEAGE_MAX are gathered,
- before the instance's stop record.

An exec and the exit of the same process gathered together are one entry::

    {"pid": 4711, "ppid": 4700, "exe": "/usr/bin/true", "exec_ns": 1764045123456789012,
     "exit": 0, "exit_ns": 1764045123457789012}

``exit`` is the exit status of a process that exited, ``signal`` the name of the signal that ended one
that was killed; ``ppid`` is missing where it is unknown (a process forked before it joined the
cgroup and gone before the agent could ask); ``*_ns`` are kernel timestamps (ns since the epoch). A
process that forked without exec has an exit entry only; one that ran exec twice has two entries.
What an agent that crashes has gathered and not yet written (at most LINEAGE_EVERY_S of it) is lost
with it.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Iterator
from typing import Any

LINEAGE_EVERY_S = 1.0
LINEAGE_MAX = 256


def ended(code: int) -> dict[str, Any]:
    """How a process ended, from the kernel's task exit_code (the wait status layout)."""
    sig = code & 0x7F
    if sig:
        try:
            return {"signal": signal.Signals(sig).name}
        except ValueError:
            return {"signal": str(sig)}
    return {"exit": (code >> 8) & 0xFF}


class Lineage:
    """One instance's execs and exits, gathered until the next ``processes`` record."""

    def __init__(self) -> None:
        self.procs: list[dict[str, Any]] = []
        self._open: dict[int, dict[str, Any]] = {}  # pid -> its latest entry without an exit
        self.since: float | None = None            # monotonic time of the first entry gathered

    def __len__(self) -> int:
        return len(self.procs)

    def exec(self, pid: int, ppid: int, exe: str, ts_ns: int, now: float) -> None:
        entry: dict[str, Any] = {"pid": pid, "ppid": ppid, "exe": exe, "exec_ns": ts_ns}
        if not ppid:
            del entry["ppid"]  # forked outside and already gone: unknown
        self._add(entry, now)
        self._open[pid] = entry

    def exit(self, pid: int, code: int, ts_ns: int, now: float) -> None:
        entry = self._open.pop(pid, None)
        if entry is None:
            entry = {"pid": pid}
            self._add(entry, now)
        entry.update(ended(code))
        entry["exit_ns"] = ts_ns

    def _add(self, entry: dict[str, Any], now: float) -> None:
        if not self.procs:
            self.since = now
        self.procs.append(entry)

    def due(self, now: float) -> bool:
        return len(self.procs) >= LINEAGE_MAX or (
            self.since is not None and now - self.since >= LINEAGE_EVERY_S)

    def take(self) -> list[dict[str, Any]]:
        procs, self.procs, self._open, self.since = self.procs, [], {}, None
        return procs


def processes(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every process the records' lineage holds, in order, with an exit written in a later record
    than its exec joined to it (a violation in between writes the lineage gathered so far)."""
    out: list[dict[str, Any]] = []
    running: dict[int, dict[str, Any]] = {}
    for rec in records:
        d = rec.get("detail") or {}
        if rec.get("kind") != "lifecycle" or d.get("event") != "processes":
            continue
        for p in d.get("procs") or []:
            if not isinstance(p, dict):
                continue
            pid = p.get("pid")
            if "exe" not in p and isinstance(pid, int) and pid in running:
                running.pop(pid).update({k: v for k, v in p.items() if k != "pid"})
                continue
            entry = dict(p)
            out.append(entry)
            if isinstance(pid, int) and "exit_ns" not in entry:
                running[pid] = entry
    return out


def exits(records: Iterable[dict[str, Any]]) -> Iterator[tuple[int, int]]:
    """(pid, kernel ns) of every process exit the records hold."""
    for rec in records:
        d = rec.get("detail") or {}
        if rec.get("kind") != "lifecycle" or d.get("event") != "processes":
            continue
        for p in d.get("procs") or []:
            if isinstance(p, dict) and isinstance(p.get("exit_ns"), int):
                yield int(p.get("pid") or 0), p["exit_ns"]

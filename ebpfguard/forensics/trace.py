"""The live view: follow the forensic log (agent and standalone runs write it as events arrive),
one line per record within 80 columns, or JSON lines."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ebpfguard.common.statedir import StateDir
from ebpfguard.errors import ForensicsError
from ebpfguard.forensics.records import Kind, Record

WIDTH = 80


def detail_text(r: Record) -> str:
    d = r.detail
    kind = r.kind
    if kind in (Kind.FILE, Kind.EXEC):
        return f"{d.get('access', '')} {d.get('path', '')}"
    if kind == Kind.NETWORK:
        addr = str(d.get("address", ""))
        addr = f"[{addr}]" if ":" in addr else addr
        return f"{d.get('op', '')} {addr}:{d.get('port', '')}/{d.get('proto', '')}"
    if kind in (Kind.SYSCALL, Kind.PRIVILEGE):
        return str(d.get("syscall") or d.get("nr"))
    if kind == Kind.IPC and d.get("bus"):  # a D-Bus message through the instance's proxy
        iface = d.get("interface") or ""
        member = d.get("member", "") if iface in ("", d.get("destination")) else f"{iface}.{d.get('member', '')}"
        return f"{d.get('op', '')} {d.get('destination', '')} {member} @{d.get('path', '')} ({d['bus']})"
    if kind == Kind.ANOMALY:
        return f"new {d.get('what')} {d.get('value')}"
    if kind == Kind.ROLLBACK:
        conflicts = len(d.get("conflicts") or [])
        return (f"{r.event} {d.get('count', 0)} change(s)" + (f", {conflicts} kept as the user left them"
                                                              if conflicts else ""))
    if kind == Kind.CORRELATION:
        return f"{d.get('rule')} seqs {','.join(str(x) for x in d.get('seqs') or [])}"
    if kind == Kind.LIFECYCLE:
        ev = r.event or ""
        if ev == "start":
            return "start " + " ".join(d.get("argv") or [])
        if ev == "stop":
            return f"stop status={d.get('exit_status')} violations={d.get('violations')}"
        if ev == "processes":
            return "processes " + " ".join(_proc_text(p) for p in d.get("procs") or [] if isinstance(p, dict))
        if ev == "over-share":
            return f"over-share: {d.get('records')} not recorded (its own flood)"
        return f"{ev} {d.get('path', '')}".rstrip()
    return json.dumps(dict(d))


def _proc_text(p: dict[str, Any]) -> str:
    """One lineage entry: pid, binary, how it ended ("4711:/usr/bin/cat=1", "4712:=SIGKILL")."""
    end = p.get("signal") or p.get("exit")
    return f"{p.get('pid')}:{p.get('exe', '')}" + (f"={end}" if end is not None else "")


def format_line(rec: dict[str, Any]) -> str:
    """One line within WIDTH columns; a line that is not a record says so rather than failing the view."""
    try:
        r = Record.of(rec)
    except ForensicsError as err:
        return f"(not a record: {err})"[:WIDTH]
    t = r.time or ""
    clock = t[11:23] if len(t) >= 23 else t
    verdict = r.verdict or "-"
    line = (f"{clock:<12} {(r.extension or '?')[:14]:<14} {str(r.pid or '-'):>7} "
            f"{r.kind[:9]:<9} {verdict[:8]:<8} {detail_text(r)}")
    return line if len(line) <= WIDTH else line[: WIDTH - 1] + "…"


HEADER = f"{'TIME':<12} {'EXTENSION':<14} {'PID':>7} {'KIND':<9} {'VERDICT':<8} DETAIL"


# every kind a record can have (records.Kind), for --kind
RECORD_KINDS = tuple(str(k) for k in Kind)


def matcher(extension: str | None, pid: int | None, kinds: tuple[str, ...]) -> Callable[[dict[str, Any]], bool]:
    def ok(rec: dict[str, Any]) -> bool:
        if extension and rec.get("extension") != extension:
            return False
        if pid is not None and pid not in (rec.get("pid"), rec.get("tgid")):
            return False
        return not kinds or rec.get("kind") in kinds
    return ok


def follow(path: Path, from_start: bool, interval: float = 0.1) -> Iterator[dict[str, Any]]:
    """Yield records appended to ``path``, forever. Survives the file appearing late, being rotated
    (the rest of the old file is read before the new one) or being truncated."""
    fh = None
    buf = b""
    first = True
    while True:
        if fh is None:
            try:
                fh = open(path, "rb")
            except FileNotFoundError:
                first = False  # a file that appears later is read from its start
                time.sleep(interval)
                continue
            if first and not from_start:
                fh.seek(0, os.SEEK_END)
            first = False
        data = fh.read()
        if data:
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    yield rec
            continue
        try:
            st = path.stat()
            mine = os.fstat(fh.fileno())
            replaced = (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino)
            truncated = st.st_size < fh.tell()
        except FileNotFoundError:
            replaced, truncated = False, False
        if replaced or truncated:  # everything of the old file has been read: go on with the new one
            fh.close()
            fh, buf = None, b""
            continue
        time.sleep(interval)


def log_path(state_dir: str | os.PathLike[str]) -> Path:
    return StateDir.of(state_dir).records

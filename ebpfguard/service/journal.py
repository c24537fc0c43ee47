"""The agent's own log: stdout, which systemd hands to journald. Under journald (JOURNAL_STREAM names
stdout) each line starts with its syslog priority, ``<3>`` for an error (sd-daemon(3); journald reads it
as PRIORITY), so that ``journalctl -p warning -u ebpfguard`` shows what needs a look; elsewhere, a time
and the level name. What an operator acts on is logged from the records themselves (``record_line``):
instance start and stop, ladder actions, quarantine, records over a cgroup's share; a plain violation
is in the forensic log and the metrics, not here."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

from ebpfguard.forensics.forward import subject

PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}
LADDER = ("cgroup.freeze", "cgroup.kill", "sigkill:kernel", "throttle", "quarantine")


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        pri = PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{pri}>{line}" for line in super().format(record).splitlines() or [""])


def on_journal(stream: TextIO) -> bool:
    """Is ``stream`` the journal stream systemd connected (JOURNAL_STREAM=DEV:INODE)?"""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
        return bool(dev and ino) and (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


def log_handler(stream: TextIO = sys.stdout) -> logging.Handler:
    h = logging.StreamHandler(stream)
    if on_journal(stream):
        h.setFormatter(JournalFormatter("%(message)s"))
    else:
        h.setFormatter(logging.Formatter("%(asctime)s ebpfguard[%(process)d] %(levelname)s %(message)s"))
    return h


def record_line(rec: dict[str, Any]) -> tuple[int, str] | None:
    """The log level and line for a record an operator should hear of, or None."""
    d = rec.get("detail") or {}
    who = rec.get("instance") or rec.get("extension") or "-"
    if rec.get("kind") == "lifecycle":
        ev = d.get("event")
        if ev in ("start", "adopted", "readopted"):
            return logging.INFO, f"{who}: {ev} (pid {rec.get('pid')}, {rec.get('mode')} mode)"
        if ev == "stop":
            how = f"exit {d['exit_status']}" if d.get("exit_status") is not None else "ended"
            return logging.INFO, f"{who}: stopped ({how}; {d.get('violations', 0)} violations)"
        if ev == "over-share":
            return logging.WARNING, (f"{who}: {d.get('records')} records over its share of the ring buffer: "
                                     "counted, not recorded")
        if ev in ("escalation", "freeze", "thaw", "kill", "quarantine", "unquarantine"):
            acts = ",".join(rec.get("actions") or []) or ev
            return logging.WARNING, f"{who}: {ev} [{acts}]" + (f" by {d['by']}" if d.get("by") else "")
        return None
    if rec.get("kind") == "checkpoint":
        return None
    if rec.get("kind") == "policy":
        if d.get("event") in ("rejected", "launch-refused"):
            sig = (d.get("signature") or {}).get("reason") or d.get("reason") or ""
            return logging.WARNING, f"{rec.get('extension')}: policy {d.get('event')}: {sig}"
        return None
    acts = rec.get("actions") or []
    if any(a.split(":")[0] in LADDER or a in LADDER for a in acts):
        return logging.WARNING, (f"{who}: {rec.get('kind')} {rec.get('verdict')} {subject(d)} "
                                 f"[{','.join(acts)}] seq {rec.get('seq')}")
    return None

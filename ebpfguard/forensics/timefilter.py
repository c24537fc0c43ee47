"""Time filters for forensics show: --since/--until, and a record's time."""

from __future__ import annotations

import time
from typing import Any

from ebpfguard.common.units import parse_duration


def parse_when(text: str, now_ns: int | None = None) -> int:
    """ns since the epoch, from RFC 3339 ("2026-11-24T18:00:00Z", "2026-11-24 18:00", "2026-11-24";
    no offset means UTC) or a duration ago ("90s", "15m", "2h", "7d", "1w")."""
    import datetime as dt

    t = text.strip()
    now = time.time_ns() if now_ns is None else now_ns
    try:
        return now - int(parse_duration(t) * 1_000_000_000)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither a time (2026-11-24T18:00:00Z) nor a duration ago (15m, 2h, 7d)") \
            from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def record_ns(rec: dict[str, Any]) -> int | None:
    """A record's time ("2026-11-24T18:00:00.123456789Z") in ns since the epoch; None if it has none."""
    import calendar

    t = rec.get("time")
    if not isinstance(t, str) or len(t) < 20:
        return None
    try:
        base = time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S")
        frac = t[20:].rstrip("Z") if t[19] == "." else ""
        ns = int((frac + "000000000")[:9]) if frac else 0
    except ValueError:
        return None
    return calendar.timegm(base) * 1_000_000_000 + ns


def within(rec: dict[str, Any], since_ns: int | None, until_ns: int | None) -> bool:
    """Is ``rec`` at or after ``since_ns`` and before ``until_ns`` (None: unbounded)? With a bound, a record
    with no time is not."""
    if since_ns is None and until_ns is None:
        return True
    t = record_ns(rec)
    return t is not None and (since_ns is None or t >= since_ns) and (until_ns is None or t < until_ns)

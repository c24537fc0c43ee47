"""Wall-clock time as records carry it: ns since the epoch, written as RFC 3339 with ns, in UTC."""

from __future__ import annotations

import datetime as _dt
import time


def now_ns() -> int:
    return time.time_ns()


def rfc3339_ns(epoch_ns: int) -> str:
    sec, ns = divmod(epoch_ns, 1_000_000_000)
    base = _dt.datetime.fromtimestamp(sec, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{ns:09d}Z"

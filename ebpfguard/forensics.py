"""The forensic log: one JSON object per line under STATE/forensics/records.jsonl.

Writers (the agent, standalone runs) take an exclusive flock per record, so concurrent writers keep
one gapless seq. A record is fsync'd before append() returns. prev_sha256 and signature are part of
the format and stay null until records are chained and signed.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ForensicsError

FIELDS = ("seq", "time", "extension", "instance", "cgroup_id", "pid", "tgid", "uid", "comm", "kind",
          "detail", "verdict", "actions", "mode", "policy_sha256", "prev_sha256", "signature")


@dataclass
class BadLine:
    lineno: int
    reason: str


class ForensicLog:
    def __init__(self, state_dir: str | os.PathLike[str]):
        self.dir = Path(state_dir) / "forensics"
        self.path = self.dir / "records.jsonl"
        self._size = -1
        self._last_seq = 0
        self.written = 0
        self.failed = 0

    def _open(self) -> int:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise ForensicsError(f"failed to open {self.path}: {err.strerror}") from err

    def _tail_seq(self, fd: int, size: int) -> int:
        """The seq of the last well-formed record: read backwards until one line parses."""
        chunk = 65536
        pos = size
        buf = b""
        while pos > 0:
            start = max(0, pos - chunk)
            buf = os.pread(fd, pos - start, start) + buf
            pos = start
            lines = buf.split(b"\n")
            for line in reversed(lines[1:] if pos > 0 else lines):
                try:
                    seq = json.loads(line).get("seq")
                except (ValueError, AttributeError):
                    continue
                if isinstance(seq, int):
                    return seq
        return 0

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size != self._size:
                self._last_seq = self._tail_seq(fd, size)
            rec = {k: record.get(k) for k in FIELDS}
            rec.update({k: v for k, v in record.items() if k not in rec})
            seq = self._last_seq + 1
            rec["seq"] = seq
            line = (json.dumps(rec, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
            os.write(fd, line)
            os.fsync(fd)
            self._last_seq = seq
            self._size = size + len(line)
            self.written += 1
            return rec
        except OSError as err:
            self.failed += 1
            raise ForensicsError(f"failed to write a record to {self.path}: {err.strerror}") from err
        finally:
            os.close(fd)


def read(state_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any] | BadLine]:
    """Every record in order; a line that is not a record is reported as BadLine, never skipped."""
    path = Path(state_dir) / "forensics" / "records.jsonl"
    if not path.exists():
        return
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as err:
                yield BadLine(lineno, f"not JSON: {err}")
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("seq"), int):
                yield BadLine(lineno, "not a forensic record (no integer seq)")
                continue
            yield rec

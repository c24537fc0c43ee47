"""The forensic log: one JSON object per line under STATE/forensics/records.jsonl, hash-chained and
signed with the host's Ed25519 key.

Writers (the agent, standalone runs) take an exclusive flock per record, so concurrent writers keep
one gapless seq and one chain. A record is fsync'd before append() returns.

Rotation: when records.jsonl reaches max_bytes, the writer appends a checkpoint and renames the file
to records-<seq of that checkpoint, 12 digits>.jsonl under the same lock; the next record starts a
new records.jsonl whose first prev_sha256 is the checkpoint's digest, so the chain runs on across
files. Readers take the rotated files in seq order, then records.jsonl.

Chain and signature: ``digest(r)`` is the SHA-256 of r's canonical JSON (sorted keys, ASCII, no
spaces) without its ``signature``. Each record carries ``prev_sha256 = digest(previous)`` (64 zeros
for the first) and ``key_id`` (the first 16 hex digits of SHA-256 of the raw public key). The line on
disk is that canonical JSON plus ``signature``: ``base64(Ed25519(canonical JSON))`` on the last
record of each group commit, null on the others: one signature per group, not per record. Because
every record's digest is in its successor's prev_sha256, the signature of a group's last record
covers the whole group (and everything before it). A group is written with one write() and counts
as written only once it is signed and fsync'd; a writer that finds unsigned records at the end of the
log (its predecessor died in mid-group) cuts them off like a torn line and keeps their bytes in a
record of its own. Because the chain does not cover the signature, verify() can tell a modified
record (its successor's prev_sha256 no longer matches) from a bad signature (content intact,
signature wrong).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ebpfguard.common.clock import now_ns, rfc3339_ns
from ebpfguard.common.statedir import StateDir
from ebpfguard.common.units import parse_size
from ebpfguard.errors import ForensicsError
from ebpfguard.forensics.chain import FIELDS, GENESIS, canonical, digest
from ebpfguard.forensics.keys import key_id, load_or_create_key

if TYPE_CHECKING:
    from ebpfguard.forensics.forward import Forwarder

CHECKPOINT_EVERY = 100      # records (in a group commit: at its end, once)
GROUP_MAX = 512             # records signed together at most (what a writer may have to cut after a crash)
CHECKPOINT_SECONDS = 10.0   # at most this long between checkpoints while records arrive
MAX_BYTES = 64 << 20        # rotate records.jsonl at this size
MIN_BYTES = 4096            # the smallest rotation size an operator may set
CURRENT = "records.jsonl"
ROTATED = re.compile(r"^records-(\d{12})\.jsonl$")


def rotate_size(text: str) -> int:
    """A rotation size as an operator writes it (the manifest's size grammar: Mi is 2^20, M is 10^6), at least
    MIN_BYTES; ValueError says why not."""
    n = parse_size(text)
    if n < MIN_BYTES:
        raise ValueError(f"{text!r} is below the 4Ki minimum")
    return n


@dataclass
class BadLine:
    lineno: int
    reason: str
    file: str = CURRENT

    def __str__(self) -> str:
        return f"{self.file}:{self.lineno}: {self.reason}"


def log_files(forensics_dir: str | os.PathLike[str]) -> list[Path]:
    """The log's files in order: rotated ones by the seq they end at, then the current one."""
    d = Path(forensics_dir)
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    rotated = sorted((int(m.group(1)), n) for n in names if (m := ROTATED.match(n)))
    files = [d / n for _, n in rotated]
    if CURRENT in names:
        files.append(d / CURRENT)
    return files


@dataclass
class _Batch:
    fd: int | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)  # written and signed, not yet fsync'd


class ForensicLog:
    """Appends chained, signed records. Every CHECKPOINT_EVERY records (a group commit past that many
    ends with one), every CHECKPOINT_SECONDS (the
    agent calls maybe_checkpoint()) and at clean shutdown it writes a checkpoint: a chained record of
    kind "checkpoint", mirrored in a signed head.json beside the log, so that cutting records off the
    end of the log up to the last checkpoint is detected."""

    def __init__(self, state_dir: str | os.PathLike[str] | StateDir, max_bytes: int = MAX_BYTES,
                 forward: Forwarder | None = None, fsync: bool = True):
        state = StateDir.of(state_dir)
        self.dir = state.forensics
        self.path = state.records
        self.head = state.head
        # called with each record once it is durable (fsync'd and counted), in seq order: the
        # forwarder, live trace and metrics all hear of a record here and only here
        self.durable: list[Callable[[dict[str, Any]], None]] = []
        if forward is not None:
            self.durable.append(forward.send)
        self.max_bytes = max_bytes
        self.forward = forward
        self.fsync = fsync  # off only to measure what durability costs (bench --log)
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self.state_dir = state
        self._where: tuple[int, int, int] = (-1, -1, -1)  # (dev, ino, size) the cache below is valid for
        self._last_seq = 0
        self._last_digest = GENESIS
        self._key: Ed25519PrivateKey | None = None
        self._key_id = ""
        self.written = 0
        self.failed = 0
        self._batch: _Batch | None = None
        self._unwritten: list[tuple[dict[str, Any], bytes]] = []  # chained, not yet signed nor written
        self._unwritten_bytes = 0

    def _signer(self) -> Ed25519PrivateKey:
        if self._key is None:
            self._key = load_or_create_key(self.state_dir)
            self._key_id = key_id(self._key.public_key())
        return self._key

    def _open_locked(self) -> int:
        """records.jsonl, open and exclusively locked. A writer that waited for the lock while another
        rotated the file holds the renamed file: it lets go and opens the new one."""
        try:
            while True:
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
                except FileNotFoundError:  # first record, or the folder was removed under us
                    self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                    continue
                fcntl.flock(fd, fcntl.LOCK_EX)
                st = os.fstat(fd)
                try:
                    cur = os.stat(self.path)
                except FileNotFoundError:
                    cur = None
                if cur is not None and (cur.st_dev, cur.st_ino) == (st.st_dev, st.st_ino):
                    return fd
                os.close(fd)
        except OSError as err:
            raise ForensicsError(f"failed to open {self.path}: {err.strerror}") from err

    def _last_record(self, fd: int, size: int) -> dict[str, Any] | None:
        """The last record of the whole log: of records.jsonl, or, if it is still empty, of the newest
        rotated file."""
        if size:
            return _tail(fd, size)
        rotated = log_files(self.dir)[:-1]
        if not rotated:
            return None
        with open(rotated[-1], "rb") as fh:
            return _tail(fh.fileno(), os.fstat(fh.fileno()).st_size)

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        rec = self._append(record)
        self._since_checkpoint += 1
        if self._where[2] + self._unwritten_bytes >= self.max_bytes:
            self.checkpoint(rotate=True)
        elif self._since_checkpoint >= CHECKPOINT_EVERY and self._batch is None:
            self.checkpoint()
        return rec

    def maybe_checkpoint(self) -> None:
        if self._since_checkpoint and time.monotonic() - self._last_checkpoint >= CHECKPOINT_SECONDS:
            self.checkpoint()

    def checkpoint(self, rotate: bool = False) -> dict[str, Any]:
        """A signed statement of how far the log goes: a chained record, and head.json. With rotate,
        records.jsonl is then renamed, under the same lock."""
        rec = self._append({"kind": "checkpoint", "detail": {"records": self._last_seq}}, head=True,
                           rotate=rotate)
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        return rec

    def _write_head(self, rec: dict[str, Any]) -> None:
        key = self._signer()
        head: dict[str, Any] = {"seq": rec["seq"], "digest": digest(rec), "time": rec.get("time"),
                                "key_id": self._key_id, "signature": None}
        head["signature"] = base64.b64encode(key.sign(canonical(head))).decode()
        tmp = self.head.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(head))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.head)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: records appended inside are written under one hold of the lock and made
        durable by one fsync at the end; only then are they counted as written and forwarded. The
        agent wraps each ring-buffer poll in one, so a burst of violations costs one fsync, not one
        each. Checkpoints and rotation inside a batch fsync first, so head.json never runs ahead."""
        if self._batch is not None:
            yield
            return
        self._batch = _Batch()
        try:
            yield
            if self._since_checkpoint >= CHECKPOINT_EVERY:
                self.checkpoint()  # one per group at most: a checkpoint costs two fsyncs
        finally:
            self._commit(close=True)
            self._batch = None

    def _commit(self, close: bool) -> None:
        b = self._batch
        if b is None or b.fd is None:
            return
        try:
            self._flush(b.fd)
            if b.pending and self.fsync:
                os.fsync(b.fd)
        except OSError as err:
            self.failed += len(b.pending)  # the unwritten ones included: they are pending too
            b.pending.clear()
            self._unwritten.clear()
            self._unwritten_bytes = 0
            self._where = (-1, -1, -1)
            raise ForensicsError(f"failed to write records to {self.path}: {err.strerror}") from err
        finally:
            if close:
                os.close(b.fd)
                b.fd = None
        done, b.pending = b.pending, []
        self.written += len(done)
        for rec in done:
            self._forwarding(rec)

    def _append(self, record: dict[str, Any], head: bool = False, rotate: bool = False) -> dict[str, Any]:
        self._signer()
        b = self._batch
        fd = b.fd if b is not None and b.fd is not None else self._open_locked()
        if b is not None:
            b.fd = fd
        done: list[dict[str, Any]] = []
        try:
            st = os.fstat(fd)
            where = (st.st_dev, st.st_ino, st.st_size)
            if where != self._where:  # another writer appended or rotated: continue its seq and chain
                torn = self._cut_torn_tail(fd, st.st_size)
                size = os.fstat(fd).st_size
                last = self._last_record(fd, size)
                self._last_seq = int(last["seq"]) if last else 0
                self._last_digest = digest(last) if last else GENESIS
                self._where = (st.st_dev, st.st_ino, size)
                if torn:  # keep what a crashed writer left half-written, as data of a record of its own
                    done.append(self._chain({
                        "kind": "lifecycle", "verdict": None,
                        "detail": {"event": "torn-tail", "bytes": len(torn),
                                   "data_b64": base64.b64encode(torn[:4096]).decode(),
                                   "why": "a writer was killed while writing; this record was never counted "
                                          "as written"}}))
                    self._flush(fd)
            rec = self._chain(record)
            if b is None or head or rotate or len(self._unwritten) >= GROUP_MAX:
                self._flush(fd)
            done.append(rec)
            if b is not None:
                b.pending.extend(done)
                done = []
                if head or rotate:
                    self._commit(close=False)
            elif self.fsync:
                os.fsync(fd)
            if head:
                self._write_head(rec)
            if rotate:
                os.rename(self.path, self.dir / f"records-{rec['seq']:012d}.jsonl")
                dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
                self._where = (-1, -1, -1)
                if b is not None:  # the next record goes to a new records.jsonl
                    os.close(fd)
                    b.fd = None
        except OSError as err:
            self.failed += len(done) or 1
            self._unwritten.clear()
            self._unwritten_bytes = 0
            self._where = (-1, -1, -1)  # what is on disk is unknown: read it again
            raise ForensicsError(f"failed to write a record to {self.path}: {err.strerror}") from err
        finally:
            if b is None:
                os.close(fd)
        self.written += len(done)
        for r in done:
            self._forwarding(r)
        return rec

    def _chain(self, record: dict[str, Any]) -> dict[str, Any]:
        """Give a record its seq, time, key and place in the chain (the lock is held); _flush() writes it."""
        self._signer()
        rec = {k: record.get(k) for k in FIELDS}
        rec.update({k: v for k, v in record.items() if k not in rec})
        if rec.get("time") is None:
            rec["time"] = rfc3339_ns(now_ns())
        seq = self._last_seq + 1
        rec["seq"] = seq
        rec["prev_sha256"] = self._last_digest
        rec["key_id"] = self._key_id
        rec["signature"] = None
        body = canonical(rec)  # what the chain hashes is what the group's signature covers
        self._unwritten.append((rec, body))
        self._unwritten_bytes += len(body) + 1
        self._last_seq = seq
        self._last_digest = hashlib.sha256(body).hexdigest()
        return rec

    def _flush(self, fd: int) -> None:
        """Sign the last chained record and write the group with one write() (the caller fsyncs)."""
        if not self._unwritten:
            return
        key = self._signer()
        last, body = self._unwritten[-1]
        sig = base64.b64encode(key.sign(body)).decode()
        last["signature"] = sig
        parts = [b[:-1] + b',"signature":null}\n' for _, b in self._unwritten[:-1]]
        parts.append(body[:-1] + b',"signature":"' + sig.encode() + b'"}\n')
        data = b"".join(parts)
        self._unwritten.clear()
        self._unwritten_bytes = 0
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        dev, ino, size = self._where
        self._where = (dev, ino, size + len(data))

    def _forwarding(self, rec: dict[str, Any]) -> None:
        for hook in list(self.durable):
            hook(rec)

    @staticmethod
    def _cut_torn_tail(fd: int, size: int) -> bytes:
        """A writer killed inside write() can leave a line without its newline, or a group whose
        signed last record never made it. It was never fsync'd nor counted; cut it off (so the chain goes
        on from the last signed record) and return it."""
        if size == 0:
            return b""
        pos = size
        if os.pread(fd, 1, size - 1) != b"\n":
            while pos > 0:
                start = max(0, pos - 65536)
                nl = os.pread(fd, pos - start, start).rfind(b"\n")
                if nl >= 0:
                    pos = start + nl + 1
                    break
                pos = start
        pos = _signed_end(fd, pos)
        if pos == size:
            return b""
        torn = os.pread(fd, size - pos, pos)
        os.ftruncate(fd, pos)
        os.fsync(fd)
        return torn


def _tail(fd: int, size: int) -> dict[str, Any] | None:
    """The last well-formed record of an open log file: read backwards until one line parses."""
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
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("seq"), int):
                return rec
    return None


def _signed_end(fd: int, end: int) -> int:
    """Where the last signed record among the file's first ``end`` bytes ends (``end`` is at a line's
    end): the whole lines after it belong to a group that was never signed."""
    cur = end
    bstart, buf = end, b""  # buf holds the file's bytes [bstart, cur)
    while cur > 0:
        nl = buf.rfind(b"\n", 0, len(buf) - 1)
        if nl < 0 and bstart > 0:
            start = max(0, bstart - 65536)
            buf = os.pread(fd, bstart - start, start) + buf
            bstart = start
            continue
        line = buf[nl + 1:-1]
        if line.strip():
            try:
                rec = json.loads(line)
            except ValueError:
                return cur  # not a record: verify() names it, nothing is cut
            if not isinstance(rec, dict) or rec.get("signature"):
                return cur
        cur = bstart + nl + 1
        buf = buf[:nl + 1]
    return 0

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
for the first), ``key_id`` (the first 16 hex digits of SHA-256 of the raw public key) and
``signature = base64(Ed25519(canonical JSON without signature))``. Because the chain does not cover
the signature, verify() can tell a modified record (its successor's prev_sha256 no longer matches)
from a bad signature (content intact, signature wrong).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import ForensicsError

FIELDS = ("seq", "time", "extension", "instance", "cgroup_id", "pid", "tgid", "uid", "comm", "kind",
          "detail", "verdict", "actions", "mode", "policy_sha256", "prev_sha256", "key_id", "signature")
GENESIS = "0" * 64


def canonical(rec: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in rec.items() if k != "signature"}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=True).encode()


def digest(rec: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(rec)).hexdigest()


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_or_create_key(state_dir: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The host's signing key: STATE/keys/forensics.ed25519 (PKCS#8 PEM), created on first use, 0600."""
    path = Path(state_dir) / "keys" / "forensics.ed25519"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # exclusive: if another writer made the key first, theirs is the key
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as err:
        raise ForensicsError(f"failed to load or create the signing key {path}: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise ForensicsError(f"{path} is not an Ed25519 key")
    return key


def public_pem(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


CHECKPOINT_EVERY = 100      # records
CHECKPOINT_SECONDS = 10.0   # at most this long between checkpoints while records arrive
MAX_BYTES = 64 << 20        # rotate records.jsonl at this size
CURRENT = "records.jsonl"
ROTATED = re.compile(r"^records-(\d{12})\.jsonl$")


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
    pending: list[dict[str, Any]] = field(default_factory=list)


class ForensicLog:
    """Appends chained, signed records. Every CHECKPOINT_EVERY records, every CHECKPOINT_SECONDS (the
    agent calls maybe_checkpoint()) and at clean shutdown it writes a checkpoint: a chained record of
    kind "checkpoint", mirrored in a signed head.json beside the log, so that cutting records off the
    end of the log up to the last checkpoint is detected."""

    def __init__(self, state_dir: str | os.PathLike[str], max_bytes: int = MAX_BYTES,
                 forward: Forwarder | None = None, fsync: bool = True):
        self.dir = Path(state_dir) / "forensics"
        self.path = self.dir / CURRENT
        self.head = self.dir / "head.json"
        self.max_bytes = max_bytes
        self.forward = forward
        self.fsync = fsync  # off only to measure what durability costs (bench --log)
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self.state_dir = state_dir
        self._where: tuple[int, int, int] = (-1, -1, -1)  # (dev, ino, size) the cache below is valid for
        self._last_seq = 0
        self._last_digest = GENESIS
        self._key: Ed25519PrivateKey | None = None
        self._key_id = ""
        self.written = 0
        self.failed = 0
        self._batch: _Batch | None = None

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
        if self._where[2] >= self.max_bytes:
            self.checkpoint(rotate=True)
        elif self._since_checkpoint >= CHECKPOINT_EVERY:
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
        finally:
            self._commit(close=True)
            self._batch = None

    def _commit(self, close: bool) -> None:
        b = self._batch
        if b is None or b.fd is None:
            return
        try:
            if b.pending and self.fsync:
                os.fsync(b.fd)
        except OSError as err:
            self.failed += len(b.pending)
            b.pending.clear()
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
        key = self._signer()
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
                    done.append(self._write(key, fd, {
                        "kind": "lifecycle", "verdict": None,
                        "detail": {"event": "torn-tail", "bytes": len(torn),
                                   "data_b64": base64.b64encode(torn[:4096]).decode(),
                                   "why": "a writer was killed while writing; this record was never counted "
                                          "as written"}}))
            rec = self._write(key, fd, record)
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
            raise ForensicsError(f"failed to write a record to {self.path}: {err.strerror}") from err
        finally:
            if b is None:
                os.close(fd)
        self.written += len(done)
        for r in done:
            self._forwarding(r)
        return rec

    def _write(self, key: Ed25519PrivateKey, fd: int, record: dict[str, Any]) -> dict[str, Any]:
        """Chain, sign and append one record (the lock is held; the caller makes it durable)."""
        rec = {k: record.get(k) for k in FIELDS}
        rec.update({k: v for k, v in record.items() if k not in rec})
        if rec.get("time") is None:
            from .events import now_ns, rfc3339_ns  # noqa: PLC0415

            rec["time"] = rfc3339_ns(now_ns())
        seq = self._last_seq + 1
        rec["seq"] = seq
        rec["prev_sha256"] = self._last_digest
        rec["key_id"] = self._key_id
        signed = canonical(rec)  # what the signature covers is also what the chain hashes
        rec["signature"] = base64.b64encode(key.sign(signed)).decode()
        line = (json.dumps(rec, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        os.write(fd, line)
        self._last_seq = seq
        self._last_digest = hashlib.sha256(signed).hexdigest()
        dev, ino, size = self._where
        self._where = (dev, ino, size + len(line))
        return rec

    def _forwarding(self, rec: dict[str, Any]) -> None:
        if self.forward is not None:
            self.forward.send(rec)

    @staticmethod
    def _cut_torn_tail(fd: int, size: int) -> bytes:
        """A writer killed inside write() can leave a line without its newline. It was never fsync'd
        nor counted; cut it off (so the chain goes on from the last whole record) and return it."""
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return b""
        pos = size
        while pos > 0:
            start = max(0, pos - 65536)
            nl = os.pread(fd, pos - start, start).rfind(b"\n")
            if nl >= 0:
                pos = start + nl + 1
                break
            pos = start
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


class Forwarder:
    """Sends each written record to journald (native protocol) or syslog (RFC 3164 on a unix datagram
    socket), after it is on disk, so a fleet's log shippers carry it too. Best effort: a record the
    socket refuses is counted in ``failed`` and stays safe in the file."""

    SOCKETS = {"journald": "/run/systemd/journal/socket", "syslog": "/dev/log"}
    FACILITY_AUTHPRIV = 10

    def __init__(self, spec: str):
        kind, _, path = spec.partition(":")
        if kind not in self.SOCKETS:
            raise ForensicsError(f"--log-forward: {spec!r}: give journald[:SOCKET] or syslog[:SOCKET]")
        self.kind = kind
        self.address = path or self.SOCKETS[kind]
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setblocking(False)
        self.sent = 0
        self.failed = 0

    @staticmethod
    def severity(rec: dict[str, Any]) -> int:
        if rec.get("kind") in ("lifecycle", "checkpoint"):
            return 6  # info
        return 4 if rec.get("verdict") in ("allowed", "detected") else 3  # warning; error when acted on

    def encode(self, rec: dict[str, Any]) -> bytes:
        body = json.dumps(rec, separators=(",", ":"), ensure_ascii=False)
        if self.kind == "syslog":
            pri = self.FACILITY_AUTHPRIV * 8 + self.severity(rec)
            return f"<{pri}>ebpfguard[{os.getpid()}]: {body}".encode()
        fields = {"MESSAGE": f"{rec.get('extension') or '-'} {rec.get('kind')} {rec.get('verdict') or '-'} "
                             f"seq={rec.get('seq')}",
                  "PRIORITY": str(self.severity(rec)), "SYSLOG_IDENTIFIER": "ebpfguard",
                  "SYSLOG_FACILITY": str(self.FACILITY_AUTHPRIV), "EBPFGUARD_SEQ": str(rec.get("seq")),
                  "EBPFGUARD_KIND": str(rec.get("kind")), "EBPFGUARD_EXTENSION": str(rec.get("extension") or ""),
                  "EBPFGUARD_VERDICT": str(rec.get("verdict") or ""), "EBPFGUARD_RECORD": body}
        out = bytearray()
        for k, v in fields.items():
            b = v.encode()
            if b"\n" in b:  # the native protocol's binary-safe form
                out += k.encode() + b"\n" + len(b).to_bytes(8, "little") + b + b"\n"
            else:
                out += k.encode() + b"=" + b + b"\n"
        return bytes(out)

    def send(self, rec: dict[str, Any]) -> None:
        try:
            self.sock.sendto(self.encode(rec), self.address)
            self.sent += 1
        except OSError:
            self.failed += 1


def _lines(state_dir: str | os.PathLike[str]) -> Iterator[tuple[str, int, dict[str, Any] | BadLine]]:
    """(file name, line number, record or BadLine) for every non-empty line of the log, oldest first."""
    for path in log_files(Path(state_dir) / "forensics"):
        try:
            fh = open(path, "rb")
        except FileNotFoundError:  # rotated away while we listed
            continue
        with fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError as err:
                    yield path.name, lineno, BadLine(lineno, f"not JSON: {err}", path.name)
                    continue
                if not isinstance(rec, dict) or not isinstance(rec.get("seq"), int):
                    yield path.name, lineno, BadLine(lineno, "not a forensic record (no integer seq)", path.name)
                    continue
                yield path.name, lineno, rec


def read(state_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any] | BadLine]:
    """Every record in order; a line that is not a record is reported as BadLine, never skipped."""
    for _, _, rec in _lines(state_dir):
        yield rec


def host_public_key(state_dir: str | os.PathLike[str]) -> Ed25519PublicKey:
    """The host's public key, loaded (never created: verifying must not mint a key)."""
    path = Path(state_dir) / "keys" / "forensics.ed25519"
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as err:
        raise ForensicsError(f"no host key at {path}: give the signer's public key with --pubkey") from err
    except (OSError, ValueError) as err:
        raise ForensicsError(f"failed to load the host key {path}: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise ForensicsError(f"{path} is not an Ed25519 key")
    return key.public_key()


@dataclass
class Verdict:
    ok: bool
    records: int
    lineno: int | None = None
    seq: int | None = None
    reason: str = ""
    file: str = CURRENT
    files: int = 0

    def __str__(self) -> str:
        if self.ok:
            across = f" across {self.files} files" if self.files > 1 else ""
            return f"ok: {self.records} records{across}, chain and signatures intact"
        where = f"{self.file}:{self.lineno}" if self.lineno is not None else self.file
        return f"{where}: seq {self.seq}: {self.reason}"


def verify(state_dir: str | os.PathLike[str], pubkeys: list[Ed25519PublicKey] | None = None) -> Verdict:
    """Check the whole log, across rotated files: gapless seq, the hash chain, and every signature
    against the trusted keys (by default the host's own), then the signed head.json. Returns the first
    bad record and why."""
    fdir = Path(state_dir) / "forensics"
    head_path = fdir / "head.json"
    files = log_files(fdir)
    if not files and not head_path.exists():
        return Verdict(True, 0)
    trusted = {key_id(k): k for k in (pubkeys or [host_public_key(state_dir)])}
    prev: dict[str, Any] | None = None
    prev_at: tuple[str, int] = (CURRENT, 0)
    pending_sig: tuple[str, int, int] | None = None  # (file, lineno, seq) whose signature failed

    def bad(n: int, at: tuple[str, int] | None, seq: int | None, reason: str) -> Verdict:
        return Verdict(False, n, at[1] if at else None, seq, reason, at[0] if at else "head.json", len(files))

    n = 0
    for fname, lineno, rec in _lines(state_dir):
        at = (fname, lineno)
        if isinstance(rec, BadLine):
            return bad(n, at, None, f"modified: {rec.reason}")
        seq = rec["seq"]
        want = prev["seq"] + 1 if prev else 1
        if prev is not None and seq <= prev["seq"]:
            reason = "inserted: repeats seq" if seq == prev["seq"] else f"reordered: seq {seq} after {prev['seq']}"
            return bad(n, at, seq, reason)
        if seq > want:
            return bad(n, at, seq, f"deleted: records {want}..{seq - 1} are missing")
        if rec.get("prev_sha256") != (digest(prev) if prev else GENESIS):
            if pending_sig:  # the previous record's content changed, not just its signature
                return bad(n, pending_sig[:2], pending_sig[2], "modified: content does not match its signature "
                           "or its successor's prev_sha256")
            if prev is not None:
                return bad(n, prev_at, prev["seq"], "modified: its successor's prev_sha256 does not match")
            return bad(n, at, seq, "inserted: the first record does not start the chain")
        if pending_sig:
            return bad(n, pending_sig[:2], pending_sig[2], "bad signature")
        kid = rec.get("key_id")
        if kid not in trusted:
            return bad(n, at, seq, f"unknown key {kid!r}: signed by a key this verifier does not trust")
        try:
            trusted[kid].verify(base64.b64decode(rec.get("signature") or "", validate=True), canonical(rec))
        except (InvalidSignature, ValueError):
            pending_sig = (fname, lineno, seq)  # decided by the next record: modified, or bad signature
        prev, prev_at = rec, at
        n += 1
    if pending_sig:
        return bad(n, pending_sig[:2], pending_sig[2], "bad signature (or modified: it is the last record)")
    if head_path.exists():
        try:
            head = json.loads(head_path.read_text())
            hk = trusted.get(head.get("key_id"))
            if hk is None:
                return bad(n, None, head.get("seq"), "head.json: unknown key")
            hk.verify(base64.b64decode(head.get("signature") or "", validate=True), canonical(head))
            head_seq = int(head["seq"])
        except (ValueError, InvalidSignature, AttributeError, KeyError, TypeError):
            return bad(n, None, None, "head.json: bad signature or not a checkpoint")
        last = prev["seq"] if prev else 0
        if head_seq > last:
            return bad(n, None, last + 1, f"tail truncated after the last checkpoint: the log ends at seq {last}, "
                       f"the checkpoint in head.json is at seq {head_seq}")
        if head_seq == last and prev is not None and digest(prev) != head.get("digest"):
            return bad(n, prev_at, last, "modified: does not match the checkpoint in head.json")
    return Verdict(True, n, files=len(files))


# ---- time filters ------------------------------------------------------------------------------
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, now_ns: int | None = None) -> int:
    """ns since the epoch, from RFC 3339 ("2026-11-24T18:00:00Z", "2026-11-24 18:00", "2026-11-24";
    no offset means UTC) or a duration ago ("90s", "15m", "2h", "7d", "1w")."""
    import datetime as dt

    t = text.strip()
    now = time.time_ns() if now_ns is None else now_ns
    if t and t[:-1].isdigit() and t[-1] in _UNITS:
        return now - int(t[:-1]) * _UNITS[t[-1]] * 1_000_000_000
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


# ---- evidence bundles --------------------------------------------------------------------------
BUNDLE_FORMAT = "ebpfguard-evidence/1"
BUNDLE_README = """ebpfguard evidence bundle

forensics/   the forensic log (rotated files, records.jsonl, head.json), hash-chained and Ed25519-signed
policies/    the exact manifest bytes each record names by policy_sha256
pubkey.pem   the signing host's public key (key_id {key_id})
MANIFEST.json the sha256 of every file in the bundle

Verify it on any machine with ebpfguard installed; pin the host's key as your fleet knows it:
    ebpfguard forensics verify --pubkey HOST.pem {name}
Explain a record after extracting it:
    tar xzf {name} && ebpfguard explain --state-dir {top} SEQ
"""


def export(state_dir: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict[str, Any]:
    """Write a self-contained .tar.gz (records, the policies they name, the public key, a manifest of
    sha256 sums) that verifies on another machine. The log is locked while it is copied, so the
    bundle is one consistent snapshot; writers wait for that long."""
    import io
    import socket as _socket
    import tarfile

    from .events import rfc3339_ns

    state = Path(state_dir)
    fdir = state / "forensics"
    public = host_public_key(state)
    created = time.time_ns()
    top = f"ebpfguard-evidence-{_socket.gethostname()}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    files: dict[str, bytes] = {}
    lock_fd = -1
    if (fdir / CURRENT).exists():
        lock_fd = os.open(fdir / CURRENT, os.O_RDONLY | os.O_CLOEXEC)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
    try:
        for path in [*log_files(fdir), fdir / "head.json"]:
            if path.exists():
                files[f"forensics/{path.name}"] = path.read_bytes()
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)
    if not files:
        raise ForensicsError(f"no forensic log in {fdir}")
    shas: set[str] = set()
    records, first, last = 0, None, None
    for name, data in files.items():
        if not name.endswith(".jsonl"):
            continue
        for line in data.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("seq"), int):
                records += 1
                first = rec["seq"] if first is None else first
                last = rec["seq"]
                if isinstance(rec.get("policy_sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", rec["policy_sha256"]):
                    shas.add(rec["policy_sha256"])
    missing = []
    for sha in sorted(shas):
        try:
            files[f"policies/{sha}"] = (state / "policies" / sha).read_bytes()
        except OSError:
            missing.append(sha)
    kid = key_id(public)
    files["pubkey.pem"] = public.public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    name = Path(out).name
    files["README"] = BUNDLE_README.format(key_id=kid, name=name, top=top).encode()
    manifest = {"format": BUNDLE_FORMAT, "host": _socket.gethostname(), "created": rfc3339_ns(created),
                "key_id": kid, "records": records, "first_seq": first, "last_seq": last,
                "policies_missing": missing,
                "files": {n: hashlib.sha256(d).hexdigest() for n, d in sorted(files.items())}}
    files["MANIFEST.json"] = json.dumps(manifest, indent=2).encode()
    out_path = Path(out)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            for n, data in files.items():
                info = tarfile.TarInfo(f"{top}/{n}")
                info.size, info.mode, info.mtime = len(data), 0o600, created // 1_000_000_000
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    manifest["path"] = str(out_path)
    manifest["top"] = top
    return manifest


MAX_BUNDLE_MEMBER = 1 << 30


def unpack_bundle(bundle: str | os.PathLike[str], into: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """Unpack an evidence bundle safely (regular files under one top folder, no links, no '..'),
    check every file against MANIFEST.json; returns (the unpacked state folder, the manifest)."""
    import tarfile

    try:
        tar = tarfile.open(bundle, mode="r:*")
    except (OSError, tarfile.TarError) as err:
        raise ForensicsError(f"{bundle}: not an evidence bundle ({err})") from err
    root = Path(into)
    contents: dict[str, bytes] = {}
    top = None
    with tar:
        for m in tar:
            parts = m.name.split("/")
            if m.isdir():
                continue
            if not m.isfile() or m.name.startswith("/") or ".." in parts or len(parts) < 2 or \
                    m.size > MAX_BUNDLE_MEMBER:
                raise ForensicsError(f"{bundle}: refusing member {m.name!r} (not a plain file inside the bundle)")
            if top not in (None, parts[0]):
                raise ForensicsError(f"{bundle}: members under more than one top folder")
            top = parts[0]
            fh = tar.extractfile(m)
            assert fh is not None
            contents["/".join(parts[1:])] = fh.read()
    try:
        manifest = json.loads(contents.pop("MANIFEST.json"))
        if manifest.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}")
        sums: dict[str, str] = manifest["files"]
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise ForensicsError(f"{bundle}: MANIFEST.json missing or not a {BUNDLE_FORMAT} manifest ({err})") from err
    for n in sorted(set(sums) - set(contents)):
        if n.startswith("forensics/"):  # a missing log file is verify()'s to name (deleted records)
            continue
        raise ForensicsError(f"{bundle}: {n} is listed in MANIFEST.json but missing")
    for n, data in contents.items():
        if n.startswith("policies/") and hashlib.sha256(data).hexdigest() != n.split("/", 1)[1]:
            raise ForensicsError(f"{bundle}: {n}: modified (its bytes no longer hash to its name)")
        dest = root / n
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        dest.write_bytes(data)
    return root, manifest


def bundle_public_key(state: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key((state / "pubkey.pem").read_bytes())
    except (OSError, ValueError) as err:
        raise ForensicsError(f"the bundle has no usable pubkey.pem ({err}): pass --pubkey") from err
    if not isinstance(key, Ed25519PublicKey):
        raise ForensicsError("the bundle's pubkey.pem is not an Ed25519 key")
    return key

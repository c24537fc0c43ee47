"""The forensic log: one JSON object per line under STATE/forensics/records.jsonl, hash-chained and
signed with the host's Ed25519 key.

Writers (the agent, standalone runs) take an exclusive flock per record, so concurrent writers keep
one gapless seq and one chain. A record is fsync'd before append() returns.

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
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass
class BadLine:
    lineno: int
    reason: str


CHECKPOINT_EVERY = 100      # records
CHECKPOINT_SECONDS = 10.0   # at most this long between checkpoints while records arrive


class ForensicLog:
    """Appends chained, signed records. Every CHECKPOINT_EVERY records, every CHECKPOINT_SECONDS (the
    agent calls maybe_checkpoint()) and at clean shutdown it writes a checkpoint: a chained record of
    kind "checkpoint", mirrored in a signed head.json beside the log, so that cutting records off the
    end of the log up to the last checkpoint is detected."""

    def __init__(self, state_dir: str | os.PathLike[str]):
        self.dir = Path(state_dir) / "forensics"
        self.path = self.dir / "records.jsonl"
        self.head = self.dir / "head.json"
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self.state_dir = state_dir
        self._size = -1
        self._last_seq = 0
        self._last_digest = GENESIS
        self._key: Ed25519PrivateKey | None = None
        self._key_id = ""
        self.written = 0
        self.failed = 0

    def _signer(self) -> Ed25519PrivateKey:
        if self._key is None:
            self._key = load_or_create_key(self.state_dir)
            self._key_id = key_id(self._key.public_key())
        return self._key

    def _open(self) -> int:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise ForensicsError(f"failed to open {self.path}: {err.strerror}") from err

    def _tail(self, fd: int, size: int) -> dict[str, Any] | None:
        """The last well-formed record: read backwards until one line parses."""
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

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        rec = self._append(record)
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_EVERY:
            self.checkpoint()
        return rec

    def maybe_checkpoint(self) -> None:
        if self._since_checkpoint and time.monotonic() - self._last_checkpoint >= CHECKPOINT_SECONDS:
            self.checkpoint()

    def checkpoint(self) -> dict[str, Any]:
        """A signed statement of how far the log goes: a chained record, and head.json."""
        rec = self._append({"kind": "checkpoint", "detail": {"records": self._last_seq}}, head=True)
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

    def _append(self, record: dict[str, Any], head: bool = False) -> dict[str, Any]:
        key = self._signer()
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size != self._size:  # another writer appended: continue its seq and chain
                last = self._tail(fd, size)
                self._last_seq = int(last["seq"]) if last else 0
                self._last_digest = digest(last) if last else GENESIS
            rec = {k: record.get(k) for k in FIELDS}
            rec.update({k: v for k, v in record.items() if k not in rec})
            seq = self._last_seq + 1
            rec["seq"] = seq
            rec["prev_sha256"] = self._last_digest
            rec["key_id"] = self._key_id
            rec["signature"] = None
            rec["signature"] = base64.b64encode(key.sign(canonical(rec))).decode()
            line = (json.dumps(rec, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
            os.write(fd, line)
            os.fsync(fd)
            self._last_seq = seq
            self._last_digest = digest(rec)
            self._size = size + len(line)
            self.written += 1
            if head:
                self._write_head(rec)
            return rec
        except OSError as err:
            self.failed += 1
            raise ForensicsError(f"failed to write a record to {self.path}: {err.strerror}") from err
        finally:
            os.close(fd)


def _lines(state_dir: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    """(line number, record or BadLine) for every non-empty line of the log."""
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
                yield lineno, BadLine(lineno, f"not JSON: {err}")
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("seq"), int):
                yield lineno, BadLine(lineno, "not a forensic record (no integer seq)")
                continue
            yield lineno, rec


def read(state_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any] | BadLine]:
    """Every record in order; a line that is not a record is reported as BadLine, never skipped."""
    for _, rec in _lines(state_dir):
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

    def __str__(self) -> str:
        if self.ok:
            return f"ok: {self.records} records, chain and signatures intact"
        return f"records.jsonl:{self.lineno}: seq {self.seq}: {self.reason}"


def verify(state_dir: str | os.PathLike[str], pubkeys: list[Ed25519PublicKey] | None = None) -> Verdict:
    """Check the whole log: gapless seq, the hash chain, and every signature against the trusted keys
    (by default the host's own). Returns the first bad record and why."""
    if not (Path(state_dir) / "forensics" / "records.jsonl").exists():
        return Verdict(True, 0)
    trusted = {key_id(k): k for k in (pubkeys or [host_public_key(state_dir)])}
    prev: dict[str, Any] | None = None
    prev_line = 0
    pending_sig: tuple[int, int] | None = None  # (lineno, seq) whose signature failed, content unknown
    n = 0
    for lineno, rec in _lines(state_dir):
        if isinstance(rec, BadLine):
            return Verdict(False, n, lineno, None, f"modified: {rec.reason}")
        seq = rec["seq"]
        want = prev["seq"] + 1 if prev else 1
        if prev is not None and seq <= prev["seq"]:
            reason = "inserted: repeats seq" if seq == prev["seq"] else f"reordered: seq {seq} after {prev['seq']}"
            return Verdict(False, n, lineno, seq, reason)
        if seq > want:
            return Verdict(False, n, lineno, seq, f"deleted: records {want}..{seq - 1} are missing")
        if rec.get("prev_sha256") != (digest(prev) if prev else GENESIS):
            if pending_sig:  # the previous record's content changed, not just its signature
                return Verdict(False, n, pending_sig[0], pending_sig[1], "modified: content does not match "
                               "its signature or its successor's prev_sha256")
            if prev is not None:
                return Verdict(False, n, prev_line, prev["seq"], "modified: its successor's prev_sha256 "
                               "does not match")
            return Verdict(False, n, lineno, seq, "inserted: the first record does not start the chain")
        if pending_sig:
            return Verdict(False, n, pending_sig[0], pending_sig[1], "bad signature")
        kid = rec.get("key_id")
        if kid not in trusted:
            return Verdict(False, n, lineno, seq, f"unknown key {kid!r}: signed by a key this verifier "
                           "does not trust")
        try:
            trusted[kid].verify(base64.b64decode(rec.get("signature") or "", validate=True), canonical(rec))
        except (InvalidSignature, ValueError):
            pending_sig = (lineno, seq)  # decided by the next record: modified, or bad signature
        prev, prev_line = rec, lineno
        n += 1
    if pending_sig:
        return Verdict(False, n, pending_sig[0], pending_sig[1], "bad signature (or modified: it is the last record)")
    head_path = Path(state_dir) / "forensics" / "head.json"
    if head_path.exists():
        try:
            head = json.loads(head_path.read_text())
            hk = trusted.get(head.get("key_id"))
            if hk is None:
                return Verdict(False, n, None, head.get("seq"), "head.json: unknown key")
            hk.verify(base64.b64decode(head.get("signature") or "", validate=True), canonical(head))
        except (ValueError, InvalidSignature, AttributeError):
            return Verdict(False, n, None, None, "head.json: bad signature or not a checkpoint")
        last = prev["seq"] if prev else 0
        if head["seq"] > last:
            return Verdict(False, n, None, last + 1, f"tail truncated after the last checkpoint: the log ends at "
                           f"seq {last}, the checkpoint in head.json is at seq {head['seq']}")
        if head["seq"] == last and prev is not None and digest(prev) != head["digest"]:
            return Verdict(False, n, prev_line, last, "modified: does not match the checkpoint in head.json")
    return Verdict(True, n)

"""Reading the log back, and checking it: seq, chain, signatures, head.json."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ebpfguard.common.statedir import StateDir
from ebpfguard.forensics.chain import GENESIS, canonical, digest
from ebpfguard.forensics.keys import host_public_key, key_id
from ebpfguard.forensics.log import CURRENT, BadLine, log_files


def _lines(state_dir: str | os.PathLike[str] | StateDir) -> Iterator[tuple[str, int, dict[str, Any] | BadLine]]:
    """(file name, line number, record or BadLine) for every non-empty line of the log, oldest first."""
    for path in log_files(StateDir.of(state_dir).forensics):
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


def read(state_dir: str | os.PathLike[str] | StateDir) -> Iterator[dict[str, Any] | BadLine]:
    """Every record in order; a line that is not a record is reported as BadLine, never skipped."""
    for _, _, rec in _lines(state_dir):
        yield rec

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


def verify(state_dir: str | os.PathLike[str] | StateDir, pubkeys: list[Ed25519PublicKey] | None = None) -> Verdict:
    """Check the whole log, across rotated files: gapless seq, the hash chain, every signature against
    the trusted keys (by default the host's own), that the log ends with a signed record (a group's
    records are bound to its signed last one by the chain), then the signed head.json. Returns the
    first bad record and why."""
    state = StateDir.of(state_dir)
    fdir = state.forensics
    head_path = state.head
    files = log_files(fdir)
    if not files and not head_path.exists():
        return Verdict(True, 0)
    trusted = {key_id(k): k for k in (pubkeys or [host_public_key(state_dir)])}
    prev: dict[str, Any] | None = None
    prev_at: tuple[str, int] = (CURRENT, 0)
    pending_sig: tuple[str, int, int] | None = None  # (file, lineno, seq) whose signature failed
    unsigned: tuple[str, int, int] | None = None  # the first record of a group not yet closed by a signature

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
        if rec.get("signature") is None:
            # inside a group: the chain binds it to the group's signed last record
            unsigned = unsigned or (fname, lineno, seq)
        else:
            unsigned = None
            try:
                trusted[kid].verify(base64.b64decode(rec["signature"] or "", validate=True), canonical(rec))
            except (InvalidSignature, ValueError, TypeError):
                pending_sig = (fname, lineno, seq)  # decided by the next record: modified, or bad signature
        prev, prev_at = rec, at
        n += 1
    if pending_sig:
        return bad(n, pending_sig[:2], pending_sig[2], "bad signature (or modified: it is the last record)")
    if unsigned:
        last = prev["seq"] if prev else unsigned[2]
        return bad(n, unsigned[:2], unsigned[2], f"unsigned: records {unsigned[2]}..{last} end the log with no "
                   "signed record after them (appended, or their group commit never finished)")
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

"""Checkpoints kept off the host: a local root holds the signing key, so it can cut the log's tail and
sign a new head.json that `verify` accepts. The checkpoints the agent forwarded (journald or syslog, as
they were written) are anchors it cannot take back: each must still be in the log, byte for byte: the
host's state folder, or the evidence bundle it exported (check.py unpacks it first).

An anchors file is what a central host collected, one entry per line, in any of these forms:
  - a record as JSON (``{"seq": ...}``);
  - a syslog line, ``<PRI>ebpfguard[PID]: {...}``;
  - a journal entry from ``journalctl -o json`` (the record is its EBPFGUARD_RECORD field).
Lines that carry no ebpfguard checkpoint (other programs' logs, other kinds) are skipped."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ebpfguard.common.statedir import StateDir
from ebpfguard.errors import ForensicsError
from ebpfguard.forensics.chain import canonical, digest
from ebpfguard.forensics.log import BadLine
from ebpfguard.forensics.verify import _lines


def _record_in(line: str) -> dict[str, Any] | None:
    line = line.strip()
    i = line.find("{")
    if i < 0:
        return None
    try:
        obj = json.loads(line[i:])
    except ValueError:
        return None
    if isinstance(obj, dict) and isinstance(obj.get("EBPFGUARD_RECORD"), str):  # journalctl -o json
        try:
            obj = json.loads(obj["EBPFGUARD_RECORD"])
        except ValueError:
            return None
    return obj if isinstance(obj, dict) else None


def read_anchors(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The checkpoint records in an anchors file, by seq (the last copy of a seq wins)."""
    try:
        text = open(path, encoding="utf-8", errors="replace").read()
    except OSError as err:
        raise ForensicsError(f"--anchors {path}: {err.strerror}") from err
    found: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        rec = _record_in(line)
        if rec and rec.get("kind") == "checkpoint" and isinstance(rec.get("seq"), int):
            found[rec["seq"]] = rec
    if not found:
        raise ForensicsError(f"--anchors {path}: no ebpfguard checkpoint in it (JSON records, syslog lines or "
                             "`journalctl -o json` entries)")
    return [found[s] for s in sorted(found)]


@dataclass
class AnchorCheck:
    anchors: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        if self.ok:
            return f"anchors: {self.anchors} forwarded checkpoints, each in the log as it was forwarded"
        return "anchors: " + "; ".join(self.problems)


def check_anchors(state_dir: str | os.PathLike[str] | StateDir, anchors: list[dict[str, Any]],
                  trusted: dict[str, Ed25519PublicKey]) -> AnchorCheck:
    """Each anchor signed by a trusted key, and present with the same digest in the log of ``state_dir`` (a
    state folder, or a bundle unpacked into one)."""
    out = AnchorCheck(len(anchors))
    want: dict[int, dict[str, Any] | None] = {a["seq"]: a for a in anchors}
    for a in anchors:
        kid = a.get("key_id")
        if a.get("signature") is None:
            continue  # inside a group commit: bound by the chain to a signed record after it
        if kid not in trusted:
            out.problems.append(f"checkpoint seq {a['seq']} is signed by key {kid!r}, which this verifier does "
                                "not trust")
            continue
        try:
            trusted[kid].verify(base64.b64decode(a["signature"], validate=True), canonical(a))
        except (InvalidSignature, ValueError, TypeError):
            out.problems.append(f"checkpoint seq {a['seq']} in the anchors file has a bad signature")
    last = 0
    for _fname, _lineno, rec in _lines(state_dir):
        if isinstance(rec, BadLine):
            continue  # verify() names it
        last = rec["seq"]
        sent = want.pop(last, None)
        if sent is not None and digest(rec) != digest(sent):
            out.problems.append(f"rewritten: record seq {last} is not the checkpoint forwarded at "
                                f"{sent.get('time')}")
    for seq in sorted(want):
        when = (want[seq] or {}).get("time")
        out.problems.append(f"tail truncated: the log ends at seq {last}, but checkpoint seq {seq} was forwarded "
                            f"at {when}")
        break
    return out

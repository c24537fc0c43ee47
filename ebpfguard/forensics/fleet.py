"""The fleet report: records collected from many hosts, read in one pass, summed per extension version, and each host's
chain checked as it streams by.

What it reads, one entry per line (files, folders, gzip, stdin):
  - the central collector's JSON objects and `journalctl -o json` exports: the record is the string in
    ``EBPFGUARD_RECORD``, the host is ``_HOSTNAME`` (entries of other programs are skipped);
  - plain records, one JSON object per line as the log holds them, or syslog lines (``HOST ebpfguard[PID]: {...}``):
    the host is the syslog line's, else the file's name without its extensions (or the one the caller gives).

Memory does not grow with records: per extension version, a few counters keyed by technique, response and ladder step,
and the set of hosts; per host, O(1) chain state (the last record and the highest one) and its checkpoints as
(seq, digest) pairs, 40 bytes each, which the agent writes one per 100 records or 10 s.

Integrity, per host, over its records in the order received:
  - chain: a record that follows seq N-1 carries ``prev_sha256 = digest(N-1)``; otherwise "chain broken at seq N";
  - gaps: seqs skipped going forward (a collector may lose some): counted, not a failure;
  - a seq that goes back: the records received again are compared wherever something is known of the first copy
    (a checkpoint's digest, the highest record, the record after it). A different checkpoint is "rewritten", a
    different record where the log had reached before "rewound"; the same content is a duplicate delivery, counted;
    a stretch that ends below the highest seq with nothing found different is a note;
  - with public keys, each checkpoint's signature ("bad signature").
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import sys
import textwrap
import time
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import IO, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ebpfguard.common.clock import rfc3339_ns
from ebpfguard.forensics.chain import GENESIS, canonical, digest
from ebpfguard.forensics.keys import key_id
from ebpfguard.forensics.records import VIOLATION_KINDS
from ebpfguard.forensics.technique import classify
from ebpfguard.forensics.timefilter import within

VIOLATIONS = frozenset(str(k) for k in VIOLATION_KINDS)
LADDER = {"cgroup.freeze": "freeze", "cgroup.kill": "kill", "quarantine": "quarantine", "freeze": "freeze",
          "kill": "kill"}
LADDER_EVENTS = ("freeze", "kill", "quarantine")  # lifecycle records of a step by hand or by the agent
PROBLEMS_KEPT = 5  # per host; the rest are counted
PROGRESS_EVERY = 1.0  # seconds


# ---- input ----------------------------------------------------------------------------------------------------------
@dataclass
class Source:
    """One input: a file (plain or gzip) or "-" for stdin; ``host`` names the host of plain records in it."""

    path: str
    host: str
    records: int = 0
    skipped: int = 0  # journal entries of other programs
    bad: int = 0
    first_bad: int | None = None
    why: str = ""
    error: str = ""  # the file could not be read (to its end)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "host": self.host, "records": self.records, "skipped": self.skipped,
                "unparseable": self.bad, "first_unparseable_line": self.first_bad, "why": self.why or None,
                "error": self.error or None}

    def note(self) -> str:
        """What went wrong in this file, or ''."""
        out = []
        if self.bad:
            out.append(f"{self.bad} unparseable line{'s' if self.bad > 1 else ''}, the first at line {self.first_bad} "
                       f"({self.why})")
        if self.error:
            out.append(self.error)
        return "; ".join(out)


# a rotated file's number: logrotate's HOST.jsonl.2 (older the higher), dateext's HOST.jsonl-20261203 and the
# log's own records-000000001234.jsonl (older the lower)
_ROTATED = re.compile(r"^(.*?)(?:\.(\d+)|-(\d{6,}))((?:\.[A-Za-z]\w*)?)$")


def _order(name: str) -> tuple[str, int, int]:
    """Sort key: the files of one stream oldest first (the current file, with no number, last)."""
    base = name[:-3] if name.endswith(".gz") else name
    m = _ROTATED.match(base)
    if m:
        return m.group(1) + m.group(4), 0, -int(m.group(2)) if m.group(2) else int(m.group(3))
    return base, 1, 0


def host_of(path: str) -> str:
    """A plain record file's host: its name without .gz, a rotation number and its extension."""
    base = os.path.basename(path)
    base = base[:-3] if base.endswith(".gz") else base
    m = _ROTATED.match(base)
    if m and m.group(2):
        base = m.group(1) + m.group(4)
    return base.split(".", 1)[0] or base


def sources(paths: Iterable[str], host: str | None = None) -> list[Source]:
    """The files to read, folders walked recursively (hidden files left out), each folder's files oldest first."""
    out: list[Source] = []
    for p in paths:
        if p == "-":
            out.append(Source("-", host or "stdin"))
        elif os.path.isdir(p):
            for top, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in sorted((f for f in files if not f.startswith(".")), key=_order):
                    full = os.path.join(top, f)
                    out.append(Source(full, host or host_of(full)))
        else:
            out.append(Source(p, host or host_of(p)))
    return out


@contextmanager
def _open(src: Source) -> Iterator[IO[str]]:
    """The source's lines, gunzipped if it starts as gzip does (whatever its name). Bytes that are not UTF-8 become
    U+FFFD: a record with them no longer matches its digest, and its chain says so."""
    stdin = src.path == "-"
    raw: Any = sys.stdin.buffer if stdin else open(src.path, "rb")  # noqa: SIM115
    buffered: Any = raw if hasattr(raw, "peek") else io.BufferedReader(raw)
    text = None
    try:
        if buffered.peek(2)[:2] == b"\x1f\x8b":
            text = io.TextIOWrapper(gzip.GzipFile(fileobj=buffered, mode="rb"), encoding="utf-8", errors="replace")
        else:
            text = io.TextIOWrapper(buffered, encoding="utf-8", errors="replace")
        yield text
    finally:
        if stdin:
            if text is not None and buffered is raw:
                text.detach()  # stdin stays open
        elif text is not None:
            text.close()
        else:
            raw.close()


_SYSLOG = re.compile(r"(?:^|\s)(\S+) ebpfguard(?:\[\d+\])?: (\{.*)$")
_JSON = json.JSONDecoder()


class _Bad(Exception):
    pass


def _object(text: str) -> Any:
    """The JSON value that is all of ``text`` (stripped)."""
    obj, end = _JSON.raw_decode(text)
    if end != len(text):
        raise ValueError("extra data")
    return obj


def parse_line(line: str, host: str) -> tuple[str, dict[str, Any], str] | None:
    """(host, record, the record's text) from one stripped line; None for an entry of another program; _Bad for a
    line that is neither."""
    if line[:1] != "{":
        m = _SYSLOG.search(line)
        if not m:
            raise _Bad("neither JSON nor an ebpfguard syslog line")
        host, line = m.group(1), m.group(2)
    try:
        obj = _object(line)
    except ValueError:
        raise _Bad("not JSON") from None
    if not isinstance(obj, dict):
        raise _Bad("not a JSON object")
    text = line
    if "EBPFGUARD_RECORD" in obj:
        raw = obj["EBPFGUARD_RECORD"]
        if raw is None:
            raise _Bad("EBPFGUARD_RECORD is null: journalctl leaves out fields over 4096 bytes unless given --all")
        if isinstance(raw, list):  # journalctl's form of a field that is not text
            try:
                raw = bytes(raw).decode("utf-8", errors="replace")
            except (TypeError, ValueError):
                raise _Bad("EBPFGUARD_RECORD is neither text nor bytes") from None
        h = obj.get("_HOSTNAME")
        host = h if isinstance(h, str) and h else host
        if not isinstance(raw, str):
            raise _Bad("EBPFGUARD_RECORD is not a string")
        try:
            text, obj = raw, _object(raw.strip())
        except ValueError:
            raise _Bad("EBPFGUARD_RECORD is not JSON") from None
        if not isinstance(obj, dict):
            raise _Bad("EBPFGUARD_RECORD is not a JSON object")
    elif "seq" not in obj:
        if "MESSAGE" in obj or "__CURSOR" in obj or "_HOSTNAME" in obj:
            return None  # a journal entry of another program
        raise _Bad("a JSON object that is no ebpfguard record")
    seq = obj.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(obj.get("kind"), str):
        raise _Bad("a record with no integer seq or no kind")
    return host, obj, text


def _candidate(text: str) -> str | None:
    """The digest of a record from its text, if the text is the log's own line (canonical JSON, then its signature):
    hashing it is much cheaper than encoding the record again. Only ever compared with a prev_sha256: a match proves
    these are the bytes the writer hashed; a mismatch is decided by digest() (the text may be another encoding)."""
    if not text.startswith('{"actions":'):
        return None
    i = text.rfind(',"signature":')
    return hashlib.sha256(text[:i].encode() + b"}").hexdigest() if i > 0 else None


# chain.canonical() without building an encoder per call (a third of the cost of a record forwarded in another
# order); a digest it gets wrong only costs a call of digest() itself, which decides
_ENCODE = c_make_encoder(None, None, encode_basestring_ascii, None, ":", ",", True, False, True) \
    if c_make_encoder is not None else None


def _digest(rec: dict[str, Any]) -> str:
    if _ENCODE is None:
        return digest(rec)
    sig = rec.pop("signature", _NONE)
    try:
        return hashlib.sha256("".join(_ENCODE(rec, 0)).encode()).hexdigest()
    except (TypeError, ValueError):
        return digest(rec)
    finally:
        if sig is not _NONE:
            rec["signature"] = sig


_NONE = object()


def _links(rec: dict[str, Any], prev: dict[str, Any], cand: str | None) -> bool:
    """Is ``rec`` chained to ``prev`` (whose text gave ``cand``)?"""
    want = rec.get("prev_sha256")
    return want == cand or want == _digest(prev) or want == digest(prev)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return _digest(a) == _digest(b) or digest(a) == digest(b)


# ---- one host's chain -----------------------------------------------------------------------------------------------
@dataclass
class HostChain:
    """What one host's records say of its log's integrity, in O(1) memory besides its checkpoints."""

    name: str
    key: Ed25519PublicKey | None = None
    records: int = 0
    first_seq: int | None = None
    top: int = 0                     # the highest seq received
    missing: int = 0                 # seqs skipped going forward
    gaps: int = 0
    again: int = 0                   # records received at or below a seq received before
    checkpoints: int = 0
    signatures: int = 0              # checkpoint signatures verified good
    problems: list[str] = field(default_factory=list)
    failures: int = 0
    notes: list[str] = field(default_factory=list)  # said, not failures
    first_time: str = ""
    last_time: str = ""
    _prev: dict[str, Any] | None = field(default=None, repr=False)
    _prev_cand: str | None = field(default=None, repr=False)
    _top_rec: dict[str, Any] | None = field(default=None, repr=False)
    # a stretch received again: (went back to, from, failures then), until it reaches or passes the highest seq
    _back: tuple[int, int, int] | None = field(default=None, repr=False)
    _ck_seqs: array[int] = field(default_factory=lambda: array("q"), repr=False)
    _ck_digests: bytearray = field(default_factory=bytearray, repr=False)

    @property
    def ok(self) -> bool:
        return self.failures == 0

    def fail(self, why: str) -> None:
        self.failures += 1
        if len(self.problems) < PROBLEMS_KEPT:
            self.problems.append(why)

    def _checkpoint(self, seq: int) -> bytes | None:
        i = bisect_left(self._ck_seqs, seq)
        if i < len(self._ck_seqs) and self._ck_seqs[i] == seq:
            return bytes(self._ck_digests[32 * i:32 * i + 32])
        return None

    def _keep_checkpoint(self, seq: int, d: bytes) -> None:
        i = bisect_left(self._ck_seqs, seq)
        self._ck_seqs.insert(i, seq)
        self._ck_digests[32 * i:32 * i] = d

    def add(self, rec: dict[str, Any], text: str) -> None:
        seq: int = rec["seq"]
        self.records += 1
        t = rec.get("time")
        if isinstance(t, str):
            if not self.first_time or t < self.first_time:
                self.first_time = t
            if t > self.last_time:
                self.last_time = t
        cand = _candidate(text)
        prev = self._prev
        if prev is None:
            self.first_seq = seq
            if seq == 1 and rec.get("prev_sha256") != GENESIS:
                self.fail("chain broken at seq 1: the first record does not start the chain")
        elif seq == prev["seq"] + 1:
            if not _links(rec, prev, self._prev_cand):
                self.fail(f"chain broken at seq {seq}: its prev_sha256 is not the digest of seq {seq - 1}")
        elif seq == self.top + 1 and self._top_rec is not None:  # on from the highest, past a stretch received again
            self._end_back()
            if not _links(rec, self._top_rec, None):
                self.fail(f"chain broken at seq {seq}: its prev_sha256 is not the digest of seq {seq - 1}, the "
                          "highest received before")
        elif seq > self.top:
            self._end_back()
            self.missing += seq - self.top - 1
            self.gaps += 1
        else:  # went back: a restarted or cut log, a rewritten one, or the same records delivered twice
            self._end_back()
            self._back = (seq, self.top, self.failures)
            before = self._checkpoint(seq - 1)
            if before is not None and rec.get("prev_sha256") != before.hex():
                self.fail(f"rewound: the log went back from seq {self.top} to seq {seq}, which does not follow "
                          f"checkpoint seq {seq - 1} as received before")
        if seq <= self.top:
            self.again += 1
            known = self._checkpoint(seq)
            if known is not None and known.hex() not in (_digest(rec), digest(rec)):
                self.fail(f"rewritten: checkpoint seq {seq} came again with a different digest")
            elif known is None and seq == self.top and self._top_rec is not None and not _same(rec, self._top_rec):
                frm = self._back[0] if self._back else seq
                self.fail(f"rewound: the log went back from seq {self.top} to seq {frm} and came to seq {seq} "
                          "again with a different record")
            if seq == self.top:
                self._back = None  # compared where the log had reached: decided
        else:
            self.top, self._top_rec = seq, rec
        if rec.get("kind") == "checkpoint":
            self.checkpoints += 1
            self._check_signature(rec)
            if self._checkpoint(seq) is None:
                self._keep_checkpoint(seq, bytes.fromhex(digest(rec)))
        self._prev, self._prev_cand = rec, cand

    def _check_signature(self, rec: dict[str, Any]) -> None:
        sig = rec.get("signature")
        if self.key is None or sig is None:
            return
        want = key_id(self.key)
        if rec.get("key_id") != want:
            self.fail(f"bad signature: checkpoint seq {rec['seq']} names key {rec.get('key_id')!r}, not this host's "
                      f"key {want}")
            return
        try:
            self.key.verify(base64.b64decode(sig, validate=True), canonical(rec))
            self.signatures += 1
        except (InvalidSignature, ValueError, TypeError):
            self.fail(f"bad signature: checkpoint seq {rec['seq']}")

    def _end_back(self) -> None:
        """A stretch received again ended below the seq the log had reached, with nothing found different: the same
        records delivered twice, or a log cut back whose new records were not compared (no checkpoint among them)."""
        b = self._back
        if b is not None and b[2] == self.failures and self._prev is not None and self._prev["seq"] < self.top:
            if len(self.notes) < PROBLEMS_KEPT:
                self.notes.append(f"seqs {b[0]}..{self._prev['seq']} received again (the log had reached seq {b[1]}); "
                                  "nothing in them found different")
        self._back = None

    def finish(self) -> None:
        self._end_back()

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.name, "records": self.records, "first_seq": self.first_seq, "last_seq": self.top,
                "missing": self.missing, "gaps": self.gaps, "received_again": self.again,
                "checkpoints": self.checkpoints, "signatures_verified": self.signatures if self.key else None,
                "first_time": self.first_time or None, "last_time": self.last_time or None, "ok": self.ok,
                "failures": self.failures, "problems": self.problems, "notes": self.notes}


_TECHNIQUES: dict[tuple[str, str, str], tuple[str, str | None, str | None]] = {}


def _technique(kind: str, detail: Any, actions: list[Any]) -> tuple[str, str | None, str | None]:
    """classify(), remembered for the last few thousand shapes of record: a fleet repeats itself. classify() is given
    only what the key holds, so that a remembered answer is the one it would give."""
    key = (kind, repr(detail), repr(actions))
    got = _TECHNIQUES.get(key)
    if got is None:
        if len(_TECHNIQUES) >= 2048:
            _TECHNIQUES.clear()
        t = classify({"kind": kind, "detail": detail if isinstance(detail, dict) else {}, "actions": actions})
        got = _TECHNIQUES[key] = (t.name, t.attack, t.attack_name)
    return got


# ---- one extension version ------------------------------------------------------------------------------------------
@dataclass
class VersionTally:
    extension: str
    sha256: str | None
    records: int = 0
    incidents: int = 0
    shadow: int = 0  # what a staged version would have refused: not incidents
    hosts: set[str] = field(default_factory=set)
    affected: set[str] = field(default_factory=set)
    techniques: Counter[tuple[str, str | None, str | None]] = field(default_factory=Counter)
    responses: Counter[str] = field(default_factory=Counter)
    ladder: Counter[str] = field(default_factory=Counter)
    rollbacks_discarded: int = 0
    first_seen: str = ""
    last_seen: str = ""

    def add(self, host: str, rec: dict[str, Any]) -> None:
        self.records += 1
        self.hosts.add(host)
        t = rec.get("time")
        if isinstance(t, str):
            if not self.first_seen or t < self.first_seen:
                self.first_seen = t
            if t > self.last_seen:
                self.last_seen = t
        kind = rec["kind"]
        actions = rec.get("actions")
        if not isinstance(actions, list):
            actions = []
        if kind in VIOLATIONS:
            if rec.get("verdict") == "shadow":
                self.shadow += 1
                return
            self.incidents += 1
            self.affected.add(host)
            self.techniques[_technique(kind, rec.get("detail"), actions)] += 1
            seen = {str(a).split(":", 1)[0] for a in actions} or {"none"}
            self.responses.update(seen)
            for step in seen:
                if step in LADDER:
                    self.ladder[LADDER[step]] += 1
        elif kind == "lifecycle":
            detail = rec.get("detail") or {}
            ev = detail.get("event") if isinstance(detail, dict) else None
            if ev in LADDER_EVENTS:
                self.ladder[str(ev)] += 1
            elif ev == "escalation":
                for step in {str(a).split(":", 1)[0] for a in actions}:
                    if step in LADDER:
                        self.ladder[LADDER[step]] += 1
        elif kind == "rollback":
            detail = rec.get("detail") or {}
            if isinstance(detail, dict) and detail.get("event") == "discarded":
                self.rollbacks_discarded += 1

    def as_dict(self, names: dict[str, tuple[str, str]], all_hosts: int) -> dict[str, Any]:
        return {"extension": self.extension, "version": version_name(self.sha256, names), "sha256": self.sha256,
                "hosts": sorted(self.hosts), "hosts_affected": sorted(self.affected), "fleet_hosts": all_hosts,
                "records": self.records, "incidents": self.incidents, "shadow_refusals": self.shadow,
                "by_technique": [{"technique": n, "attack_id": a, "attack_name": an, "incidents": c}
                                 for (n, a, an), c in sorted(self.techniques.items(), key=lambda x: (-x[1], x[0][0]))],
                "by_response": dict(sorted(self.responses.items(), key=lambda x: (-x[1], x[0]))),
                "ladder": dict(sorted(self.ladder.items())), "rollbacks_discarded": self.rollbacks_discarded,
                "first_seen": self.first_seen or None, "last_seen": self.last_seen or None}


def version_name(sha: str | None, names: dict[str, tuple[str, str]]) -> str:
    """The version a policy record gave this sha256, else the sha256's first 12 hex digits."""
    if sha is None:
        return "(no policy)"
    got = names.get(sha)
    return got[1] if got else sha[:12]


# ---- the report -----------------------------------------------------------------------------------------------------
@dataclass
class FleetReport:
    """The report as records stream in: ``add()`` one, or ``read()`` sources. ``keys`` are hosts' public keys by host
    name; ``since_ns``, ``until_ns`` and ``extension`` narrow what is counted per version, never what is checked."""

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    since_ns: int | None = None
    until_ns: int | None = None
    extension: str | None = None
    records: int = 0
    files: list[Source] = field(default_factory=list)
    hosts: dict[str, HostChain] = field(default_factory=dict)
    versions: dict[tuple[str, str | None], VersionTally] = field(default_factory=dict)
    names: dict[str, tuple[str, str]] = field(default_factory=dict)  # sha256 -> (name, version) of policy records
    seconds: float = 0.0
    _bounds: tuple[str | None, str | None] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._bounds = (None if self.since_ns is None else rfc3339_ns(self.since_ns),
                        None if self.until_ns is None else rfc3339_ns(self.until_ns))

    def add(self, host: str, rec: dict[str, Any], text: str) -> None:
        self.records += 1
        h = self.hosts.get(host)
        if h is None:
            h = self.hosts[host] = HostChain(host, self.keys.get(host))
        h.add(rec, text)
        kind = rec["kind"]
        sha = rec.get("policy_sha256")
        if kind == "policy" and isinstance(sha, str):
            d = rec.get("detail") or {}
            if isinstance(d, dict) and d.get("version") is not None and (
                    d.get("event") == "loaded" or sha not in self.names):
                self.names[sha] = (str(d.get("name") or rec.get("extension")), str(d["version"]))
        ext = rec.get("extension")
        if not isinstance(ext, str) or (self.extension is not None and ext != self.extension):
            return
        if (self.since_ns is not None or self.until_ns is not None) and not self._within(rec):
            return
        key = (ext, sha if isinstance(sha, str) else None)
        v = self.versions.get(key)
        if v is None:
            v = self.versions[key] = VersionTally(*key)
        v.add(host, rec)

    def _within(self, rec: dict[str, Any]) -> bool:
        """within(), by comparing the strings where the record's time has the writer's form (the same width, UTC): it
        orders as the times do, without parsing one per record."""
        t = rec.get("time")
        if not (isinstance(t, str) and len(t) == 30 and t[-1] == "Z" and t[19] == "."):
            return within(rec, self.since_ns, self.until_ns)
        lo, hi = self._bounds
        return (lo is None or t >= lo) and (hi is None or t < hi)

    def read(self, srcs: list[Source], progress: Callable[[int, int], None] | None = None,
             clock: Callable[[], float] = time.monotonic) -> FleetReport:
        """Stream every source into the report; ``progress(files, records)`` about once a second."""
        start = clock()
        tick = [start + PROGRESS_EVERY]

        def every_4096(files: int) -> None:
            if progress is not None and clock() >= tick[0]:
                progress(files, self.records)
                tick[0] = clock() + PROGRESS_EVERY

        for i, src in enumerate(srcs):
            self.files.append(src)
            self._read(src, lambda: every_4096(i))  # noqa: B023 (called before the loop moves on)
        for h in self.hosts.values():
            h.finish()
        self.seconds = clock() - start
        return self

    def _read(self, src: Source, tick: Callable[[], None]) -> None:
        lineno = 0
        try:
            with _open(src) as fh:
                for lineno, line in enumerate(fh, 1):  # noqa: B007 (the number after the loop says where it ended)
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        got = parse_line(line, src.host)
                    except _Bad as why:
                        src.bad += 1
                        if src.first_bad is None:
                            src.first_bad, src.why = lineno, str(why)
                        continue
                    if got is None:
                        src.skipped += 1
                        continue
                    src.records += 1
                    self.add(*got)
                    if not self.records & 4095:
                        tick()
        except (OSError, EOFError, gzip.BadGzipFile) as err:
            what = getattr(err, "strerror", None) or str(err) or type(err).__name__
            src.error = f"could not be read after line {lineno}: {what}" if lineno else f"could not be read: {what}"

    # -- what it says
    @property
    def failed(self) -> list[HostChain]:
        return [h for h in sorted(self.hosts.values(), key=lambda h: h.name) if not h.ok]

    def ordered(self) -> list[VersionTally]:
        return sorted(self.versions.values(), key=lambda v: (-len(v.affected), -v.incidents, v.extension,
                                                             version_name(v.sha256, self.names)))

    def as_dict(self) -> dict[str, Any]:
        n = len(self.hosts)
        return {"records": self.records, "hosts": n, "files": len(self.files), "seconds": round(self.seconds, 3),
                "skipped": sum(s.skipped for s in self.files), "unparseable": sum(s.bad for s in self.files),
                "integrity_failed": [h.name for h in self.failed],
                "versions": [v.as_dict(self.names, n) for v in self.ordered()],
                "host_integrity": [h.as_dict() for h in sorted(self.hosts.values(), key=lambda h: h.name)],
                "file_problems": [s.as_dict() for s in self.files if s.bad or s.error]}


def _when(t: str) -> str:
    return t[:19].replace("T", " ") if t else "-"


def _names(hosts: Iterable[str], width: int) -> str:
    out: list[str] = []
    used = 0
    hs = sorted(hosts)
    for i, h in enumerate(hs):
        if out and used + len(h) + 1 > width - 6 and i < len(hs) - 1:
            return " ".join(out) + f" (+{len(hs) - i})"
        out.append(h)
        used += len(h) + 1
    return " ".join(out)


def _s(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _wrap(head: str, text: str, indent: int | None = None, width: int = 80) -> list[str]:
    """``text`` after ``head`` in lines of ``width`` at most, the next ones indented as far as the text starts (or
    ``indent``). Words joined by a no-break space stay together."""
    lines = textwrap.wrap(text, width, initial_indent=head, subsequent_indent=" " * (len(head) if indent is None
                                                                                   else indent),
                          break_on_hyphens=False, break_long_words=False) or [head.rstrip()]
    return [line.replace("\xa0", " ") for line in lines]


def render(r: FleetReport, limit: int = 8) -> list[str]:
    """The report as text in 80 columns: failed hosts first, then extension versions by hosts affected and incidents,
    each version's breakdown, and the hosts."""
    n = len(r.hosts)
    out = [f"fleet report: {_s(r.records, 'record')} from {_s(n, 'host')} in {_s(len(r.files), 'file')}"]
    failed = r.failed
    if failed:
        out += ["", f"INTEGRITY FAILED on {len(failed)} of {_s(n, 'host')}:"]
        for h in failed:
            more = [f"(and {h.failures - len(h.problems)} more)"] if h.failures > len(h.problems) else []
            for i, p in enumerate(h.problems + more):
                out += _wrap(f"  {h.name if i == 0 else '':<{len(h.name)}}  ", p)
    notes = [(h.name, t) for h in sorted(r.hosts.values(), key=lambda h: h.name) for t in h.notes]
    notes += [(s.path, s.note()) for s in r.files if s.note()]
    if notes:
        out += ["", "notes:"]
        for who, t in notes:
            if len(who) > 30:  # a path: on a line of its own
                out += [f"  {who}:", *_wrap("    ", t)]
            else:
                out += _wrap(f"  {who}: ", t, indent=4)
    versions = r.ordered()
    out += ["", f"{'EXTENSION':<14} {'VERSION':<12} {'HOSTS':>6} {'INCIDENTS':>9}  {'FIRST SEEN':<16}  LAST SEEN"]
    if not versions:
        out.append("  (no record of an extension" + (" in the time asked for)" if r.since_ns or r.until_ns else ")"))
    for v in versions:
        out.append(f"{v.extension:<14.14} {version_name(v.sha256, r.names):<12.12} "
                   f"{f'{len(v.affected)}/{len(v.hosts)}':>6} {v.incidents:>9}  {_when(v.first_seen)[:16]:<16}  "
                   f"{_when(v.last_seen)[:16]}")
    for v in versions:
        name = version_name(v.sha256, r.names)
        sha = f" (sha256 {v.sha256[:12]})" if v.sha256 and name != v.sha256[:12] else ""
        out += ["", f"{v.extension} {name}{sha}"]
        head = f"  hosts     {len(v.affected)} affected of {len(v.hosts)}: "
        out.append(head + (_names(v.affected, 80 - len(head)) or "-"))
        out.append(f"  seen      {_when(v.first_seen)} .. {_when(v.last_seen)}")
        out.append(f"  records   {v.records}" + (f", {_s(v.shadow, 'shadow refusal')}" if v.shadow else ""))
        tech = sorted(v.techniques.items(), key=lambda x: (-x[1], x[0][0]))
        for i, ((tname, attack, _), c) in enumerate(tech[:limit]):
            out.append(f"  {'technique' if i == 0 else '':<9} {c:>7}  {tname[:46]:<46} {attack or ''}".rstrip())
        if len(tech) > limit:
            rest = sum(c for _, c in tech[limit:])
            out.append(f"  {'':<9} {rest:>7}  ({_s(len(tech) - limit, 'more technique')})")
        if v.responses:
            resp = ", ".join(f"{k}\xa0{c}" for k, c in sorted(v.responses.items(), key=lambda x: (-x[1], x[0])))
            out += _wrap("  response  ", resp)
        ladder = ", ".join(f"{k}\xa0{c}" for k, c in sorted(v.ladder.items())) or "none"
        out += _wrap("  ladder    ", f"{ladder}; rollbacks\xa0discarded\xa0{v.rollbacks_discarded}")
    out += ["", f"{'HOST':<18} {'RECORDS':>9} {'SEQS':>15} {'MISSING':>8} {'AGAIN':>6}  INTEGRITY"]
    for h in sorted(r.hosts.values(), key=lambda h: h.name):
        state = "ok" if h.ok else "FAILED"
        if h.ok and h.key is not None:
            state += f", {h.signatures} signed"
        elif h.ok and r.keys:
            state += ", no key"
        out.append(f"{h.name:<18.18} {h.records:>9} {f'{h.first_seq}..{h.top}':>15} {h.missing:>8} {h.again:>6}  "
                   f"{state}")
    return out

"""Provenance of an extension, read from the forensic log: who published it, which key signed it, every version
seen (first and last seen, policy sha256, signature status), its incidents, and whether an administrator flagged
it. Nothing is kept beside the log: policy loads, rejections, refused launches and flags are records in the same
hash chain, signed like every other record, so the history is as tamper-evident as the evidence it summarizes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ebpfguard.errors import ForensicsError
from ebpfguard.forensics import BadLine, read
from ebpfguard.forensics import verify as verify_log
from ebpfguard.forensics.records import Kind, Record
from ebpfguard.governance.incident import received

LADDER_EVENTS = ("escalation", "freeze", "kill", "quarantine")


@dataclass
class Version:
    version: str
    sha256: str
    first_seen: str
    last_seen: str
    signature: str = "-"  # the signature status the last policy record gave
    key_id: str = ""
    instances: int = 0


@dataclass
class Provenance:
    name: str
    publisher: str = ""
    key_id: str = ""
    versions: list[Version] = field(default_factory=list)
    incidents: list[dict[str, Any]] = field(default_factory=list)
    violations: int = 0
    ladder: int = 0
    shadow: int = 0  # what a shadow version would have refused (not incidents: nothing was refused)
    flag: dict[str, Any] | None = None  # the last flag record, unless cleared since
    refusals: list[dict[str, Any]] = field(default_factory=list)  # rejected policies and refused launches
    log_ok: bool = True
    log_reason: str = ""
    records: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)  # incident summaries imported from elsewhere

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "publisher": self.publisher, "key_id": self.key_id,
                "versions": [vars(v) for v in self.versions], "violations": self.violations,
                "ladder_actions": self.ladder, "shadow_refusals": self.shadow, "incidents": self.incidents,
                "refusals": self.refusals,
                "flag": self.flag, "log": {"ok": self.log_ok, "reason": self.log_reason, "records": self.records},
                "received": self.received}


def _incident(rec: Record) -> dict[str, Any]:
    d = rec.detail
    what = d.get("path") or d.get("address") or d.get("syscall") or d.get("event") or ""
    return {"seq": rec.seq, "time": rec.time, "kind": str(rec.kind), "verdict": rec.verdict, "what": str(what),
            "actions": list(rec.actions), "version_sha256": rec.policy_sha256}


def provenance(state_dir: str | os.PathLike[str], name: str) -> Provenance:
    p = Provenance(name)
    v = verify_log(state_dir)
    p.log_ok, p.log_reason, p.records = v.ok, v.reason, v.records
    versions: dict[str, Version] = {}
    for raw in read(state_dir):
        if isinstance(raw, BadLine) or raw.get("extension") != name:
            continue
        try:
            rec = Record.of(raw)
        except ForensicsError:
            continue  # the log's verification (above) names what is wrong with it
        d = rec.detail
        t = rec.time or ""
        sha = rec.policy_sha256 or ""
        kind = rec.kind
        if kind == Kind.POLICY and rec.event in ("flagged", "unflagged"):
            p.flag = raw if rec.event == "flagged" else None
            continue
        if kind == Kind.POLICY and rec.event in ("rejected", "launch-refused"):
            p.refusals.append({"seq": rec.seq, "time": t, "event": d["event"], "version": d.get("version"),
                               "reason": d.get("reason") or (d.get("signature") or {}).get("reason", "")})
        if sha:
            ver = versions.get(sha)
            if ver is None:
                ver = versions[sha] = Version(str(d.get("version") if kind == "policy" else "") or "?", sha, t, t)
            ver.last_seen = max(ver.last_seen, t)
            ver.first_seen = min(ver.first_seen, t)
            if kind == "policy":
                ver.version = str(d.get("version") or ver.version)
                sig = d.get("signature") or {}
                if d.get("event") == "loaded" or ver.signature == "-":
                    ver.signature = str(sig.get("status", "-"))
                    ver.key_id = str(sig.get("key_id") or "")
                if sig.get("ok"):
                    p.publisher, p.key_id = str(sig.get("publisher", "")), str(sig.get("key_id", ""))
            if kind == "lifecycle" and d.get("event") in ("start", "adopted"):
                ver.instances += 1
        if kind == "lifecycle" and d.get("event") in LADDER_EVENTS:
            p.ladder += 1
            p.incidents.append(_incident(rec))
        elif rec.verdict == "shadow":
            p.shadow += 1
        elif rec.violation and rec.verdict is not None:
            p.violations += 1
            p.incidents.append(_incident(rec))
    p.versions = sorted(versions.values(), key=lambda x: x.first_seen)
    for ver in p.versions:  # a version first seen on an instance record takes its name from a policy record
        if ver.version == "?":
            ver.version = "(unknown)"
    p.received = received(state_dir, name, [(v.version, v.sha256) for v in p.versions])
    for r in p.received:  # beside them, what happened here under the version they match
        matched = (r["matches"] or {}).get("sha256")
        r["local_incidents"] = sum(1 for i in p.incidents if matched and i["version_sha256"] == matched)
    return p


def render(p: Provenance, limit: int = 10) -> list[str]:
    out = [f"{p.name}",
           f"  publisher   {p.publisher or '(no trusted signature seen)'}",
           f"  signing key {p.key_id or '-'}",
           "  flagged     " + (f"YES since {p.flag.get('time')} by {p.flag['detail'].get('by', '?')}: "
                                f"{p.flag['detail'].get('reason', '')} (seq {p.flag.get('seq')})" if p.flag else "no"),
           "  log         " + (f"verified, {p.records} records" if p.log_ok else f"FAILS VERIFICATION: {p.log_reason}"),
           f"versions ({len(p.versions)}):",
           f"  {'VERSION':<12} {'SHA256':<12} {'SIGNATURE':<10} {'KEY':<16} {'RUNS':>4}  FIRST SEEN -> LAST SEEN"]
    for v in p.versions:
        out.append(f"  {v.version:<12.12} {v.sha256[:12]:<12} {v.signature:<10} {v.key_id or '-':<16} "
                   f"{v.instances:>4}  {v.first_seen[:19]} -> {v.last_seen[:19]}")
    out.append(f"incidents: {p.violations} violations, {p.ladder} ladder actions, {p.shadow} shadow refusals" +
               (f" (the last {limit})" if len(p.incidents) > limit else ""))
    for i in p.incidents[-limit:]:
        acts = ",".join(i["actions"])
        out.append(f"  seq {i['seq']:<6} {str(i['time'])[:19]} {i['kind']:<9} {str(i['verdict'] or ''):<8} "
                   f"{i['what'][:40]}" + (f" [{acts}]" if acts else ""))
    if p.refusals:
        out.append(f"refused ({len(p.refusals)}):")
        for r in p.refusals[-limit:]:
            out.append(f"  seq {r['seq']:<6} {str(r['time'])[:19]} {r['event']:<14} {r['reason'][:60]}")
    if p.received:
        out.append(f"received incident summaries ({len(p.received)}; `incident list` shows them all):")
        for r in p.received[-limit:]:
            versions = ",".join(str(v["version"]) for v in r["versions"]) or "?"
            m = r["matches"]
            here = (f"= local {m['version']} by {m['by']}, {r['local_incidents']} incidents here" if m
                    else "a version not seen here")
            period = r.get("period") or {}
            out.append(f"  {r['sha256'][:12]} version {versions} ({here}), signed by {r['signer']}, "
                       f"{period.get('first')}..{period.get('last')}: {r['violations']} violations")
            for t in r["techniques"][:5]:
                tid = f" ({t['attack_id']})" if t["attack_id"] else ""
                out.append(f"    {t['count']:>5}  {t['technique']}{tid}")
    return out

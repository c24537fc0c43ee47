"""``ebpfguard explain SEQ``: why a record was raised, from the record and the exact manifest bytes
archived under STATE/policies/<policy_sha256>: which manifest and rule, the entry that matched or the
one that was missing, the action taken, and the manifest line to add if the access was legitimate."""

from __future__ import annotations

import os
from typing import Any

from ebpfguard.common.statedir import StateDir
from ebpfguard.errors import EbpfguardError, ManifestError
from ebpfguard.forensics import BadLine, read
from ebpfguard.forensics.records import Record
from ebpfguard.manifest.load import BUILTIN_PRIVILEGE, BUILTIN_SYSCALL, Manifest, field_name, parse


def find(state_dir: str, seq: int) -> Record:
    for rec in read(state_dir):
        if not isinstance(rec, BadLine) and rec.get("seq") == seq:
            return Record.of(rec)
    raise EbpfguardError(f"no record with seq {seq} in {state_dir}/forensics/records.jsonl")


def _manifest(state_dir: str, rec: Record) -> Manifest:
    sha = rec.policy_sha256
    if not sha:
        raise EbpfguardError(f"record {rec.seq} names no policy")
    path = StateDir.of(state_dir).policy(str(sha))
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise EbpfguardError(f"the policy {str(sha)[:12]} is not archived in {path.parent}") from err
    try:  # ~ expands to the extension user's home, as when it was in force
        return parse(raw, f"{rec.extension}@{str(sha)[:12]}")
    except ManifestError as err:
        raise EbpfguardError(f"the archived policy {str(sha)[:12]} no longer parses: {err}") from err


def _where(m: Manifest, *path: Any) -> str:
    line = m.line_of(*path)
    return f"{field_name(path)} (line {line})" if line else field_name(path)


def explain(state_dir: str, seq: int, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """Why record ``seq`` was raised; ``known``: that record, already at hand (else it is looked for in the log)."""
    rec = Record.of(known) if known is not None and known.get("seq") == seq else find(state_dir, seq)
    kind = str(rec.kind)
    d = rec.detail
    out: dict[str, Any] = {"seq": seq, "extension": rec.extension, "kind": kind,
                           "verdict": rec.verdict, "actions": list(rec.actions)}
    if kind in ("lifecycle", "checkpoint"):
        out["why"] = f"not a violation: a {kind} record ({d.get('event', d)})"
        return out
    if kind == "anomaly":
        b = d.get("baseline") or {}
        out["why"] = (f"allowed by the manifest, but new: its baseline ({b.get('source')}, {b.get('runs')} runs) "
                      f"never saw the {d.get('what')} {d.get('value')}")
        out["fix"] = ("if it is normal, learn it into the baseline (learn --merge, or baseline from-log after an "
                      "audit-mode run) and replace the baseline file; if not, look at what else the instance did "
                      "(trace --activity)")
        return out
    if kind == "rollback":
        event = d.get("event")
        why = {"committed": "the instance stopped by itself: its changes were applied to the real trees",
               "discarded": "the agent killed the instance (or an operator said discard): its changes were thrown "
                            "away and the real trees are as they were",
               "kept": "the instance was still running when the agent stopped: its changes wait for an operator"}
        out["why"] = (f"not a violation: spec.filesystem.rollback; {why.get(str(event), event)}; "
                      f"{d.get('count', 0)} change(s) in {', '.join(d.get('trees') or [])}"
                      + (f"; {len(d['conflicts'])} path(s) kept as the user changed them, the extension's version "
                         "under STATE/rollback-kept/" if d.get("conflicts") else ""))
        if event == "kept":
            out["fix"] = f"ebpfguard rollback show {rec.instance}, then commit or discard"
        return out
    if kind == "correlation":
        out["why"] = (f"correlation rule {d.get('rule')}: {d.get('description')}; its steps are records "
                      f"{', '.join(str(x) for x in d.get('seqs') or [])} (explain each), within "
                      f"{d.get('within_s')} s; response {d.get('response')}")
        out["fix"] = "the rule's own file (POLICY_DIR/correlation/) if the sequence is normal for this extension"
        return out
    m = _manifest(state_dir, rec)
    out["manifest"] = {"name": m.name, "version": m.version, "sha256": m.sha256}
    step = m.response.get(str(kind), "-")
    out["response"] = f"{kind}: {step} ({_where(m, 'spec', 'response', kind)}), mode {rec.mode}"
    if kind in ("file", "exec"):
        access, path = d.get("access", "read"), str(d.get("path", ""))
        lists = {"read": m.read + m.write, "write": m.write, "exec": m.exec}[access]
        field = {"read": "read", "write": "write", "exec": "exec"}[access]
        nearest = max((r for r in lists if os.path.commonpath([r.rstrip("/") or "/", path or "/"]) != "/"),
                      key=lambda r: len(os.path.commonpath([r.rstrip("/") or "/", path])), default=None)
        out["rule"] = (f"no entry of {_where(m, 'spec', 'filesystem', field)} covers {path!r}"
                       + (f"; nearest: {nearest!r}" if nearest else ""))
        out["fix"] = f"if this {access} is legitimate, add to spec.filesystem.{field}: \"{path}\""
        if access != "exec" and path.count("/") > 1:
            out["fix"] += f" (or the tree \"{os.path.dirname(path)}/\")"
    elif kind == "network" and d.get("socket") == "unix":
        path = str(d.get("path", ""))
        if path[:1] != "/" or "dotdot" in (d.get("flags") or []):
            out["rule"] = f"the socket path {path!r} is relative or has '..': it is refused, never guessed"
            out["fix"] = "connect by the socket's absolute path, and grant that path in spec.ipc.unix"
        else:
            out["rule"] = f"no entry of {_where(m, 'spec', 'ipc', 'unix')} covers the socket {path!r}"
            out["fix"] = f"if this peer is legitimate, add to spec.ipc.unix: \"{path}\""
    elif kind == "ipc":
        bus, name = d.get("bus", "session"), d.get("destination") or d.get("name", "")
        verb = "own" if d.get("op") == "own" else "talk"
        out["rule"] = (f"{_where(m, 'spec', 'ipc', 'dbus', bus)} lets the D-Bus proxy pass no "
                       f"{d.get('op', 'call')} to {name!r}" + (f" ({d['member']})" if d.get("member") else ""))
        out["fix"] = (f"if this is legitimate, add to spec.ipc.dbus.{bus}.{verb}: \"{name}\""
                      + (f", or to .call: \"{name}={d['interface']}.{d['member']}@{d.get('path', '/')}\""
                         if d.get("interface") and d.get("member") and verb == "talk" else ""))
    elif kind == "network":
        op = "bind" if d.get("op") == "bind" else "connect"
        addr, port, proto = d.get("address", ""), d.get("port"), d.get("proto", "tcp")
        cidr = f"{addr}/{128 if ':' in str(addr) else 32}"
        if "quarantine" in (d.get("flags") or []):
            out["rule"] = "the instance was in network quarantine: every address is denied until lifted"
            out["fix"] = "ebpfguard quarantine --lift NAME, once the earlier violation is understood"
        else:
            out["rule"] = f"no rule of {_where(m, 'spec', 'network', op)} allows {addr}:{port}/{proto}"
            out["fix"] = f"if this {op} is legitimate, add to spec.network.{op}: \"{cidr}:{port}/{proto}\""
    elif kind in ("syscall", "privilege"):
        name = d.get("syscall")
        if name in m.deny_syscalls:
            i = m.deny_syscalls.index(name)
            out["rule"] = f"{_where(m, 'spec', 'syscalls', 'deny', i)} denies {name}"
            out["fix"] = f"if {name} is legitimate, remove it from spec.syscalls.deny"
        elif name in BUILTIN_PRIVILEGE or name in BUILTIN_SYSCALL:
            out["rule"] = f"{name} is in ebpfguard's built-in deny set ({kind})"
            out["fix"] = "none in the manifest: the built-in set cannot be allowed to an extension"
        else:
            out["rule"] = f"{name} is denied"
            out["fix"] = "-"
    elif kind == "resource":
        res = str(d.get("resource"))
        given = m.resources.given.get(res)
        out["rule"] = f"{_where(m, 'spec', 'resources', res)} = {given} was reached ({d.get('event')})"
        out["fix"] = f"if the extension needs more, raise spec.resources.{res}"
    return out


def format_text(e: dict[str, Any]) -> str:
    lines = [f"record {e['seq']}: {e['kind']} violation by {e['extension']} -> {e['verdict']}"
             if "rule" in e else f"record {e['seq']}: {e['why']}"]
    if "rule" not in e and e.get("fix"):
        lines.append(f"  fix:      {e['fix']}")
    if "manifest" in e:
        mf = e["manifest"]
        lines.append(f"  manifest: {mf['name']} {mf['version']} (sha256 {mf['sha256'][:12]})")
        lines.append(f"  rule:     {e['rule']}")
        lines.append(f"  response: {e['response']}")
        lines.append(f"  actions:  {', '.join(e['actions']) or 'none'}")
        lines.append(f"  fix:      {e['fix']}")
    return "\n".join(lines)

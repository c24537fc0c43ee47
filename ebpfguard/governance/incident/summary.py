"""The summary: summarize() reads an extension's records (or chosen ones) from the verified forensic log and reduces
them to what can leave the host; scrub() finds what of the host and its people the rules left, and share() refuses
to write the summary when it finds anything (the last check: fail closed)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ebpfguard.common.statedir import StateDir
from ebpfguard.forensics import BadLine, key_id, read, record_ns
from ebpfguard.forensics import verify as verify_log
from ebpfguard.forensics.records import VIOLATION_KINDS, Kind
from ebpfguard.forensics.technique import classify
from ebpfguard.governance.incident.anonymize import _WORD, HEX64, Anonymizer, Host, _map, vocabulary
from ebpfguard.governance.incident.report import markdown
from ebpfguard.governance.incident.schema import FORMAT, REMOVED, IncidentError
from ebpfguard.governance.incident.signing import sign

LADDER_EVENTS = ("escalation", "freeze", "thaw", "kill", "quarantine", "lift")
LADDER_STEPS = {"cgroup.freeze", "cgroup.kill", "freeze", "kill", "thaw", "quarantine", "lift", "throttle", "sigkill"}
MAX_TIMELINE = 1000
MAX_TARGETS = 20


def _day(ns: int | None) -> str | None:
    if ns is None:
        return None
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%d")


def _secs(ns: int) -> float:
    return round(ns / 1e9, 3)


def split_action(action: str, rec: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """(response, the layer that decided or did it, a ladder step's note): "eacces:landlock" is eacces by Landlock,
    "cgroup.freeze:escalation(2 in 60s)" the agent's freeze on escalation, "quarantine" the agent's."""
    d = _map(rec.get("detail"))
    if action.startswith("cgroup."):
        step, _, note = action.partition(":")
        return step, "agent", note.replace("(", " (") or None
    if ":" in action:
        response, _, layer = action.partition(":")
        return response, layer.split("(")[0], None
    by = "operator" if rec.get("kind") == "lifecycle" and d.get("by") else "agent"
    return action, by, None


@dataclass
class _Instance:
    iid: str
    launch_ns: int | None = None
    first_ns: int | None = None
    start: dict[str, Any] | None = None
    stop: dict[str, Any] | None = None
    sha: str | None = None
    mode: str | None = None
    violations: int = 0
    n: int = 0

    @property
    def zero(self) -> int | None:
        """The launch: the earliest moment the records know of the instance (its first exec, which the kernel
        timed, precedes the agent's start record)."""
        return self.first_ns


@dataclass
class _Version:
    sha: str
    version: str | None = None
    publisher: str | None = None
    publisher_key_id: str | None = None
    signature: str = "unknown"
    modes: set[str] = field(default_factory=set)


def _manifest_meta(state: StateDir, sha: str) -> dict[str, Any]:
    """metadata of the exact manifest bytes the records name (STATE/policies/<sha256>), when kept."""
    try:
        doc = yaml.safe_load(state.policy(sha).read_bytes())
    except (OSError, yaml.YAMLError):
        return {}
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    return meta if isinstance(meta, dict) else {}


def summarize(state_dir: str | os.PathLike[str], extension: str | None = None, seqs: Iterable[int] = (),
              since_ns: int | None = None, host: Host | None = None,
              now_ns: int | None = None) -> dict[str, Any]:
    """The unsigned summary of ``extension``'s records (since ``since_ns``), or of the records ``seqs``, from the
    verified log under ``state_dir``. IncidentError when the log fails verification or nothing is selected."""
    return _summary(state_dir, extension, seqs, since_ns, host, now_ns)[0]


def _summary(state_dir: str | os.PathLike[str], extension: str | None, seqs: Iterable[int], since_ns: int | None,
             host: Host | None, now_ns: int | None) -> tuple[dict[str, Any], Anonymizer]:
    state = StateDir.of(state_dir)
    verdict = verify_log(state)
    if not verdict.ok:
        raise IncidentError(f"the forensic log in {state} fails verification: {verdict}")
    wanted = sorted(set(seqs))
    if not extension and not wanted:
        raise IncidentError("give --extension NAME or --seq N")
    if wanted:  # which extension the records are of: a first pass, so that only its records are kept after
        chosen = [r for r in read(state) if not isinstance(r, BadLine) and r.get("seq") in wanted]
        missing = sorted(set(wanted) - {r.get("seq") for r in chosen})
        if missing:
            raise IncidentError(f"the forensic log has no record {', '.join(map(str, missing))}")
        names = sorted({str(r.get("extension")) for r in chosen})
        if len(names) > 1 or names == ["None"]:
            raise IncidentError("one summary is of one extension: records " + ", ".join(
                f"{r.get('seq')} ({r.get('extension') or 'no extension'})" for r in chosen))
        extension = names[0]
    ours = [r for r in read(state) if not isinstance(r, BadLine) and r.get("extension") == extension]
    selected = [r for r in ours if (not wanted or r.get("seq") in wanted)
                and (since_ns is None or (record_ns(r) or 0) >= since_ns) and r.get("kind") != Kind.CHECKPOINT]
    if not selected:
        since = " in that time" if since_ns is not None else ""
        raise IncidentError(f"the forensic log has no record of {extension}{since}")
    anon = Anonymizer(host if host is not None else Host.read(state), ours)
    builder = _Builder(state, str(extension), anon, ours, selected, "records" if wanted else "extension", now_ns)
    return builder.build(), anon


class _Builder:
    def __init__(self, state: StateDir, name: str, anon: Anonymizer, ours: list[dict[str, Any]],
                 selected: list[dict[str, Any]], by: str, now_ns: int | None):
        self.state, self.name, self.anon, self.by = state, name, anon, by
        self.ours, self.selected = ours, selected
        self.now_ns = now_ns
        self.instances: dict[str, _Instance] = {}
        self.versions: dict[str, _Version] = {}

    def _context(self) -> None:
        """Instances (their launch, their end) and versions, from every record of the extension."""
        chosen = {id(r) for r in self.selected}
        for r in self.ours:
            d = _map(r.get("detail"))
            sha = r.get("policy_sha256")
            sha = sha if isinstance(sha, str) and HEX64.fullmatch(sha) else None
            if sha and (r.get("kind") == Kind.POLICY or id(r) in chosen):
                v = self.versions.setdefault(sha, _Version(sha))
                if r.get("kind") == Kind.POLICY:
                    if d.get("version") is not None:
                        v.version = str(d["version"])
                    sig = _map(d.get("signature"))
                    if sig and (d.get("event") == "loaded" or v.signature == "unknown"):
                        v.signature = str(sig.get("status") or "unknown")
                        kid = str(sig.get("key_id") or "")
                        if sig.get("ok"):
                            v.publisher = str(sig.get("publisher") or "")
                            v.publisher_key_id = kid if re.fullmatch(r"[0-9a-f]{16}", kid) else None
                if isinstance(r.get("mode"), str) and id(r) in chosen:
                    v.modes.add(r["mode"])
            iid = r.get("instance")
            if not isinstance(iid, str) or not iid:
                continue
            inst = self.instances.setdefault(iid, _Instance(iid))
            t = record_ns(r)
            execs = [p.get("exec_ns") for p in d.get("procs") or [] if isinstance(p, Mapping)]
            for when in (t, *(x for x in execs if isinstance(x, int))):
                if when is not None and (inst.first_ns is None or when < inst.first_ns):
                    inst.first_ns = when
            if r.get("kind") == Kind.LIFECYCLE and d.get("event") in ("start", "adopted") and inst.start is None:
                inst.start, inst.launch_ns = r, t
            if r.get("kind") == Kind.LIFECYCLE and d.get("event") == "stop":
                inst.stop = r
            if sha:
                inst.sha = inst.sha or sha
            if isinstance(r.get("mode"), str):
                inst.mode = inst.mode or r["mode"]
        used = {r.get("instance") for r in self.selected}
        live = sorted((i for i in self.instances.values() if i.iid in used),
                      key=lambda i: (i.zero or 0, i.iid))
        for n, inst in enumerate(live, 1):
            inst.n = n
            if inst.sha:
                self.versions.setdefault(inst.sha, _Version(inst.sha))
        for sha, v in self.versions.items():
            if v.version is None or v.publisher is None:
                meta = _manifest_meta(self.state, sha)
                if v.version is None and meta.get("version") is not None:
                    v.version = str(meta["version"])
                if v.publisher is None and isinstance(meta.get("publisher"), str):
                    v.publisher = meta["publisher"]  # the manifest's claim; `signature` says if a key vouched

    def _when(self, r: dict[str, Any]) -> tuple[int | None, float | None]:
        inst = self.instances.get(str(r.get("instance")))
        t = record_ns(r)
        if inst is None or inst.n == 0 or t is None or inst.zero is None:
            return (inst.n if inst and inst.n else None), None
        return inst.n, _secs(t - inst.zero)

    def _target(self, r: Mapping[str, Any]) -> str:
        kind, d = r.get("kind"), _map(r.get("detail"))
        a = self.anon
        if kind in (Kind.FILE, Kind.EXEC):
            return a.path(d.get("path") or d.get("raw_path"))
        if kind == Kind.NETWORK:
            if d.get("path"):
                return a.path(d["path"])
            addr, cls = a.address(d.get("address"))
            port = d.get("port")
            where = addr if addr is not None else cls
            if addr is not None and ":" in addr:
                where = f"[{addr}]"
            return f"{where}:{port}" if isinstance(port, int) else where
        if kind == Kind.IPC:
            dest = a.dbus_name(d.get("destination") or d.get("name"))
            member = ".".join(a.dbus_name(x) for x in (d.get("interface"), d.get("member")) if x)
            return f"{dest} {member}".strip()
        if kind in (Kind.SYSCALL, Kind.PRIVILEGE):
            return a.word(d.get("syscall") or "")
        if kind == Kind.RESOURCE:
            return " ".join(a.word(x) for x in (d.get("resource"), d.get("event")) if x)
        if kind == Kind.CORRELATION:
            return a.word(d.get("rule") or "")
        if kind == Kind.ANOMALY:
            v = d.get("value")
            if isinstance(v, str) and v.startswith("/"):
                return a.path(v)
            m = re.match(r"^\[?([0-9A-Fa-f:.]+)\]?:(\d+)(/\w+)?$", str(v or ""))
            if m:
                addr, cls = a.address(m.group(1))
                return f"{addr or cls}:{m.group(2)}{m.group(3) or ''}"
            return f"{a.word(d.get('what') or 'value')}"
        return ""

    def _actions(self, r: Mapping[str, Any]) -> list[str]:
        out = []
        for act in r.get("actions") or []:
            response, layer, note = split_action(str(act), r)
            out.append(f"{response}:{layer}" + (f" ({note})" if note else ""))
        return [self.anon.word(x) for x in out]

    def build(self) -> dict[str, Any]:
        self._context()
        a = self.anon
        techniques: dict[str, dict[str, Any]] = {}
        kinds: Counter[str] = Counter()
        verdicts: Counter[str] = Counter()
        responses: Counter[tuple[str, str]] = Counter()
        public: dict[tuple[str, Any, Any, Any], dict[str, Any]] = {}
        local: dict[tuple[str, Any, Any, Any], dict[str, Any]] = {}
        ladder: list[dict[str, Any]] = []
        rollback: list[dict[str, Any]] = []
        policy: list[dict[str, Any]] = []
        timeline: list[dict[str, Any]] = []
        shadow = violations = 0
        days = [x for x in (record_ns(r) for r in self.selected) if x is not None]
        for r in self.selected:
            kind, d = str(r.get("kind")), _map(r.get("detail"))
            n, t = self._when(r)
            entry: dict[str, Any] = {"instance": n, "t": t}
            for act in r.get("actions") or []:
                response, layer, note = split_action(str(act), r)
                responses[(a.word(response), a.word(layer))] += 1
                if layer in ("agent", "operator") and response in LADDER_STEPS:  # not what the deciding layer did
                    why = note or ("escalation" if d.get("event") == "escalation" else None)
                    ladder.append({"instance": n, "t": t, "step": a.word(response.removeprefix("cgroup.")),
                                   "by": layer, "why": a.word(why) if why else None})
            if kind in VIOLATION_KINDS:
                if r.get("verdict") == "shadow":
                    shadow += 1
                    continue
                violations += 1
                tech = classify(r)
                target = self._target(r)
                verdict = a.word(r.get("verdict") or "none")
                name = a.word(tech.name)
                kinds[kind] += 1
                verdicts[verdict] += 1
                inst = self.instances.get(str(r.get("instance")))
                if inst is not None:
                    inst.violations += 1
                te = techniques.setdefault(name, {
                    "technique": name, "attack_id": tech.attack, "attack_name": tech.attack_name,
                    "count": 0, "kinds": [], "verdicts": {}, "targets": [], "targets_omitted": 0, "programs": [],
                    "first_t": t})
                te["count"] += 1
                if kind not in te["kinds"]:
                    te["kinds"].append(kind)
                te["verdicts"][verdict] = te["verdicts"].get(verdict, 0) + 1
                if target and target not in te["targets"]:
                    if len(te["targets"]) < MAX_TARGETS:
                        te["targets"].append(target)
                    else:
                        te["targets_omitted"] += 1
                prog = a.program(r.get("comm"))
                if prog and prog not in te["programs"]:
                    te["programs"].append(prog)
                if t is not None and (te["first_t"] is None or t < te["first_t"]):
                    te["first_t"] = t
                if kind == Kind.NETWORK and not d.get("path") and d.get("address"):
                    addr, cls = a.address(d.get("address"))
                    key = (addr or cls, d.get("port"), d.get("proto"), d.get("op"))
                    book = public if addr is not None else local
                    de = book.setdefault(key, {
                        **({"address": addr} if addr is not None else {"class": cls}),
                        "port": d.get("port") if isinstance(d.get("port"), int) else None,
                        "proto": a.word(d["proto"]) if isinstance(d.get("proto"), str) else None,
                        "op": a.word(d.get("op") or "connect"), "count": 0, "verdicts": {}})
                    de["count"] += 1
                    de["verdicts"][verdict] = de["verdicts"].get(verdict, 0) + 1
                entry.update({"event": "violation", "kind": kind, "technique": name,
                              "attack_id": tech.attack, "target": target, "verdict": verdict,
                              "actions": self._actions(r)})
            elif kind == Kind.LIFECYCLE:
                ev = str(d.get("event") or "")
                if ev in ("start", "adopted"):
                    entry.update({"event": "launch" if ev == "start" else "adopted"})
                elif ev == "stop":
                    entry.update({"event": "stop", "exit_status": d.get("exit_status")
                                  if isinstance(d.get("exit_status"), int) else None,
                                  "killed_by_agent": bool(d.get("killed_by_agent"))})
                elif ev in LADDER_EVENTS:
                    entry.update({"event": ev, "by": "operator" if d.get("by") else "agent",
                                  "actions": self._actions(r)})
                else:
                    continue  # processes, readopted, outage: the agent's own account, nothing the extension did
            elif kind == Kind.ROLLBACK:
                outcome = a.word(d.get("event") or "")
                counts = _map(d.get("counts"))
                rb = {"instance": n, "t": t, "outcome": outcome,
                      "changes": d.get("count") if isinstance(d.get("count"), int) else 0,
                      "counts": {a.word(k): v for k, v in counts.items() if isinstance(v, int)},
                      "conflicts": len(d.get("conflicts") or []), "errors": len(d.get("errors") or []),
                      "trees": sorted({a.path(x) for x in d.get("trees") or []})}
                rollback.append(rb)
                entry.update({"event": "rollback", "outcome": outcome, "changes": rb["changes"]})
            elif kind == Kind.POLICY:
                ev = str(d.get("event") or "")
                sig = _map(d.get("signature"))
                day = _day(record_ns(r))
                policy.append({"event": a.word(ev), "version": a.word(d["version"]) if d.get("version") is not None
                               else None, "signature": a.word(sig.get("status")) if sig.get("status") else None,
                               "day": day})
                entry.update({"event": f"policy {a.word(ev)}", "day": day})
            else:
                continue
            timeline.append(entry)
        timeline.sort(key=lambda e: (e["instance"] is None, e["instance"] or 0, e["t"] if e["t"] is not None else 0))
        omitted = max(0, len(timeline) - MAX_TIMELINE)
        by_technique = {k: v["count"] for k, v in techniques.items()}
        instances, sandboxes = [], []  # instances that ran in the same sandbox name it once
        for i in sorted(self.instances.values(), key=lambda i: i.n):
            if i.n:
                row, sb = self._instance(i)
                if sb is not None and sb not in sandboxes:
                    sandboxes.append(sb)
                row["sandbox"] = sandboxes.index(sb) + 1 if sb is not None else None
                instances.append(row)
        return {
            "format": FORMAT,
            "generated": _day(self.now_ns if self.now_ns is not None else time.time_ns()),
            "extension": {"name": self.name, "versions": [self._version(v) for v in self.versions.values()]},
            "selection": {"by": self.by, "records": len(self.selected)},
            "period": {"first": _day(min(days)) if days else None, "last": _day(max(days)) if days else None},
            "log": {"verified": True},
            "instances": instances,
            "sandboxes": sandboxes,
            "counts": {"violations": violations, "shadow": shadow, "by_kind": dict(kinds.most_common()),
                       "by_verdict": dict(verdicts.most_common()),
                       "by_technique": dict(sorted(by_technique.items(), key=lambda kv: -kv[1])),
                       "by_response": {f"{r}:{layer}": c for (r, layer), c in responses.most_common()}},
            "techniques": sorted(techniques.values(), key=lambda x: -x["count"]),
            "responses": [{"response": r, "layer": layer, "count": c} for (r, layer), c in responses.most_common()],
            "ladder": ladder,
            "rollback": rollback,
            "destinations": sorted(public.values(), key=lambda x: -x["count"]),
            "other_destinations": sorted(local.values(), key=lambda x: -x["count"]),
            "policy_events": policy,
            "timeline": timeline[:MAX_TIMELINE],
            "timeline_omitted": omitted,
            "removed": list(REMOVED),
        }

    def _version(self, v: _Version) -> dict[str, Any]:
        a = self.anon
        return {"version": a.word(v.version) if v.version is not None else None, "policy_sha256": v.sha,
                "publisher": a.word(v.publisher) if v.publisher else None,
                "publisher_key_id": v.publisher_key_id or None, "signature": a.word(v.signature),
                "modes": sorted(a.word(m) for m in v.modes)}

    def _instance(self, i: _Instance) -> tuple[dict[str, Any], dict[str, Any] | None]:
        a = self.anon
        d = _map((i.start or {}).get("detail"))
        sb = _map(d.get("sandbox"))
        kern = _map(sb.get("kernel")) or None
        stop = _map((i.stop or {}).get("detail"))
        end = None
        if i.stop is not None:
            end = "ended while no agent ran" if stop.get("ended") else "killed by the agent" \
                if stop.get("killed_by_agent") else "exited"
        ran = None
        end_ns = record_ns(i.stop) if i.stop is not None else None
        if end_ns is not None and i.zero is not None:
            ran = _secs(end_ns - i.zero)
        v = self.versions.get(i.sha or "")
        inst = {"n": i.n, "version": a.word(v.version) if v and v.version is not None else None,
                "policy_sha256": i.sha, "mode": a.word(i.mode) if i.mode else None,
                "launched": _day(i.zero), "launch_known": i.launch_ns is not None,
                "adopted": bool(i.start is not None and d.get("event") == "adopted"), "ran_s": ran, "end": end,
                "exit_status": stop.get("exit_status") if isinstance(stop.get("exit_status"), int) else None,
                "violations": i.violations}
        if not sb:
            return inst, None
        kernel = {"release": a.word(kern.get("release") or ""), "ebpf": a.word(kern.get("ebpf") or "")} \
            if kern else None
        return inst, {"layers": [a.layer(x) for x in sb.get("layers") or []], "kernel": kernel}


# ---- the last check: fail closed ---------------------------------------------------------------------------

def _strings(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            if k in ("signer", "signature") and not where:
                continue  # not from the records: the sharing key's
            yield f"{where}.{k}".lstrip("."), str(k)
            yield from _strings(v, f"{where}.{k}".lstrip("."))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{where}[{i}]")
    elif node is not None:
        yield where, str(node)



def scrub(summary: Mapping[str, Any], anon: Anonymizer, rendered: str = "") -> list[str]:
    """What of this host and its people the rules left in the summary (and in its ``rendered`` report), the
    signature aside, each as "the host name in extension.versions[0].version"; empty when none is left."""
    host = anon.host
    vocab = vocabulary()
    checks: list[tuple[str, re.Pattern[str]]] = []
    for n in sorted({*host.hostnames} - {"localhost", "localhost.localdomain"}):
        if n.lower() not in vocab:
            checks.append(("the host name", re.compile(_WORD.format(re.escape(n)), re.I)))
    for label, value in (("the machine id", host.machine_id), ("the boot id", host.boot_id),
                         ("the boot id", host.boot_id.replace("-", "")), ("the host's forensic key id", host.key_id)):
        if len(value) >= 8:
            checks.append((label, re.compile(re.escape(value), re.I)))
    for n in sorted(anon.names):
        if n.lower() not in vocab:
            checks.append((f"the user name {n!r}", re.compile(_WORD.format(re.escape(n)), re.I)))
    for h in sorted(anon.record_homes):
        checks.append((f"the home {h}", re.compile(re.escape(h) + r"(?![A-Za-z0-9])")))
    found: list[str] = []
    for where, text in _strings(summary):
        found += [f"{label} in {where}" for label, pat in checks if pat.search(text)]
    found += [f"{label} in the Markdown report" for label, pat in checks if rendered and pat.search(rendered)]
    return sorted(set(found))


def share(state_dir: str | os.PathLike[str], *, extension: str | None = None, seqs: Iterable[int] = (),
          since_ns: int | None = None, key: Ed25519PrivateKey | None = None, fmt: str = "json",
          host: Host | None = None, now_ns: int | None = None) -> str:
    """The summary as it is written out (JSON or Markdown), signed with ``key`` when given; IncidentError if the
    key is the host's, or if the scrub finds an identifier the rules left (nothing is written then)."""
    state = StateDir.of(state_dir)
    host = host if host is not None else Host.read(state)
    if key is not None and host.key_id and key_id(key.public_key()) == host.key_id:
        raise IncidentError(f"that key is this host's forensic signing key (key id {host.key_id}): a summary is "
                            "signed with a sharing key of your own (`ebpfguard incident keygen -o FILE`)")
    summary, anon = _summary(state, extension, seqs, since_ns, host, now_ns)
    left = scrub(summary, anon, markdown(summary))
    if left:
        raise IncidentError("refusing to write the summary: the removal rules left " + "; ".join(left[:5]) +
                            (f" (and {len(left) - 5} more)" if len(left) > 5 else ""))
    doc = sign(summary, key) if key is not None else {**summary, "signer": None, "signature": None}
    return markdown(doc) if fmt == "md" else json.dumps(doc, indent=2) + "\n"

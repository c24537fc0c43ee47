"""The readable report: a summary as Markdown (markdown()), the signed JSON inside it, ATT&CK links."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ebpfguard.governance.incident.schema import REMOVED

ATTACK_URL = "https://attack.mitre.org/techniques/"


def _cell(v: Any) -> str:
    s = "-" if v is None or v == "" else str(v)
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("`", "'")


def _code(v: Any) -> str:
    return f"`{_cell(v)}`" if v not in (None, "") else "-"


def attack_link(tid: str | None, name: str | None = None) -> str:
    if not tid:
        return "-"
    url = ATTACK_URL + tid.replace(".", "/") + "/"
    return f"[{tid}]({url})" + (f" {_cell(name)}" if name else "")


def _t(t: Any) -> str:
    return f"+{t:.3f} s" if isinstance(t, int | float) else "-"


def _counts(d: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"


def markdown(doc: Mapping[str, Any]) -> str:
    """The summary as a Markdown report; the summary itself (what the signature covers) in its last JSON block."""
    ext = doc.get("extension") or {}
    versions = ext.get("versions") or []
    title = f"{ext.get('name', '?')} " + ", ".join(str(v.get("version") or "?") for v in versions)
    out = [f"# Incident summary: {_cell(title.strip())}", "",
           "What an extension did and what was done, from a signed forensic log, anonymized by `ebpfguard incident "
           "share`: times are seconds after the instance's launch, days are UTC; removed: "
           + ", ".join(doc.get("removed") or REMOVED) + ".", "", "## Extension", "",
           "| Name | Version | Publisher | Policy sha256 | Signature | Modes |", "|---|---|---|---|---|---|"]
    for v in versions:
        pub = v.get("publisher") or "-"
        if v.get("publisher_key_id"):
            pub += f" (key {v['publisher_key_id']})"
        modes = ", ".join(v.get("modes") or [])
        out.append(f"| {_cell(ext.get('name'))} | {_cell(v.get('version'))} | {_cell(pub)} | "
                   f"{_code(v.get('policy_sha256'))} | {_cell(v.get('signature'))} | {_cell(modes)} |")
    period = doc.get("period") or {}
    counts = doc.get("counts") or {}
    out += ["", f"{len(doc.get('instances') or [])} instance(s), {counts.get('violations', 0)} violation(s)"
            + (f", {counts['shadow']} shadow refusal(s)" if counts.get("shadow") else "")
            + f", from {period.get('first') or '-'} to {period.get('last') or '-'}"
            + f" ({(doc.get('selection') or {}).get('records', 0)} records of a verified log).", "",
            "## What it tried", ""]
    techs = doc.get("techniques") or []
    if techs:
        out += ["| Technique | ATT&CK | Count | Verdicts | Targets |", "|---|---|---|---|---|"]
        for t in techs:
            targets = ", ".join(_code(x) for x in t.get("targets") or []) or "-"
            if t.get("targets_omitted"):
                targets += f" and {t['targets_omitted']} more"
            out.append(f"| {_cell(t.get('technique'))} | {attack_link(t.get('attack_id'), t.get('attack_name'))} | "
                       f"{t.get('count')} | {_cell(_counts(t.get('verdicts') or {}))} | {targets} |")
    else:
        out.append("Nothing: no violation in the records summarized.")
    out += ["", "## What was done", ""]
    resp = doc.get("responses") or []
    if resp:
        out += ["| Response | Layer | Count |", "|---|---|---|"]
        out += [f"| {_cell(r.get('response'))} | {_cell(r.get('layer'))} | {r.get('count')} |" for r in resp]
    else:
        out.append("No response was recorded.")
    ladder = doc.get("ladder") or []
    if ladder:
        out += ["", "Ladder steps:", ""]
        out += [f"- instance {s.get('instance') or '-'}, {_t(s.get('t'))}: {_cell(s.get('step'))} by "
                f"{_cell(s.get('by'))}" + (f" ({_cell(s['why'])})" if s.get("why") else "") for s in ladder]
    rb = doc.get("rollback") or []
    if rb:
        out += ["", "Rollback:", ""]
        out += [f"- instance {r.get('instance') or '-'}, {_t(r.get('t'))}: {_cell(r.get('outcome'))}, "
                f"{r.get('changes', 0)} change(s)" + (f" ({_cell(_counts(r['counts']))})" if r.get("counts") else "")
                + (f", {r['conflicts']} conflict(s)" if r.get("conflicts") else "")
                + (f" in {', '.join(_code(x) for x in r['trees'])}" if r.get("trees") else "") for r in rb]
    out += ["", "## Instances", "", "| # | Version | Mode | Launched | Ran | End | Violations | Sandbox |",
            "|---|---|---|---|---|---|---|---|"]
    for i in doc.get("instances") or []:
        ran = f"{i['ran_s']:.3f} s" if isinstance(i.get("ran_s"), int | float) else "-"
        end = i.get("end") or "-"
        if i.get("exit_status") is not None:
            end += f" ({i['exit_status']})"
        out.append(f"| {i.get('n')} | {_cell(i.get('version'))} | {_cell(i.get('mode'))} | {_cell(i.get('launched'))}"
                   f"{'' if i.get('launch_known') else ' (first record)'} | {ran} | {_cell(end)} | "
                   f"{i.get('violations', 0)} | {_cell(i.get('sandbox'))} |")
    sandboxes = doc.get("sandboxes") or []
    if sandboxes:
        out += ["", "| Sandbox | Kernel | Layers |", "|---|---|---|"]
        for n, sb in enumerate(sandboxes, 1):
            k = sb.get("kernel") or {}
            kern = f"{k.get('release')} ({k.get('ebpf')})" if k else "-"
            out.append(f"| {n} | {_cell(kern)} | {_cell(', '.join(sb.get('layers') or []))} |")
    out += ["", "## Timeline", "", "Seconds after the launch of each instance.", "",
            "| Instance | Time | Event |", "|---|---|---|"]
    for e in doc.get("timeline") or []:
        ev = str(e.get("event"))
        if ev == "violation":
            what = f"{e.get('kind')}: {_cell(e.get('technique'))}"
            if e.get("attack_id"):
                what += f" ({attack_link(e['attack_id'])})"
            what += f" {_code(e.get('target'))} → {_cell(e.get('verdict'))}"
            if e.get("actions"):
                what += " (" + _cell(", ".join(e["actions"])) + ")"
        elif ev == "stop":
            what = "stop" + (", killed by the agent" if e.get("killed_by_agent") else "") + (
                f", exit status {e['exit_status']}" if e.get("exit_status") is not None else "")
        elif ev == "rollback":
            what = f"rollback {_cell(e.get('outcome'))}: {e.get('changes', 0)} change(s)"
        elif e.get("actions"):
            what = f"{_cell(ev)} by {_cell(e.get('by'))} ({_cell(', '.join(e['actions']))})"
        else:
            what = _cell(ev) + (f" ({e['day']})" if e.get("day") else "")
        out.append(f"| {e.get('instance') or '-'} | {_t(e.get('t'))} | {what} |")
    if doc.get("timeline_omitted"):
        out.append(f"| | | and {doc['timeline_omitted']} more |")
    out += ["", "## Destinations", ""]
    dests = doc.get("destinations") or []
    if dests:
        out += ["Public destinations it tried:", "", "| Address | Port | Protocol | Operation | Count | Verdicts |",
                "|---|---|---|---|---|---|"]
        out += [f"| {_code(d.get('address'))} | {d.get('port') if d.get('port') is not None else '-'} | "
                f"{_cell(d.get('proto'))} | {_cell(d.get('op'))} | {d.get('count')} | "
                f"{_cell(_counts(d.get('verdicts') or {}))} |" for d in dests]
    else:
        out.append("No public destination.")
    other = doc.get("other_destinations") or []
    if other:
        out += ["", "Other destinations (their class only): " + ", ".join(
            f"{_cell(d.get('class'))}" + (f" port {d['port']}" if d.get("port") is not None else "")
            + f" ({_cell(d.get('op'))}, {d.get('count')}×)" for d in other) + "."]
    out += ["", "## Signature", ""]
    signer = doc.get("signer")
    if isinstance(signer, Mapping) and doc.get("signature"):
        out.append(f"Signed with Ed25519 key `{_cell(signer.get('key_id'))}` (its public key is in the JSON below); "
                   "check it with `ebpfguard incident verify FILE --pubkey KEY.pub`.")
    elif "signature" in doc:
        out.append("Unsigned: shared without a key, so nothing shows who wrote it or that it is unchanged.")
    out += ["", "<details><summary>The summary as JSON (what the signature covers)</summary>", "", "```json",
            json.dumps(doc, indent=2), "```", "", "</details>", ""]
    return "\n".join(out)

"""The summary's format: its name (FORMAT), what every summary says it removed (REMOVED), its JSON Schema (SCHEMA, which
docs/incident-schema.json holds: `python -m ebpfguard.governance.incident > docs/incident-schema.json` writes it), the
words the format itself uses (EMPTY, VOCABULARY), and IncidentError."""

from __future__ import annotations

from typing import Any

from ebpfguard.errors import EbpfguardError

FORMAT = "ebpfguard-incident/1"

# What the summary removes, each by a rule of its own (docs/incidents.md says how): listed in every summary.
REMOVED = ("user names", "uids and gids", "home paths", "file names under a home", "file names outside system folders",
           "file contents", "command lines, arguments and environment", "program names of non-system programs",
           "instance ids, cgroups and pids", "D-Bus senders and object paths", "host name, machine id and boot id",
           "loopback, private and link-local addresses", "absolute times")


class IncidentError(EbpfguardError):
    """A summary could not be made, written, verified or imported; the message says why."""

    exit_code = 1


def _obj(props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": list(props), "additionalProperties": False, "properties": props}


_STR, _INT, _BOOL = {"type": "string"}, {"type": "integer", "minimum": 0}, {"type": "boolean"}
_DAY = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
_SHA = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_KEYID = {"type": "string", "pattern": "^[0-9a-f]{16}$"}
_ATTACK = {"type": ["string", "null"], "pattern": "^T[0-9]{4}(\\.[0-9]{3})?$"}
_T = {"type": ["number", "null"], "description": "seconds after the instance's launch (null: not known)"}
_N = {"type": ["integer", "null"], "minimum": 1, "description": "the instance's number in this summary"}
_COUNTS = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
_NULLSTR = {"type": ["string", "null"]}


def _nullable(node: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [node, {"type": "null"}]}


SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://ebpfguard.io/schemas/incident-summary-1.json",
    "title": "ebpfguard incident summary",
    **_obj({
        "format": {"const": FORMAT},
        "generated": {**_DAY, "description": "the day the summary was made (UTC)"},
        "extension": _obj({"name": _STR, "versions": {"type": "array", "items": _obj({
            "version": _NULLSTR, "policy_sha256": _SHA, "publisher": _NULLSTR,
            "publisher_key_id": _nullable(_KEYID), "signature": {**_STR, "description": "the manifest's signature "
                                                                   "status as the host's trust store judged it"},
            "modes": {"type": "array", "items": _STR}})}}),
        "selection": _obj({"by": {"enum": ["extension", "records"]}, "records": _INT}),
        "period": _obj({"first": _nullable(_DAY), "last": _nullable(_DAY)}),
        "log": _obj({"verified": {"const": True}}),
        "instances": {"type": "array", "items": _obj({
            "n": {"type": "integer", "minimum": 1}, "version": _NULLSTR, "policy_sha256": _nullable(_SHA),
            "mode": _NULLSTR, "launched": _nullable(_DAY), "launch_known": _BOOL, "adopted": _BOOL,
            "ran_s": {"type": ["number", "null"]}, "end": {"enum": [None, "exited", "killed by the agent",
                                                                   "ended while no agent ran"]},
            "exit_status": {"type": ["integer", "null"]}, "violations": _INT,
            "sandbox": {"type": ["integer", "null"], "minimum": 1, "description": "its number in sandboxes"}})},
        "sandboxes": {"type": "array", "items": _obj({
            "layers": {"type": "array", "items": _STR},
            "kernel": _nullable(_obj({"release": _STR, "ebpf": _STR}))})},
        "counts": _obj({"violations": _INT, "shadow": _INT, "by_kind": _COUNTS, "by_verdict": _COUNTS,
                        "by_technique": _COUNTS, "by_response": _COUNTS}),
        "techniques": {"type": "array", "items": _obj({
            "technique": _STR, "attack_id": _ATTACK, "attack_name": _NULLSTR, "count": _INT,
            "kinds": {"type": "array", "items": _STR}, "verdicts": _COUNTS,
            "targets": {"type": "array", "items": _STR}, "targets_omitted": _INT,
            "programs": {"type": "array", "items": _STR}, "first_t": _T})},
        "responses": {"type": "array", "items": _obj({"response": _STR, "layer": _STR, "count": _INT})},
        "ladder": {"type": "array", "items": _obj({"instance": _N, "t": _T, "step": _STR,
                                                   "by": {"enum": ["agent", "operator"]}, "why": _NULLSTR})},
        "rollback": {"type": "array", "items": _obj({
            "instance": _N, "t": _T, "outcome": _STR, "changes": _INT, "counts": _COUNTS, "conflicts": _INT,
            "errors": _INT, "trees": {"type": "array", "items": _STR}})},
        "destinations": {"type": "array", "items": _obj({
            "address": _STR, "port": {"type": ["integer", "null"]}, "proto": _NULLSTR, "op": _STR, "count": _INT,
            "verdicts": _COUNTS})},
        "other_destinations": {"type": "array", "items": _obj({
            "class": {"enum": ["loopback", "private", "link-local", "multicast", "unspecified", "reserved",
                               "unparsed"]},
            "port": {"type": ["integer", "null"]}, "proto": _NULLSTR, "op": _STR, "count": _INT,
            "verdicts": _COUNTS})},
        "policy_events": {"type": "array", "items": _obj({"event": _STR, "version": _NULLSTR, "signature": _NULLSTR,
                                                          "day": _nullable(_DAY)})},
        "timeline": {"type": "array", "items": {
            "type": "object", "required": ["instance", "t", "event"],
            "additionalProperties": False,
            "properties": {"instance": _N, "t": _T, "event": _STR, "kind": _STR, "technique": _STR,
                           "attack_id": _ATTACK, "target": _STR, "verdict": _STR,
                           "actions": {"type": "array", "items": _STR}, "exit_status": {"type": ["integer", "null"]},
                           "killed_by_agent": _BOOL, "by": {"enum": ["agent", "operator"]}, "outcome": _STR,
                           "changes": _INT, "day": _nullable(_DAY)}}},
        "timeline_omitted": _INT,
        "removed": {"type": "array", "items": _STR},
        "signer": _nullable(_obj({"key_id": _KEYID, "public_key": {
            "type": "string", "pattern": "^-----BEGIN PUBLIC KEY-----\\n"}})),
        "signature": {"anyOf": [{"type": "string", "pattern": "^[A-Za-z0-9+/]{86}==$",
                                 "description": "Ed25519, base64, over the canonical JSON of every other field"},
                                {"type": "null"}]},
    }),
}

# A summary of nothing: its report's words are the format's own (vocabulary)
EMPTY: dict[str, Any] = {"format": FORMAT, "extension": {"name": "", "versions": [{}]}, "instances": [{"sandbox": 1}],
                         "sandboxes": [{"kernel": {"release": ""}}],
                         "techniques": [{"targets_omitted": 1}], "ladder": [{"why": "x"}], "rollback": [{}],
                         "timeline": [{"event": e} for e in ("violation", "stop", "rollback", "launch")],
                         "other_destinations": [{}], "destinations": [{}], "timeline_omitted": 1,
                         "counts": {"shadow": 1}, "signer": {}, "signature": "x"}
VOCABULARY = ("user no_new_privs rlimits landlock seccomp mountns readonly mask sockets dbus proxy session system "
              "rollback overlay abi fs signal scope abstract unix none audit tracepoints bpf lsm kernel agent "
              "operator escalation enforce shadow denied killed allowed detected exited connect send bind call "
              "read write exec file network ipc syscall privilege resource lifecycle policy correlation anomaly "
              "loaded rejected promoted flagged discarded committed kept freeze thaw kill quarantine lift throttle "
              "eacces eperm erofs sigkill tcp udp")

"""Correlation: sequences of actions that together are a breach, as data (YAML), evaluated per instance.

    apiVersion: ebpfguard.io/v1
    kind: CorrelationRules
    rules:
      - name: credential-read-then-network
        description: a credential location read (even if allowed), then a network connection
        within: 30s             # from the first step to the last
        response: freeze        # alert (record only) | freeze | kill | quarantine
        steps:
          - {kind: file, access: [read], path: ["~/.ssh/", "~/.gnupg/"]}
          - {kind: network, op: [connect, send]}

A step matches a record or an activity event: ``kind`` (file, exec, network, syscall, privilege, ipc), and
optionally ``access`` (read, write, exec), ``op`` (connect, send, bind; for ipc: call, signal), ``path`` (exact
files, or trees ending in /; ``~`` is the extension user's home), ``same: path`` (the path the first step
captured: a file written, then executed), and for a D-Bus message through the instance's proxy (kind ipc,
passed or refused) ``destination``, ``interface`` and ``member`` (shell patterns: ``org.freedesktop.*``) and
``not_destination`` (patterns it must not match: the bus itself, for instance).

How the kernel helps: the first step of each rule becomes watch paths in the instance's policy slot (EG_ACC_WATCH):
an allowed open there is reported and arms the cgroup for the longest ``within``; while armed, the programs report
the instance's allowed actions too, so that the next steps are seen however fast they follow. Refused actions are
records anyway. An allowed action that matches a step is recorded (verdict ``allowed``), so that the correlation
record names the seq of every step. D-Bus messages are seen by the agent itself (the proxy's log), so an ipc step
needs no help from the kernel; it cannot be the first step (what would arm the kernel for the next ones).
"""

from __future__ import annotations

import fnmatch
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ebpfguard.common.units import parse_duration
from ebpfguard.errors import EbpfguardError

KINDS = ("file", "exec", "network", "syscall", "privilege", "ipc")
DBUS_FIELDS = ("destination", "interface", "member", "not_destination")
RESPONSES = ("alert", "freeze", "kill", "quarantine")


class CorrelationError(EbpfguardError):
    pass


@dataclass(frozen=True)
class Step:
    kind: str
    access: tuple[str, ...] = ()
    op: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()  # with ~ unexpanded
    same: str | None = None      # "path": the path captured by the first step
    dbus: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (field, patterns) of DBUS_FIELDS

    def matches(self, item: dict[str, Any], home: str, captured: str | None) -> bool:
        kind = item.get("kind")
        d = item.get("detail") or {}
        if kind != self.kind:
            return False
        for name, patterns in self.dbus:
            value = str(d.get(name.removeprefix("not_")) or "")
            if any(fnmatch.fnmatchcase(value, p) for p in patterns) == name.startswith("not_"):
                return False
        if self.kind == "ipc":
            return not self.op or d.get("op") in self.op
        if self.access and d.get("access") not in self.access:
            return False
        if self.op and d.get("op") not in self.op:
            return False
        path = str(d.get("path") or "")
        if self.paths and not any(_covers(expand(p, home), path) for p in self.paths):
            return False
        return not (self.same == "path" and path != captured)


def _covers(rule: str, path: str) -> bool:
    return path.startswith(rule) or path == rule.rstrip("/") if rule.endswith("/") else path == rule


def expand(p: str, home: str) -> str:
    return home.rstrip("/") + p[1:] if p.startswith("~/") else p


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    within: float
    response: str
    steps: tuple[Step, ...]
    source: str = ""


@dataclass
class Partial:
    step: int
    started: float
    seqs: list[int | None] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    captured: str | None = None


@dataclass
class Match:
    rule: Rule
    seqs: list[int | None]
    steps: list[dict[str, Any]]


def _strs(v: Any, where: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise CorrelationError(f"{where}: a list of strings is expected")
    return tuple(v)


def parse_rules(text: str, source: str) -> list[Rule]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CorrelationError(f"{source}: not YAML: {err}") from err
    if not isinstance(doc, dict) or doc.get("kind") != "CorrelationRules":
        raise CorrelationError(f"{source}: not correlation rules (kind: CorrelationRules)")
    rules = doc.get("rules")
    if not isinstance(rules, list) or not rules:
        raise CorrelationError(f"{source}: rules must be a non-empty list")
    out: list[Rule] = []
    for i, r in enumerate(rules):
        where = f"{source}: rules[{i}]"
        if not isinstance(r, dict) or not isinstance(r.get("name"), str) or not r["name"]:
            raise CorrelationError(f"{where}: each rule needs a name")
        where = f"{source}: rule {r['name']}"
        unknown = set(r) - {"name", "description", "within", "response", "steps"}
        if unknown:
            raise CorrelationError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        try:
            within = parse_duration(str(r.get("within", "30s")))
        except ValueError as err:
            raise CorrelationError(f"{where}: within: {err}") from err
        response = str(r.get("response", "alert"))
        if response not in RESPONSES:
            raise CorrelationError(f"{where}: response {response!r} is not one of {', '.join(RESPONSES)}")
        steps_in = r.get("steps")
        if not isinstance(steps_in, list) or len(steps_in) < 2:
            raise CorrelationError(f"{where}: steps must list at least two steps")
        steps: list[Step] = []
        for j, s in enumerate(steps_in):
            sw = f"{where}: steps[{j}]"
            if not isinstance(s, dict) or s.get("kind") not in KINDS:
                raise CorrelationError(f"{sw}: kind must be one of {', '.join(KINDS)}")
            unknown = set(s) - {"kind", "access", "op", "path", "same", "capture", *DBUS_FIELDS}
            if unknown:
                raise CorrelationError(f"{sw}: unknown field(s) {', '.join(sorted(unknown))}")
            dbus = tuple((f, _strs(s[f], f"{sw}: {f}")) for f in DBUS_FIELDS if f in s)
            if dbus and s["kind"] != "ipc":
                raise CorrelationError(f"{sw}: {', '.join(f for f, _ in dbus)} apply to ipc steps only")
            if s["kind"] == "ipc" and ("path" in s or "access" in s or "same" in s):
                raise CorrelationError(f"{sw}: an ipc step matches destination, interface, member and op "
                                       "(call, signal), not path, access or same")
            same = s.get("same")
            if same not in (None, "path") or (same and j == 0):
                raise CorrelationError(f"{sw}: same: path is the only form, and not on the first step")
            paths = _strs(s.get("path"), f"{sw}: path")
            for p in paths:
                if not (p.startswith("/") or p.startswith("~/")):
                    raise CorrelationError(f"{sw}: path {p!r} must be absolute or start with ~/")
            steps.append(Step(s["kind"], _strs(s.get("access"), f"{sw}: access"), _strs(s.get("op"), f"{sw}: op"),
                              paths, same, dbus))
        if steps[0].kind not in ("file", "exec") or not steps[0].paths:
            raise CorrelationError(f"{where}: the first step must be a file or exec step with paths (the kernel "
                                   "watches them)")
        out.append(Rule(r["name"], str(r.get("description", "")), within, response, tuple(steps), source))
    names = [r.name for r in out]
    if len(set(names)) != len(names):
        raise CorrelationError(f"{source}: rule names must be unique")
    return out


def load_rules(paths: list[Path]) -> list[Rule]:
    """Every *.yaml in the given files or folders, in order; a later rule of the same name replaces an earlier."""
    by_name: dict[str, Rule] = {}
    for p in paths:
        files = sorted(p.glob("*.yaml")) if p.is_dir() else [p]
        for f in files:
            try:
                text = f.read_text()
            except OSError as err:
                raise CorrelationError(f"{f}: {err.strerror}") from err
            for r in parse_rules(text, str(f)):
                by_name[r.name] = r
    return list(by_name.values())


class Correlator:
    def __init__(self, rules: list[Rule]):
        self.rules = rules
        self.kinds = frozenset(st.kind for r in rules for st in r.steps)
        self.partials: dict[tuple[int, str], list[Partial]] = {}  # (cgroup id, rule) -> sequences under way

    def wants(self, kind: str) -> bool:
        """Does any rule have a step of this kind (so that allowed actions of it are worth feeding)?"""
        return kind in self.kinds

    @property
    def arm_ms(self) -> int:
        return int(max((r.within for r in self.rules), default=0) * 1000)

    def watch(self, home: str) -> tuple[tuple[str, str], ...]:
        """(access, path) the kernel watches: the first steps' paths, for an instance whose home is ``home``."""
        out: dict[tuple[str, str], None] = {}
        for r in self.rules:
            s = r.steps[0]
            for access in s.access or (("exec",) if s.kind == "exec" else ("read", "write")):
                for p in s.paths:
                    out[(access, expand(p, home))] = None
        return tuple(out)

    def watch_for(self, grants: dict[str, list[str]], home: str) -> tuple[tuple[str, str], ...]:
        """The watch paths an instance can reach: those a grant of the same access overlaps (``grants``: access ->
        the manifest's paths). Where none can be reached allowed, nothing is watched and the programs keep their
        short paths: a refused attempt is a record anyway."""
        def overlap(w: str, g: str) -> bool:
            return _covers(w, g.rstrip("/") or "/") or _covers(g, w.rstrip("/") or "/")
        return tuple((a, w) for a, w in self.watch(home) if any(overlap(w, g) for g in grants.get(a, [])))

    def feed(self, cgroup_id: int, rec: dict[str, Any], home: str, now: float | None = None) -> list[Match]:
        """A record of the instance: advance the sequences under way; the completed ones, each once."""
        now = time.monotonic() if now is None else now
        out: list[Match] = []
        d = rec.get("detail") or {}
        step_view: dict[str, Any] = {"seq": rec.get("seq"), "kind": rec.get("kind"), "verdict": rec.get("verdict"),
                                     "time": rec.get("time"), "what": _what(d)}
        if rec.get("_event") is not None:  # an allowed action not recorded yet: recorded if the sequence completes
            step_view["_event"], step_view["detail"] = rec["_event"], d
        for r in self.rules:
            key = (cgroup_id, r.name)
            live = [p for p in self.partials.get(key, []) if now - p.started <= r.within]
            done = None
            for p in live:
                if r.steps[p.step].matches(rec, home, p.captured):
                    p.step += 1
                    p.seqs.append(rec.get("seq"))
                    p.steps.append(dict(step_view))
                    if p.step == len(r.steps):
                        done = p
                        break
            if done is not None:
                out.append(Match(r, done.seqs, done.steps))
                live = []  # one record per sequence: what was under way is part of it
            elif r.steps[0].matches(rec, home, None) and not any(p.step == 1 for p in live):
                path = str((rec.get("detail") or {}).get("path") or "")
                live.append(Partial(1, now, [rec.get("seq")], [dict(step_view)], path))
            if live:
                self.partials[key] = live
            else:
                self.partials.pop(key, None)
        return out

    def forget(self, cgroup_id: int) -> None:
        for key in [k for k in self.partials if k[0] == cgroup_id]:
            del self.partials[key]


def _what(d: dict[str, Any]) -> str:
    if d.get("bus"):  # a D-Bus message (its path is an object path)
        return f"{d.get('destination')} {d.get('interface')}.{d.get('member')} at {d.get('path')}"
    return str(d.get("path") or _address(d))


def _address(d: dict[str, Any]) -> str:
    return f"{d['address']}:{d.get('port')}" if d.get("address") else str(d.get("syscall") or "")


def default_rule_paths(policy_dir: str | None) -> list[Path]:
    """The shipped rules, then the policy directory's correlation/ folder (same names replace shipped ones)."""
    from ebpfguard.common.resources import data_root  # noqa: PLC0415

    paths = [data_root() / "policies" / "correlation"]
    if policy_dir and os.path.isdir(os.path.join(policy_dir, "correlation")):
        paths.append(Path(policy_dir) / "correlation")
    return paths


def load_correlator(policy_dir: str | None) -> Correlator:
    """The shipped rules and POLICY_DIR/correlation/*.yaml; a bad file there is logged and the shipped rules
    stay in force (the agent does not refuse to enforce over it)."""
    import logging  # noqa: PLC0415

    paths = default_rule_paths(policy_dir)
    try:
        rules = load_rules(paths)
    except CorrelationError as err:
        logging.getLogger("ebpfguard").error("correlation rules: %s; the shipped rules are used", err)
        rules = load_rules(paths[:1])
    logging.getLogger("ebpfguard").info("correlation rules: %s", ", ".join(r.name for r in rules) or "none")
    return Correlator(rules)

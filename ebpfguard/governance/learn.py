"""ebpfguard learn: run a command as an extension that is granted nothing, in audit mode, and write the manifest that
grants exactly what it did, each rule with its evidence.

Observe mode is audit mode under an empty manifest: every open, exec, connect, send, bind and unix-socket
connection is a violation that the kernel allows and records, so the learner sees what the programs do through the
same programs, paths resolution and records that enforce them later. Nothing else is new.

Generalizing, with reasons (learners that widen too eagerly write policies that grant what nothing used):
- A file is granted as itself. A folder becomes a tree (``/usr/share/foo/``) only when at least ``threshold``
  (4) distinct files directly in it were used with that access: a program that opens four files of one folder
  reads it as a collection (a library, a theme, a data set), and another run with other input opens others of it.
  A folder that holds ``threshold`` such trees becomes a tree in turn (a package with its sub-packages).
- Never as a tree, whatever the counts: ``/`` and folders one level below it (``/usr/``, ``/etc/``, ``/home/``),
  the user's home and what contains it, and credential locations (``~/.ssh``, ``~/.gnupg``, keyrings, browser
  profiles, cloud and cluster credentials, ``/etc/ssh``, ``/root``, ebpfguard's own state) or any folder holding
  one: files there are granted one by one, so that a reviewer sees each of them.
- Network rules are exact: address/32 (or /128), port and protocol, as used. Syscalls of the built-in deny set that
  the programs made are listed as comments: a manifest cannot grant them.

Evidence is kept beside the manifest (OUT.evidence.json), so ``--merge`` adds a second run's evidence to the first's
and renders both.
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ebpfguard.common.clock import now_ns, rfc3339_ns
from ebpfguard.errors import EbpfguardError

THRESHOLD = 4
CREDENTIALS = (".ssh", ".gnupg", ".local/share/keyrings", ".password-store", ".aws", ".kube", ".docker", ".netrc",
               ".pki", ".mozilla", ".config/google-chrome", ".config/chromium", ".config/BraveSoftware",
               ".thunderbird", ".local/share/kwalletd", ".config/gcloud", ".azure")
SYSTEM_SECRETS = ("/etc/ssh", "/etc/ssl/private", "/root", "/var/lib/ebpfguard", "/etc/shadow", "/etc/gshadow",
                  "/etc/sudoers.d", "/var/lib/sss", "/etc/krb5.keytab")
# sockets every manifest may use already (manifest/load.py), not worth a rule
ALWAYS_UNIX = ("/var/run/nscd/socket", "/run/nscd/socket", "/run/systemd/userdb/")


class LearnError(EbpfguardError):
    pass


@dataclass
class Seen:
    count: int
    first: str  # RFC 3339
    example: str  # a path, or a peer address
    runs: int = 1

    def add(self, count: int, first: str) -> None:
        self.count += count
        self.first = min(self.first, first)

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "first": self.first, "example": self.example, "runs": self.runs}


class Evidence:
    """What the programs used, by rule: files by access, network rules, unix sockets; and what no rule can grant."""

    def __init__(self, home: str):
        self.home = home.rstrip("/") or "/"
        self.files: dict[str, dict[str, Seen]] = {"read": {}, "write": {}, "exec": {}}
        self.net: dict[str, dict[str, Seen]] = {"connect": {}, "bind": {}}
        self.unix: dict[str, Seen] = {}
        self.ungrantable: dict[str, Seen] = {}  # built-in denied syscalls, unresolved paths
        self.runs: list[dict[str, Any]] = []

    # ---- from records ---------------------------------------------------------------------------------------
    def add_record(self, rec: dict[str, Any]) -> None:
        d = rec.get("detail") or {}
        kind = rec.get("kind")
        t = str(rec.get("time") or rfc3339_ns(now_ns()))
        n = 1 + int(d.get("repeats_suppressed") or 0)
        if kind in ("file", "exec"):
            path, access = d.get("path"), d.get("access")
            if d.get("unresolved") or not isinstance(path, str) or not path.startswith("/"):
                self._note(self.ungrantable, f"unresolved {access} of {d.get('raw_path') or path!r}", n, t, "")
                return
            if access not in self.files:
                return
            self._note(self.files[access], os.path.normpath(path), n, t, path)
        elif kind == "network" and d.get("socket") == "unix":
            path = str(d.get("path") or "")
            if path.startswith("/") and not any(path == a or (a.endswith("/") and path.startswith(a))
                                                for a in ALWAYS_UNIX):
                self._note(self.unix, path, n, t, path)
        elif kind == "network":
            op = "bind" if d.get("op") == "bind" else "connect"  # an unconnected send is a connect rule
            addr, port, proto = d.get("address"), d.get("port"), d.get("proto", "tcp")
            if not addr or port is None:
                return
            bits = 128 if ":" in str(addr) else 32
            self._note(self.net[op], f"{addr}/{bits}:{port}/{proto}", n, t, f"{addr} port {port}/{proto}")
        elif kind in ("syscall", "privilege"):
            self._note(self.ungrantable, f"{kind} {d.get('syscall')}", n, t, "")

    @staticmethod
    def _note(table: dict[str, Seen], key: str, n: int, t: str, example: str) -> None:
        if key in table:
            table[key].add(n, t)
        else:
            table[key] = Seen(n, t, example)

    # ---- persistence (--merge) ------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        def tab(t: dict[str, Seen]) -> dict[str, Any]:
            return {k: v.as_dict() for k, v in sorted(t.items())}
        return {"format": "ebpfguard-learn-evidence/1", "home": self.home, "runs": self.runs,
                "files": {a: tab(t) for a, t in self.files.items()}, "net": {o: tab(t) for o, t in self.net.items()},
                "unix": tab(self.unix), "ungrantable": tab(self.ungrantable)}

    @classmethod
    def load(cls, path: Path) -> Evidence:
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise LearnError(f"--merge: no evidence file {path} (written by an earlier `learn -o`)") from err
        except (OSError, ValueError) as err:
            raise LearnError(f"--merge: {path} is not learn evidence: {err}") from err
        if not isinstance(d, dict) or d.get("format") != "ebpfguard-learn-evidence/1":
            raise LearnError(f"--merge: {path} is not learn evidence (format ebpfguard-learn-evidence/1)")
        ev = cls(str(d.get("home") or "/"))
        ev.runs = list(d.get("runs") or [])

        def tab(t: dict[str, Any]) -> dict[str, Seen]:
            return {k: Seen(int(v["count"]), str(v["first"]), str(v.get("example", "")), int(v.get("runs", 1)))
                    for k, v in (t or {}).items()}
        ev.files = {a: tab((d.get("files") or {}).get(a, {})) for a in ("read", "write", "exec")}
        ev.net = {o: tab((d.get("net") or {}).get(o, {})) for o in ("connect", "bind")}
        ev.unix, ev.ungrantable = tab(d.get("unix") or {}), tab(d.get("ungrantable") or {})
        return ev

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.as_dict(), indent=1) + "\n")

    def uses(self, unix: bool = True) -> int:
        """Distinct uses: files by access and network rules, and unix sockets unless ``unix`` is false (a
        baseline's summary has always counted without them)."""
        n = sum(len(t) for t in self.files.values()) + sum(len(t) for t in self.net.values())
        return n + len(self.unix) if unix else n

    def merge(self, other: Evidence) -> None:
        pairs = [(self.files[a], other.files[a]) for a in self.files] + \
                [(self.net[o], other.net[o]) for o in self.net] + \
                [(self.unix, other.unix), (self.ungrantable, other.ungrantable)]
        for mine, theirs in pairs:
            for k, v in theirs.items():
                if k in mine:
                    mine[k].add(v.count, v.first)
                    mine[k].runs += v.runs
                else:
                    mine[k] = Seen(v.count, v.first, v.example, v.runs)
        self.runs = other.runs + self.runs


# ---- generalizing -------------------------------------------------------------------------------------------
def sensitive(home: str) -> list[str]:
    return [f"{home}/{c}" for c in CREDENTIALS] + list(SYSTEM_SECRETS)


def may_be_tree(folder: str, home: str) -> bool:
    """May ``folder`` (no trailing /) be granted as a tree? Not /, not a folder one level below it, not home or
    what holds it, not a credential location, inside one, or holding one."""
    f = folder.rstrip("/")
    if f.count("/") < 2:
        return False
    if f == home or home.startswith(f + "/"):
        return False
    for s in sensitive(home):
        if f == s or f.startswith(s + "/") or s.startswith(f + "/"):
            return False
    return True


@dataclass
class Rule:
    rule: str
    seen: Seen
    files: int  # distinct files behind it


def generalize(used: dict[str, Seen], home: str, threshold: int = THRESHOLD) -> list[Rule]:
    """Exact files, and trees where the evidence says the program uses a folder as a collection."""
    by_dir: dict[str, set[str]] = {}
    for p in used:
        by_dir.setdefault(os.path.dirname(p), set()).add(p)
    trees = {d for d, files in by_dir.items() if len(files) >= threshold and may_be_tree(d, home)}
    # roll up: a folder holding `threshold` trees is a tree
    changed = True
    while changed:
        changed = False
        parents: dict[str, set[str]] = {}
        for t in trees:
            parents.setdefault(os.path.dirname(t), set()).add(t)
        for parent, kids in parents.items():
            if len(kids) >= threshold and parent not in trees and may_be_tree(parent, home):
                trees = {t for t in trees if not (t + "/").startswith(parent + "/")} | {parent}
                changed = True
                break
    out: dict[str, Rule] = {}
    for p, seen in sorted(used.items()):
        tree = next((t for t in sorted(trees, key=len) if p.startswith(t + "/")), None)
        key = tree + "/" if tree else p
        r = out.get(key)
        if r is None:
            out[key] = Rule(key, Seen(seen.count, seen.first, seen.example, seen.runs), 1)
        else:
            r.seen.add(seen.count, seen.first)
            r.seen.runs = max(r.seen.runs, seen.runs)
            r.files += 1
    return [out[k] for k in sorted(out)]


def _n(count: int, unit: str) -> str:
    """3 opens, 1 open; 2 opens for writing, 1 open for writing."""
    word, _, rest = unit.partition(" ")
    word = word if count != 1 else word[:-1]
    return f"{count} {word}" + (f" {rest}" if rest else "")


def _comment(r: Rule, unit: str) -> str:
    what = f"{r.files} files, {_n(r.seen.count, unit)}" if r.files > 1 else _n(r.seen.count, unit)
    runs = f", in {r.seen.runs} runs" if r.seen.runs > 1 else ""
    ex = f", e.g. {r.seen.example}" if r.files > 1 or r.seen.example != r.rule else ""
    return f"{what}{runs}, first {r.seen.first[:19]}Z{ex}"


def render(ev: Evidence, name: str, threshold: int = THRESHOLD) -> str:
    q = json.dumps
    lines = [f"# Learned by `ebpfguard learn` ({len(ev.runs)} run{'s' if len(ev.runs) != 1 else ''}); every rule "
             "says what used it.",
             f"# Trees: a folder with {threshold}+ files used directly in it (or {threshold}+ such trees); never /, "
             "a top folder, home or a credential location."]
    for run in ev.runs:
        lines.append(f"# run {run['started'][:19]}Z, {run['seconds']:.1f} s, {run['ending']}: {run['command'][:90]}")
    lines += ["apiVersion: ebpfguard.io/v1", "kind: Extension",
              f"metadata: {{name: {q(name)}, version: {q('learned-' + str(len(ev.runs)))}}}",
              "spec:", "  mode: enforce", "  filesystem:"]
    files = {a: ev.files[a] for a in ("read", "write", "exec")}
    # what a write or exec grant covers (a write tree is readable; an exec grant reads its file) is not read again
    write_rules = generalize(files["write"], ev.home, threshold)
    exec_rules = [Rule(p, s, 1) for p, s in sorted(files["exec"].items())]
    covered = [r.rule for r in write_rules] + [r.rule for r in exec_rules]
    reads = {p: s for p, s in files["read"].items()
             if not any(p == c or (c.endswith("/") and p.startswith(c)) for c in covered)}
    for access, rules, unit in (("read", generalize(reads, ev.home, threshold), "opens"),
                                ("write", write_rules, "opens for writing"), ("exec", exec_rules, "execs")):
        if not rules:
            lines.append(f"    {access}: []")
            continue
        lines.append(f"    {access}:")
        for r in rules:
            lines.append(f"      - {q(r.rule)}  # {_comment(r, unit)}")
    lines.append("  network:")
    for op in ("connect", "bind"):
        t = ev.net[op]
        if not t:
            lines.append(f"    {op}: []")
            continue
        lines.append(f"    {op}:")
        for k, s in sorted(t.items()):
            lines.append(f"      - {q(k)}  # {_n(s.count, op + 's')}, first {s.first[:19]}Z, peer {s.example}")
    if ev.unix:
        lines += ["  ipc:", "    unix:"]
        for k, s in sorted(ev.unix.items()):
            lines.append(f"      - {q(k)}  # {_n(s.count, 'connections')}, first {s.first[:19]}Z")
    if ev.ungrantable:
        lines.append("# Not granted (no rule can grant it, or the path could not be resolved):")
        for k, s in sorted(ev.ungrantable.items()):
            lines.append(f"#   {k}: {_n(s.count, 'times')}, first {s.first[:19]}Z")
    return "\n".join(lines) + "\n"


OBSERVE = """apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {{name: {name}, version: observe}}
spec:
  mode: audit
"""


def learn(argv: list[str], name: str, duration: float | None, state_dir: str, home: str) -> tuple[Evidence, int]:
    """Run argv as an extension granted nothing, in audit mode, until it ends (or ``duration`` passes, then it is
    killed); returns the evidence and its exit status."""
    from ebpfguard.manifest.load import parse  # noqa: PLC0415
    from ebpfguard.runtime.engine import Engine  # noqa: PLC0415
    from ebpfguard.runtime.launch import LaunchOptions, launch  # noqa: PLC0415
    from ebpfguard.sandbox.launcher import check_command, resolve  # noqa: PLC0415

    m = parse(OBSERVE.format(name=name).encode(), "<learn>", home=home)
    argv = resolve(argv)
    check_command(m, argv, "audit")
    eng = Engine(state_dir)
    ev = Evidence(m.home or home)
    t0, started = time.monotonic(), rfc3339_ns(now_ns())
    try:
        ended = launch(eng, m, argv, LaunchOptions(mode="audit", timeout=duration or None, stop_when_frozen=True))
        status, records, state = ended.status, ended.records, ended.state
    finally:
        eng.close()
    lost = 0
    for rec in records:
        d = rec.get("detail") or {}
        if rec.get("kind") == "lifecycle" and d.get("event") == "over-share":
            lost += int(d.get("records") or 0)
        if rec.get("kind") not in ("lifecycle", "checkpoint"):
            ev.add_record(rec)
    if lost:
        raise LearnError(f"{lost} events of the run were not recorded (over the instance's share of the ring "
                         "buffer): the manifest would miss them; run it again, shorter or with less output")
    ending = f"exit {status}" if status < 128 else f"killed by signal {status - 128}"
    if duration and time.monotonic() - t0 >= duration:
        ending = f"stopped after --duration {duration:g} s"
    ev.runs.append({"command": shlex.join(argv), "started": started, "seconds": time.monotonic() - t0,
                    "ending": ending, "state": state})
    return ev, status


def evidence_file(manifest: Path) -> Path:
    """Where a learned manifest's evidence is kept: beside it, as MANIFEST.evidence.json (what --merge reads)."""
    return manifest.with_name(manifest.name + ".evidence.json")


def extension_name(program: str, name: str | None = None) -> str:
    """metadata.name for what is learned from running ``program``: ``name`` if given, else the program's file
    name in lower case; what a name cannot hold made dashes ("learned" if nothing is left)."""
    label = name or Path(program).name.lower().replace("_", "-")
    return "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in label).strip("-._") or "learned"


def write_manifest(out: Path, ev: Evidence, name: str, threshold: int = THRESHOLD) -> None:
    """Render ``ev`` as the manifest of ``name`` at ``out``, validated before it replaces anything there (a
    ManifestError if it does not), and keep the evidence beside it (evidence_file)."""
    from ebpfguard.manifest.load import load  # noqa: PLC0415

    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render(ev, name, threshold))
    load(tmp)
    tmp.replace(out)
    ev.save(evidence_file(out))


def learn_into(out: Path, argv: list[str], name: str, duration: float | None, home: str,
               threshold: int = THRESHOLD, merge: bool = False) -> tuple[Evidence, int]:
    """learn() with its records in a scratch state folder (not the host's log), then write_manifest(); with
    ``merge``, the evidence already beside ``out`` is added to this run's first. Returns the evidence written
    and the command's exit status."""
    previous = Evidence.load(evidence_file(out)) if merge else None
    with tempfile.TemporaryDirectory(prefix="ebpfguard-learn-") as scratch:
        ev, status = learn(argv, name, duration, scratch, home)
    if previous is not None:
        ev.merge(previous)
    write_manifest(out, ev, name, threshold)
    return ev, status

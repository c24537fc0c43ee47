"""What a notice says: one item of the agent's `subscribe` stream (a record, a refusal, a gap) in plain words, or
None when it is nothing to tell the person at the desktop (an allowed access, a start, a clean stop).

A notice names the extension (and its version, when known), what it tried ("read ~/.ssh/id_ed25519", "connect
203.0.113.7:443", "call org.freedesktop.systemd1 StartTransientUnit"), what was done ("blocked", "frozen after 5
violations in 60 s") and, once `explain` answered, the manifest line that would grant it. Only the fields that say
what was touched are read: never a record's argv or environment, and a record holds no file contents. Every text
taken from a record is cleaned (control and bidi characters become "?": a file name must not forge a line), its home
shown as ~ and long paths shortened in the middle; ``body()`` escapes markup when the server reads markup (the
extension chose the path it tried: "<b>" or "&" in a file name stays text).
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any

from ebpfguard.forensics.records import VIOLATION_KINDS

APP = "ebpfguard"
PATH_MAX = 60      # characters of a path in a notice; longer ones lose their middle
TEXT_MAX = 200     # characters of any other text taken from a record or an answer
SUMMARY_MAX = 80
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_ESCALATION = re.compile(r"escalation\((\d+) in (\d+)s\)")


class Urgency(IntEnum):
    """The spec's urgency levels (the "urgency" hint, a byte)."""

    LOW = 0
    NORMAL = 1
    CRITICAL = 2


ICONS = {Urgency.LOW: "dialog-information", Urgency.NORMAL: "dialog-warning", Urgency.CRITICAL: "dialog-error"}


@dataclass(frozen=True)
class Notice:
    """A notice before the server sees it. ``key`` is what coalesces (an instance id; "refusal:NAME"; "agent");
    ``rank`` orders what was done (a kill outranks a block: the notice shown for a flood says the worst); ``seq``
    is the record `explain` and "Details" are about; ``instance`` what "Stop plug-in" kills, while it runs."""

    key: str
    extension: str
    summary: str  # without the version: see title()
    what: str = ""
    done: str = ""
    fix: str = ""
    urgency: Urgency = Urgency.NORMAL
    category: str = "x-ebpfguard.violation"
    rank: int = 1
    seq: int | None = None
    instance: str | None = None
    stoppable: bool = False
    version: str | None = None

    @property
    def icon(self) -> str:
        return ICONS[self.urgency]

    def title(self) -> str:
        """The summary the server shows: "md-preview 1.4.2 was blocked" (plain text, never markup)."""
        name = f"{self.extension} {self.version}" if self.version else self.extension
        return shorten(f"{name} {self.summary}" if name else self.summary, SUMMARY_MAX)

    def body(self, *, more: int = 0, markup: bool = False, actions: bool = False) -> str:
        """The body: what it tried, what was done, the manifest line that would grant it, how many more events
        this notice stands for, and (with no action buttons) the command that explains it."""
        lines = []
        if self.what:
            lines.append(f"Tried: {self.what}")
        if self.done:
            lines.append(f"Done: {self.done}")
        if self.fix:
            lines.append(f"To allow it: {self.fix}")
        if more:
            lines.append(f"and {more} more")
        if self.seq is not None and not actions:
            lines.append(f"Details: ebpfguard explain {self.seq}")
        text = "\n".join(lines)
        return html.escape(text, quote=False) if markup else text

    def with_explanation(self, explanation: Mapping[str, Any], home: str) -> Notice:
        """The notice with the manifest line `explain` gave, and the version of the manifest it names."""
        fix = str(explanation.get("fix") or "")
        fix = re.sub(r"^if (this|it) .*? (is legitimate|is normal[^,]*), ", "", fix)
        manifest = explanation.get("manifest") or {}
        version = self.version or (str(manifest["version"]) if manifest.get("version") else None)
        return replace(self, fix=text(fix, home) if fix and fix != "-" else "", version=version)


# ---- the words -------------------------------------------------------------------------------------------------
def clean(s: object) -> str:
    """One line of text: control and bidi characters (a newline in a file name) become "?"."""
    return _UNSAFE.sub("?", str(s))


def shorten(s: str, limit: int) -> str:
    """``s`` with its middle replaced by "…" when longer than ``limit`` (a path's start and its file name stay)."""
    if len(s) <= limit:
        return s
    head = (limit - 1) // 2
    return s[:head] + "…" + s[len(s) - (limit - 1 - head):]


def tilde(path: str, home: str) -> str:
    """``path`` with the home folder shown as ~."""
    home = home.rstrip("/")
    if home and (path == home or path.startswith(home + "/")):
        return "~" + path[len(home):]
    return path


def path_text(path: object, home: str) -> str:
    return shorten(tilde(clean(path), home), PATH_MAX)


def text(s: object, home: str, limit: int = TEXT_MAX) -> str:
    """Free text (an error, a manifest line): cleaned, the home as ~ wherever a path starts with it, shortened."""
    home = home.rstrip("/")
    out = clean(s)
    if home:
        out = re.sub(rf"(?<![\w/.-]){re.escape(home)}(?=/|\b|$)", "~", out)
    return shorten(out, limit)


def _access(d: Mapping[str, Any]) -> str:
    """read, write or exec: the record's access, else what Landlock's report says blocked it (fs.read_file...)."""
    if d.get("access"):
        return clean(d["access"])
    blockers = " ".join(str(b) for b in d.get("blockers") or [])
    if "fs.execute" in blockers:
        return "exec"
    if any(w in blockers for w in ("fs.write", "fs.make", "fs.remove", "fs.truncate", "fs.refer")):
        return "write"
    return "read"


def _tried(kind: str, d: Mapping[str, Any], home: str) -> str:
    """What an extension tried, from a violation's detail (paths, addresses, bus names: never argv)."""
    if kind in ("file", "exec"):
        verb = "run" if kind == "exec" or _access(d) == "exec" else _access(d)
        return f"{clean(verb)} {path_text(d.get('path') or d.get('name') or '?', home)}"
    if kind == "network":
        op = clean(d.get("op") or "connect")
        if d.get("socket") == "unix" or (d.get("path") and not d.get("address")):
            return f"{op} to the socket {path_text(d.get('path') or '?', home)}"
        addr = clean(d.get("address") or "?")
        addr = f"[{addr}]" if ":" in addr else addr
        return f"{op} {addr}:{clean(d.get('port'))}" if d.get("port") is not None else f"{op} {addr}"
    if kind == "ipc":
        name = clean(d.get("destination") or d.get("name") or "?")
        if d.get("op") == "own":
            return f"own the bus name {name}"
        member = f" {clean(d['member'])}" if d.get("member") else ""
        return shorten(f"call {name}{member}", TEXT_MAX)
    if kind in ("syscall", "privilege"):
        return f"use the system call {clean(d.get('syscall') or d.get('nr') or '?')}"
    if kind == "resource":
        return f"go past its {clean(d.get('resource') or '?')} limit"
    if kind == "correlation":
        return text(f"a suspicious sequence: {d.get('description') or d.get('rule')}", home)
    if kind == "anomaly":
        return text(f"something new for it: {d.get('what')} {d.get('value')}", home)
    return clean(kind)


def _done(verdict: str | None, actions: list[str], mode: str | None) -> tuple[str, str, Urgency, int] | None:
    """(the summary's verb, what was done, urgency, rank) for a judged action, None if nothing was done to it."""
    steps = {a.split(":", 1)[0] if a.startswith("cgroup.") else a for a in actions}
    note = next((m for a in actions if (m := _ESCALATION.search(a))), None)
    after = f" after {note.group(1)} violations in {note.group(2)} s" if note else ""
    if steps & {"cgroup.kill", "sigkill:agent"} or verdict == "killed":
        return "was killed", f"killed{after}", Urgency.CRITICAL, 4
    if "quarantine" in steps:
        return "was quarantined", f"its network was cut off{after}", Urgency.CRITICAL, 3
    if "cgroup.freeze" in steps:
        return "was frozen", f"frozen{after}", Urgency.NORMAL, 2
    if "throttle" in steps:
        return "was throttled", f"slowed down{after}", Urgency.NORMAL, 1
    if verdict == "denied":
        return "was blocked", "blocked", Urgency.NORMAL, 1
    if verdict == "detected":
        why = " (audit mode)" if mode == "audit" else ""
        return "did something not allowed", f"reported, not blocked{why}", Urgency.LOW, 0
    return None


_BY_HAND = {"freeze": ("was frozen", "frozen by hand", Urgency.NORMAL, 2),
            "thaw": ("was thawed", "thawed by hand: it runs again", Urgency.LOW, 0),
            "kill": ("was killed", "killed by hand", Urgency.CRITICAL, 4),
            "quarantine": ("was quarantined", "its network was cut off by hand", Urgency.CRITICAL, 3),
            "lift": ("got its network back", "the quarantine was lifted by hand", Urgency.LOW, 0)}


def notice_of(item: Mapping[str, Any], home: str) -> Notice | None:
    """The notice for one line of the `subscribe` stream, or None when it says nothing the person needs."""
    if "refusal" in item:
        r = item["refusal"] or {}
        ext = clean(r.get("extension") or "a plug-in")
        return Notice(key=f"refusal:{ext}", extension=ext, summary="was not started",
                      what="", done=text(str(r.get("error") or "refused").splitlines()[0] if r.get("error") else
                                         "refused", home),
                      category="x-ebpfguard.refusal", rank=1)
    if "lost" in item:
        return Notice(key="lost", extension="", summary=f"ebpfguard: {int(item['lost'])} events were not shown",
                      done="the notifier fell behind; `ebpfguard trace` lists them all", urgency=Urgency.LOW,
                      category="x-ebpfguard.agent", rank=0)
    rec = item.get("record")
    if not isinstance(rec, Mapping):
        return None
    return _record(rec, home)


def _record(rec: Mapping[str, Any], home: str) -> Notice | None:
    kind = str(rec.get("kind"))
    d = rec.get("detail") if isinstance(rec.get("detail"), Mapping) else {}
    assert isinstance(d, Mapping)
    actions = [str(a) for a in rec.get("actions") or []]
    ext, inst = clean(rec.get("extension") or "a plug-in"), rec.get("instance")
    seq = rec.get("seq") if isinstance(rec.get("seq"), int) else None

    def mk(**kw: Any) -> Notice:
        return Notice(key=str(inst or ext), extension=ext, instance=str(inst) if inst else None, seq=seq, **kw)

    if kind in VIOLATION_KINDS:
        done = _done(rec.get("verdict"), actions, rec.get("mode"))
        if done is None:  # allowed, a shadow version's would-be refusal, activity
            return None
        summary, what_done, urgency, rank = done
        return mk(summary=summary, what=_tried(kind, d, home), done=what_done, urgency=urgency, rank=rank,
                      stoppable=rank < 4)
    event = d.get("event")
    if kind == "lifecycle" and event == "escalation":
        done = _done(None, actions, rec.get("mode"))
        if done is None:
            return None
        summary, what_done, urgency, rank = done
        return mk(summary=summary, what=f"{int(d.get('repeats') or 0)} repeated violations",
                      done=what_done, urgency=urgency, rank=rank, category="x-ebpfguard.lifecycle",
                      stoppable=rank < 4)
    if kind == "lifecycle" and event in _BY_HAND and d.get("by") == "operator":
        summary, what_done, urgency, rank = _BY_HAND[str(event)]
        return mk(summary=summary, done=what_done, urgency=urgency, rank=rank,
                      category="x-ebpfguard.lifecycle", stoppable=rank < 4)
    if kind == "rollback" and event == "discarded":
        trees = ", ".join(path_text(t, home) for t in (d.get("trees") or [])[:3])
        return mk(summary="was stopped and rolled back",
                      done=f"stopped; its changes were rolled back ({int(d.get('count') or 0)} in {trees or '-'})",
                      urgency=Urgency.NORMAL, rank=4, category="x-ebpfguard.rollback")
    if kind == "rollback" and event == "kept":
        return mk(summary="left changes to review",
                      done=f"kept for you: ebpfguard rollback show {clean(inst)}", urgency=Urgency.LOW, rank=0,
                      category="x-ebpfguard.rollback")
    return None


def agent_gone() -> Notice:
    """Said once, quietly, when the agent goes away (it comes back with its service's restart)."""
    return Notice(key="agent", extension="", summary="ebpfguard: the agent is not running",
                  done="notices of your plug-ins resume when it is back", urgency=Urgency.LOW,
                  category="x-ebpfguard.agent", rank=0)


def sample(home: str) -> Notice:
    """What `ebpfguard notify --test` shows: a notice as a blocked read of a key would give."""
    return Notice(key="sample", extension="md-preview", version="1.4.2", summary="was blocked (a sample notice)",
                  what=f"read {path_text(home.rstrip('/') + '/.ssh/id_ed25519', home)}", done="blocked",
                  fix='add to spec.filesystem.read: "~/.ssh/id_ed25519"', urgency=Urgency.NORMAL, rank=1)

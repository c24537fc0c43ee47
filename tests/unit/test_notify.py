"""The desktop notifier without a desktop: what a notice says for each kind of record (escaped, ~ for the home,
shortened, nothing of argv or environment), the coalescing of floods on a stepped clock, and the notifier's choice
of Notify calls against a recording bus (the real server and bus: tests/e2e/test_notify.py)."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

from ebpfguard.notify.coalesce import Coalescer
from ebpfguard.notify.notices import Notice, Urgency, clean, notice_of, sample, shorten, text
from ebpfguard.notify.notifier import Notifier

HOME = "/home/ada"


def rec(kind: str, detail: dict[str, Any], verdict: str | None = "denied", actions: list[str] | None = None,
        **extra: Any) -> dict[str, Any]:
    return {"record": {"seq": 41, "kind": kind, "extension": "md-preview", "instance": "md-preview-3f2a9c",
                       "mode": "enforce", "verdict": verdict, "actions": actions or ["eacces:landlock"],
                       "detail": detail, **extra}}


def test_a_blocked_read_of_a_key_under_the_home() -> None:
    n = notice_of(rec("file", {"path": f"{HOME}/.ssh/id_ed25519", "access": "read"}), HOME)
    assert n is not None
    assert n.title() == "md-preview was blocked"
    assert n.what == "read ~/.ssh/id_ed25519" and n.done == "blocked"
    assert n.urgency is Urgency.NORMAL and n.icon == "dialog-warning" and n.seq == 41
    assert n.body().splitlines() == ["Tried: read ~/.ssh/id_ed25519", "Done: blocked",
                                     "Details: ebpfguard explain 41"]
    assert "Details" not in n.body(actions=True)


def test_the_version_and_the_manifest_line_come_from_explain() -> None:
    n = notice_of(rec("file", {"path": f"{HOME}/.ssh/id_ed25519", "access": "read"}), HOME)
    assert n is not None
    e = {"fix": f'if this read is legitimate, add to spec.filesystem.read: "{HOME}/.ssh/id_ed25519" (or the tree '
                f'"{HOME}/.ssh/")', "manifest": {"name": "md-preview", "version": "1.4.2", "sha256": "ab"}}
    n = n.with_explanation(e, HOME)
    assert n.title() == "md-preview 1.4.2 was blocked"
    assert n.fix == 'add to spec.filesystem.read: "~/.ssh/id_ed25519" (or the tree "~/.ssh/")'
    assert "To allow it: add to spec.filesystem.read" in n.body()


def test_what_each_kind_tried() -> None:
    cases = [
        (rec("network", {"op": "connect", "address": "203.0.113.7", "port": 443, "proto": "tcp"}),
         "connect 203.0.113.7:443"),
        (rec("network", {"op": "connect", "address": "2001:db8::1", "port": 80}), "connect [2001:db8::1]:80"),
        (rec("network", {"op": "connect", "socket": "unix", "path": f"{HOME}/.gnupg/S.gpg-agent"}),
         "connect to the socket ~/.gnupg/S.gpg-agent"),
        (rec("ipc", {"bus": "session", "destination": "org.freedesktop.systemd1", "op": "call",
                     "interface": "org.freedesktop.systemd1.Manager", "member": "StartTransientUnit"}),
         "call org.freedesktop.systemd1 StartTransientUnit"),
        (rec("exec", {"path": "/usr/bin/curl", "access": "exec"}), "run /usr/bin/curl"),
        (rec("syscall", {"syscall": "ptrace"}), "use the system call ptrace"),
        (rec("file", {"path": f"{HOME}/notes.txt", "access": "write"}), "write ~/notes.txt"),
        (rec("file", {"path": f"{HOME}/.ssh/id_ed25519", "blockers": ["fs.read_file"]}), "read ~/.ssh/id_ed25519"),
        (rec("file", {"path": f"{HOME}/x", "blockers": ["fs.make_reg"]}), "write ~/x"),
    ]
    for item, what in cases:
        n = notice_of(item, HOME)
        assert n is not None and n.what == what, (item, n)


def test_what_was_done_sets_the_summary_and_the_urgency() -> None:
    kill = notice_of(rec("file", {"path": "/etc/shadow"}, verdict="killed", actions=["cgroup.kill"]), HOME)
    assert kill is not None and kill.title() == "md-preview was killed" and kill.urgency is Urgency.CRITICAL
    assert kill.icon == "dialog-error" and not kill.stoppable
    frozen = notice_of(rec("file", {"path": "/etc/shadow"},
                           actions=["eacces:landlock", "cgroup.freeze:escalation(5 in 60s)"]), HOME)
    assert frozen is not None and frozen.summary == "was frozen"
    assert frozen.done == "frozen after 5 violations in 60 s" and frozen.urgency is Urgency.NORMAL
    quarantined = notice_of(rec("network", {"address": "203.0.113.7", "port": 443}, actions=["quarantine"]), HOME)
    assert quarantined is not None and quarantined.urgency is Urgency.CRITICAL
    assert quarantined.summary == "was quarantined"
    audit = notice_of(rec("file", {"path": "/etc/shadow"}, verdict="detected", actions=[], mode="audit"), HOME)
    assert audit is not None and audit.urgency is Urgency.LOW and audit.done == "reported, not blocked (audit mode)"
    escalation = notice_of({"record": {"seq": 9, "kind": "lifecycle", "extension": "x", "instance": "x-1",
                                       "actions": ["cgroup.kill:escalation(3 in 60s)"],
                                       "detail": {"event": "escalation", "repeats": 300}}}, HOME)
    assert escalation is not None and escalation.done == "killed after 3 violations in 60 s"
    assert escalation.what == "300 repeated violations"
    discarded = notice_of({"record": {"seq": 10, "kind": "rollback", "extension": "x", "instance": "x-1",
                                      "detail": {"event": "discarded", "count": 3, "trees": [f"{HOME}/work"]}}},
                          HOME)
    assert discarded is not None and discarded.done == "stopped; its changes were rolled back (3 in ~/work)"


def test_what_is_nothing_to_tell() -> None:
    assert notice_of(rec("file", {"path": "/usr/lib/x"}, verdict="allowed", actions=[]), HOME) is None
    assert notice_of(rec("file", {"path": "/usr/lib/x"}, verdict="shadow", actions=[]), HOME) is None
    start = {"record": {"seq": 1, "kind": "lifecycle", "extension": "x", "instance": "x-1",
                        "detail": {"event": "start", "argv": ["x", "--token=s3cret"]}}}
    assert notice_of(start, HOME) is None
    closed = {"record": {"seq": 2, "kind": "lifecycle", "extension": "x", "instance": "x-1", "actions": ["kill"],
                         "detail": {"event": "kill", "by": "agent", "why": "the connection that launched it closed"}}}
    assert notice_of(closed, HOME) is None
    committed = {"record": {"seq": 3, "kind": "rollback", "extension": "x", "instance": "x-1",
                            "detail": {"event": "committed", "count": 1}}}
    assert notice_of(committed, HOME) is None


def test_no_argv_environment_or_contents_reach_a_notice() -> None:
    item = rec("file", {"path": "/etc/shadow", "access": "read", "argv": ["cat", "--password=s3cret"],
                        "env": {"TOKEN": "s3cret"}, "contents": "root:s3cret"})
    item["record"]["comm"] = "s3cret"
    n = notice_of(item, HOME)
    assert n is not None
    shown = n.title() + n.body()
    assert "s3cret" not in shown and "TOKEN" not in shown


def test_markup_in_a_path_stays_text() -> None:
    n = notice_of(rec("file", {"path": f"{HOME}/<b>bold</b> & <a href='x'>.txt", "access": "read"}), HOME)
    assert n is not None
    body = n.body(markup=True)
    assert "<b>" not in body and "<a" not in body
    assert "read ~/&lt;b&gt;bold&lt;/b&gt; &amp; &lt;a href='x'&gt;.txt" in body
    assert "<b>" in n.body(markup=False)  # a server without markup shows the text as it is
    assert "<b>" not in Notice(key="k", extension="<b>x</b>", summary="was blocked").body(markup=True)


def test_control_characters_cannot_forge_lines() -> None:
    n = notice_of(rec("file", {"path": "/tmp/a\nDone: allowed\u202e", "access": "read"}), HOME)
    assert n is not None and n.what == "read /tmp/a?Done: allowed?"
    assert clean("a\tb\x1b[31m") == "a?b?[31m"


def test_long_paths_lose_their_middle() -> None:
    deep = f"{HOME}/" + "/".join(f"folder{i}" for i in range(20)) + "/id_ed25519"
    n = notice_of(rec("file", {"path": deep, "access": "read"}), HOME)
    assert n is not None
    shown = n.what.removeprefix("read ")
    assert len(shown) == 60 and shown.startswith("~/folder0/folder1/") and shown.endswith("/id_ed25519")
    assert "…" in shown
    assert shorten("abcdefghij", 5) == "ab…ij" and shorten("abc", 5) == "abc"


def test_the_home_becomes_tilde_only_where_a_path_starts() -> None:
    assert text(f"no such file {HOME}/x (nor /srv{HOME}/y, nor {HOME}rest)", HOME) == \
        f"no such file ~/x (nor /srv{HOME}/y, nor {HOME}rest)"
    assert notice_of(rec("file", {"path": HOME, "access": "read"}), HOME).what == "read ~"  # type: ignore[union-attr]


def test_a_refusal_and_a_gap() -> None:
    n = notice_of({"refusal": {"extension": "md-preview", "error": f"{HOME}/x.yaml: bad manifest\nline 2"}}, HOME)
    assert n is not None and n.title() == "md-preview was not started" and n.done == "~/x.yaml: bad manifest"
    assert n.key == "refusal:md-preview" and n.seq is None
    lost = notice_of({"lost": 12}, HOME)
    assert lost is not None and lost.title() == "ebpfguard: 12 events were not shown"


def test_the_sample_notice() -> None:
    n = sample(HOME)
    assert n.title() == "md-preview 1.4.2 was blocked (a sample notice)" and "~/.ssh/id_ed25519" in n.body()


# ---- coalescing, on a stepped clock ---------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def blocked(i: int = 0, instance: str = "md-preview-3f2a9c") -> Notice:
    return Notice(key=instance, extension="md-preview", summary="was blocked", what=f"read /x/{i}", seq=i,
                  instance=instance)


def test_a_flood_of_ten_thousand_makes_at_most_three_notices() -> None:
    clock = Clock()
    c = Coalescer(clock)
    new = updates = 0
    for i in range(10_000):  # 10,000 violations over 4 s
        clock.t = 1000.0 + i * 0.0004
        for show in [s for s in [c.add(blocked(i))] if s] + c.due():
            new += show.new
            updates += not show.new
    clock.t += 1.0
    for show in c.due():
        updates += not show.new
    assert new <= 3 and new == 1
    assert updates <= 6  # at most one update per second: the server is not flooded either
    (slot,) = c.slots.values()
    assert slot.more == 9_999 and not slot.pending


def test_an_update_replaces_the_notice_with_a_count() -> None:
    clock = Clock()
    c = Coalescer(clock)
    first = c.add(blocked(1))
    assert first is not None and first.new
    c.shown(first.slot, 77)
    clock.t += 0.2
    assert c.add(blocked(2)) is None  # within a second of the last Notify: it waits
    assert abs((c.wait() or 0) - 0.8) < 1e-9
    clock.t += 0.8
    (update,) = c.due()
    assert not update.new and update.slot.id == 77 and update.slot.more == 1
    assert update.slot.notice.body(more=update.slot.more).endswith("and 1 more\nDetails: ebpfguard explain 1")


def test_one_new_notice_per_instance_per_ten_seconds() -> None:
    clock = Clock()
    c = Coalescer(clock)
    assert c.add(blocked(1)).new  # type: ignore[union-attr]
    clock.t += 9.9
    again = c.add(blocked(2))
    assert again is not None and not again.new
    clock.t += 0.1  # ten seconds since the first: a new notice may come
    assert c.add(blocked(3)).new  # type: ignore[union-attr]
    other = c.add(blocked(4, instance="md-preview-other"))
    assert other is not None and other.new  # another instance has its own


def test_a_worse_event_takes_the_notice_over_at_once() -> None:
    clock = Clock()
    c = Coalescer(clock)
    c.add(blocked(1))
    clock.t += 0.1
    kill = Notice(key="md-preview-3f2a9c", extension="md-preview", summary="was killed", rank=4,
                  urgency=Urgency.CRITICAL)
    show = c.add(kill)
    assert show is not None and not show.new and show.slot.notice is kill and show.slot.more == 1
    clock.t += 0.1
    assert c.add(blocked(2)) is None and c.slots["md-preview-3f2a9c"].notice is kill


# ---- the notifier against a recording bus ---------------------------------------------------------------------
class Bus:
    def __init__(self, caps: set[str]) -> None:
        self.caps, self.calls, self.closed = caps, [], []  # type: ignore[var-annotated]
        self.pending: list[tuple[str, tuple[Any, ...]]] = []

    def capabilities(self) -> set[str]:
        return self.caps

    def notify(self, **kw: Any) -> int:
        self.calls.append(kw)
        return kw["replaces"] or len(self.calls)

    def close(self, ident: int) -> None:
        self.closed.append(ident)

    def signals(self) -> list[tuple[str, tuple[Any, ...]]]:
        out, self.pending = self.pending, []
        return out

    def fileno(self) -> int:
        return 0


def notifier(tmp_path: Path, caps: set[str], clock: Clock) -> tuple[Notifier, Bus]:
    bus = Bus(caps)
    n = Notifier(bus, socket=str(tmp_path / "no-agent.sock"), home=HOME, runtime_dir=str(tmp_path),  # type: ignore[arg-type]
                 clock=clock, opener=["true"])
    return n, bus


def test_the_notifier_escapes_and_offers_actions_as_the_server_allows(tmp_path: Path) -> None:
    clock = Clock()
    n, bus = notifier(tmp_path, {"actions", "body-markup"}, clock)
    n.handle(rec("file", {"path": f"{HOME}/<i>&", "access": "read"}))
    (call,) = bus.calls
    assert call["summary"] == "md-preview was blocked" and call["app"] == "ebpfguard" and call["replaces"] == 0
    assert "~/&lt;i&gt;&amp;" in call["body"] and "ebpfguard explain" not in call["body"]
    assert call["actions"] == ["details", "Details", "stop", "Stop plug-in"]
    assert call["hints"]["urgency"] == ("y", 1) and call["hints"]["category"] == ("s", "x-ebpfguard.violation")
    plain, bus2 = notifier(tmp_path, set(), clock)
    plain.handle(rec("file", {"path": f"{HOME}/<i>&", "access": "read"}))
    (call,) = bus2.calls
    assert call["actions"] == [] and "~/<i>&" in call["body"] and "Details: ebpfguard explain 41" in call["body"]


def test_the_notifier_coalesces_a_flood_into_updates_in_place(tmp_path: Path) -> None:
    clock = Clock()
    n, bus = notifier(tmp_path, {"actions"}, clock)
    for i in range(500):
        clock.t += 0.005
        n.handle(rec("file", {"path": f"/etc/f{i}", "access": "read"}))
    clock.t += 1.0
    n.step(max_wait=0)  # the update still waiting is made (and, with no agent, that is said once)
    calls = [c for c in bus.calls if c["summary"] == "md-preview was blocked"]
    assert calls[0]["replaces"] == 0
    assert all(c["replaces"] == 1 for c in calls[1:]) and 2 <= len(calls) <= 5
    assert calls[-1]["body"].splitlines()[-1] == "and 499 more"


def test_the_agent_gone_is_said_once(tmp_path: Path) -> None:
    clock = Clock()
    n, bus = notifier(tmp_path, set(), clock)
    for _ in range(3):
        n.step(max_wait=0)
        clock.t += 5
    assert [c["summary"] for c in bus.calls] == ["ebpfguard: the agent is not running"]
    assert bus.calls[0]["hints"]["urgency"] == ("y", 0)


# ---- the actions, against a stand-in agent on a real socket ----------------------------------------------------
class Agent:
    """Answers one request per connection, as the agent's table would: explain and kill; records what it got."""

    def __init__(self, path: Path) -> None:
        self.got: list[dict[str, Any]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                req = json.loads(conn.makefile().readline())
                self.got.append(req)
                answer = {"explain": {"ok": True, "explanation": {
                    "seq": 41, "extension": "md-preview", "kind": "file", "verdict": "denied", "actions": [],
                    "rule": "no entry covers it", "response": "file: block", "fix": "add it",
                    "manifest": {"name": "md-preview", "version": "1.4.2", "sha256": "ab" * 32}}},
                    "kill": {"ok": True, "instances": [req.get("name")]}}.get(req["op"], {"ok": False, "error": "no",
                                                                                         "exit_code": 1})
                conn.sendall(json.dumps(answer).encode() + b"\n")


def test_details_writes_the_explanation_and_opens_it_and_stop_kills(tmp_path: Path) -> None:
    agent = Agent(tmp_path / "agent.sock")
    bus = Bus({"actions"})
    opened = tmp_path / "opened"
    n = Notifier(bus, socket=str(tmp_path / "agent.sock"), home=HOME, runtime_dir=str(tmp_path),  # type: ignore[arg-type]
                 clock=Clock(), opener=["/bin/sh", "-c", f'cp "$0" {opened}'])
    n.handle(rec("file", {"path": f"{HOME}/.ssh/id_ed25519", "access": "read"}))
    (call,) = bus.calls
    assert call["summary"] == "md-preview 1.4.2 was blocked" and "To allow it: add it" in call["body"]
    bus.pending = [("ActionInvoked", (1, "details"))]
    n._bus_signals()
    written = tmp_path / "ebpfguard" / "explain-41.txt"
    assert written.read_text().startswith("record 41: file violation by md-preview -> denied")
    assert written.stat().st_mode & 0o777 == 0o600
    n.children[0].wait(10)
    assert opened.read_text() == written.read_text()
    bus.pending = [("ActionInvoked", (1, "stop")), ("ActionInvoked", (99, "stop"))]  # 99: no notice of ours
    n._bus_signals()
    assert [r for r in agent.got if r["op"] == "kill"] == [{"op": "kill", "name": "md-preview-3f2a9c"}]
    killed = {"record": {"seq": 50, "kind": "lifecycle", "extension": "md-preview", "instance": "md-preview-3f2a9c",
                         "actions": ["kill"], "detail": {"event": "kill", "by": "operator"}}}
    n.handle(killed)  # the user's own Stop: not told back to them
    assert len(bus.calls) == 1

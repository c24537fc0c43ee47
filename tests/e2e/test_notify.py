"""`ebpfguard notify` as a desktop user has it: real users (useradd), each with their own session dbus-daemon, a real
notification server (Debian's notification-daemon) on an Xvfb display, the real agent, and the user's own
notifier; every Notify call on a user's bus is watched exactly (a jeepney monitor, run as that user). Judged as
the person at the desktop would: a blocked read gives one notice with the right summary and body within 2 s, a flood
at most 3, a path with markup arrives escaped, the second user's notifier hears nothing of the first user's
instances, the agent's restart is survived, and the notifier leaves when its session bus goes. The screen, with a
real notice on it, is taken from Xvfb's framebuffer each run; EBPFGUARD_SCREENSHOT=1 saves it as
docs/notify-screenshot.png (the docs' picture), else it goes to the run's temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import SLOW, TOP, Served, User, serve, wait

pytestmark = pytest.mark.e2e

POLICY = """apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {{name: {name}, version: "{version}"}}
spec:
  mode: enforce
  filesystem:
    read: [/usr/, /lib/, /lib64/, /etc/ld.so.cache, /etc/passwd, /etc/locale.alias, ~/work/]
    write: [~/work/]
    exec: [/usr/bin/sh, /bin/sh, /usr/bin/dash, /bin/dash, /usr/bin/cat, /bin/cat, /usr/bin/sleep, /bin/sleep]
  response: {{file: block}}
"""
SHOT = TOP / "docs" / "notify-screenshot.png"

# Run as the user on their own bus: every Notify call, as one JSON line [time, app, replaces, icon, summary, body,
# actions, hints, timeout]
MONITOR = """
import json, sys, time
from jeepney import MatchRule
from jeepney.bus_messages import Monitoring
from jeepney.io.blocking import open_dbus_connection
conn = open_dbus_connection(sys.argv[1])
rule = MatchRule(type="method_call", interface="org.freedesktop.Notifications", member="Notify")
conn.send_and_get_reply(Monitoring().BecomeMonitor([rule.serialise()]))
print(json.dumps(["ready"]), flush=True)
while True:
    try:
        msg = conn.receive()
    except OSError:
        break
    if msg.header.fields.get(3) == "Notify":
        print(json.dumps([time.time(), *msg.body]), flush=True)
"""


class Session:
    """One user's graphical session: their dbus-daemon, notification-daemon on the shared display, the monitor,
    and their notifier. Stopped by pid."""

    def __init__(self, served: Served, user: User, display: str, top: Path) -> None:
        self.user, self.served = user, served
        self.dir = top / user.name
        self.dir.mkdir(mode=0o700)
        os.chown(self.dir, user.uid, user.gid)
        self.bus = f"unix:path={self.dir}/bus"
        self.env = {**served.env(user), "DBUS_SESSION_BUS_ADDRESS": self.bus, "XDG_RUNTIME_DIR": str(self.dir),
                    "DISPLAY": display, "NO_AT_BRIDGE": "1"}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.monitor_log = self.dir / "monitor.jsonl"
        self.notifier_log = self.dir / "notifier.log"
        self._start("dbus-daemon", ["dbus-daemon", "--session", "--nofork", "--nopidfile", f"--address={self.bus}"])
        wait("the session bus is up", (self.dir / "bus").exists)
        self._start("notification-daemon", ["/usr/lib/notification-daemon/notification-daemon", "--replace"])
        with open(self.monitor_log, "wb") as out:
            self._start("monitor", ["/usr/bin/python3", "-c", MONITOR, self.bus], stdout=out)
        wait("the monitor watches the bus", lambda: self.monitor_log.read_bytes().startswith(b'["ready"]'))
        wait("notification-daemon owns its name", self._server_up)
        with open(self.notifier_log, "wb") as out:
            self.notifier = self._start("notifier", self.served.argv("notify", "-v"), stderr=out)
        wait("the notifier follows the agent", lambda: "following your instances" in self.notifier_text(), 20)

    def _start(self, name: str, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(argv, user=self.user.uid, group=self.user.gid, extra_groups=[], env=self.env,
                             cwd=self.dir, stdin=subprocess.DEVNULL, **kw)
        self.procs[name] = p
        return p

    def _server_up(self) -> bool:
        r = subprocess.run(["dbus-send", "--session", "--print-reply", "--dest=org.freedesktop.DBus",
                            "/org/freedesktop/DBus", "org.freedesktop.DBus.NameHasOwner",
                            "string:org.freedesktop.Notifications"], user=self.user.uid, group=self.user.gid,
                           extra_groups=[], env=self.env, capture_output=True, text=True, timeout=10)
        return "boolean true" in r.stdout

    def notifier_text(self) -> str:
        return self.notifier_log.read_text(errors="replace")

    def notices(self) -> list[dict[str, Any]]:
        out = []
        for line in self.monitor_log.read_text().splitlines()[1:]:
            t, app, replaces, icon, summary, body, actions, hints, _ = json.loads(line)
            out.append({"time": t, "app": app, "replaces": replaces, "icon": icon, "summary": summary, "body": body,
                        "actions": actions, "hints": {k: v[1] for k, v in hints.items()}})
        return out

    def stop(self) -> None:
        for p in reversed(list(self.procs.values())):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


@pytest.fixture(scope="module")
def served(users: tuple[User, User]) -> Iterator[Served]:
    with serve({"notify-tool.yaml": POLICY.format(name="notify-tool", version="1.4.2"),
                "notify-flood.yaml": POLICY.format(name="notify-flood", version="2.0"),
                "notify-kill.yaml": POLICY.format(name="notify-kill", version="3.1").replace(
                    "{file: block}", "{file: kill}")}) as s:
        first = s.proc
        try:
            yield s
        finally:  # the agent the restart test started: serve() stops the one it started
            if s.proc is not first and s.proc.poll() is None:
                s.proc.send_signal(signal.SIGTERM)
                s.proc.wait(60)


@pytest.fixture(scope="module")
def display() -> Iterator[tuple[str, Path]]:
    n = next(i for i in range(60, 160) if not os.path.exists(f"/tmp/.X11-unix/X{i}")
             and not os.path.exists(f"/tmp/.X{i}-lock"))
    fb = Path(tempfile.mkdtemp(prefix="eg-notify-fb-"))
    x = subprocess.Popen(["Xvfb", f":{n}", "-ac", "-nolisten", "tcp", "-screen", "0", "640x200x24", "-fbdir",
                          str(fb)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait("Xvfb is up", lambda: os.path.exists(f"/tmp/.X11-unix/X{n}"))
        yield f":{n}", fb / "Xvfb_screen0"
    finally:
        x.terminate()
        x.wait(10)
        shutil.rmtree(fb, ignore_errors=True)


@pytest.fixture(scope="module")
def sessions(served: Served, users: tuple[User, User], display: tuple[str, Path]) -> Iterator[tuple[Session, Session]]:
    top = Path(tempfile.mkdtemp(prefix="eg-notify-"))
    os.chmod(top, 0o755)
    made: list[Session] = []
    try:
        for u in users:
            made.append(Session(served, u, display[0], top))
        yield made[0], made[1]
    finally:
        for s in made:
            s.stop()
        shutil.rmtree(top, ignore_errors=True)


def _own_file(u: User, rel: str, text: str) -> Path:
    path = u.home / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chown(path.parent, u.uid, u.gid)
    path.write_text(text)
    os.chown(path, u.uid, u.gid)
    return path


def _ours(s: Session, ext: str) -> list[dict[str, Any]]:
    return [n for n in s.notices() if n["summary"].startswith(ext + " ")]


def test_a_blocked_read_is_one_notice_with_the_right_words_escaped(served: Served, users: tuple[User, User],
                                                                  sessions: tuple[Session, Session],
                                                                  display: tuple[str, Path]) -> None:
    u = users[0]
    key = _own_file(u, ".ssh/id_ed25519", "the user's own key\n")
    marked = _own_file(u, "<b>bold</b> & co.txt", "not for the plug-in\n")
    r = served.as_user(u, "run", "-e", "notify-tool", "--", "/bin/sh", "-c", f'cat "{key}"; cat "{marked}"; exit 0')
    done = time.time()
    assert r.returncode == 0 and "the user's own key" not in r.stdout, r.stdout + r.stderr + served.output()
    wait("a notice comes", lambda: _ours(sessions[0], "notify-tool"), 2)
    time.sleep(1.5 * SLOW)  # the second read's update, a second after
    got = _ours(sessions[0], "notify-tool")
    first = got[0]
    assert first["time"] - done < 2.0
    assert [n["replaces"] for n in got].count(0) == 1, got  # one notice, updated in place
    assert first["app"] == "ebpfguard" and first["summary"] == "notify-tool 1.4.2 was blocked"
    assert first["hints"]["urgency"] == 1 and first["icon"] == "dialog-warning"
    assert first["body"].splitlines()[:3] == [
        "Tried: read ~/.ssh/id_ed25519", "Done: blocked",
        'To allow it: add to spec.filesystem.read: "~/.ssh/id_ed25519" (or the tree "~/.ssh/")'], \
        (first["body"], [x for x in served.records() if x["kind"] == "file"])
    assert "the user's own key" not in json.dumps(got) and "cat" not in first["body"]
    caps = first["actions"]
    assert caps == ["details", "Details", "stop", "Stop plug-in"] or "ebpfguard explain" in first["body"]
    last = got[-1]
    assert last["replaces"] != 0 and last["body"].splitlines()[-1] == "and 1 more", got
    # an update keeps the first event's words: the path with markup is shown by a second instance's own notice
    r = served.as_user(u, "run", "-e", "notify-tool", "--", "/bin/cat", str(marked))
    wait("the second instance's notice", lambda: len([n for n in _ours(sessions[0], "notify-tool")
                                                      if n["replaces"] == 0]) == 2, 3)
    marked_notice = [n for n in _ours(sessions[0], "notify-tool") if n["replaces"] == 0][-1]
    assert "Tried: read ~/&lt;b&gt;bold&lt;/b&gt; &amp; co.txt" in marked_notice["body"], marked_notice["body"]
    assert "<b>" not in marked_notice["body"]
    assert not _ours(sessions[1], "notify-tool")  # the other user's notifier heard nothing of it
    _screenshot(display[1])


def test_a_flood_makes_at_most_three_notices(served: Served, users: tuple[User, User],
                                             sessions: tuple[Session, Session]) -> None:
    u = users[0]
    folder = u.home / "secret"
    for i in range(300):
        _own_file(u, f"secret/f{i:03d}", "x\n")
    r = served.as_user(u, "run", "-e", "notify-flood", "--", "/bin/sh", "-c",
                       f'for f in "{folder}"/*; do cat "$f" 2>/dev/null; done; exit 0')
    assert r.returncode in (0, 137), r.stdout + r.stderr
    wait("the flood's notice", lambda: _ours(sessions[0], "notify-flood"), 3)
    time.sleep(2 * SLOW)
    got = _ours(sessions[0], "notify-flood")
    new = [n for n in got if n["replaces"] == 0]
    assert 1 <= len(new) <= 3, got
    assert len(got) <= 12, f"{len(got)} Notify calls for one flood"
    assert "more" in got[-1]["body"], got[-1]
    assert not _ours(sessions[1], "notify-flood")


def test_a_kill_is_critical_and_a_refused_launch_is_told(served: Served, users: tuple[User, User],
                                                         sessions: tuple[Session, Session]) -> None:
    u = users[0]
    key = _own_file(u, ".ssh/id_rsa", "the user's other key\n")
    r = served.as_user(u, "run", "-e", "notify-kill", "--", "/bin/cat", str(key))
    assert r.returncode == 128 + 9 and "other key" not in r.stdout, r.stdout + r.stderr
    wait("the kill's notice", lambda: _ours(sessions[0], "notify-kill"), 3)
    killed = _ours(sessions[0], "notify-kill")[0]
    assert killed["summary"] == "notify-kill 3.1 was killed" and killed["hints"]["urgency"] == 2, killed
    assert killed["body"].splitlines()[0] == "Tried: read ~/.ssh/id_rsa" and killed["icon"] == "dialog-error"
    bad = _own_file(u, "as-root.yaml", POLICY.format(name="notify-refused", version="9").replace(
        "spec:\n", "spec:\n  user: root\n", 1))
    r = served.as_user(u, "run", "-m", str(bad), "--", "/bin/cat", str(bad))
    assert r.returncode == 2, r.stdout + r.stderr
    wait("the refused launch's notice", lambda: _ours(sessions[0], "notify-refused"), 3)
    refused = _ours(sessions[0], "notify-refused")[0]
    assert refused["summary"] == "notify-refused was not started", refused
    assert "names 'root', but an instance you launch runs as you" in refused["body"], refused["body"]
    assert not _ours(sessions[1], "notify-kill") and not _ours(sessions[1], "notify-refused")


def test_the_agent_restart_is_survived(served: Served, users: tuple[User, User],
                                       sessions: tuple[Session, Session]) -> None:
    u = users[0]
    before = len(sessions[0].notices())
    argv = [sys.executable, "-m", "ebpfguard.cli.main", "agent", "--state-dir", str(served.state), "--policy-dir",
            str(served.state.parent / "policies"), "--socket", str(served.socket), "--metrics-address", ""]
    served.proc.send_signal(signal.SIGTERM)
    served.proc.wait(60)
    wait("the agent's absence is told", lambda: any(
        n["summary"] == "ebpfguard: the agent is not running" for n in sessions[0].notices()[before:]), 5)
    with open(served.log, "ab") as out:
        served.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    wait("the agent is back", lambda: served.root("status").returncode == 0, 60)
    wait("the notifier follows it again", lambda: sessions[0].notifier_text().count("following your instances") == 2,
         10)
    gone = [n for n in sessions[0].notices()[before:] if n["summary"].startswith("ebpfguard: the agent")]
    assert len(gone) == 1 and gone[0]["hints"]["urgency"] == 0  # once, quietly
    key = u.home / ".ssh" / "id_ed25519"
    served.as_user(u, "run", "-e", "notify-tool", "--", "/bin/cat", str(key))
    wait("a notice after the restart", lambda: len([n for n in sessions[0].notices()[before:]
                                                    if n["summary"] == "notify-tool 1.4.2 was blocked"]) == 1, 3)
    assert sessions[0].notifier.poll() is None and sessions[1].notifier.poll() is None
    assert not _ours(sessions[1], "notify-tool")


def test_the_notifier_leaves_when_its_session_bus_goes(sessions: tuple[Session, Session]) -> None:
    s = sessions[1]
    s.procs["dbus-daemon"].terminate()
    assert s.notifier.wait(10 * SLOW) == 0, s.notifier_text()


# ---- the screenshot: Xvfb's framebuffer file (XWD) to a PNG, cropped to the notice ------------------------------
def _screenshot(xwd: Path) -> None:
    width, height, rows = _read_xwd(xwd.read_bytes())
    assert len({r for r in rows}) > 10, "the screen is blank: no notice was drawn"
    to = SHOT if os.environ.get("EBPFGUARD_SCREENSHOT") == "1" else xwd.with_name("notify-screenshot.png")
    to.write_bytes(_png(width, height, rows))


def _read_xwd(data: bytes) -> tuple[int, int, list[bytes]]:
    order = ">" if struct.unpack(">I", data[4:8])[0] == 7 else "<"
    h = struct.unpack(order + "25I", data[:100])
    header_size, width, height, byte_order, bpp, stride, ncolors = h[0], h[4], h[5], h[7], h[11], h[12], h[19]
    masks = h[14:17]
    assert bpp == 32, f"an XWD of {bpp} bits per pixel"
    start = header_size + ncolors * 12
    pixel = "<I" if byte_order == 0 else ">I"
    shifts = [(m & -m).bit_length() - 1 for m in masks]
    rows = []
    for y in range(height):
        line = data[start + y * stride: start + y * stride + width * 4]
        out = bytearray()
        for (v,) in struct.iter_unpack(pixel, line):
            out += bytes(((v & m) >> s) & 0xFF for m, s in zip(masks, shifts, strict=True))
        rows.append(bytes(out))
    return width, height, rows


def _png(width: int, height: int, rows: list[bytes]) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"".join(b"\x00" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))

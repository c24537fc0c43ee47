"""Each instance's D-Bus through its own xdg-dbus-proxy (the filter Flatpak uses).

The proxy runs as the extension's user (the bus authenticates it as that user), outside the instance's
cgroup, with ``--filter`` and the manifest's rules. Its socket lives in a folder of its own,
RUNTIME/<instance>/<bus>/, which the launcher mounts into the instance's namespace next to the real
bus's path (compile.bus_sockets); the real bus stays out of reach (masked folder, and the cgroup unix
programs). ``--fd`` ties the proxy's life to the engine's: it exits when the engine is gone, and a
re-adopting engine starts a new one in the same folder. ``--log`` lines are parsed: each call or signal
the extension sent, with the proxy's verdict. The proxy prints a message's header, then, in the same
step, ``*DENIED*`` or ``*HIDDEN*`` if it refused it; a header followed by the next header (or by nothing
for PENDING_S) went through. A refusal becomes a record of kind ``ipc``; what went through is activity
(``trace --activity``) and a step for correlation rules.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import select
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from ebpfguard.errors import EbpfguardError
from ebpfguard.manifest.ipc import DBusRules

log = logging.getLogger("ebpfguard")
RUNTIME = Path("/run/ebpfguard/dbus")
SOCKET = "bus"
_HEADER = re.compile(r"^C\d+: -> (?P<dest>\S+) (?P<type>call|signal) (?P<method>\S*) at (?P<path>\S*)$")
_ANY_HEADER = re.compile(r"^[CB]\d+: ")
PENDING_S = 0.2  # a header with no verdict line this long after it went through (the verdict is printed at once)


class DBusProxyError(EbpfguardError):
    pass


def _message(line: str) -> dict[str, Any] | None:
    m = _HEADER.match(line.strip())
    if m is None:
        return None
    iface, _, member = m.group("method").rpartition(".")
    return {"op": m.group("type"), "destination": m.group("dest"), "interface": iface, "member": member,
            "path": m.group("path")}


def _verdict(line: str) -> str | None:
    word = line.strip().split(" ", 1)[0]
    return word.strip("*").lower() if word in ("*DENIED*", "*HIDDEN*") else None


class LogParser:
    """xdg-dbus-proxy --log lines in, the extension's calls and signals out, each with ``proxy``: passed,
    denied or hidden. Lines about the bus's messages to the extension, and the proxy's own, are skipped."""

    def __init__(self) -> None:
        self.pending: dict[str, Any] | None = None

    def line(self, line: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        verdict = _verdict(line)
        if verdict is not None:
            if self.pending is not None:
                out.append({**self.pending, "proxy": verdict})
                self.pending = None
            return out
        if _ANY_HEADER.match(line.strip()):
            out += self.flush()
            self.pending = _message(line)
        return out

    def flush(self) -> list[dict[str, Any]]:
        """The pending header had no verdict: it went through."""
        out = [{**self.pending, "proxy": "passed"}] if self.pending is not None else []
        self.pending = None
        return out


def parse_log(lines: list[str]) -> list[dict[str, Any]]:
    """Every call and signal in a run of xdg-dbus-proxy --log lines, with the proxy's verdict."""
    p = LogParser()
    out = [msg for line in lines for msg in p.line(line)]
    return out + p.flush()


class Proxy:
    """One bus of one instance."""

    def __init__(self, instance: str, bus: str, address: str, rules: DBusRules, uid: int, gid: int,
                 runtime: Path = RUNTIME):
        self.instance, self.bus, self.address, self.rules = instance, bus, address, rules
        self.uid, self.gid = uid, gid
        self.folder = runtime / instance / bus
        self.proc: subprocess.Popen[bytes] | None = None
        self._sync: int | None = None
        self._messages: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._reader: threading.Thread | None = None

    @property
    def socket(self) -> Path:
        return self.folder / SOCKET

    def start(self, timeout: float = 10.0) -> None:
        exe = shutil.which("xdg-dbus-proxy")
        if exe is None:
            raise DBusProxyError("spec.ipc.dbus needs xdg-dbus-proxy (Debian package xdg-dbus-proxy)")
        self.folder.parent.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.folder.parent.mkdir(exist_ok=True, mode=0o711)
        self.folder.mkdir(exist_ok=True, mode=0o700)
        os.chown(self.folder, self.uid, self.gid)
        self.socket.unlink(missing_ok=True)
        ready_r, ready_w = os.pipe()
        uid, gid = self.uid, self.gid

        def become_user() -> None:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)

        argv = [exe, f"--fd={ready_w}", self.address, str(self.socket), *self.rules.proxy_args(), "--log"]
        try:
            self.proc = subprocess.Popen(argv, pass_fds=(ready_w,), preexec_fn=become_user,  # noqa: PLW1509
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, close_fds=True)
        except OSError as err:
            os.close(ready_r)
            os.close(ready_w)
            raise DBusProxyError(f"cannot start xdg-dbus-proxy for the {self.bus} bus: {err}") from err
        os.close(ready_w)
        ok, _, _ = select.select([ready_r], [], [], timeout)
        got = os.read(ready_r, 1) if ok else b""
        if got != b"x":
            os.close(ready_r)
            out = self._stop_and_read()
            raise DBusProxyError(f"xdg-dbus-proxy for the {self.bus} bus at {self.address} did not start"
                                 + (f": {out.strip()[-300:]}" if out.strip() else " (timeout)"))
        self._sync = ready_r  # the proxy exits when this fd closes (our exit included)
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout.fileno(),), daemon=True,
                                        name=f"dbus-proxy-{self.instance}-{self.bus}")
        self._reader.start()

    def _read(self, fd: int) -> None:
        parser, buf = LogParser(), b""

        def put(msgs: list[dict[str, Any]]) -> None:
            for msg in msgs:
                self._messages.put({**msg, "ts_ns": time.time_ns()})

        while True:
            ready, _, _ = select.select([fd], [], [], PENDING_S if parser.pending is not None else None)
            if not ready:
                put(parser.flush())
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            *lines, buf = (buf + chunk).split(b"\n")
            for raw in lines:
                put(parser.line(raw.decode(errors="replace")))
        put(parser.flush())

    def messages(self) -> list[dict[str, Any]]:
        """The calls and signals read since the last look, oldest first (``proxy``: passed, denied, hidden)."""
        out = []
        while True:
            try:
                out.append(self._messages.get_nowait())
            except queue.Empty:
                return out

    def _stop_and_read(self) -> str:
        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return (out or b"").decode(errors="replace")

    def stop(self) -> None:
        if self._sync is not None:
            os.close(self._sync)
            self._sync = None
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=2)
        shutil.rmtree(self.folder.parent, ignore_errors=True)


def default_address(bus: str, runtime_dir: str) -> str:
    return f"unix:path={runtime_dir}/bus" if bus == "session" else "unix:path=/run/dbus/system_bus_socket"

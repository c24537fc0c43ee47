"""Each instance's D-Bus through its own xdg-dbus-proxy (the filter Flatpak uses).

The proxy runs as the extension's user (the bus authenticates it as that user), outside the instance's
cgroup, with ``--filter`` and the manifest's rules. Its socket lives in a folder of its own,
RUNTIME/<instance>/<bus>/, which the launcher mounts into the instance's namespace next to the real
bus's path (compile.bus_sockets); the real bus stays out of reach (masked folder, and the cgroup unix
programs). ``--fd`` ties the proxy's life to the engine's: it exits when the engine is gone, and a
re-adopting engine starts a new one in the same folder. ``--log`` lines are parsed: each call or signal
the proxy refused (``*DENIED*``) or hid (``*HIDDEN*``) becomes a denial for a record of kind ``ipc``.
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
from pathlib import Path
from typing import IO, Any

from .errors import EbpfguardError
from .manifest.ipc import DBusRules

log = logging.getLogger("ebpfguard")
RUNTIME = Path("/run/ebpfguard/dbus")
SOCKET = "bus"
_HEADER = re.compile(r"^C\d+: -> (?P<dest>\S+) (?P<type>call|signal) (?P<method>\S*) at (?P<path>\S*)$")


class DBusProxyError(EbpfguardError):
    pass


def parse_log(lines: list[str]) -> list[dict[str, Any]]:
    """The denials in a run of xdg-dbus-proxy --log lines: a message header, then its verdict."""
    out = []
    last: dict[str, Any] | None = None
    for line in lines:
        m = _HEADER.match(line.strip())
        if m:
            iface, _, member = m.group("method").rpartition(".")
            last = {"op": m.group("type"), "destination": m.group("dest"), "interface": iface, "member": member,
                    "path": m.group("path")}
            continue
        verdict = line.strip().split(" ", 1)[0]
        if verdict in ("*DENIED*", "*HIDDEN*") and last is not None:
            out.append({**last, "proxy": verdict.strip("*").lower()})
            last = None
    return out


class Proxy:
    """One bus of one instance."""

    def __init__(self, instance: str, bus: str, address: str, rules: DBusRules, uid: int, gid: int,
                 runtime: Path = RUNTIME):
        self.instance, self.bus, self.address, self.rules = instance, bus, address, rules
        self.uid, self.gid = uid, gid
        self.folder = runtime / instance / bus
        self.proc: subprocess.Popen[bytes] | None = None
        self._sync: int | None = None
        self._denials: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
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
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True,
                                        name=f"dbus-proxy-{self.instance}-{self.bus}")
        self._reader.start()

    def _read(self, stream: IO[bytes]) -> None:
        last = ""
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            if _HEADER.match(line):
                last = line
            elif line.startswith(("*DENIED*", "*HIDDEN*")):
                for d in parse_log([last, line]):
                    self._denials.put(d)
                last = ""

    def denials(self) -> list[dict[str, Any]]:
        out = []
        while True:
            try:
                out.append(self._denials.get_nowait())
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

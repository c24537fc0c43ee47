"""The desktop services the simulator's techniques need, the real programs from Debian's packages: the user's
session bus with a service that owns a name and answers (dbus-daemon, dbus-test-tool), xdg-dbus-proxy, an X
display (Xvfb, xdotool) and ssh-agent. Each started for one simulation and stopped by its pid."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ebpfguard.errors import EbpfguardError

SYSTEMD_NAME, FORBIDDEN_NAME, GRANTED_NAME = "org.freedesktop.systemd1", "org.ebpfguard.Sim.Forbidden", \
    "org.ebpfguard.Sim.Granted"
POINTER_TARGET = (17, 29)
DESKTOP_TOOLS = {  # what each desktop service needs, and its Debian package
    "dbus": (("dbus-daemon", "dbus-daemon"), ("dbus-test-tool", "dbus-tests"), ("dbus-monitor", "dbus-bin"),
             ("xdg-dbus-proxy", "xdg-dbus-proxy")),
    "x11": (("Xvfb", "xvfb"), ("xdotool", "xdotool")),
    "ssh-agent": (("ssh-agent", "openssh-client"), ("ssh-keygen", "openssh-client"), ("ssh-add", "openssh-client")),
}


class Desktop:
    """The user's session services, the real programs, for the techniques that need them: the session
    bus and its services and ssh-agent run as the extension's user (they are the user's), Xvfb as a
    display server. Stopped by pid."""

    def __init__(self, base: Path, uid: int, gid: int) -> None:
        self.dir = base / "session"  # as /run/user/UID is
        self.uid, self.gid = uid, gid
        self.procs: list[subprocess.Popen[bytes]] = []
        self.unavailable: dict[str, str] = {}
        self.bus_path = self.dir / "bus"
        self.bus_address = f"unix:path={self.bus_path}"
        self.monitor_log = self.dir / "dbus-monitor.log"
        self.agent_socket = self.dir / "ssh-agent.sock"
        self.display = ""
        self.x_socket = ""
        self._mark = 0

    def start(self, needs: set[str]) -> None:
        self.dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.dir, self.uid, self.gid)
        for need in sorted(needs):
            missing = [f"{tool} (Debian package {pkg})" for tool, pkg in DESKTOP_TOOLS[need] if not shutil.which(tool)]
            if missing:
                self.unavailable[need] = "needs " + ", ".join(missing)
                continue
            try:
                {"dbus": self._dbus, "x11": self._x11, "ssh-agent": self._agent}[need]()
            except (OSError, subprocess.SubprocessError, EbpfguardError) as err:
                self.unavailable[need] = f"{need} did not start: {err}"

    def _user(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.dir), "DBUS_SESSION_BUS_ADDRESS": self.bus_address,
               "SSH_AUTH_SOCK": str(self.agent_socket)}
        p = subprocess.Popen(argv, user=self.uid, group=self.gid, extra_groups=[], env=env,
                             stdin=subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    def _wait(self, what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 10
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise EbpfguardError(f"{what} did not come up")
            time.sleep(0.05)

    def _dbus(self) -> None:
        daemon = self._user(["dbus-daemon", "--session", "--nofork", "--nopidfile", f"--address={self.bus_address}"],
                            stderr=subprocess.DEVNULL)
        self._wait("dbus-daemon", self.bus_path.exists, daemon)
        with self.monitor_log.open("wb") as out:
            mon = self._user(["dbus-monitor", "--session"], stdout=out, stderr=subprocess.DEVNULL)
        self._wait("dbus-monitor", lambda: self.monitor_log.stat().st_size > 0, mon)
        for name in (SYSTEMD_NAME, FORBIDDEN_NAME, GRANTED_NAME):
            svc = self._user(["dbus-test-tool", "echo", "--session", f"--name={name}"], stderr=subprocess.DEVNULL)
            self._wait(f"dbus-test-tool for {name}", self._owned(name), svc)

    def _owned(self, name: str) -> Callable[[], bool]:
        """The monitor saw ``name`` get an owner (NameOwnerChanged)."""
        return lambda: f'string "{name}"' in self._bus_log(0)

    def _x11(self) -> None:
        n = next(i for i in range(60, 160) if not os.path.exists(f"/tmp/.X11-unix/X{i}")
                 and not os.path.exists(f"/tmp/.X{i}-lock"))
        # -noreset: the pointer stays where a client put it after that client leaves; -nolisten local: no
        # abstract socket (Landlock's scope refuses it, and libxcb then gives up on the path socket)
        x = subprocess.Popen(["Xvfb", f":{n}", "-noreset", "-nolisten", "tcp", "-nolisten", "local", "-ac", "-screen",
                              "0", "320x240x24"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        self.procs.append(x)
        self.display, self.x_socket = f":{n}", f"/tmp/.X11-unix/X{n}"
        self._wait("Xvfb", lambda: os.path.exists(self.x_socket), x)

    def _agent(self) -> None:
        key = self.dir / "id_ed25519"
        keygen = self._user(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], stdout=subprocess.DEVNULL)
        if keygen.wait(30) != 0:
            raise EbpfguardError("ssh-keygen failed")
        agent = self._user(["ssh-agent", "-D", "-a", str(self.agent_socket)], stdout=subprocess.DEVNULL)
        self._wait("ssh-agent", self.agent_socket.exists, agent)
        if self._user(["ssh-add", "-q", str(key)], stderr=subprocess.DEVNULL).wait(30) != 0:
            raise EbpfguardError("ssh-add failed")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()

    # -- what the techniques' effects are judged by
    def _bus_log(self, start: int) -> str:
        try:
            with self.monitor_log.open("rb") as f:
                f.seek(start)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def mark(self) -> None:
        """Effects are looked for in what the monitor sees from now on."""
        self._mark = self.monitor_log.stat().st_size if self.monitor_log.exists() else 0

    def bus_saw(self, member: str, destination: str, wait: float = 0.5) -> bool:
        """Did a call of ``member`` to ``destination`` reach the session bus since mark()?"""
        deadline = time.monotonic() + wait
        while True:
            for line in self._bus_log(self._mark).splitlines():
                if f"destination={destination} " in line and f"member={member}" in line:
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def pointer(self) -> tuple[int, int]:
        out = subprocess.run(["xdotool", "getmouselocation", "--shell"], env={"DISPLAY": self.display},
                             capture_output=True, text=True, timeout=10).stdout
        v = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return int(v.get("X", -1)), int(v.get("Y", -1))



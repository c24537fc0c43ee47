"""Desktop IPC and metadata against a launched extension: pathname unix sockets (the cgroup unix
programs), the instance's own mount namespace (read-only outside the write trees, a private /tmp,
socket folders holding only granted sockets). Each case is judged by its side effect: the peer
received nothing, the file's mode, times and attributes are unchanged."""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ebpfguard.forensics import read
from ebpfguard.lab.simulate import execute
from ebpfguard.manifest.load import parse
from ebpfguard.runtime.engine import Engine

from .harness import World, run_ext
from .test_containment import NOBODY, contained, violation

pytestmark = pytest.mark.kernel


class Peer:
    """A unix socket served outside every extension, as ssh-agent or the session bus are."""

    def __init__(self, path: Path, kind: int) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, kind)
        self.sock.bind(str(path))
        os.chmod(path, 0o777)  # reachable by file permissions: what stops the extension is ebpfguard
        if kind == socket.SOCK_STREAM:
            self.sock.listen(8)
        self.sock.settimeout(0.3)
        self.kind = kind

    def received(self) -> bytes:
        """What reached the peer since the last call ("" when nothing did)."""
        got = b""
        try:
            while True:
                if self.kind == socket.SOCK_STREAM:
                    conn, _ = self.sock.accept()
                    conn.settimeout(0.3)
                    got += conn.recv(4096)
                    conn.close()
                else:
                    got += self.sock.recv(4096)
        except (TimeoutError, OSError):
            return got

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def peers(world: World) -> Iterator[dict[str, Peer]]:
    d = world.base / "sockets"
    d.mkdir(exist_ok=True)
    d.chmod(0o755)
    out = {"ok": Peer(d / "ok.sock", socket.SOCK_STREAM), "agent": Peer(d / "agent.sock", socket.SOCK_STREAM),
           "log": Peer(d / "log.sock", socket.SOCK_DGRAM), "dgram_ok": Peer(d / "dgram-ok.sock", socket.SOCK_DGRAM)}
    yield out
    for p in out.values():
        p.close()


def unix_in_kernel(engine: Engine) -> bool:
    """Does the kernel decide pathname unix sockets: the cgroup unix programs (6.7+) or the BPF-LSM socket
    hooks? Elsewhere only the mount namespace keeps sockets out of reach (/dev/null over each ungranted
    one, or a masked folder), and no layer sees, so none records, an attempt."""
    return engine.sensor.unix_hooks is None


def refused(engine: Engine, res: Any, sock: str | Path, mask_errno: int = errno.ECONNREFUSED) -> dict[str, Any] | None:
    """The refusal of an ungranted socket, as the kernel at hand makes it: EPERM and a record from the
    deciding program, or the mount namespace's mask (no socket there) and no record."""
    if unix_in_kernel(engine):
        assert res.rc_errno() == (-1, errno.EPERM)
        return violation(res, "network", socket="unix", path=str(sock))
    assert res.rc_errno() == (-1, mask_errno)
    assert [r for r in res.violations() if r["detail"].get("socket") == "unix"] == []
    return None


def ipc_manifest(world: World, peers: dict[str, Peer], response: str = "block") -> str:
    grants = f'["{peers["ok"].path}", "{peers["dgram_ok"].path}"]'
    return world.manifest(response, extra=f"  ipc: {{unix: {grants}}}\n")


def test_a_granted_socket_works(engine: Engine, world: World, peers: dict[str, Peer]) -> None:
    for name, act in (("ok", "unix-connect"), ("dgram_ok", "unix-dgram")):
        res = run_ext(engine, world, ipc_manifest(world, peers), [act, str(peers[name].path), "hello"], sandbox=True)
        assert res.rc_errno()[0] == 5 and res.violations() == [], res.violations()
        assert peers[name].received() == b"hello"


@pytest.mark.parametrize(("peer", "act", "sock_type"), [("agent", "unix-connect", "stream"),
                                                         ("log", "unix-dgram", "dgram")])
def test_an_ungranted_socket_is_refused_in_the_kernel(engine: Engine, world: World, peers: dict[str, Peer],
                                                      peer: str, act: str, sock_type: str) -> None:
    res = run_ext(engine, world, ipc_manifest(world, peers), [act, str(peers[peer].path), "steal"], sandbox=True)
    rec = refused(engine, res, peers[peer].path)
    assert peers[peer].received() == b""
    if rec is not None:
        assert rec["detail"]["type"] == sock_type and rec["verdict"] == "denied"
        assert ("eperm:lsm" if engine.sensor.unix_by_lsm else "eperm:kernel") in rec["actions"]
        assert len(res.violations()) == 1


def test_a_relative_socket_path_is_refused(engine: Engine, world: World, peers: dict[str, Peer]) -> None:
    """Relative to a cwd the string does not show: refused, never guessed, even when it names a granted one."""
    res = run_ext(engine, world, ipc_manifest(world, peers), ["unix-connect", "../sockets/ok.sock", "x"],
                  sandbox=True)
    if not unix_in_kernel(engine):  # nothing decides on the string: it names no socket from this cwd
        assert res.rc_errno() == (-1, errno.ENOENT) and peers["ok"].received() == b""
        return
    assert res.rc_errno() == (-1, errno.EPERM) and peers["ok"].received() == b""
    assert "relative" in violation(res, "network", socket="unix")["detail"]["flags"]


@pytest.mark.parametrize("pad", [0, 55])
def test_a_dotdot_socket_path_is_refused(engine: Engine, world: World, peers: dict[str, Peer], pad: int) -> None:
    """"/granted/dir/../../x" names another socket than its string says: refused, wherever the ".." sits
    (pad puts it in the last bytes of a path near sun_path's 108)."""
    ok = peers["ok"].path
    long_dir = ok.parent / ("d" * pad if pad else "sub")
    long_dir.mkdir(exist_ok=True)
    try:
        path = f"{long_dir}/../{ok.name}"
        assert len(path) < 108
        res = run_ext(engine, world, ipc_manifest(world, peers), ["unix-connect", path, "x"], sandbox=True)
        if not unix_in_kernel(engine):  # as above: the granted socket itself
            assert res.rc_errno()[0] == 1 and peers["ok"].received() == b"x"
            return
        assert res.rc_errno() == (-1, errno.EPERM) and peers["ok"].received() == b""
        assert "dotdot" in violation(res, "network", socket="unix")["detail"]["flags"]
    finally:
        long_dir.rmdir()


def test_kill_response_kills_before_the_peer_hears(engine: Engine, world: World, peers: dict[str, Peer]) -> None:
    res = run_ext(engine, world, ipc_manifest(world, peers, "kill"), ["unix-connect", str(peers["agent"].path), "x"],
                  sandbox=True)
    assert res.marker is None and res.status == 128 + 9
    assert peers["agent"].received() == b""
    if unix_in_kernel(engine):  # elsewhere the connect tracepoint kills, with no program to record it
        assert violation(res, "network", socket="unix")["verdict"] == "killed"


def test_the_network_kill_tracepoints_run_only_while_a_policy_kills(engine: Engine, world: World,
                                                                    peers: dict[str, Peer]) -> None:
    """Every process on the host pays for a syscall tracepoint; the network ones only kill, so they are
    attached while a loaded policy answers network violations with kill, and not otherwise."""
    sensor: Any = engine.sensor
    attached = lambda: b"syscalls:sys_enter_connect" in sensor.bpf.tracepoint_fds  # noqa: E731
    blocking = engine.prepare(parse(ipc_manifest(world, peers).encode(), "b.yaml"))
    try:
        assert not attached()
        killing = engine.prepare(parse(ipc_manifest(world, peers, "kill").encode(), "k.yaml"))
        assert attached()
        engine.release(killing, kill=True)
        assert not attached()
    finally:
        engine.release(blocking, kill=True)


def test_audit_mode_lets_it_through_and_records_it(engine: Engine, world: World, peers: dict[str, Peer]) -> None:
    res = run_ext(engine, world, ipc_manifest(world, peers), ["unix-connect", str(peers["agent"].path), "seen"],
                  mode="audit")
    assert res.rc_errno()[0] == 4 and peers["agent"].received() == b"seen"
    if unix_in_kernel(engine):
        assert violation(res, "network", socket="unix")["verdict"] == "allowed"


def test_a_process_outside_every_extension_is_untouched(engine: Engine, world: World, peers: dict[str, Peer]) -> None:
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(str(peers["agent"].path))
        c.sendall(b"outside")
    assert peers["agent"].received() == b"outside"
    assert stat.S_ISSOCK(os.stat(peers["agent"].path).st_mode)


# ---- the mount namespace -------------------------------------------------------------------------
@pytest.fixture
def users_file(world: World) -> Iterator[Path]:
    """A file of the extension's own user outside its write trees, as ~/.ssh/id_rsa is the desktop user's:
    file permissions let its owner change mode, owner, times and attributes; only the mount refuses."""
    d = world.base / "home" / ".ssh"
    d.mkdir(parents=True, exist_ok=True)
    f = d / "id_rsa"
    f.write_text("KEY\n")
    os.chown(d, NOBODY, NOBODY)
    os.chown(f, NOBODY, NOBODY)
    d.chmod(0o700)
    f.chmod(0o600)
    yield f
    f.unlink(missing_ok=True)


def _fingerprint(path: Path) -> tuple[int, int, int, int, list[str]]:
    st = path.stat()
    return st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, os.listxattr(path)


@pytest.mark.parametrize("args", [["chmod", "644"], ["chown", str(NOBODY), str(NOBODY)], ["utimes", "86400"],
                                  ["setxattr", "user.evil", "1"]])
def test_metadata_outside_the_write_trees_fails_on_the_read_only_mount(engine: Engine, world: World, users_file: Path,
                                                                        args: list[str]) -> None:
    before = _fingerprint(users_file)
    res = contained(engine, world, [args[0], str(users_file), *args[1:]])
    assert res.rc_errno() == (-1, errno.EROFS)
    assert _fingerprint(users_file) == before
    rec = violation(res, "file", path=str(users_file), access="write")
    assert rec["verdict"] == "denied" and rec["actions"] == ["erofs:mountns"], rec


def test_metadata_inside_a_write_tree_still_works(engine: Engine, world: World) -> None:
    target = world.out / "own.txt"
    target.write_text("x")
    os.chown(target, NOBODY, NOBODY)
    res = contained(engine, world, ["chmod", str(target), "600"])
    assert res.rc_errno()[0] == 0 and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert res.violations() == []


def test_tmp_is_private(engine: Engine, world: World) -> None:
    planted = Path(f"/tmp/ebpfguard-host-only-{os.getpid()}")
    planted.write_text("host\n")
    try:
        res = contained(engine, world, ["read", str(planted)])
        assert res.rc_errno() == (-1, errno.ENOENT)
    finally:
        planted.unlink()


def test_a_read_grant_carried_into_the_private_tmp_stays_read_only(engine: Engine, world: World) -> None:
    """/tmp is a private, writable tmpfs, but a folder under it that the manifest grants for reading is
    carried in read-only: a write there fails with EROFS and the record names the mount, not Landlock."""
    shared = Path(f"/tmp/ebpfguard-shared-{os.getpid()}")
    shared.mkdir(mode=0o777)
    notes = shared / "notes.txt"
    notes.write_text("host\n")
    notes.chmod(0o666)
    try:
        text = world.manifest().replace(f'read: ["{world.allowed}/"]', f'read: ["{world.allowed}/", "{shared}/"]')
        res = run_ext(engine, world, text, ["write", str(notes)], sandbox=True)
        assert res.rc_errno() == (-1, errno.EROFS)
        assert notes.read_text() == "host\n"
        rec = violation(res, "file", path=str(notes), access="write")
        assert rec["verdict"] == "denied" and rec["actions"] == ["erofs:mountns"], rec
    finally:
        notes.unlink()
        shared.rmdir()


def test_nothing_leaks_back_to_the_host(engine: Engine, world: World) -> None:
    """The namespace's mounts do not propagate: the host's /tmp and mount table are as before."""
    before = Path("/proc/self/mountinfo").read_text()
    contained(engine, world, ["noop"])
    assert Path("/proc/self/mountinfo").read_text() == before


# ---- D-Bus through the instance's xdg-dbus-proxy -------------------------------------------------
class SessionBus:
    """A real dbus-daemon --session as the extension's user (``uid``), listening at ``folder``/bus, with two
    dbus-test-tool services."""

    ALLOWED, FORBIDDEN = "org.ebpfguard.Allowed", "org.ebpfguard.Forbidden"

    def __init__(self, folder: Path, uid: int = NOBODY, gid: int = NOBODY) -> None:
        self.dir, self.uid = folder, uid
        self.dir.mkdir(exist_ok=True, mode=0o700)
        os.chown(self.dir, uid, gid)
        self.path = self.dir / "bus"
        self.address = f"unix:path={self.path}"
        env = {"PATH": "/usr/bin:/bin", "DBUS_SESSION_BUS_ADDRESS": self.address}
        self.daemon = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--nopidfile",
                                        f"--address={self.address}"], user=uid, group=gid, env=env)
        deadline = time.monotonic() + 10
        while not self.path.exists():
            assert self.daemon.poll() is None and time.monotonic() < deadline, "dbus-daemon did not start"
            time.sleep(0.05)
        self.services = [subprocess.Popen(["dbus-test-tool", "echo", "--session", f"--name={name}"],
                                          user=uid, group=gid, env=env) for name in (self.ALLOWED, self.FORBIDDEN)]
        for name in (self.ALLOWED, self.FORBIDDEN):
            while not self.owned(name):
                assert time.monotonic() < deadline, f"{name} was not owned"
                time.sleep(0.05)

    def owned(self, name: str) -> bool:
        out = subprocess.run(["dbus-send", "--session", "--print-reply", "--dest=org.freedesktop.DBus",
                              "/org/freedesktop/DBus", "org.freedesktop.DBus.NameHasOwner", f"string:{name}"],
                             env={"DBUS_SESSION_BUS_ADDRESS": self.address}, user=self.uid, capture_output=True,
                             text=True)
        return "boolean true" in out.stdout

    def close(self) -> None:
        for p in [*self.services, self.daemon]:
            p.terminate()
            p.wait(timeout=10)


@pytest.fixture(scope="module")
def session_bus(world: World, engine: Engine) -> Iterator[SessionBus]:
    bus = SessionBus(world.base / "bus")
    engine.bus_addresses["session"] = bus.address
    yield bus
    engine.bus_addresses.pop("session", None)
    bus.close()


def dbus_manifest(world: World, user: str | None = None) -> str:
    text = world.manifest(extra=f"""  ipc:
    dbus:
      session:
        talk: ["{SessionBus.ALLOWED}"]
""").replace(f'exec: ["{world.helper}"]', f'exec: ["{world.helper}", "/usr/bin/dbus-send"]').replace(
        f'read: ["{world.allowed}/"]', f'read: ["{world.allowed}/", "/usr/", "/lib/", "/lib64/", "/etc/"]')
    return text.replace("\nspec:\n", f"\nspec:\n  user: {user}\n") if user else text


def dbus_ping(dest: str) -> list[str]:
    return ["/usr/bin/dbus-send", "--session", "--print-reply", f"--dest={dest}", "/org/ebpfguard/Test", f"{dest}.Ping"]


def dbus_send(engine: Engine, world: World, dest: str, user: str | None = None) -> tuple[int, list[dict[str, Any]]]:
    m = parse(dbus_manifest(world, user).encode(), "dbus.yaml", home=str(world.base))
    argv = dbus_ping(dest)
    status, _, records, _ = execute(engine, m, argv, sandbox=True)
    return status, [r for r in records if r["kind"] not in ("lifecycle", "checkpoint")]


def test_a_granted_bus_name_answers_through_the_proxy(engine: Engine, world: World, session_bus: SessionBus) -> None:
    status, violations = dbus_send(engine, world, SessionBus.ALLOWED)
    assert status == 0 and violations == [], [(r["kind"], r["verdict"], r["detail"]) for r in violations]


def test_an_ungranted_bus_name_is_refused_by_the_proxy_and_recorded(engine: Engine, world: World,
                                                                    session_bus: SessionBus) -> None:
    status, violations = dbus_send(engine, world, SessionBus.FORBIDDEN)
    assert status != 0
    ipc = [r for r in violations if r["kind"] == "ipc"]
    assert len(ipc) == 1, violations
    d = ipc[0]["detail"]
    assert (d["bus"], d["destination"], d["member"], d["path"]) == ("session", SessionBus.FORBIDDEN, "Ping",
                                                                    "/org/ebpfguard/Test")
    assert ipc[0]["verdict"] == "denied" and ipc[0]["actions"][0] == "accessdenied:xdg-dbus-proxy"
    assert session_bus.owned(SessionBus.FORBIDDEN)  # the service itself is untouched


def test_the_real_bus_is_out_of_reach(engine: Engine, world: World, session_bus: SessionBus) -> None:
    res = run_ext(engine, world, dbus_manifest(world), ["unix-connect", str(session_bus.path), "AUTH"], sandbox=True)
    rec = refused(engine, res, session_bus.path)
    assert rec is None or rec["verdict"] == "denied"


def test_owning_a_name_the_manifest_did_not_expect_is_refused_and_recorded(engine: Engine, world: World,
                                                                           session_bus: SessionBus) -> None:
    m = parse(dbus_manifest(world).encode(), "dbus.yaml", home=str(world.base))
    argv = ["/usr/bin/dbus-send", "--session", "--print-reply", "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
            "org.freedesktop.DBus.RequestName", "string:org.ebpfguard.Squat", "uint32:0"]
    status, _, records, _ = execute(engine, m, argv, sandbox=True)
    assert status != 0
    (rec,) = [r for r in records if r["kind"] == "ipc"]
    assert (rec["detail"]["member"], rec["verdict"]) == ("RequestName", "denied"), rec
    assert not session_bus.owned("org.ebpfguard.Squat")


def traced_dbus(engine: Engine, world: World, args: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The helper run with its activity traced from its first instruction: (activity items, records)."""
    m = parse(dbus_manifest(world).replace(f'"{world.allowed}/", ', f'"{world.allowed}/", "{world.secret}/", ')
              .encode(), "dbus.yaml", home=str(world.base))
    items: list[dict[str, Any]] = []

    def follow(inst: Any) -> list[str]:
        engine.trace_activity(inst, True)
        return [str(world.helper), str(world.out / "m-dbus"), *args]

    def sub(_cgid: int, item: dict[str, Any]) -> None:
        items.append(item)

    engine.observers.subscribers.append(sub)
    try:
        _, _, records, _ = execute(engine, m, [], sandbox=True, on_instance=follow)
    finally:
        engine.observers.subscribers.remove(sub)
    return items, records


def test_dbus_calls_stream_as_activity_with_the_proxy_verdict(engine: Engine, world: World,
                                                              session_bus: SessionBus) -> None:
    items, _ = traced_dbus(engine, world, ["dbus-call", "-", SessionBus.ALLOWED, "/org/ebpfguard/Test",
                                           SessionBus.ALLOWED, "Ping"])
    calls = [(i["detail"]["destination"], i["detail"]["member"], i["verdict"]) for i in items if i["kind"] == "ipc"]
    assert calls == [("org.freedesktop.DBus", "Hello", "allowed"), (SessionBus.ALLOWED, "Ping", "allowed")], items
    items, records = traced_dbus(engine, world, ["dbus-call", "-", SessionBus.FORBIDDEN, "/org/ebpfguard/Test",
                                                 SessionBus.FORBIDDEN, "Ping"])
    calls = [(i["detail"]["destination"], i["detail"]["member"], i["verdict"], i.get("seq")) for i in items
             if i["kind"] == "ipc"]
    (refused,) = [r for r in records if r["kind"] == "ipc"]
    assert calls == [("org.freedesktop.DBus", "Hello", "allowed", None),
                     (SessionBus.FORBIDDEN, "Ping", "denied", refused["seq"])], items


def test_credential_read_then_a_dbus_call_is_one_correlation(engine: Engine, world: World,
                                                             session_bus: SessionBus) -> None:
    from ebpfguard.pipeline.correlate import Correlator, parse_rules  # noqa: PLC0415

    engine.observers.correlator = Correlator(parse_rules(f"""kind: CorrelationRules
rules:
  - name: credential-read-then-dbus
    within: 10s
    response: freeze
    steps:
      - {{kind: file, access: [read], path: ["{world.secret}/"]}}
      - {{kind: ipc, op: [call], not_destination: [org.freedesktop.DBus]}}
""", "test"))
    try:
        _, records = traced_dbus(engine, world, ["read-dbus-call", f"{world.secret}/s.txt", "-", SessionBus.ALLOWED,
                                                 "/org/ebpfguard/Test", SessionBus.ALLOWED, "Ping", "3000"])
    finally:
        engine.observers.correlator = None
    read = [r for r in records if r["kind"] == "file" and r["detail"]["path"] == f"{world.secret}/s.txt"]
    call = [r for r in records if r["kind"] == "ipc"]
    assert [r["verdict"] for r in read] == ["allowed"] and [r["verdict"] for r in call] == ["allowed"], records
    assert (call[0]["detail"]["destination"], call[0]["detail"]["member"]) == (SessionBus.ALLOWED, "Ping")
    (c,) = [r for r in records if r["kind"] == "correlation"]
    assert c["detail"]["seqs"] == [read[0]["seq"], call[0]["seq"]], c
    assert c["verdict"] == "detected" and "cgroup.freeze" in c["actions"], c


# ---- X11 and ssh-agent, the real programs --------------------------------------------------------
def tool_manifest(world: World, tool: str, unix: list[str]) -> str:
    grants = ", ".join(f'"{u}"' for u in unix)
    return world.manifest(extra=f"  ipc: {{unix: [{grants}]}}\n").replace(
        f'exec: ["{world.helper}"]', f'exec: ["{world.helper}", "{tool}"]').replace(
        f'read: ["{world.allowed}/"]',
        f'read: ["{world.allowed}/", "/usr/", "/lib/", "/lib64/", "/etc/", "/proc/filesystems"]').replace(
        f'write: ["{world.out}/"]', f'write: ["{world.out}/", "/dev/null"]')


def run_tool(engine: Engine, world: World, manifest: str, argv: list[str]) -> tuple[int, list[dict[str, Any]]]:
    m = parse(manifest.encode(), "tool.yaml", home=str(world.base))
    status, _, records, _ = execute(engine, m, argv, sandbox=True)
    return status, [r for r in records if r["kind"] not in ("lifecycle", "checkpoint")]


@pytest.fixture(scope="module")
def xserver() -> Iterator[str]:
    """A real X server (Xvfb) with its socket in /tmp/.X11-unix, as a desktop session's is."""
    n = next(i for i in range(90, 190) if not os.path.exists(f"/tmp/.X11-unix/X{i}") and not os.path.exists(f"/tmp/.X{i}-lock"))
    # -nolisten local: no abstract socket. Landlock's scoping refuses an abstract connect out of the
    # domain with EPERM, on which libxcb gives up instead of trying the path socket (README, blind spots)
    proc = subprocess.Popen(["Xvfb", f":{n}", "-nolisten", "tcp", "-nolisten", "local", "-ac", "-screen", "0",
                             "320x240x24"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not os.path.exists(f"/tmp/.X11-unix/X{n}"):
        assert proc.poll() is None and time.monotonic() < deadline, "Xvfb did not start"
        time.sleep(0.05)
    yield f":{n}"
    proc.terminate()
    proc.wait(timeout=10)


def test_x11_window_listing_is_refused_without_a_grant(engine: Engine, world: World, xserver: str) -> None:
    xwininfo = "/usr/bin/xwininfo"
    status, violations = run_tool(engine, world, tool_manifest(world, xwininfo, []),
                                  [xwininfo, "-root", "-tree", "-display", xserver])
    assert status != 0
    sock = f"/tmp/.X11-unix/X{xserver[1:]}"
    # where nothing in the kernel decides, the masked /tmp/.X11-unix holds no socket, and nothing records
    want = [sock] if unix_in_kernel(engine) else []
    assert [r["detail"]["path"] for r in violations if r["detail"].get("socket") == "unix"] == want
    assert all(r["verdict"] == "denied" for r in violations)
    # outside every extension the same listing works: the X server itself is untouched
    assert subprocess.run([xwininfo, "-root", "-display", xserver], capture_output=True).returncode == 0


def test_x11_works_when_its_socket_is_granted(engine: Engine, world: World, xserver: str) -> None:
    xwininfo = "/usr/bin/xwininfo"
    sock = f"/tmp/.X11-unix/X{xserver[1:]}"
    status, violations = run_tool(engine, world, tool_manifest(world, xwininfo, [sock]),
                                  [xwininfo, "-root", "-display", xserver])
    assert status == 0 and violations == [], [(r["kind"], r["verdict"], r["detail"]) for r in violations]


@pytest.fixture(scope="module")
def ssh_agent(world: World) -> Iterator[str]:
    """A real ssh-agent of the extension's user holding a test key."""
    d = world.base / "ssh-agent"
    d.mkdir(exist_ok=True)
    os.chown(d, NOBODY, NOBODY)
    sock, key = d / "agent.sock", d / "id_ed25519"
    env = {"PATH": "/usr/bin:/bin", "SSH_AUTH_SOCK": str(sock)}
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, user=NOBODY, env=env)
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], user=NOBODY, group=NOBODY, env=env,
                            stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "ssh-agent did not start"
        time.sleep(0.05)
    subprocess.run(["ssh-add", "-q", str(key)], check=True, user=NOBODY, env=env)
    yield str(sock)
    proc.terminate()
    proc.wait(timeout=10)


def test_ssh_agent_key_use_is_refused_without_a_grant(engine: Engine, world: World, ssh_agent: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSH_AUTH_SOCK", ssh_agent)
    status, violations = run_tool(engine, world, tool_manifest(world, "/usr/bin/ssh-add", []),
                                  ["/usr/bin/ssh-add", "-l"])
    assert status == 2  # ssh-add: could not reach the agent
    want = [(ssh_agent, "denied")] if unix_in_kernel(engine) else []  # else: /dev/null over it, no record
    assert [(r["detail"]["path"], r["verdict"]) for r in violations] == want


def test_ssh_agent_works_when_granted(engine: Engine, world: World, ssh_agent: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSH_AUTH_SOCK", ssh_agent)
    status, violations = run_tool(engine, world, tool_manifest(world, "/usr/bin/ssh-add", [ssh_agent]),
                                  ["/usr/bin/ssh-add", "-l"])
    assert status == 0 and violations == [], [(r["kind"], r["verdict"], r["detail"]) for r in violations]


# ---- the private /tmp and /var/tmp: writable, the instance's own, thrown away with it ------------------
@pytest.mark.guest  # Landlock's ABI, the hooks that see the socket: the VM tier runs it on 6.1 too
def test_the_private_tmp_is_writable_and_thrown_away(engine: Engine, world: World) -> None:
    """What a Jupyter kernel does first: find a usable temporary directory. Temporary files and folders are
    made, renamed, linked and removed in /tmp and /var/tmp with no violation, and none of it reaches the host."""
    tag = f"ebpfguard-private-{os.getpid()}"
    script = (f'set -e; cd /tmp; f=$(mktemp); echo hi > "$f"; test "$(cat "$f")" = hi; d=$(mktemp -d -p /var/tmp); '
              f'echo x > "$d/y"; mv "$d/y" "$d/z"; ln -s z "$d/l"; chmod 600 "$d/z"; rm -r "$d" "$f"; '
              f'echo kept > /tmp/{tag}; mkdir /var/tmp/{tag}; echo kept > /var/tmp/{tag}/f; '
              f'/usr/bin/python3 -I -S -c "import tempfile; tempfile.TemporaryFile().close(); '
              f'print(tempfile.gettempdir())" > /var/tmp/{tag}/py; test "$(cat /var/tmp/{tag}/py)" = /tmp')
    reads = '"/usr/", "/lib/", "/lib64/", "/etc/", "/proc/filesystems"'  # the last: libselinux's, in mv and mkdir
    text = world.manifest().replace(f'exec: ["{world.helper}"]', 'exec: ["/usr/bin/"]').replace(
        f'read: ["{world.allowed}/"]', f'read: ["{world.allowed}/", {reads}]')
    m = parse(text.encode(), "tmp.yaml", home=str(world.base))
    status, _, records, _ = execute(engine, m, ["/usr/bin/sh", "-c", script], sandbox=True)
    violations = [r for r in records if r["kind"] not in ("lifecycle", "checkpoint")]
    assert status == 0 and violations == [], (status, [(r["kind"], r["verdict"], r["detail"]) for r in violations])
    (start,) = [r for r in records if r["kind"] == "lifecycle" and r["detail"].get("event") == "start"]
    assert {"/tmp", "/var/tmp"} <= set(start["detail"]["sandbox"]["mount"]["writable"])
    assert not os.path.lexists(f"/tmp/{tag}") and not os.path.lexists(f"/var/tmp/{tag}")  # the host's are untouched


def test_a_write_in_the_hosts_tmp_is_still_a_violation(engine: Engine, world: World) -> None:
    """The private /tmp's grant counts only for a cgroup the kernel knows is in its own mount namespace: a
    process of the same manifest outside one (an adopted process: the host's /tmp) is recorded writing there."""
    from ebpfguard.sandbox.launcher import spawn  # noqa: PLC0415

    planted = Path(f"/tmp/ebpfguard-real-{os.getpid()}")
    marker = world.out / f"m-real-tmp-{os.getpid()}"
    m = parse(world.manifest().encode(), "egtest.yaml", home=str(world.base))
    records: list[dict[str, Any]] = []
    engine.subscribers.append(records.append)
    inst = engine.prepare(m, launch=False)
    try:
        argv = [str(world.helper), str(marker), "write", str(planted)]
        proc = spawn(argv, inst.cgroup.procs_files())
        engine.started(inst, proc.pid, argv, None)
        proc.wait(timeout=20)
        deadline = time.monotonic() + 10
        while inst.cgroup.populated() and time.monotonic() < deadline:
            engine.poll(10)
        engine.poll(0)
    finally:
        engine.release(inst, kill=True)
        engine.subscribers.remove(records.append)
        planted.unlink(missing_ok=True)
        marker.unlink(missing_ok=True)
    got = [r for r in records if r["kind"] == "file" and r["detail"].get("path") == str(planted)]
    assert [r["detail"]["access"] for r in got] == ["write"], records


# ---- the session bus at its real path, /run/user/UID/bus ------------------------------------------------
@pytest.fixture(scope="module")
def bus_user() -> Iterator[pwd.struct_passwd]:
    """A user made for these tests (useradd), removed after, with its own /run/user/UID."""
    name = f"egbus{os.getpid() % 100000}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=True)


@pytest.fixture(scope="module")
def real_path_bus(engine: Engine, bus_user: pwd.struct_passwd) -> Iterator[SessionBus]:
    """dbus-daemon --session at /run/user/UID/bus, where the instance's proxy is mounted too; the engine
    finds it at its default address (nothing in engine.bus_addresses)."""
    runtime = Path(f"/run/user/{bus_user.pw_uid}")
    assert not runtime.exists(), f"{runtime} exists already"
    Path("/run/user").mkdir(exist_ok=True, mode=0o755)
    saved = engine.bus_addresses.pop("session", None)
    bus = SessionBus(runtime, bus_user.pw_uid, bus_user.pw_gid)
    try:
        assert bus.path == runtime / "bus"
        yield bus
    finally:
        bus.close()
        shutil.rmtree(runtime, ignore_errors=True)
        if saved is not None:
            engine.bus_addresses["session"] = saved


@pytest.mark.guest  # Landlock's ABI, the hooks that see the socket: the VM tier runs it on 6.1 too
def test_a_granted_call_works_with_the_bus_at_its_real_path(engine: Engine, world: World, real_path_bus: SessionBus,
                                                            bus_user: pwd.struct_passwd) -> None:
    status, violations = dbus_send(engine, world, SessionBus.ALLOWED, bus_user.pw_name)
    assert status == 0 and violations == [], (status, [(r["kind"], r["verdict"], r["detail"]) for r in violations])


@pytest.mark.guest  # Landlock's ABI, the hooks that see the socket: the VM tier runs it on 6.1 too
def test_an_ungranted_call_is_refused_and_recorded_with_the_bus_at_its_real_path(
        engine: Engine, world: World, real_path_bus: SessionBus, bus_user: pwd.struct_passwd) -> None:
    status, violations = dbus_send(engine, world, SessionBus.FORBIDDEN, bus_user.pw_name)
    assert status != 0
    (rec,) = [r for r in violations if r["kind"] == "ipc"]
    assert (rec["detail"]["destination"], rec["detail"]["member"], rec["verdict"]) == (SessionBus.FORBIDDEN, "Ping",
                                                                                      "denied"), rec
    assert real_path_bus.owned(SessionBus.FORBIDDEN)


def test_a_standalone_run_of_a_manifest_with_dbus_rules(world: World, real_path_bus: SessionBus,
                                                        bus_user: pwd.struct_passwd, tmp_path: Path) -> None:
    """`ebpfguard run -m M -- cmd` with no agent: the check before the programs load does not ask for the
    proxies (they start with the instance); the granted call answers, the ungranted one is refused and recorded."""
    m = tmp_path / "dbus.yaml"
    m.write_text(dbus_manifest(world, bus_user.pw_name))
    env = {k: v for k, v in os.environ.items() if k not in ("SUDO_USER", "SUDO_UID", "DBUS_SESSION_BUS_ADDRESS")}
    out = {}
    for name in (SessionBus.ALLOWED, SessionBus.FORBIDDEN):
        state = tmp_path / f"st-{name}"
        r = subprocess.run([str(Path(sys.executable).parent / "ebpfguard"), "run", "--standalone", "-m", str(m),
                            "--state-dir", str(state), "--", *dbus_ping(name)], env=env, capture_output=True,
                           text=True, timeout=300, check=False)
        ipc = [rec for rec in read(state) if isinstance(rec, dict) and rec.get("kind") == "ipc"]
        out[name] = (r.returncode, [(rec["detail"]["destination"], rec["verdict"]) for rec in ipc], r.stderr[-800:])
    assert out[SessionBus.ALLOWED][:2] == (0, []), out
    code, ipc, err = out[SessionBus.FORBIDDEN]
    assert code != 0 and ipc == [(SessionBus.FORBIDDEN, "denied")], out

"""Shared by the e2e modules that run ebpfguard as desktop users do: real users (useradd, removed after) and a real
agent serving them on its control socket, in a 0755 folder of root's, with the package copied where any user can
read it (the checkout may sit in root's home). A module asks for `users` and builds its own `served` fixture from
`serve(policies)`, with the policy folder it needs."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

TOP = Path(__file__).resolve().parents[2]
SLOW = 5.0 if os.environ.get("EGVM_KERNEL") else 1.0  # the waits stretch under the VM tier's emulation


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    state: Path
    socket: Path
    code: Path  # the package, readable by any user
    log: Path

    def env(self, user: User | None = None) -> dict[str, str]:
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": str(self.code),
               "EBPFGUARD_SOCKET": str(self.socket), "PYTHONDONTWRITEBYTECODE": "1"}
        if user is not None:
            env.update(HOME=str(user.home), USER=user.name, LOGNAME=user.name)
        return env

    def argv(self, *args: str) -> list[str]:
        return ["/usr/bin/python3", "-m", "ebpfguard.cli.main", *args]

    def as_user(self, user: User, *args: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), user=user.uid, group=user.gid, extra_groups=[], env=self.env(user),
                              cwd=kw.pop("cwd", user.home), capture_output=True, text=True, timeout=timeout * SLOW,
                              **kw)

    def start_as_user(self, user: User, *args: str, **kw: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), user=user.uid, group=user.gid, extra_groups=[], env=self.env(user),
                                cwd=user.home, text=True, **kw)

    def root(self, *args: str) -> subprocess.CompletedProcess[str]:
        n = 2 if args[0] in ("forensics", "policy") else 1
        return subprocess.run([sys.executable, "-m", "ebpfguard.cli.main", *args[:n], "--state-dir", str(self.state),
                               *args[n:]], capture_output=True, text=True, timeout=60 * SLOW,
                              env={**os.environ, "EBPFGUARD_SOCKET": str(self.socket)})

    def status(self) -> dict[str, Any]:
        r = self.root("status", "--json")
        assert r.returncode == 0, r.stderr
        return dict(json.loads(r.stdout))

    def records(self) -> list[dict[str, Any]]:
        r = self.root("forensics", "show", "--json")
        assert r.returncode == 0, r.stderr
        return [json.loads(line) for line in r.stdout.splitlines()]

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _useradd(name: str) -> User:
    r = subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    pw = pwd.getpwnam(name)
    work = Path(pw.pw_dir) / "work"
    work.mkdir()
    os.chown(work, pw.pw_uid, pw.pw_gid)
    return User(name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))


@pytest.fixture(scope="module")
def users() -> Iterator[tuple[User, User]]:
    if os.geteuid() != 0:
        pytest.fail("the e2e tier needs root (useradd), and CI runs it as root")
    tag = uuid.uuid4().hex[:6]
    made: list[User] = []
    try:
        made.append(_useradd(f"egu1-{tag}"))
        made.append(_useradd(f"egu2-{tag}"))
        yield made[0], made[1]
    finally:
        for u in made:
            subprocess.run(["pkill", "-KILL", "-u", str(u.uid)], capture_output=True)  # by uid: only theirs
            subprocess.run(["userdel", "--remove", u.name], capture_output=True)


@contextmanager
def serve(policies: dict[str, str]) -> Iterator[Served]:
    """An agent whose policy folder holds `policies` (file name: text), serving every user on its socket."""
    top = Path(tempfile.mkdtemp(prefix="eg-users-"))
    os.chmod(top, 0o755)
    code = top / "code"
    shutil.copytree(TOP / "ebpfguard", code / "ebpfguard", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(TOP / "bpf", code / "bpf")  # the ABI the client reads records by (bpf/include/events.h)
    shutil.copytree(TOP / "policies", code / "policies")
    for d, _, files in os.walk(code):
        os.chmod(d, 0o755)
        for f in files:
            os.chmod(Path(d) / f, 0o644)
    folder = top / "policies"
    folder.mkdir()
    for name, text in policies.items():
        (folder / name).write_text(text)
    sock_dir = Path(f"/run/ebpfguard-e2e-{uuid.uuid4().hex[:8]}")
    log = top / "agent.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ebpfguard.cli.main", "agent", "--state-dir",
                                 str(top / "state"), "--policy-dir", str(folder), "--socket",
                                 str(sock_dir / "agent.sock"), "--metrics-address", ""],
                                stdout=out, stderr=subprocess.STDOUT)
    s = Served(proc, top / "state", sock_dir / "agent.sock", code, log)
    try:
        deadline = time.monotonic() + 60 * SLOW
        while s.root("status").returncode != 0:
            assert proc.poll() is None, s.output()
            assert time.monotonic() < deadline, f"the agent did not start enforcing: {s.output()}"
            time.sleep(0.2)
        yield s
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        shutil.rmtree(top, ignore_errors=True)
        shutil.rmtree(sock_dir, ignore_errors=True)


def wait(what: str, cond: Any, within: float = 10) -> None:
    deadline = time.monotonic() + within * SLOW
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)

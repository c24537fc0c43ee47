"""Socket activation as systemd does it, with systemd's own tool (systemd-socket-activate, from Debian's systemd
package): the listening socket exists before the agent, the first client's request starts the agent, which takes the
socket (LISTEN_FDS) and answers once it enforces; a socket passed for another path is refused with why. The unit
itself (ebpfguard.socket) is checked under a real systemd in the VM tier (tests/service/test_systemd.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import SLOW

pytestmark = pytest.mark.e2e

TOP = Path(__file__).resolve().parents[2]
ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"


@pytest.fixture
def place() -> Iterator[tuple[Path, Path]]:
    if os.geteuid() != 0:
        pytest.fail("the agent runs as root")
    if not os.path.exists(ACTIVATE):
        pytest.fail("systemd-socket-activate is missing (Debian's systemd package; make setup installs it)")
    top = Path(tempfile.mkdtemp(prefix="eg-activate-"))
    run = Path(f"/run/ebpfguard-act-{uuid.uuid4().hex[:8]}")
    run.mkdir(mode=0o755)
    (top / "policies").mkdir()
    try:
        yield top, run
    finally:
        shutil.rmtree(top, ignore_errors=True)
        shutil.rmtree(run, ignore_errors=True)


def activated(top: Path, sock: Path, serve: Path) -> subprocess.Popen[bytes]:
    """systemd-socket-activate listening on ``sock``, starting an agent that serves ``serve``."""
    with open(top / "agent.log", "wb") as out:
        return subprocess.Popen([ACTIVATE, "-l", str(sock), f"--setenv=PATH={os.environ.get('PATH', '')}", "--",
                                 sys.executable, "-m", "ebpfguard.cli.main", "agent", "--state-dir",
                                 str(top / "state"), "--policy-dir", str(top / "policies"), "--socket", str(serve),
                                 "--metrics-address", ""], stdout=out, stderr=subprocess.STDOUT, cwd=TOP)


def client(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ebpfguard.cli.main", *args], capture_output=True, text=True,
                          cwd=TOP, timeout=300 * SLOW,
                          env={**os.environ, "EBPFGUARD_SOCKET": str(sock), "EBPFGUARD_TIMEOUT": str(240 * SLOW)})


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def listening(sock: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "systemd-socket-activate did not listen"
        time.sleep(0.05)


def test_the_first_request_starts_the_agent_which_serves_the_passed_socket(place: tuple[Path, Path]) -> None:
    top, run = place
    sock = run / "agent.sock"
    proc = activated(top, sock, sock)
    try:
        listening(sock, proc)
        log = top / "agent.log"
        assert "passed by systemd" not in log.read_text()  # nothing started it yet
        r = client(sock, "status")  # connects at once; waits in the queue while the agent starts
        assert r.returncode == 0, r.stdout + r.stderr + log.read_text()
        assert f"serving {sock}, passed by systemd (socket activation)" in log.read_text(), log.read_text()
        assert "eBPF programs: " in log.read_text()
        again = client(sock, "status", "--json")
        assert again.returncode == 0 and '"policies"' in again.stdout, again.stdout + again.stderr
        stop(proc)
        assert proc.returncode == 0
        # the socket is systemd's: a stopped agent leaves it where the socket unit listens on for the next start
        assert sock.exists(), "the agent removed the socket systemd passed it"
    finally:
        stop(proc)


def test_a_socket_passed_for_another_path_is_refused_with_why(place: tuple[Path, Path]) -> None:
    top, run = place
    sock, other = run / "agent.sock", run / "elsewhere.sock"
    proc = activated(top, sock, other)
    try:
        listening(sock, proc)
        r = client(sock, "status")
        assert r.returncode != 0, r.stdout
        proc.wait(60 * SLOW)
        assert proc.returncode != 0
        out = (top / "agent.log").read_text()
        assert f"the socket systemd passed is not a listening unix stream socket at {other}" in out, out
        assert "Traceback" not in out
    finally:
        stop(proc)

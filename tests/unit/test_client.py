"""ebpfguard.client without root: its arguments are checked before anything is sent (precise errors, no descriptor
left open), and a fake agent on a unix socket sees the wire a real one does: the launch line with three descriptors,
the pipes' other ends, a signal answered after the exit line, a refusal. The real agent: tests/e2e/test_client.py."""

from __future__ import annotations

import array
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ebpfguard import client
from ebpfguard.service.control import Refused


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_the_surface_is_pinned_and_light() -> None:
    assert client.__all__ == ["DEVNULL", "FORWARDED_SIGNALS", "PIPE", "STDOUT", "ControlError", "Instance", "Refused",
                              "launch"]
    probe = ("import sys, ebpfguard.client\n"
             "print(sorted(m for m in sys.modules if m == 'bcc' or m.split('.')[:2] in (['ebpfguard', 'kernel'],"
             " ['ebpfguard', 'sandbox'], ['ebpfguard', 'runtime'], ['ebpfguard', 'cli'])))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "[]\n", r.stdout + r.stderr


@pytest.mark.parametrize("kwargs,error,message", [
    ({"argv": "/bin/true"}, TypeError, "argv: a list of strings"),
    ({"argv": []}, ValueError, "argv: no command given"),
    ({"extension": None}, ValueError, "give exactly one of extension="),
    ({"manifest": "/m.yaml"}, ValueError, "give exactly one of extension="),
    ({"mode": "strict"}, ValueError, "mode: 'strict' is not one of audit, enforce"),
    ({"argv": ["no-such-command-here"], "env": {"PATH": "/nonexistent"}}, FileNotFoundError,
     "no-such-command-here: no such command on PATH"),
    ({"env": {"A": 1}}, TypeError, "env: names and values are strings"),
    ({"stdin": io.BytesIO()}, TypeError, "stdin: BytesIO has no file descriptor"),
    ({"stdout": object()}, TypeError, "stdout: object has no file descriptor"),
    ({"stdout": True}, TypeError, "stdout: bool has no file descriptor"),
    ({"stdin": client.STDOUT}, ValueError, "stdin: STDOUT is for stderr only"),
    ({"stderr": -7}, ValueError, "stderr: -7 is neither a file descriptor nor PIPE"),
    ({"stdout": 987}, ValueError, "stdout: descriptor 987 is not open"),
])
def test_bad_arguments_are_refused_before_anything_is_sent(tmp_path: Path, kwargs: dict[str, Any],
                                                           error: type[Exception], message: str) -> None:
    args: dict[str, Any] = {"argv": ["/bin/true"], "extension": "tool", "socket": tmp_path / "none.sock", **kwargs}
    before = _open_fds()
    with pytest.raises(error, match=message.replace("(", r"\(")):
        client.launch(args.pop("argv"), **args)
    assert _open_fds() == before


def test_a_closed_file_and_a_missing_agent_are_precise(tmp_path: Path) -> None:
    closed = open(os.devnull, "rb")  # noqa: SIM115
    closed.close()
    with pytest.raises(ValueError, match="stdin: I/O operation on closed file"):
        client.launch(["/bin/true"], extension="tool", stdin=closed, socket=tmp_path / "none.sock")
    before = _open_fds()
    with pytest.raises(client.ControlError, match=f"no agent is listening on {tmp_path}/none.sock"):
        client.launch(["/bin/true"], extension="tool", stdin=client.PIPE, stdout=client.PIPE,
                      socket=tmp_path / "none.sock")
    assert _open_fds() == before  # the pipes made for it are closed again


@pytest.mark.parametrize("sig", ["SIGKILL", "INT", "sigint", 9, signal.SIGSTOP, True])
def test_only_the_forwarded_signals_are_sent(sig: Any) -> None:
    from ebpfguard.client.api import _signal_name

    with pytest.raises(ValueError, match="the agent forwards only SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, "
                                         r"SIGUSR2, SIGWINCH \(kill\(\) ends an instance\)"):
        _signal_name(sig)


def test_signals_by_name_or_enum() -> None:
    from ebpfguard.client.api import _signal_name

    assert [_signal_name(s) for s in ("SIGINT", signal.SIGTERM, int(signal.SIGWINCH))] == \
        ["SIGINT", "SIGTERM", "SIGWINCH"]


# ---- a fake agent -------------------------------------------------------------------------------------------
class Fake:
    """Serves one connection with ``script(conn, request, fds)`` in a thread; keeps what it received."""

    def __init__(self, path: Path, script: Callable[[socket.socket, dict[str, Any], list[int]], None]) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen()
        self.script = script
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            fds = array.array("i")
            data, anc, _, _ = conn.recvmsg(1 << 16, socket.CMSG_SPACE(3 * fds.itemsize))
            for _level, _kind, raw in anc:
                fds.frombytes(raw)
            while not data.endswith(b"\n"):
                data += conn.recv(1 << 16)
            try:
                self.script(conn, json.loads(data), list(fds))
            except BaseException as err:
                self.error = err
            finally:
                for fd in fds:
                    os.close(fd)

    def join(self) -> None:
        self.thread.join(10)
        self.listener.close()
        assert self.error is None, self.error


LAUNCHED = {"ok": True, "instance": "tool-1", "pid": 42, "cgroup": "/sys/fs/cgroup/x", "user": "u",
            "layers": ["landlock-fs"], "not_enforced": []}


def _lines(conn: socket.socket) -> Iterator[dict[str, Any]]:
    for line in conn.makefile("rb"):
        yield json.loads(line)


def test_a_launch_with_pipes_a_signal_answered_after_the_exit_line(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    def agent(conn: socket.socket, req: dict[str, Any], fds: list[int]) -> None:
        seen.append(req)
        conn.sendall(json.dumps(LAUNCHED).encode() + b"\n")
        os.write(fds[1], os.read(fds[0], 100).upper())  # the instance echoes its stdin to stdout, upper-cased
        for line in _lines(conn):
            seen.append(line)
            if line["op"] == "signal":  # it ends on the signal: the exit line first, then the answer
                conn.sendall(b'{"exited": 130, "instance": "tool-1"}\n{"ok": true}\n')

    before = _open_fds()
    fake = Fake(tmp_path / "agent.sock", agent)
    with client.launch(["true", "-x"], extension="tool", stdin=client.PIPE, stdout=client.PIPE,
                       stderr=client.STDOUT, env={"PATH": "/usr/bin:/bin", "A": "b"}, cwd="/tmp",
                       socket=tmp_path / "agent.sock") as inst:
        assert (inst.id, inst.pid, inst.user, inst.layers) == ("tool-1", 42, "u", ["landlock-fs"])
        assert inst.stdin is not None and inst.stdout is not None and inst.stderr is None
        inst.stdin.write(b"hello")
        inst.stdin.flush()
        assert inst.stdout.read(5) == b"HELLO"
        assert inst.poll() is None
        with pytest.raises(TimeoutError, match="tool-1 still runs after 0.1 s"):
            inst.wait(0.1)
        inst.signal("SIGINT")
        assert inst.poll() == 130 and inst.wait() == 130 and repr(inst) == "<Instance tool-1 pid 42 status 130>"
        inst.kill()  # it has ended: nothing is sent
        inst.signal(signal.SIGTERM)
    fake.join()
    assert _open_fds() == before
    req = seen[0]
    assert req["op"] == "launch" and req["extension"] == "tool" and req["cwd"] == "/tmp"
    assert req["argv"][0] in ("/usr/bin/true", "/bin/true") and req["argv"][1:] == ["-x"]
    assert req["env"] == {"PATH": "/usr/bin:/bin", "A": "b"}
    assert seen[1:] == [{"op": "signal", "instance": "tool-1", "signal": "SIGINT"}]
    with pytest.raises(client.ControlError, match="tool-1: the handle is closed"):
        inst.signal("SIGINT")


def test_a_refused_launch_is_the_agents_failure_and_leaves_nothing_open(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text("apiVersion: ebpfguard.io/v1\n")

    def agent(conn: socket.socket, req: dict[str, Any], fds: list[int]) -> None:
        assert len(fds) == 3 and req["manifest_text"] == "apiVersion: ebpfguard.io/v1\n"
        assert req["manifest_path"] == str(manifest) and req["mode"] == "audit"
        conn.sendall(b'{"ok": false, "error": "spec.user: names \'root\'", "exit_code": 2}\n')

    before = _open_fds()
    fake = Fake(tmp_path / "agent.sock", agent)
    with pytest.raises(Refused, match="spec.user: names 'root'") as err:
        client.launch(["/bin/true"], manifest=manifest, mode="audit", stdout=client.PIPE, stderr=client.DEVNULL,
                      socket=tmp_path / "agent.sock")
    assert err.value.exit_code == 2 and isinstance(err.value, client.ControlError)
    fake.join()
    assert _open_fds() == before


def test_an_agent_that_goes_away_is_a_control_error(tmp_path: Path) -> None:
    def agent(conn: socket.socket, req: dict[str, Any], fds: list[int]) -> None:
        conn.sendall(json.dumps(LAUNCHED).encode() + b"\n")

    fake = Fake(tmp_path / "agent.sock", agent)
    inst = client.launch(["/bin/true"], manifest="apiVersion: x\nkind: y\n", socket=tmp_path / "agent.sock")
    fake.join()
    with pytest.raises(client.ControlError, match="the agent closed the connection before tool-1 ended"):
        inst.wait()
    inst.close()


def test_a_manifest_path_sends_the_signature_beside_it(tmp_path: Path) -> None:
    from ebpfguard.client.api import _request  # noqa: PLC0415

    m = tmp_path / "mine.yaml"
    m.write_text("apiVersion: ebpfguard.io/v1\n")
    assert _request(["/bin/true"], None, m, {}, tmp_path, None).signature_text is None
    (tmp_path / "mine.yaml.sig").write_text('{"format": "ebpfguard-signature/1"}')
    req = _request(["/bin/true"], None, m, {}, tmp_path, None)
    assert (req.manifest_path, req.signature_text) == (str(m), '{"format": "ebpfguard-signature/1"}')
    assert _request(["/bin/true"], None, m.read_text() + "\n", {}, tmp_path, None).signature_text is None

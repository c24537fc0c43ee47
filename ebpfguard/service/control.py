"""The client of the agent's control socket. The operations, their fields and answers are the protocol table's
(protocol.py; docs/protocol.md lists them):

    with Client(state_dir) as c:
        prepared = c.request(Prepare(extension="md-preview"))  # a Prepared
        c.request("status")  # by name: checked against the same table; the answer as the wire has it (a dict)

A request is checked before it is sent (an unknown operation or field, a wrong type: BadRequest, exit code 2); a
failure the agent answers is raised as Refused, with the exit code it gave. A launch for the caller (the `launch`
operation: its stdio over SCM_RIGHTS, then signals and the exit line on the same connection) is a Launching, which
`ebpfguard run` of a user and ebpfguard.client both drive.
"""

from __future__ import annotations

import array
import json
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

from ebpfguard.common.statedir import DEFAULT as DEFAULT_STATE
from ebpfguard.common.statedir import StateDir
from ebpfguard.errors import ControlError
from ebpfguard.service.protocol import (
    BY_REQUEST,
    Failure,
    Kill,
    Launch,
    Launched,
    Ping,
    Request,
    Signal,
    decode_answer,
    decode_failure,
    encode_request,
    operation_of,
)

A = TypeVar("A")


DEFAULT_SOCKET = Path("/run/ebpfguard/agent.sock")
SOCKET_ENV = "EBPFGUARD_SOCKET"


def socket_path(state_dir: str | os.PathLike[str], explicit: str | os.PathLike[str] | None = None, *,
                client: bool = True) -> Path:
    """Where the agent of ``state_dir`` serves: ``explicit`` (--socket), else, for a client, $EBPFGUARD_SOCKET,
    else /run/ebpfguard/agent.sock for the system agent (the default state folder), else STATE/agent.sock: a
    second agent's socket (a test's, a trial's) sits in its 0700 state folder, root's alone."""
    if explicit:
        return Path(explicit)
    if client and os.environ.get(SOCKET_ENV):
        return Path(os.environ[SOCKET_ENV])
    if os.path.abspath(state_dir) == DEFAULT_STATE:
        return DEFAULT_SOCKET
    return StateDir.of(state_dir).socket


def caller_umask() -> int:
    """This process's umask, read without changing it (/proc/self/status), for a launch request."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


class Refused(ControlError):
    """The agent answered a request with a failure."""

    def __init__(self, failure: Failure):
        super().__init__(failure.error)
        self.failure = failure
        self.exit_code = failure.exit_code


def default_timeout() -> float:
    """How long a client waits for an answer: $EBPFGUARD_TIMEOUT seconds, else 30. A request that reaches the
    socket while the agent starts waits in its queue (ebpfguard.socket) until the agent enforces."""
    raw = os.environ.get("EBPFGUARD_TIMEOUT", "")
    try:
        value = float(raw) if raw else 30.0
    except ValueError:
        raise ControlError(f"EBPFGUARD_TIMEOUT={raw!r} is not a number of seconds") from None
    if not 0 < value <= 86400:
        raise ControlError(f"EBPFGUARD_TIMEOUT={raw!r} must be more than 0 and at most 86400 seconds")
    return value


class Client:
    def __init__(self, state_dir: str | os.PathLike[str], timeout: float | None = -1.0,
                 socket_file: str | os.PathLike[str] | None = None):
        """``timeout``: seconds to wait for an answer (None: forever); by default default_timeout(). A shorter one
        is raised to $EBPFGUARD_TIMEOUT when that is set (a slow machine's operator sets it once for every
        command)."""
        if timeout is not None and timeout < 0:
            timeout = default_timeout()
        elif timeout is not None and os.environ.get("EBPFGUARD_TIMEOUT"):
            timeout = max(timeout, default_timeout())
        self.path = socket_path(state_dir, socket_file)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.path))
        except OSError as err:
            sock.close()
            raise ControlError(f"no agent is listening on {self.path} ({err.strerror})") from err
        # the agent is root's: a socket another user serves (a path from $EBPFGUARD_SOCKET kept across su or
        # sudo -E) would be told what to launch, where to write and what is allowed
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                              struct.calcsize("3i")))
        if uid != 0:
            sock.close()
            raise ControlError(f"{self.path} is served by uid {uid}, not by the agent (root): not used")
        self.sock = sock
        self._buf = b""

    @classmethod
    def over(cls, sock: socket.socket, name: str = "<socket>") -> Client:
        """A client on a connected socket (a socketpair in tests)."""
        self = cls.__new__(cls)
        self.path, self.sock, self._buf = Path(name), sock, b""
        return self

    @overload
    def request(self, op: Request[A], *, fds: list[int] | None = None) -> A: ...

    @overload
    def request(self, op: str, *, fds: list[int] | None = None, **fields: Any) -> dict[str, Any]: ...

    def request(self, op: Request[A] | str, *, fds: list[int] | None = None, **fields: Any) -> A | dict[str, Any]:
        """A typed request gets its typed answer; an operation by name with its fields (checked against the
        table just the same) gets the answer as the agent sent it, "ok" included. ``fds`` go with the request
        (SCM_RIGHTS): a launch's stdin, stdout and stderr."""
        if isinstance(op, str):
            req = operation_of({"op": op}).parse(fields)
            return self._exchange(encode_request(req), fds)
        answer: A = decode_answer(BY_REQUEST[type(op)], self._exchange(encode_request(op), fds))
        return answer

    def send(self, op: Request[Any]) -> None:
        """A request whose answer is read later, among the lines (a launch's signals)."""
        self._send_line(encode_request(op))

    def _send_line(self, payload: dict[str, Any], fds: list[int] | None = None) -> None:
        try:
            data = json.dumps(payload).encode() + b"\n"
            if fds:  # the descriptors ride on the first bytes; the rest of a long line follows
                sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                data = data[sent:]
            if data:  # (a send of nothing to a peer that has answered and closed would be a broken pipe)
                self.sock.sendall(data)
        except OSError as err:
            raise ControlError(f"control socket {self.path}: {err}") from err

    def _exchange(self, payload: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
        self._send_line(payload, fds)
        answer = self.next_line()
        if answer is None:
            raise ControlError("the agent closed the connection")
        return checked(answer)

    def next_line(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next JSON object the agent sends (an answer, an activity item, a launch's exit line), None once it
        has closed the connection. With a ``timeout`` (seconds), TimeoutError when none came within it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            if deadline is not None and not self._readable(deadline - time.monotonic()):
                raise TimeoutError(f"no line from the agent within {timeout:g} s")
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError as err:
                raise ControlError(f"the agent at {self.path} did not answer within {self.sock.gettimeout():g} s "
                                   "(a starting agent answers once it enforces: is it still compiling its "
                                   "programs? see `journalctl -u ebpfguard`)") from err
            except OSError as err:
                raise ControlError(f"control socket {self.path}: {err}") from err
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            item = json.loads(line)
        except ValueError as err:
            raise ControlError(f"the agent sent a line that is not JSON: {err}") from err
        if not isinstance(item, dict):
            raise ControlError("the agent sent something other than a JSON object")
        return item

    def _readable(self, seconds: float) -> bool:
        poller = select.poll()  # not select(): an application may hold more than 1024 descriptors
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(max(0, int(seconds * 1000))))

    def lines(self) -> Iterator[dict[str, Any]]:
        """The JSON lines the agent streams after a request that subscribes (activity), until it closes."""
        while (item := self.next_line()) is not None:
            yield item

    def shutdown(self) -> None:
        """Ends the connection at once, for a thread blocked reading it too (close() alone does not wake it)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def checked(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer that says ok, or the Refused it stands for."""
    if answer.get("ok") is not True:
        raise Refused(decode_failure(answer))
    return answer


class Launching:
    """A launch for the caller on its own connection (the `launch` operation): ``stdio`` goes with the request; the
    answer (Launched) is read at once. After it the connection carries the answers of the requests sent on it
    (``call``, ``signal``, ``kill``, ``forward``), in their order, and the exit line, in between them or after.
    Several threads may use one: one reads at a time and files what it read, the others wait for the read lock and
    find theirs filed. ``forward`` only sends (a signal handler must not wait for an answer): a failure it gets is
    given to ``on_refused``. Closing the connection stops the instance (the agent's side)."""

    def __init__(self, client: Client, req: Launch, stdio: Sequence[int], *,
                 on_refused: Callable[[Failure], None] | None = None) -> None:
        self.client = client
        self.launched: Launched = client.request(req, fds=list(stdio))
        self.instance = self.launched.instance
        self.status: int | None = None  # once the exit line came: 128+N when signal N ended the main process
        self.gone = False  # the agent closed the connection
        self._on_refused = on_refused
        self._reading = threading.Lock()  # held by the one thread reading; what it reads is filed before release
        self._sending = threading.RLock()  # reentrant: a signal handler may forward while its thread sends
        self._sent = self._heard = 0  # requests sent after the launch, answers read
        self._answers: dict[int, dict[str, Any]] = {}  # by the request's number, until its caller takes it
        self._unheard: set[int] = set()  # the numbers of forwarded requests: nobody waits for their answer

    @overload
    def wait(self) -> int: ...

    @overload
    def wait(self, timeout: float | None) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int | None:
        """The instance's status once it ended; None if it still runs after ``timeout`` seconds (0: a poll)."""
        if not self._until(lambda: self.status is not None, timeout):
            return None
        if self.status is None:
            raise ControlError(f"the agent closed the connection before {self.instance} ended (it was stopped)")
        return self.status

    def call(self, req: Request[A], timeout: float | None = None) -> A:
        """A request on the launch's connection and its typed answer (Refused for a failure)."""
        n = self._send(req, heard=True)
        if not self._until(lambda: n in self._answers, timeout):
            raise TimeoutError(f"the agent did not answer {BY_REQUEST[type(req)].name} within {timeout:g} s")
        if n not in self._answers:
            raise ControlError(f"the agent closed the connection before it answered {BY_REQUEST[type(req)].name}")
        answer: A = decode_answer(BY_REQUEST[type(req)], checked(self._answers.pop(n)))
        return answer

    def signal(self, name: str) -> None:
        """``name`` (one of protocol.FORWARDED_SIGNALS) to the main process, while the instance runs."""
        self._while_running(Signal(instance=self.instance, signal=name))

    def kill(self) -> None:
        """The whole instance killed (the `kill` operation on its id), while it runs: its status becomes 137."""
        self._while_running(Kill(name=self.instance))

    def _while_running(self, req: Request[Any]) -> None:
        if self.status is not None:
            return
        try:
            self.call(req)
        except Refused:
            if self.status is None:  # the exit line comes before the refusal of what came after it
                raise

    def forward(self, name: str) -> None:
        """``name`` to the main process, not waiting for the answer (from a signal handler)."""
        try:
            self._send(Signal(instance=self.instance, signal=name), heard=False)
        except ControlError:
            pass  # the agent is gone: wait() says so

    def _send(self, req: Request[Any], heard: bool) -> int:
        with self._sending:
            n = self._sent
            self._sent += 1
            if not heard:
                self._unheard.add(n)
            self.client.send(req)
        return n

    def _until(self, done: Callable[[], bool], timeout: float | None) -> bool:
        """Reads until ``done()`` or the connection's end (True), or until ``timeout`` passed (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done() and not self.gone:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._reading.acquire(timeout=-1 if left is None else left):
                return False
            try:
                if done() or self.gone:  # the thread that read before filed it
                    break
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    item = self.client.next_line(left)
                except TimeoutError:
                    return False
                if item is None:
                    self.gone = True
                else:
                    self._file(item)
            finally:
                self._reading.release()
        return True

    def _file(self, item: dict[str, Any]) -> None:
        if "exited" in item and "ok" not in item:
            self.status = int(item["exited"])
            return
        n = self._heard
        self._heard += 1
        if n not in self._unheard:
            self._answers[n] = item
            return
        self._unheard.discard(n)
        if item.get("ok") is not True and self.status is None and self._on_refused is not None:
            self._on_refused(decode_failure(item))

    def close(self) -> None:
        """Ends the connection: the agent stops the instance if it still runs."""
        self.client.shutdown()


def agent_running(state_dir: str | os.PathLike[str]) -> bool:
    try:
        with Client(state_dir, timeout=2) as c:
            c.request(Ping())
        return True
    except (ControlError, ValueError):
        return False

"""The client of the agent's control socket. The operations, their fields and answers are the protocol table's
(protocol.py; docs/protocol.md lists them):

    with Client(state_dir) as c:
        prepared = c.request(Prepare(extension="md-preview"))  # a Prepared
        c.request("status")  # by name: checked against the same table; the answer as the wire has it (a dict)

A request is checked before it is sent (an unknown operation or field, a wrong type: BadRequest, exit code 2); a
failure the agent answers is raised as Refused, with the exit code it gave.
"""

from __future__ import annotations

import array
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar, overload

from ebpfguard.common.statedir import DEFAULT as DEFAULT_STATE
from ebpfguard.common.statedir import StateDir
from ebpfguard.errors import ControlError
from ebpfguard.service.protocol import (
    BY_REQUEST,
    Failure,
    Ping,
    Request,
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


class Refused(ControlError):
    """The agent answered a request with a failure."""

    def __init__(self, failure: Failure):
        super().__init__(failure.error)
        self.failure = failure
        self.exit_code = failure.exit_code


class Client:
    def __init__(self, state_dir: str | os.PathLike[str], timeout: float | None = 30.0,
                 socket_file: str | os.PathLike[str] | None = None):
        self.path = socket_path(state_dir, socket_file)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.path))
        except OSError as err:
            sock.close()
            raise ControlError(f"no agent is listening on {self.path} ({err.strerror})") from err
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
        try:
            self.sock.sendall(json.dumps(encode_request(op)).encode() + b"\n")
        except OSError as err:
            raise ControlError(f"control socket {self.path}: {err}") from err

    def _exchange(self, payload: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
        try:
            data = json.dumps(payload).encode() + b"\n"
            if fds:  # the descriptors ride on the first bytes; the rest of a long line follows
                sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                data = data[sent:]
            self.sock.sendall(data)
            while b"\n" not in self._buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ControlError("the agent closed the connection")
                self._buf += chunk
        except OSError as err:
            raise ControlError(f"control socket {self.path}: {err}") from err
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            answer = json.loads(line)
        except ValueError as err:
            raise ControlError(f"the agent answered a line that is not JSON: {err}") from err
        if not isinstance(answer, dict):
            raise ControlError("the agent answered something other than a JSON object")
        if answer.get("ok") is not True:
            raise Refused(decode_failure(answer))
        return answer

    def lines(self) -> Iterator[dict[str, Any]]:
        """The JSON lines the agent streams after a request that subscribes (activity), until it closes."""
        while True:
            while b"\n" not in self._buf:
                try:
                    chunk = self.sock.recv(65536)
                except OSError as err:
                    raise ControlError(f"control socket {self.path}: {err}") from err
                if not chunk:
                    return
                self._buf += chunk
            line, self._buf = self._buf.split(b"\n", 1)
            try:
                item = json.loads(line)
            except ValueError as err:
                raise ControlError(f"the agent sent a line that is not JSON: {err}") from err
            if isinstance(item, dict):
                yield item

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def agent_running(state_dir: str | os.PathLike[str]) -> bool:
    try:
        with Client(state_dir, timeout=2) as c:
            c.request(Ping())
        return True
    except (ControlError, ValueError):
        return False

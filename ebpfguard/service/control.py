"""The agent's control socket: newline-delimited JSON over a root-only unix stream socket.

Requests are {"op": ..., ...}; every answer is {"ok": true, ...} or {"ok": false, "error": "..."}.

    ping                                         -> pid, started
    status                                       -> agent, policies, instances
    prepare  manifest_text+manifest_path+home | extension, [mode]
                                                 -> instance, procs_files (the launcher joins them)
    started  instance, pid, argv                 -> ok
    exited   instance, status                    -> ok
    freeze | thaw | kill   name (instance id or extension name)   -> instances
    quarantine             name, [lift]          -> instances
    attach   pid, manifest_text, manifest_path, home, [mode]   -> instance, cgroup, pids, not_enforced

Closing the connection that prepared an instance tells the agent its launcher is gone; the agent
then releases the instance once its cgroup is empty.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ebpfguard.common.statedir import StateDir
from ebpfguard.errors import ControlError

MAX_REQUEST = 1 << 20


def socket_path(state_dir: str | os.PathLike[str]) -> Path:
    return StateDir.of(state_dir).socket


def peer_uid(sock: socket.socket) -> int:
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return int(uid)


class Client:
    def __init__(self, state_dir: str | os.PathLike[str], timeout: float | None = 30.0):
        self.path = socket_path(state_dir)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(self.path))
        except OSError as err:
            self.sock.close()
            raise ControlError(f"no agent is listening on {self.path} ({err.strerror})") from err
        self._buf = b""

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        try:
            self.sock.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
            while b"\n" not in self._buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ControlError("the agent closed the connection")
                self._buf += chunk
        except OSError as err:
            raise ControlError(f"control socket {self.path}: {err}") from err
        line, self._buf = self._buf.split(b"\n", 1)
        answer = json.loads(line)
        if not answer.get("ok"):
            failure = ControlError(answer.get("error", "request failed"))
            failure.exit_code = int(answer.get("exit_code") or 1)  # type: ignore[attr-defined]
            raise failure
        return dict(answer)

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
            c.request("ping")
        return True
    except (ControlError, ValueError):
        return False

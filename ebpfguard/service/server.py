"""The control socket's server: accepts connections and learns each peer from SO_PEERCRED, reads newline-delimited
requests and answers each from the protocol table (protocol.OPERATIONS) only: an operation the table does not know,
a peer outside the operation's caller class or a malformed field is refused with a precise error; the rest go to the
operation's handler, typed. It also streams what a session follows (trace --activity) without letting a slow
reader block the agent. One thread: the agent's loop calls step()."""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ebpfguard.errors import EbpfguardError
from ebpfguard.service.protocol import (
    MAX_REQUEST,
    BadRequest,
    Failure,
    Handlers,
    Peer,
    Session,
    admitted,
    authorize,
    encode_answer,
    encode_failure,
    operation_of,
    refusal,
)

log = logging.getLogger("ebpfguard")
ACTIVITY_BUFFER = 4 << 20  # bytes of activity a slow tracer may fall behind by before lines are dropped


def peer_credentials(sock: socket.socket) -> Peer:
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return Peer(pid=int(pid), uid=int(uid), gid=int(gid))


class Conn:
    """One client connection: its socket, what it sent that is not a whole line yet, and activity not yet taken."""

    def __init__(self, sock: socket.socket, session: Session):
        self.sock = sock
        self.session = session
        self.buf = b""
        self.out = bytearray()
        self.lost = 0  # activity lines dropped because the tracer fell behind


class Server:
    """``credentials`` is injectable (a socketpair's peer is always the test itself); ``on_close`` hears of each
    session that ends."""

    def __init__(self, handlers: Handlers, *, credentials: Callable[[socket.socket], Peer] = peer_credentials,
                 on_close: Callable[[Session], None] | None = None):
        self.handlers = handlers
        self.credentials = credentials
        self.on_close = on_close
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, Conn] = {}
        self.listener: socket.socket | None = None
        self.path: Path | None = None

    def listen(self, path: Path) -> None:
        """Serve the socket at ``path``, 0600 (root's, in root's 0700 state folder)."""
        path.unlink(missing_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.listener.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.path = path

    def add(self, sock: socket.socket) -> Conn | None:
        """Serve a connected socket (accepted, or a test's socketpair); a peer no operation admits is told so and
        hung up on."""
        peer = self.credentials(sock)
        if not admitted(peer):
            try:
                sock.sendall((json.dumps(encode_failure(Failure(error=refusal(peer)))) + "\n").encode())
            except OSError:
                pass
            sock.close()
            return None
        sock.setblocking(False)
        conn = Conn(sock, Session(peer))
        self.conns[sock.fileno()] = conn
        self.sel.register(sock, selectors.EVENT_READ, conn)
        return conn

    def sessions(self) -> Iterator[Session]:
        return (c.session for c in list(self.conns.values()))

    def step(self, timeout: float = 0) -> None:
        """Accept, read and answer what is there (waiting up to ``timeout`` s), and flush pending activity."""
        for key, _ in self.sel.select(timeout):
            if key.data is None:
                self._accept()
            else:
                self._read(key.data)
        for conn in [c for c in self.conns.values() if c.out]:
            self._flush(conn)

    def close(self) -> None:
        for conn in list(self.conns.values()):
            self._drop(conn)
        if self.listener is not None:
            self.sel.unregister(self.listener)
            self.listener.close()
            self.listener = None
            if self.path is not None:
                self.path.unlink(missing_ok=True)

    # ---- a request ------------------------------------------------------------------------------------------
    def answer(self, session: Session, line: bytes) -> dict[str, Any]:
        """From the table only: the operation, the caller class, the typed request, the handler, the typed answer."""
        try:
            obj = json.loads(line)
        except ValueError as err:
            return encode_failure(Failure(error=f"request is not JSON: {err}", exit_code=BadRequest.exit_code))
        name = "?"
        try:
            op = operation_of(obj)
            name = op.name
            authorize(op, session.peer)
            return encode_answer(op, op.handler(self.handlers, session, op.parse(obj)))
        except (KeyError, TypeError, ValueError) as err:  # from below the handler: the request still named it
            return encode_failure(Failure(error=f"bad {name} request: {err!r}"))
        except EbpfguardError as err:
            code = getattr(err, "exit_code", 1)
            return encode_failure(Failure(error=str(err), exit_code=code if isinstance(code, int) and code else 1))

    # ---- activity ---------------------------------------------------------------------------------------------
    def stream(self, item: dict[str, Any], to: Callable[[Session], bool]) -> None:
        """One activity line to each session that follows it; past ACTIVITY_BUFFER unread, lines are counted as
        lost and the count is sent when the reader catches up."""
        line = None
        for conn in list(self.conns.values()):
            if not to(conn.session):
                continue
            line = line or (json.dumps(item) + "\n").encode()
            if len(conn.out) + len(line) > ACTIVITY_BUFFER:
                conn.lost += 1
                continue
            if conn.lost:
                conn.out += (json.dumps({"lost": conn.lost}) + "\n").encode()
                conn.lost = 0
            conn.out += line
            self._flush(conn)

    # ---- connections ------------------------------------------------------------------------------------------
    def _accept(self) -> None:
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        self.add(sock)

    def _drop(self, conn: Conn) -> None:
        if self.conns.get(conn.sock.fileno()) is not conn:
            return
        if self.on_close is not None:
            self.on_close(conn.session)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        self.conns.pop(conn.sock.fileno(), None)
        conn.sock.close()

    def _read(self, conn: Conn) -> None:
        try:
            chunk = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(conn)
            return
        conn.buf += chunk
        while b"\n" in conn.buf and conn.sock.fileno() >= 0:
            line, conn.buf = conn.buf.split(b"\n", 1)
            self._send(conn, self.answer(conn.session, line))
        if len(conn.buf) > MAX_REQUEST:
            self._send(conn, encode_failure(Failure(error=f"request longer than {MAX_REQUEST} bytes",
                                                    exit_code=BadRequest.exit_code)))
            self._drop(conn)

    def _send(self, conn: Conn, answer: dict[str, Any]) -> None:
        try:
            conn.sock.setblocking(True)
            conn.sock.sendall(json.dumps(answer).encode() + b"\n")
            conn.sock.setblocking(False)
        except OSError:
            self._drop(conn)

    def _flush(self, conn: Conn) -> None:
        if not conn.out:
            return
        try:
            n = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        del conn.out[:n]

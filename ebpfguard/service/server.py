"""The control socket's server: accepts connections and learns each peer from SO_PEERCRED, reads newline-delimited
requests (and the file descriptors a launch passes with SCM_RIGHTS) and answers each from the protocol table
(protocol.OPERATIONS) only: an operation the table does not know, a peer outside the operation's caller class or a
malformed field is refused with a precise error; the rest go to the operation's handler, typed. A non-root uid is
held to protocol.Limits (connections, request size). It also streams what a session follows (trace --activity)
without letting a slow reader block the agent. One thread: the agent's loop calls step()."""

from __future__ import annotations

import array
import grp
import json
import logging
import os
import queue
import selectors
import socket
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ebpfguard.errors import EbpfguardError
from ebpfguard.service.protocol import (
    MAX_FDS,
    MAX_REQUEST,
    BadRequest,
    Failure,
    Handlers,
    Limits,
    Peer,
    Session,
    authorize,
    encode_answer,
    encode_failure,
    operation_of,
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
        self.fds: list[int] = []  # received with SCM_RIGHTS, not yet handed to a request

    def close_fds(self) -> None:
        close_later(self.fds)
        self.fds = []


_closing: queue.SimpleQueue[int] = queue.SimpleQueue()
_closer: threading.Thread | None = None


def close_later(fds: list[int]) -> None:
    """Descriptors a peer passed are closed by a thread of their own: closing a file of a FUSE filesystem waits for
    its (the user's) FUSE daemon, which need never answer; the agent's loop never waits on that."""
    global _closer
    if not fds:
        return
    if _closer is None:
        def run() -> None:
            while True:
                fd = _closing.get()
                try:
                    os.close(fd)
                except OSError:
                    pass
        _closer = threading.Thread(target=run, name="ebpfguard-fd-closer", daemon=True)
        _closer.start()
    for fd in fds:
        _closing.put(fd)


class Server:
    """``credentials`` is injectable (a socketpair's peer is always the test itself); ``on_close`` hears of each
    session that ends."""

    def __init__(self, handlers: Handlers, *, credentials: Callable[[socket.socket], Peer] = peer_credentials,
                 on_close: Callable[[Session], None] | None = None, limits: Limits | None = None):
        self.handlers = handlers
        self.limits = limits or Limits()
        self.credentials = credentials
        self.on_close = on_close
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, Conn] = {}
        self.listener: socket.socket | None = None
        self.path: Path | None = None

    def listen(self, path: Path, group: str | None = None, activated: socket.socket | None = None) -> None:
        """Serve the socket at ``path``: 0666, every local user reaches it (each request is authorized from the
        peer's credentials), or 0660 with ``group``. Its folder is made 0755 if missing, and must be root's and
        writable by nobody else: another user's folder could swap the socket for its own. ``activated``: the
        listening socket systemd made (systemd_socket()); its mode is the socket unit's."""
        folder = path.parent
        if activated is not None:
            st = os.lstat(folder)
            if st.st_uid != 0 or st.st_mode & 0o022:
                raise EbpfguardError(f"control socket folder {folder} must be a folder of root's that only root can "
                                     f"write (it is {oct(st.st_mode & 0o7777)}, uid {st.st_uid})")
            self.listener = activated
            self.listener.setblocking(False)
            self.sel.register(self.listener, selectors.EVENT_READ, None)
            self.path = None  # systemd's: it stays (and keeps listening) when the agent stops
            return
        gid = -1
        if group is not None:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise EbpfguardError(f"--socket-group {group!r}: no such group") from None
        try:
            folder.mkdir(mode=0o755, parents=True, exist_ok=True)
            st = os.lstat(folder)
        except OSError as err:
            raise EbpfguardError(f"control socket folder {folder}: {err.strerror}") from err
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
            what = oct(st.st_mode & 0o7777) if stat.S_ISDIR(st.st_mode) else "not a folder"
            raise EbpfguardError(f"control socket folder {folder} must be a folder of root's that only root can "
                                 f"write (it is {what}, uid {st.st_uid})")
        path.unlink(missing_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.listener.bind(str(path))
        finally:
            os.umask(old)
        if gid >= 0:
            os.chown(path, 0, gid)
        os.chmod(path, 0o660 if gid >= 0 else 0o666)
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.path = path

    def add(self, sock: socket.socket) -> Conn | None:
        """Serve a connected socket (accepted, or a test's socketpair); a uid over its connection limit is told so
        and hung up on."""
        peer = self.credentials(sock)
        most = self.limits.connections
        if peer.uid != 0 and sum(c.session.peer.uid == peer.uid for c in self.conns.values()) >= most:
            log.warning("refused a connection of uid %d: it has %d open (the limit)", peer.uid, most)
            try:
                sock.sendall((json.dumps(encode_failure(Failure(
                    error=f"uid {peer.uid} has {self.limits.connections} connections open to the agent (the limit): "
                          "close one"))) + "\n").encode())
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

    def tell(self, session: Session, item: dict[str, Any]) -> None:
        """One line to a session, outside any answer (a launch's exit)."""
        for conn in list(self.conns.values()):
            if conn.session is session:
                conn.out += (json.dumps(item) + "\n").encode()
                self._flush(conn)

    # ---- a request ------------------------------------------------------------------------------------------
    def answer(self, session: Session, line: bytes) -> dict[str, Any]:
        """From the table only: the operation, the caller class, the typed request, the handler, the typed answer."""
        try:
            obj = json.loads(line)
        except RecursionError:
            return encode_failure(Failure(error="request is not JSON: nested too deeply", exit_code=2))
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
        except RecursionError:
            return encode_failure(Failure(error=f"bad {name} request: nested too deeply", exit_code=2))
        except Exception:  # a request must never end the agent, whoever sent it: said in its log, and answered
            log.exception("the %s request of uid %d failed", name, session.peer.uid)
            return encode_failure(Failure(error=f"{name}: the agent failed on this request (its log says why)"))

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
        except OSError as err:  # out of descriptors, a peer gone before accept: the next step tries again
            log.warning("control socket: accept failed: %s", err.strerror)
            return
        try:
            self.add(sock)
        except OSError as err:
            log.warning("control socket: a connection failed at once: %s", err.strerror)
            sock.close()

    def _drop(self, conn: Conn) -> None:
        if self.conns.get(conn.sock.fileno()) is not conn:
            return
        conn.close_fds()
        if self.on_close is not None:
            self.on_close(conn.session)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        self.conns.pop(conn.sock.fileno(), None)
        conn.sock.close()

    def _read(self, conn: Conn) -> None:
        fds = array.array("i")
        try:
            chunk, anc, flags, _ = conn.sock.recvmsg(65536, socket.CMSG_SPACE((MAX_FDS + 1) * fds.itemsize),
                                                     socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk, anc, flags = b"", [], 0
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
        conn.fds += list(fds)
        if len(conn.fds) > MAX_FDS or flags & socket.MSG_CTRUNC:
            self._send(conn, encode_failure(Failure(error=f"a request carries at most {MAX_FDS} file descriptors",
                                                    exit_code=BadRequest.exit_code)))
            self._drop(conn)
            return
        if not chunk:
            self._drop(conn)
            return
        conn.buf += chunk
        while b"\n" in conn.buf and conn.sock.fileno() >= 0:
            line, conn.buf = conn.buf.split(b"\n", 1)
            conn.session.fds, conn.fds = conn.fds, []
            try:
                self._send(conn, self.answer(conn.session, line))
            finally:  # what the handler did not take
                close_later(conn.session.fds)
                conn.session.fds = []
        most = MAX_REQUEST if conn.session.peer.uid == 0 else self.limits.request_bytes
        if len(conn.buf) > most:
            self._send(conn, encode_failure(Failure(error=f"request longer than {most} bytes",
                                                    exit_code=BadRequest.exit_code)))
            self._drop(conn)

    def _send(self, conn: Conn, answer: dict[str, Any]) -> None:
        """Queued behind what the connection has not read yet and sent as far as the socket takes it: a client that
        sends requests and never reads the answers is hung up on, never waited for."""
        conn.out += json.dumps(answer).encode() + b"\n"
        self._flush(conn)
        if len(conn.out) > 2 * ACTIVITY_BUFFER:
            log.warning("hung up on a connection of uid %d: it does not read its answers", conn.session.peer.uid)
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


SD_LISTEN_FDS_START = 3


def systemd_socket(path: Path) -> socket.socket | None:
    """The listening socket systemd passed for ``path`` (socket activation, sd_listen_fds(3): LISTEN_PID is this
    process, LISTEN_FDS counts descriptors from 3), or None when none was passed. The variables are removed so that
    nothing the agent starts takes them for its own. A passed socket that is not a listening unix stream socket
    bound to ``path`` is an error: the unit and the agent disagree on where the agent is reached."""
    pid, count = os.environ.pop("LISTEN_PID", ""), os.environ.pop("LISTEN_FDS", "")
    os.environ.pop("LISTEN_FDNAMES", None)
    if not count or pid != str(os.getpid()):
        return None
    try:
        n = int(count)
    except ValueError:
        raise EbpfguardError(f"LISTEN_FDS={count!r} is not a number") from None
    if n != 1:
        raise EbpfguardError(f"systemd passed {n} sockets; the agent serves one (ListenStream={path})")
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    os.set_inheritable(sock.fileno(), False)
    bound = sock.getsockname() if sock.family == socket.AF_UNIX else None
    if sock.type != socket.SOCK_STREAM or bound != str(path) or not sock.getsockopt(socket.SOL_SOCKET,
                                                                                     socket.SO_ACCEPTCONN):
        sock.close()
        raise EbpfguardError(f"the socket systemd passed is not a listening unix stream socket at {path} "
                             f"(it is {bound or sock.family!r}): set ListenStream={path} in ebpfguard.socket, or "
                             "--socket to its path")
    return sock

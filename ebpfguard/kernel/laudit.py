"""Landlock's own denial reports, read from the kernel's audit netlink (Landlock ABI 7+).

Landlock decides on the object a path resolves to; the tracepoints only see the string. When the string
is allowed and the object is not (a symlink in an allowed tree, /proc/self/root/..., a relative name
under a dirfd), or when the call is one no tracepoint watches (mkdir, mknod, a signal across the
domain's scope), only Landlock knows it refused. With audit on, it says so in two records of one event:

    type 1423 LANDLOCK_ACCESS  domain=1a2b3c blockers=fs.read_file path="/home/u/.ssh/id_rsa" dev="vda1" ino=12
    type 1424 LANDLOCK_DOMAIN  domain=1a2b3c status=allocated mode=enforcing pid=4242 uid=1000 exe="..." comm="..."

(the second only with a domain's first denial: ``pid`` is the process that called
landlock_restrict_self, so the launcher maps the domain to its instance). The reader is passive: a
socket in the ``AUDIT_NLGRP_READLOG`` multicast group, beside auditd or without one. If audit is off,
it is turned on with one rule first, ``never,task``, so that no task on the host gets a syscall-audit
context (no audit work on any syscall); an audit configuration someone else made is left alone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import socket
import struct
from dataclasses import dataclass, field

from ebpfguard.errors import KernelError

NETLINK_AUDIT = 9
AUDIT_NLGRP_READLOG = 1
AUDIT_GET, AUDIT_SET, AUDIT_ADD_RULE, AUDIT_DEL_RULE = 1000, 1001, 1011, 1012
AUDIT_LANDLOCK_ACCESS, AUDIT_LANDLOCK_DOMAIN = 1423, 1424
AUDIT_SECCOMP = 1326  # a seccomp filter installed with SECCOMP_FILTER_FLAG_LOG refused a call
AUDIT_USER = 1005  # a message from user space: the reader's fence (AuditRecord type FENCE when it comes back)
FENCE = -1
AUDIT_STATUS_ENABLED, AUDIT_STATUS_BACKLOG_LIMIT = 0x1, 0x10
AUDIT_FILTER_TASK, AUDIT_NEVER = 0x01, 0
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
STATUS = struct.Struct("<11I")  # struct audit_status (uapi/linux/audit.h), 6.x layout
RULE = struct.Struct("<3I" + "64I" * 4 + "I")  # struct audit_rule_data without its buf
BACKLOG = 8192  # records queued in the kernel before it drops (the default, 64, drops a burst)
# Several readers may run at once (the agent, a standalone run, the simulator): each holds a shared lock;
# the last one out turns audit off again, if a reader turned it on (the marker says so).
LOCK = "/run/ebpfguard/audit.lock"
MARKER = "/run/ebpfguard/audit-enabled-by-ebpfguard"

_HEADER = re.compile(rb"^audit\((\d+)\.(\d+):(\d+)\): ?")
_FIELD = re.compile(rb'(\w+)=("[^"]*"|\S+)')
_HEX_FIELDS = {"path", "exe", "comm", "ocomm", "name"}  # untrusted strings: quoted, or hex when unusual


def decode(key: str, raw: bytes) -> str:
    """An audit field value: "quoted", hex for an untrusted string audit had to encode, else as is."""
    if raw.startswith(b'"') and raw.endswith(b'"') and len(raw) >= 2:
        return raw[1:-1].decode(errors="replace")
    if key in _HEX_FIELDS and raw != b"(null)" and len(raw) % 2 == 0 and re.fullmatch(rb"[0-9A-F]+", raw):
        return bytes.fromhex(raw.decode()).decode(errors="replace")
    return raw.decode(errors="replace")


@dataclass
class AuditRecord:
    type: int
    serial: int
    ts_ns: int
    fields: dict[str, str] = field(default_factory=dict)


def parse(msg_type: int, payload: bytes) -> AuditRecord | None:
    """One netlink audit message; None when it is not an ``audit(TIME:SERIAL): ...`` text."""
    text = payload.rstrip(b"\0\n")
    m = _HEADER.match(text)
    if m is None:
        return None
    sec, msec, serial = (int(x) for x in m.groups())
    rec = AuditRecord(msg_type, serial, sec * 1_000_000_000 + msec * 1_000_000)
    for k, v in _FIELD.findall(text[m.end():]):
        key = k.decode()
        rec.fields[key] = decode(key, v)
    return rec


def _nlmsg(msg_type: int, payload: bytes, seq: int) -> bytes:
    return struct.pack("<IHHII", 16 + len(payload), msg_type, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + payload


class LandlockAudit:
    """The audit netlink: a control socket (status, the never-task rule) and the multicast reader."""

    def __init__(self) -> None:
        self._seq = 0
        self._fences = 0
        self._fence_text = b"\0no fence yet"
        self._daemon_seen = False
        os.makedirs(os.path.dirname(LOCK), mode=0o755, exist_ok=True)
        self._lock = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_SH)
        self._rule = RULE.pack(AUDIT_FILTER_TASK, AUDIT_NEVER, 0, *([0xFFFFFFFF] * 64), *([0] * 192), 0)
        try:
            self.ctl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
        except OSError as err:
            os.close(self._lock)
            raise KernelError(f"cannot open the audit netlink: {err.strerror} (CONFIG_AUDIT?)") from err
        try:
            self.reader = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_AUDIT)
            self.reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            self.reader.bind((0, 1 << (AUDIT_NLGRP_READLOG - 1)))
        except OSError as err:
            self.ctl.close()
            os.close(self._lock)
            raise KernelError(f"cannot join the audit log multicast group: {err.strerror} "
                              "(needs CAP_AUDIT_READ)") from err
        try:
            if not self.status()["enabled"]:
                self._turn_on()
        except KernelError:
            self.close()
            raise

    def _turn_on(self) -> None:
        """Audit on, with the never,task rule first. The rule may be there already: a reader that turned audit on
        still runs, and another program (journald, when it starts; auditctl -e 0) turned audit off meanwhile."""
        try:
            self._request(AUDIT_ADD_RULE, self._rule)
        except KernelError as err:
            if err.errno != errno.EEXIST:
                raise
        self._set(AUDIT_STATUS_ENABLED | AUDIT_STATUS_BACKLOG_LIMIT, enabled=1, backlog_limit=BACKLOG)
        with open(MARKER, "w") as f:
            f.write("audit was off; ebpfguard turned it on with one rule, never,task\n")

    def _request(self, msg_type: int, payload: bytes, want: int | None = None) -> bytes:
        """Send a request; return the body of the ``want`` reply (the kernel may send it after its ack,
        from its own thread), or b"" once acked when no reply is wanted."""
        self._seq += 1
        self.ctl.send(_nlmsg(msg_type, payload, self._seq))
        self.ctl.settimeout(2.0)
        while True:
            try:
                data = self.ctl.recv(65536)
            except TimeoutError as err:
                raise KernelError(f"the kernel did not answer audit request {msg_type}") from err
            off = 0
            while off + 16 <= len(data):
                length, typ, _flags, seq, _pid = struct.unpack_from("<IHHII", data, off)
                if length < 16:
                    break
                body = data[off + 16:off + length]
                off += (length + 3) & ~3
                if seq != self._seq:
                    continue
                if typ == NLMSG_ERROR:
                    (code,) = struct.unpack_from("<i", body)
                    if code:
                        refused = KernelError(f"audit request {msg_type} refused: {os.strerror(-code)}")
                        refused.errno = -code
                        raise refused
                    if want is None:
                        return b""
                elif typ == want:
                    return body

    def status(self) -> dict[str, int]:
        body = self._request(AUDIT_GET, b"", want=AUDIT_GET)
        if len(body) < 32:
            raise KernelError(f"the kernel sent a short audit status ({len(body)} bytes)")
        vals = STATUS.unpack(body[:STATUS.size].ljust(STATUS.size, b"\0"))
        names = ("mask", "enabled", "failure", "pid", "rate_limit", "backlog_limit", "lost", "backlog")
        return dict(zip(names, vals[:8], strict=True))

    def _set(self, mask: int, enabled: int = 0, backlog_limit: int = 0) -> None:
        self._request(AUDIT_SET, STATUS.pack(mask, enabled, 0, 0, 0, backlog_limit, 0, 0, 0, 0, 0))

    def fileno(self) -> int:
        return self.reader.fileno()

    def read(self, limit: int = 4096) -> list[AuditRecord]:
        """The Landlock and seccomp records waiting on the reader, without blocking."""
        out: list[AuditRecord] = []
        while len(out) < limit:
            try:
                data = self.reader.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as err:
                if err.errno == errno.ENOBUFS:  # the socket overflowed: counted by the caller as lost
                    out.append(AuditRecord(0, 0, 0, {"overflow": "1"}))
                    continue
                raise
            off = 0
            while off + 16 <= len(data):
                length, typ = struct.unpack_from("<IH", data, off)
                if length < 16:
                    break
                if typ in (AUDIT_LANDLOCK_ACCESS, AUDIT_LANDLOCK_DOMAIN, AUDIT_SECCOMP):
                    rec = parse(typ, data[off + 16:off + length])
                    if rec is not None:
                        out.append(rec)
                elif typ == AUDIT_USER and self._fence_text in data[off + 16:off + length]:
                    out.append(AuditRecord(FENCE, 0, 0))
                off += (length + 3) & ~3
        return out

    def fence(self) -> bool:
        """Queue a message of our own behind every record the kernel holds: the kernel's audit thread delivers in
        order, so once it comes back (read() returns a FENCE record) every Landlock or seccomp report made before
        this call has been read. False when the kernel took no message (audit is off: nothing to wait for)."""
        self._fences += 1
        self._fence_text = f"ebpfguard-fence-{os.getpid()}-{self._fences}".encode()
        try:
            self._request(AUDIT_USER, self._fence_text + b"\0")
        except KernelError:
            return False
        return True

    def maintain(self) -> str | None:
        """Once an audit daemon registers, its syscall rules must work: our never,task rule would keep
        them from ever matching (a daemon's rule loading, auditctl -D, removes it too). If audit was turned on by
        a reader and another program turned it off since (journald does when it starts), it goes on again, and
        what happened is returned to be logged: Landlock's and seccomp's reports would be lost meanwhile."""
        status = self.status()
        if os.path.exists(MARKER) and not status["enabled"] and not status["pid"]:
            self._turn_on()
            return "another program turned audit off (journald does as it starts): turned on again"
        if self._daemon_seen or not os.path.exists(MARKER) or not status["pid"]:
            return None
        self._daemon_seen = True
        with contextlib.suppress(KernelError):
            self._request(AUDIT_DEL_RULE, self._rule)
        return None

    def close(self) -> None:
        """The last reader out puts audit back as it was found (off, no rule) if a reader turned it on."""
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            last = True
        except BlockingIOError:
            last = False
        if last and os.path.exists(MARKER):
            try:
                daemon = self.status()["pid"]
            except KernelError:
                daemon = 0
            # audit was off before ebpfguard: off again, unless a daemon now runs, whose it is then
            if not daemon:
                with contextlib.suppress(KernelError):
                    self._set(AUDIT_STATUS_ENABLED, enabled=0)
            with contextlib.suppress(KernelError):
                self._request(AUDIT_DEL_RULE, self._rule)
            os.unlink(MARKER)
        self.reader.close()
        self.ctl.close()
        os.close(self._lock)

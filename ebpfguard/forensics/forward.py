"""Forwarding of durable records to journald or syslog.

The journald native protocol is encoded here (Forwarder.encode, a few lines) rather than sent with
python3-systemd's journal.send(), because that cannot serve ``--log-forward journald:SOCKET``:
send() takes fields only, no address, and passes them to libsystemd's sd_journal_sendv(), whose
destination is fixed at /run/systemd/journal/socket. It would also hide an absent journal
(sd_journal_sendv() returns success on ENOENT, so ``failed`` would not count the record) and can block
the agent on a full journal queue (its socket is blocking; this one is not).
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from ebpfguard.errors import ForensicsError


class Forwarder:
    """Sends each written record to journald (native protocol) or syslog (RFC 3164 on a unix datagram
    socket), after it is on disk, so a fleet's log shippers carry it too. Best effort: a record the
    socket refuses is counted in ``failed`` and stays safe in the file."""

    SOCKETS = {"journald": "/run/systemd/journal/socket", "syslog": "/dev/log"}
    FACILITY_AUTHPRIV = 10

    def __init__(self, spec: str):
        kind, _, path = spec.partition(":")
        if kind not in self.SOCKETS:
            raise ForensicsError(f"--log-forward: {spec!r}: give journald[:SOCKET] or syslog[:SOCKET]")
        self.kind = kind
        self.address = path or self.SOCKETS[kind]
        # records stay in the file regardless; the agent warns that none will leave the host meanwhile
        self.missing = "" if os.path.exists(self.address) else (
            f"no socket at {self.address} (is {'systemd-journald' if kind == 'journald' else 'a syslog daemon'} "
            "running?): records are not forwarded until it appears")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setblocking(False)
        self.sent = 0
        self.failed = 0

    @staticmethod
    def severity(rec: dict[str, Any]) -> int:
        if rec.get("kind") in ("lifecycle", "checkpoint"):
            return 6  # info
        return 4 if rec.get("verdict") in ("allowed", "detected") else 3  # warning; error when acted on

    def encode(self, rec: dict[str, Any]) -> bytes:
        body = json.dumps(rec, separators=(",", ":"), ensure_ascii=False)
        if self.kind == "syslog":
            pri = self.FACILITY_AUTHPRIV * 8 + self.severity(rec)
            return f"<{pri}>ebpfguard[{os.getpid()}]: {body}".encode()
        what = subject(rec.get("detail") or {})
        fields = {"MESSAGE": f"{rec.get('extension') or '-'} {rec.get('kind')} {rec.get('verdict') or '-'} "
                             + (f"{what} " if what else "") + f"seq={rec.get('seq')}",
                  "PRIORITY": str(self.severity(rec)), "SYSLOG_IDENTIFIER": "ebpfguard",
                  "SYSLOG_FACILITY": str(self.FACILITY_AUTHPRIV), "EBPFGUARD_SEQ": str(rec.get("seq")),
                  "EBPFGUARD_KIND": str(rec.get("kind")), "EBPFGUARD_EXTENSION": str(rec.get("extension") or ""),
                  "EBPFGUARD_VERDICT": str(rec.get("verdict") or ""), "EBPFGUARD_RECORD": body}
        out = bytearray()
        for k, v in fields.items():
            b = v.encode()
            if b"\n" in b:  # the native protocol's binary-safe form
                out += k.encode() + b"\n" + len(b).to_bytes(8, "little") + b + b"\n"
            else:
                out += k.encode() + b"=" + b + b"\n"
        return bytes(out)

    def send(self, rec: dict[str, Any]) -> None:
        try:
            self.sock.sendto(self.encode(rec), self.address)
            self.sent += 1
        except OSError:
            self.failed += 1


def subject(detail: dict[str, Any]) -> str:
    """What a record is about: the path, the address and port, or the syscall."""
    if detail.get("path"):
        return str(detail["path"])
    if detail.get("address"):
        return f"{detail['address']}:{detail.get('port', '')}"
    if detail.get("destination"):
        return f"{detail.get('bus', '')} bus {detail['destination']} {detail.get('member', '')}".strip()
    return str(detail.get("syscall") or "")

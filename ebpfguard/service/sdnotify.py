"""systemd's readiness protocol (sd_notify(3)): a datagram to $NOTIFY_SOCKET. The unit is Type=notify, so
that whatever is ordered after the agent (display managers, user sessions) starts once it enforces, not
when its process merely exists."""

from __future__ import annotations

import os
import socket


def notify(*fields: str) -> bool:
    """Send ``fields`` (READY=1, STATUS=..., STOPPING=1) if systemd asked for them; True if sent."""
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr:
        return False
    if addr.startswith("@"):  # an abstract socket
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall("\n".join(fields).encode())
    except OSError:
        return False
    return True

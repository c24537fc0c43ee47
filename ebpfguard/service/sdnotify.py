"""systemd's readiness protocol (sd_notify(3)): a datagram to $NOTIFY_SOCKET. The unit is Type=notify, so
that whatever is ordered after the agent (display managers, user sessions) starts once it enforces, not
when its process merely exists.

Not python3-systemd's ``daemon.notify`` (libsystemd's sd_notify): for the pathname and abstract sockets a
service manager gives a system service it is this one datagram, and the package would take a compiled
dependency for it alone (its journal half cannot serve the forwarder: forensics/forward.py says why). What this
does not speak is sd_notify's vsock address (NOTIFY_SOCKET=vsock:CID:PORT, for a VM's manager): the agent
never runs as the guest of a hypervisor's systemd."""

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

"""org.freedesktop.Notifications on the user's session bus, through jeepney (Debian's python3-jeepney: the wire
protocol is its, not ours): the server's capabilities, Notify and CloseNotification, and the signals that say which
action the user chose. One connection, used from one thread: the notifier polls ``fileno()`` beside the agent's
socket and drains ``signals()``. A bus that goes away (the session ended) raises BusGone."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from jeepney import DBusAddress, MatchRule, Message, MessageType, new_method_call
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from jeepney.low_level import HeaderFields
from jeepney.wrappers import DBusErrorResponse, unwrap_msg

from ebpfguard.errors import EbpfguardError

NAME = "org.freedesktop.Notifications"
PATH = "/org/freedesktop/Notifications"
SERVER = DBusAddress(PATH, bus_name=NAME, interface=NAME)
TIMEOUT = 10.0  # seconds a call may take before the server is deemed stuck


class BusGone(EbpfguardError):
    """The session bus closed, or there is none: the session is over."""


def session_address() -> str:
    """$DBUS_SESSION_BUS_ADDRESS, else the systemd user session's $XDG_RUNTIME_DIR/bus."""
    if os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        return os.environ["DBUS_SESSION_BUS_ADDRESS"]
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    if os.path.exists(f"{runtime}/bus"):
        return f"unix:path={runtime}/bus"
    raise BusGone("no session bus: DBUS_SESSION_BUS_ADDRESS is not set and there is no $XDG_RUNTIME_DIR/bus")


class Notifications:
    """The Notifications server of the session bus at ``address`` (default: the session's)."""

    def __init__(self, address: str | None = None) -> None:
        try:
            self.conn: DBusConnection = open_dbus_connection(address or session_address())
        except (OSError, ValueError) as err:
            raise BusGone(f"cannot reach the session bus: {err}") from err
        self._signals: deque[Message] = deque()
        self._filter = self.conn.filter(MatchRule(type="signal", interface=NAME, path=PATH), queue=self._signals)
        self._filter.__enter__()
        self._call(new_method_call(message_bus, "AddMatch", "s",
                                   (MatchRule(type="signal", interface=NAME, path=PATH).serialise(),)))
        self._owner = ""

    def fileno(self) -> int:
        return int(self.conn.sock.fileno())

    def _call(self, msg: Message) -> tuple[Any, ...]:
        try:
            reply = self.conn.send_and_get_reply(msg, timeout=TIMEOUT)
        except (OSError, ValueError) as err:  # ConnectionResetError: the bus is gone
            raise BusGone(f"the session bus went away: {err}") from err
        except TimeoutError as err:
            raise EbpfguardError(f"{NAME} did not answer within {TIMEOUT:g} s") from err
        try:
            return tuple(unwrap_msg(reply))
        except DBusErrorResponse as err:
            raise EbpfguardError(f"{NAME}: {err.name}: {' '.join(map(str, err.data))}") from err

    def capabilities(self) -> set[str]:
        """What the server supports ("actions", "body-markup", ...); empty when no server runs (yet)."""
        try:
            (caps,) = self._call(new_method_call(SERVER, "GetCapabilities"))
        except BusGone:
            raise
        except EbpfguardError:
            return set()
        self._owner = self._name_owner()
        return set(caps)

    def _name_owner(self) -> str:
        try:
            (owner,) = self._call(new_method_call(message_bus, "GetNameOwner", "s", (NAME,)))
            return str(owner)
        except EbpfguardError:
            return ""

    def notify(self, *, summary: str, body: str, replaces: int = 0, icon: str = "", app: str = "ebpfguard",
               actions: Sequence[str] = (), hints: Mapping[str, tuple[str, Any]] | None = None,
               timeout_ms: int = -1) -> int:
        """Notify: the server's id for the notice (the same id when it replaced ``replaces``)."""
        (ident,) = self._call(new_method_call(SERVER, "Notify", "susssasa{sv}i",
                                              (app, replaces, icon, summary, body, list(actions), dict(hints or {}),
                                               timeout_ms)))
        return int(ident)

    def close(self, ident: int) -> None:
        try:
            self._call(new_method_call(SERVER, "CloseNotification", "u", (ident,)))
        except BusGone:
            raise
        except EbpfguardError:
            pass  # already closed

    def signals(self) -> list[tuple[str, tuple[Any, ...]]]:
        """The server's signals that came so far, without waiting: ("ActionInvoked", (id, key)),
        ("NotificationClosed", (id, reason)). Signals from anyone but the name's owner are dropped (a peer on the
        bus could emit one)."""
        while True:
            try:
                self.conn.recv_messages(timeout=0)
            except TimeoutError:
                break
            except (OSError, ValueError) as err:
                raise BusGone(f"the session bus went away: {err}") from err
        out = []
        while self._signals:
            msg = self._signals.popleft()
            if msg.header.message_type is not MessageType.signal:
                continue
            sender = msg.header.fields.get(HeaderFields.sender)
            if not self._owner:
                self._owner = self._name_owner()
            if sender != self._owner:
                continue
            out.append((str(msg.header.fields.get(HeaderFields.member)), tuple(msg.body)))
        return out

    def disconnect(self) -> None:
        self.conn.close()


"""spec.ipc: the unix sockets and D-Bus peers an extension may talk to.

D-Bus rules use the vocabulary of xdg-dbus-proxy (the filter Flatpak uses), which enforces them:
``see``/``talk``/``own`` take bus names (a trailing ``.*`` covers a name and its sub-names);
``call`` and ``broadcast`` take ``NAME=RULE`` where RULE is ``[METHOD][@PATH]``, METHOD ``*``,
``org.example.Iface.*`` or ``org.example.Iface.Member``, PATH ``/obj`` or ``/obj/*``.
Everything here is pure: checks that name the problem, and the proxy's command-line arguments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

BUSES = ("session", "system")
DBUS_VERBS = ("see", "talk", "own", "call", "broadcast")
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes, the last a NUL

_ELEMENT = r"[A-Za-z_-][A-Za-z0-9_-]*"
_BUS_NAME = re.compile(rf"^{_ELEMENT}(?:\.{_ELEMENT})+$")
_IFACE_ELEMENT = r"[A-Za-z_][A-Za-z0-9_]*"
_INTERFACE = re.compile(rf"^{_IFACE_ELEMENT}(?:\.{_IFACE_ELEMENT})+$")
_MEMBER = re.compile(rf"^{_IFACE_ELEMENT}$")
_OBJECT_PATH = re.compile(r"^/(?:[A-Za-z0-9_]+(?:/[A-Za-z0-9_]+)*)?$")


def check_bus_name(name: str) -> str:
    """A well-known bus name, optionally ending in ``.*``; raises ValueError with the reason."""
    if not name:
        raise ValueError("a bus name must not be empty")
    if name.startswith(":"):
        raise ValueError("unique names (:1.42) change with every connection; name a well-known name")
    base = name[:-2] if name.endswith(".*") else name
    if len(name) > 255:
        raise ValueError("a bus name is at most 255 characters")
    if not _BUS_NAME.match(base) or any(part[0].isdigit() for part in base.split(".")):
        raise ValueError("is not a bus name (two or more dot-separated elements of letters, digits, '_' "
                         "and '-', none starting with a digit; a trailing '.*' covers sub-names)")
    return name


def check_rule(rule: str) -> str:
    """``NAME=[METHOD][@PATH]`` as xdg-dbus-proxy takes it for --call and --broadcast."""
    name, sep, spec = rule.partition("=")
    if not sep:
        raise ValueError("expected NAME=[METHOD][@PATH], e.g. org.example.App=org.example.App.Open@/org/example/App")
    check_bus_name(name)
    method, at, path = spec.partition("@")
    if method and method != "*":
        iface, _, member = method.rpartition(".")
        if not iface or not _INTERFACE.match(iface) or not (member == "*" or _MEMBER.match(member)):
            raise ValueError(f"{method!r} is not '*', INTERFACE.* or INTERFACE.MEMBER")
    if at:
        base = path[:-2] if path.endswith("/*") else path
        if not _OBJECT_PATH.match(base or "/"):
            raise ValueError(f"{path!r} is not an object path (/org/example, or /org/example/* for a subtree)")
    if not method and not at:
        raise ValueError("give a METHOD, an @PATH or both after '='")
    return rule


@dataclass(frozen=True)
class DBusRules:
    """One bus's rules (spec.ipc.dbus.session or .system)."""

    see: tuple[str, ...] = ()
    talk: tuple[str, ...] = ()
    own: tuple[str, ...] = ()
    call: tuple[str, ...] = ()
    broadcast: tuple[str, ...] = ()

    def proxy_args(self) -> list[str]:
        """xdg-dbus-proxy's arguments for this bus's rules (after the bus address and socket path)."""
        out = ["--filter"]
        for verb in DBUS_VERBS:
            out += [f"--{verb}={value}" for value in getattr(self, verb)]
        return out

    def describe(self) -> dict[str, list[str]]:
        return {verb: list(getattr(self, verb)) for verb in DBUS_VERBS if getattr(self, verb)}


@dataclass(frozen=True)
class Ipc:
    """spec.ipc, checked: socket paths (expanded, absolute) and the D-Bus rules per bus."""

    unix: tuple[str, ...] = ()
    dbus: dict[str, DBusRules] = field(default_factory=dict)

    def unix_allows(self, path: str) -> bool:
        return any(path.startswith(p) if p.endswith("/") else path == p for p in self.unix)

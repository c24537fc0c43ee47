"""compile(): a pure function from a manifest to the exact bytes the kernel maps hold.

The layouts are those of bpf/include/maps.h (little-endian, x86-64); tests/kernel/test_abi.py checks the
sizes below against the compiled program's own map types.

    struct eg_ext_policy  "<II8s8Q8QII" flags, slot, response[8] by kind, sys_deny[8], sys_priv[8],
                                       shadow (1 + the slot of a shadow version, 0: none), arm_ms
    struct eg_path_key    "<II252s"    prefixlen (bits of scope+path), scope = slot<<8 | access, path
                                       (access: read, write, exec, or unix / unix_ns for socket paths)
    struct eg_net_key     "<II16s"     prefixlen (32 + CIDR bits), scope = slot<<8 | op<<4 | 4|6, address
    struct eg_net_value   "<II" + 16 * "<HHB3x"   count, then (lo, hi, proto) port ranges

Path semantics: a tree "/usr/" is stored without its NUL (a byte prefix of "/usr/bin/x") plus the
directory itself "/usr" with its NUL; an exact file is stored with its NUL. A write tree is also a read
tree. The private /tmp and /var/tmp (private_tmp) are "private" scope entries, value 1: read and written,
but only by a cgroup the kernel knows runs in the instance's own mount namespace, where those paths are an
empty tmpfs of its own and never the host's; a host path carried into them read-only (a read, exec or
socket grant under /tmp) is a "private" entry of value 0, which, as the longer prefix, takes it back out.

Network semantics: "send" (unconnected UDP sendto/sendmsg) uses the connect rules; an IPv4
rule is also stored as its IPv4-mapped IPv6 network; each CIDR's value carries the port ranges of every
CIDR that contains it, so the kernel's one longest-prefix lookup is enough.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from ebpfguard.common.abi import c, kind_value
from ebpfguard.errors import ManifestError, Problem
from ebpfguard.manifest.load import Manifest, NetRule
from ebpfguard.manifest.syscall_table import SYSCALLS_X86_64

EXT_POLICY = struct.Struct("<II8s8Q8QII")
PATH_KEY = struct.Struct(f"<II{c('PATH_MAX')}s")
NET_KEY = struct.Struct("<II16s")
PORT_RANGE = struct.Struct("<HHB3x")
NET_VALUE_HEAD = struct.Struct("<II")
NET_VALUE_SIZE = NET_VALUE_HEAD.size + c("NET_RANGES") * PORT_RANGE.size

ACCESS = {"read": c("ACC_READ"), "write": c("ACC_WRITE"), "exec": c("ACC_EXEC"), "unix": c("ACC_UNIX"),
          "unix_ns": c("ACC_UNIX_NS"), "watch_read": c("ACC_WATCH") + c("ACC_READ"),
          "watch_write": c("ACC_WATCH") + c("ACC_WRITE"), "watch_exec": c("ACC_WATCH") + c("ACC_EXEC"),
          "private": c("PATH_PRIVATE")}
PRIVATE_TMP = ("/tmp", "/var/tmp")
# Sockets every extension may reach: name-service lookups (glibc's nscd client and nss-systemd's
# userdb), which answer what /etc/passwd and /etc/group already tell anyone. Refusing them would turn
# every `ls -l` into a violation.
BUILTIN_UNIX = ("/run/nscd/socket", "/var/run/nscd/socket", "/run/systemd/userdb/")
SYSTEM_BUS = "/run/dbus/system_bus_socket"


def bus_sockets(m: Manifest) -> dict[str, str]:
    """bus -> the path where the instance's D-Bus proxy is mounted in its namespace: the real bus's path,
    so that clients that ignore DBUS_SESSION_BUS_ADDRESS find the proxy too."""
    where = {"session": f"{m.runtime_dir}/bus", "system": SYSTEM_BUS}
    return {bus: where[bus] for bus in m.ipc.dbus}


def _under(path: str, folder: str) -> bool:
    folder = folder.rstrip("/") or "/"
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def private_tmp(m: Manifest, mode: str | None = None) -> list[str]:
    """The folders every launched instance of ``m`` gets as an empty tmpfs of its own, writable, thrown away
    with it (systemd's PrivateTmp=): /tmp and /var/tmp, unless a grant names the folder itself or one above
    it (then the host's folder is what the manifest asked for). None in audit mode, which changes nothing."""
    if (mode or m.mode) == "audit":
        return []
    grants = [*m.write, *m.read, *m.exec]
    return [t for t in PRIVATE_TMP if not any(_under(t, g) for g in grants)]


NET_OPS = {"connect": c("NET_CONNECT"), "send": c("NET_SEND"), "bind": c("NET_BIND")}
RESPONSES = {"alert": c("RESP_ALERT"), "block": c("RESP_BLOCK"), "throttle": c("RESP_BLOCK"),
             "freeze": c("RESP_FREEZE"), "kill": c("RESP_KILL")}
PROTOS = {"any": 0, "tcp": 6, "udp": 17}
V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


@dataclass(frozen=True)
class PathEntry:
    access: str
    path: str
    exact: bool
    granted: bool = True  # False: a "private" entry that takes a path back out of the private /tmp

    def key(self, slot: int) -> bytes:
        data = self.path.encode() + (b"\0" if self.exact else b"")
        return PATH_KEY.pack(32 + 8 * len(data), slot << 8 | ACCESS[self.access], data)

    def matches(self, path: str) -> bool:
        return path == self.path if self.exact else path.startswith(self.path)


@dataclass(frozen=True)
class NetEntry:
    op: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    ranges: tuple[tuple[int, int, int], ...]  # (lo, hi, proto number)

    def key(self, slot: int) -> bytes:
        fam = self.network.version
        scope = slot << 8 | NET_OPS[self.op] << 4 | fam
        return NET_KEY.pack(32 + self.network.prefixlen, scope, self.network.network_address.packed)

    def value(self) -> bytes:
        out = NET_VALUE_HEAD.pack(len(self.ranges), 0)
        out += b"".join(PORT_RANGE.pack(lo, hi, proto) for lo, hi, proto in self.ranges)
        return out.ljust(NET_VALUE_SIZE, b"\0")


@dataclass
class CompiledPolicy:
    slot: int
    enforce: bool
    ext_policy: bytes
    paths: list[PathEntry]
    nets: list[NetEntry]
    syscalls: dict[str, str] = field(default_factory=dict)  # name -> kind
    kills_network: bool = False  # enforce mode with response.network kill: the net tracepoints must run

    def path_items(self) -> list[tuple[bytes, bytes]]:
        return [(e.key(self.slot), b"\1" if e.granted else b"\0") for e in self.paths]

    def net_items(self) -> list[tuple[bytes, bytes]]:
        return [(e.key(self.slot), e.value()) for e in self.nets]

    # The same decisions in user space, for the paths the kernel side leaves pending.
    def allows_path(self, path: str, access: str) -> bool:
        """Does a rule of ``access`` cover ``path``? (file, exec and unix-socket rules alike; the longest
        "private" entry decides, as the kernel's longest-prefix lookup does)"""
        hits = [e for e in self.paths if e.access == access and e.matches(path)]
        if access != "private":
            return bool(hits)
        return max(hits, key=lambda e: len(e.path) + e.exact).granted if hits else False


def _private_entries(m: Manifest, mode: str | None) -> list[PathEntry]:
    """The private /tmp and /var/tmp, and what the launcher carries into them read-only (mountns.plan: every
    grant under a masked folder is the host's, bound in; only write grants stay writable)."""
    folders = private_tmp(m, mode)
    out = []
    for t in folders:
        out += [PathEntry("private", t + "/", False), PathEntry("private", t, True)]
    for p in dict.fromkeys([*m.read, *m.exec, *m.ipc.unix]):
        if p not in m.write and any(_under(p, t) for t in folders):
            out.append(PathEntry("private", p, not p.endswith("/"), granted=False))
            if p.endswith("/"):
                out.append(PathEntry("private", p.rstrip("/"), True, granted=False))
    return out


def _path_entries(m: Manifest) -> list[PathEntry]:
    trees = {"read": m.read + m.write, "write": m.write, "exec": m.exec}
    out: dict[tuple[str, str, bool], None] = {}
    for access, paths in trees.items():
        for p in paths:
            if p.endswith("/"):
                out[(access, p, False)] = None
                if p != "/":
                    out[(access, p.rstrip("/"), True)] = None
            else:
                out[(access, p, True)] = None
    for access, paths in (("unix", [*BUILTIN_UNIX, *m.ipc.unix]), ("unix_ns", list(bus_sockets(m).values()))):
        for p in paths:
            out[(access, p, not p.endswith("/"))] = None
    return [PathEntry(a, p, e) for a, p, e in out]


def _net_entries(m: Manifest) -> list[NetEntry]:
    out: list[NetEntry] = []
    limit = c("NET_RANGES")
    for op, rules in (("connect", m.connect), ("send", m.connect), ("bind", m.bind)):
        expanded: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, NetRule]] = []
        for r in rules:
            expanded.append((r.network, r))
            if r.network.version == 4:
                mapped = ipaddress.IPv6Network(
                    (int(V4_MAPPED.network_address) | int(r.network.network_address), 96 + r.network.prefixlen))
                expanded.append((mapped, r))
        nets = dict.fromkeys(n for n, _ in expanded)
        for net in nets:
            ranges = tuple(dict.fromkeys(
                (r.port_lo, r.port_hi, PROTOS[r.proto]) for n, r in expanded
                if n.version == net.version and net.subnet_of(n)))  # type: ignore[arg-type]
            if len(ranges) > limit:
                op_field = "bind" if op == "bind" else "connect"
                raise ManifestError([Problem(m.source, m.line_of("spec", "network", op_field),
                                             f"spec.network.{op_field}",
                                             f"{net} is covered by {len(ranges)} port rules; the kernel "
                                             f"holds at most {limit} per address")])
            out.append(NetEntry(op, net, ranges))
    return out


def compile(m: Manifest, slot: int, mode: str | None = None, shadow: int | None = None,  # noqa: A001
            watch: tuple[tuple[str, str], ...] = (), arm_ms: int = 0, baseline: bool = False) -> CompiledPolicy:
    """Manifest -> kernel map contents for policy slot ``slot``. ``mode`` overrides spec.mode. ``shadow``: the
    slot of a shadow version that decides the same events and records what it would refuse. ``watch``:
    (access, path) where correlation rules start (correlate.py); an allowed open there arms the cgroup for
    ``arm_ms``."""
    if not 0 <= slot < c("MAX_SLOTS"):
        raise ValueError(f"slot {slot} out of range")
    enforce = (mode or m.mode) == "enforce"
    response = bytearray(c("KIND_MAX"))
    for kind, resp in m.response.items():
        response[kind_value(kind)] = RESPONSES[resp]
    words = c("SYSCALL_WORDS")
    deny = [0] * words
    priv = [0] * words
    syscalls = m.all_denied_syscalls()
    for name, kind in syscalls.items():
        nr = SYSCALLS_X86_64[name]
        deny[nr >> 6] |= 1 << (nr & 63)
        if kind == "privilege":
            priv[nr >> 6] |= 1 << (nr & 63)
    flags = (c("POL_ENFORCE") if enforce else 0) | (c("POL_WATCH") if watch else 0)
    for access, _ in watch:  # which accesses have watched paths: the others keep their short paths
        flags |= c("POL_WATCH_READ") << ACCESS[access]
    if baseline:
        flags |= c("POL_BASELINE")
    blob = EXT_POLICY.pack(flags, slot, bytes(response), *deny, *priv, 0 if shadow is None else shadow + 1,
                           arm_ms if watch else 0)
    watched = [PathEntry(f"watch_{access}", p, not p.endswith("/")) for access, p in watch]
    watched += [PathEntry(f"watch_{access}", p.rstrip("/"), True)
                for access, p in watch if p.endswith("/") and p != "/"]
    paths = _path_entries(m) + _private_entries(m, mode) + watched
    return CompiledPolicy(slot, enforce, blob, paths, _net_entries(m), syscalls,
                          kills_network=enforce and m.response.get("network") == "kill")

"""Manifest v1: parse YAML or JSON, validate against the published schema, then check what a schema
cannot say (CIDRs, absolute paths, known syscalls, duplicates). Every problem names its file, line and
field, e.g. ``m.yaml:12: spec.network.connect[1]: '10.0.0.0/33:80' is not CIDR:port[-port][/proto]``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import pwd
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ebpfguard.common.abi import c
from ebpfguard.common.resources import schema_path
from ebpfguard.common.units import parse_duration, parse_size
from ebpfguard.errors import ManifestError, Problem
from ebpfguard.manifest.ipc import BUSES, DBUS_VERBS, UNIX_PATH_MAX, DBusRules, Ipc, check_bus_name, check_rule
from ebpfguard.manifest.syscall_table import SYSCALLS_X86_64

MAX_MANIFEST_BYTES = 256 * 1024
RESPONSE_KINDS = ("file", "exec", "network", "syscall", "privilege")
DEFAULT_RESPONSE = {"file": "block", "exec": "block", "network": "block", "syscall": "block",
                    "privilege": "kill"}

# Never allowed to an extension, whatever its manifest says; "privilege" ones escalate privilege.
BUILTIN_PRIVILEGE = (
    "mount", "umount2", "unshare", "setns", "bpf", "init_module", "finit_module", "delete_module",
    "kexec_load", "kexec_file_load", "setuid", "setgid", "setreuid", "setregid", "setresuid",
    "setresgid", "setfsuid", "setfsgid", "setgroups", "capset", "pivot_root", "chroot",
)
# The launcher's seccomp filter kills on these (the rest of the deny set gets EPERM): no extension has
# any business loading kernel code, replacing the kernel, or changing its mount or namespace view.
NEVER_ALLOWED = frozenset({
    "mount", "umount2", "pivot_root", "chroot", "setns", "bpf", "init_module", "finit_module",
    "delete_module", "kexec_load", "kexec_file_load",
})
BUILTIN_SYSCALL = (
    "ptrace", "process_vm_readv", "process_vm_writev", "io_uring_setup", "memfd_create", "keyctl",
    "add_key", "request_key", "userfaultfd", "perf_event_open", "personality",
)

_NETRULE = re.compile(
    r"^\[?(?P<addr>[^/\[\]]+?)\]?(?:/(?P<plen>\d{1,3}))?:(?P<lo>\d{1,5})(?:-(?P<hi>\d{1,5}))?"
    r"(?:/(?P<proto>tcp|udp|any))?$"
)
NETRULE_FORMAT = "CIDR:port[-port][/proto]"


@dataclass(frozen=True)
class NetRule:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    port_lo: int
    port_hi: int
    proto: str  # "tcp" | "udp" | "any"
    text: str

    def matches(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, proto: str) -> bool:
        if addr.version != self.network.version or addr not in self.network:
            return False
        if not self.port_lo <= port <= self.port_hi:
            return False
        return self.proto == "any" or proto == "any" or proto == self.proto


@dataclass(frozen=True)
class Escalation:
    """spec.response.escalation, parsed once: a window in seconds and the counts within it."""

    window: float = 60.0
    freeze_after: int | None = None
    kill_after: int | None = None

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Escalation:
        return cls(parse_duration(str(raw.get("window", "60s"))), raw.get("freeze_after"), raw.get("kill_after"))

    def __bool__(self) -> bool:
        return self.freeze_after is not None or self.kill_after is not None


@dataclass(frozen=True)
class Resources:
    """spec.resources, parsed once: memory in bytes, cpu in cores, pids; ``given`` keeps the text."""

    memory: int | None = None
    cpu: float | None = None
    pids: int | None = None
    given: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Resources:
        return cls(parse_size(str(raw["memory"])) if "memory" in raw else None,
                   float(raw["cpu"]) if "cpu" in raw else None,
                   int(raw["pids"]) if "pids" in raw else None, dict(raw))


class Mode(StrEnum):
    """spec.mode, or a launch's --mode: record only, or deny and respond."""

    AUDIT = "audit"
    ENFORCE = "enforce"


@dataclass
class Manifest:
    name: str
    version: str
    publisher: str
    mode: Mode
    user: str | None
    read: list[str]
    write: list[str]
    exec: list[str]
    connect: list[NetRule]
    bind: list[NetRule]
    deny_syscalls: list[str]          # the manifest's own list, built-ins not included
    resources: Resources
    response: dict[str, str]
    escalation: Escalation
    source: str
    raw: bytes = field(repr=False)
    quarantine: bool = False
    home: str = ""  # what ~ and ${HOME} expanded to
    ipc: Ipc = field(default_factory=Ipc)
    runtime_dir: str = ""  # what ${XDG_RUNTIME_DIR} expanded to
    lines: dict[tuple[Any, ...], int] = field(default_factory=dict, repr=False)
    rollout: str = "enforce"  # "shadow": a staged version that records what it would refuse, never acts
    rollback: bool = False  # each write tree an overlay: committed on a clean stop, discarded on a kill (rollback.py)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    def all_denied_syscalls(self) -> dict[str, str]:
        """name -> kind ("privilege" or "syscall") of every syscall this extension may not make."""
        out = {n: "privilege" for n in BUILTIN_PRIVILEGE}
        out.update({n: "syscall" for n in BUILTIN_SYSCALL})
        for n in self.deny_syscalls:
            out.setdefault(n, "syscall")
        return {n: k for n, k in out.items() if n in SYSCALLS_X86_64}

    def line_of(self, *path: Any) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), None)


def field_name(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(schema_path().read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


MAX_DEPTH = 32  # brackets and braces a manifest may nest (the deepest field needs 6)


def _flow_depth(text: str) -> int:
    """How deep [ and { nest, counted everywhere (in quotes and comments too: a scanner that knew them could be
    fooled into missing what YAML sees): a linear look before YAML's parser."""
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    return deepest


def _same_user(a: str, b: str) -> bool:
    def uid(name: str) -> int | None:
        try:
            return int(name) if name.isdigit() else pwd.getpwnam(name).pw_uid
        except KeyError:
            return None
    return uid(a) is not None and uid(a) == uid(b)


def default_home(user: str | None) -> str:
    """The home that ~ and ${HOME} expand to: the extension user's, else the invoking user's."""
    for name in (user, os.environ.get("SUDO_USER")):
        if name:
            try:
                return pwd.getpwuid(int(name)).pw_dir if name.isdigit() else pwd.getpwnam(name).pw_dir
            except KeyError:
                continue
    return os.path.expanduser("~")


def default_runtime_dir(user: str | None) -> str:
    """$XDG_RUNTIME_DIR of the extension's user (else the invoking user's): /run/user/UID."""
    for name in (user, os.environ.get("SUDO_USER")):
        if name:
            try:
                return f"/run/user/{pwd.getpwuid(int(name)).pw_uid if name.isdigit() else pwd.getpwnam(name).pw_uid}"
            except KeyError:
                continue
    return f"/run/user/{os.getuid()}"


def load(path: str | os.PathLike[str], *, home: str | None = None) -> Manifest:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise ManifestError([Problem(str(p), None, "", f"file is {size} bytes; a manifest may be at most "
                                         f"{MAX_MANIFEST_BYTES} bytes")])
        raw = p.read_bytes()
    except OSError as err:
        raise ManifestError([Problem(str(p), None, "", f"cannot read: {err.strerror}")]) from err
    return parse(raw, str(p), home=home)


def parse(raw: bytes, filename: str = "<manifest>", *, home: str | None = None, as_user: str | None = None) -> Manifest:
    """``as_user``: the user an instance of it will run as, whoever spec.user names (a user's own launch through
    the agent): a spec.user naming anyone else is a problem; ~, ${HOME} and ${XDG_RUNTIME_DIR} are theirs."""
    def fail(line: int | None, fld: str, msg: str) -> ManifestError:
        return ManifestError([Problem(filename, line, fld, msg)])

    if len(raw) > MAX_MANIFEST_BYTES:
        raise fail(None, "", f"file is {len(raw)} bytes; a manifest may be at most {MAX_MANIFEST_BYTES} bytes")
    if b"\0" in raw:
        raise fail(raw[: raw.index(b"\0")].count(b"\n") + 1, "", "contains NUL bytes: not a text manifest")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise fail(line, "", f"not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start})") from err
    if not text.strip():
        raise fail(None, "", "empty manifest")
    if _flow_depth(text) > MAX_DEPTH:  # YAML's scanner takes seconds, then recurses, on deep nesting
        raise fail(None, "", f"nested deeper than {MAX_DEPTH} levels: not a manifest")
    try:
        # anchors and aliases are refused: an alias shares its node, so a few nested ones expand to billions of
        # paths (a "billion laughs" document of 2 KB) before any check; a manifest never needs them
        alias = next((ev for ev in yaml.parse(text, Loader=yaml.SafeLoader)
                      if isinstance(ev, yaml.AliasEvent) or getattr(ev, "anchor", None)), None)
        if alias is not None:
            mark = alias.start_mark
            raise fail(mark.line + 1 if mark else None, "", "YAML anchors and aliases (&name, *name) are not "
                                                            "accepted in a manifest: write each value out")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=yaml.SafeLoader)  # noqa: S506 - SafeLoader
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        reason = getattr(err, "problem", None) or str(err)
        raise fail(mark.line + 1 if mark else None, "", f"not valid YAML/JSON: {reason}") from err
    except RecursionError:
        raise fail(None, "", "nested too deeply to be a manifest") from None
    lines: dict[tuple[Any, ...], int] = {}
    problems: list[Problem] = []
    _index(node, (), lines, problems, filename)
    if problems:
        raise ManifestError(problems)
    if not isinstance(data, dict):
        raise fail(1, "", f"a manifest is a mapping, not {type(data).__name__}")

    problems = _schema_problems(data, lines, filename)
    if problems:
        raise ManifestError(problems)
    return _build(data, raw, filename, lines, home, as_user)


def _index(node: yaml.Node | None, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int],
           problems: list[Problem], filename: str) -> None:
    """Record the line of every value, and report duplicate keys (YAML would keep the last silently)."""
    if node is None:
        return
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for knode, vnode in node.value:
            key = knode.value
            line = knode.start_mark.line + 1
            if key in seen:
                problems.append(Problem(filename, line, field_name((*path, key)),
                                        f"duplicate key (first at line {seen[key]})"))
                continue
            seen[key] = line
            _index(vnode, (*path, key), lines, problems, filename)
            lines[(*path, key)] = line  # a field's errors point at its key
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*path, i), lines, problems, filename)


def _line(lines: dict[tuple[Any, ...], int], path: tuple[Any, ...]) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())


def _schema_problems(data: dict[str, Any], lines: dict[tuple[Any, ...], int], filename: str) -> list[Problem]:
    out: list[Problem] = []
    for err in sorted(_validator().iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path]):
        path = tuple(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            schema = err.schema if isinstance(err.schema, dict) else {}
            allowed = sorted(schema.get("properties", {}))
            for key in sorted(set(err.instance) - set(allowed), key=str):
                out.append(Problem(filename, _line(lines, (*path, key)), field_name((*path, key)),
                                   f"unknown key (expected one of: {', '.join(allowed)})"))
            continue
        if err.validator == "required":
            missing = err.message.split("'")[1] if "'" in err.message else err.message
            out.append(Problem(filename, _line(lines, path), field_name((*path, missing)), "required key is missing"))
            continue
        if err.validator == "pattern" and path[-1:] == ("name",):
            msg = f"{err.instance!r} is not a valid name (lowercase letters, digits, '.', '_', '-'; 1-63 chars)"
        elif err.validator == "minLength" and err.instance == "":
            msg = "must not be empty"
        elif err.validator == "const":
            msg = f"{err.instance!r} must be {err.validator_value!r}"
        else:
            msg = err.message
        out.append(Problem(filename, _line(lines, path), field_name(path), msg))
    return out


def parse_netrule(text: str) -> NetRule:
    """Parse ``CIDR:port[-port][/proto]``; raises ValueError with the reason."""
    m = _NETRULE.match(text.strip())
    if not m:
        raise ValueError("expected address[/prefix]:port[-port][/tcp|udp|any]")
    try:
        addr = ipaddress.ip_address(m.group("addr"))
    except ValueError as err:
        raise ValueError(f"{m.group('addr')!r} is not an IP address") from err
    plen = int(m.group("plen")) if m.group("plen") is not None else addr.max_prefixlen
    if plen > addr.max_prefixlen:
        raise ValueError(f"prefix length {plen} > {addr.max_prefixlen}")
    try:
        net = ipaddress.ip_network(f"{addr}/{plen}", strict=True)
    except ValueError as err:
        raise ValueError(f"host bits set after /{plen}") from err
    lo = int(m.group("lo"))
    hi = int(m.group("hi")) if m.group("hi") is not None else lo
    if not 0 <= lo <= 65535 or not 0 <= hi <= 65535:
        raise ValueError("ports are 0-65535")
    if lo > hi:
        raise ValueError(f"port range {lo}-{hi} is reversed")
    return NetRule(net, lo, hi, m.group("proto") or "any", text)


def expand_path(p: str, home: str) -> str:
    if p == "~" or p.startswith("~/"):
        p = home.rstrip("/") + p[1:]
    elif p.startswith("~"):
        raise ValueError("only ~ and ${HOME} are expanded (not ~user)")
    return p.replace("${HOME}", home.rstrip("/"))


def _check_path(p: str, home: str, runtime: str | None = None) -> str:
    out = expand_path(p, home)
    if runtime is not None:
        out = out.replace("${XDG_RUNTIME_DIR}", runtime)
    if not out.startswith("/"):
        raise ValueError("is not an absolute path (start it with /, ~ or ${HOME})")
    if "$" in out:
        raise ValueError("only ${HOME} and ${XDG_RUNTIME_DIR} are expanded" if runtime is not None
                         else "only ${HOME} is expanded")
    parts = out.split("/")
    if ".." in parts or "." in parts[1:-1] or "//" in out:
        raise ValueError("is not normalised (no '.', '..' or '//')")
    limit = c("PATH_MAX") - 2
    if len(out.encode()) > limit:
        raise ValueError(f"is longer than {limit} bytes, the kernel-side limit")
    return out


def _build(data: dict[str, Any], raw: bytes, filename: str, lines: dict[tuple[Any, ...], int],
           home: str | None, as_user: str | None = None) -> Manifest:
    problems: list[Problem] = []
    meta = data["metadata"]
    spec = data.get("spec") or {}
    user = spec.get("user")
    if as_user is not None:
        if user is not None and not _same_user(str(user), as_user):
            raise ManifestError([Problem(filename, _line(lines, ("spec", "user")), "spec.user",
                                         f"names {user!r}, but an instance you launch runs as you ({as_user}): "
                                         "remove spec.user, or ask the administrator")])
        user = as_user
    home = home or default_home(user)

    def problem(path: tuple[Any, ...], msg: str) -> None:
        problems.append(Problem(filename, _line(lines, path), field_name(path), msg))

    def unique(path: tuple[Any, ...], items: list[Any], key: Any = None) -> None:
        seen: dict[Any, int] = {}
        for i, item in enumerate(items):
            k = key(item) if key else item
            if k in seen:
                problem((*path, i), f"duplicate entry {item!r} (same as [{seen[k]}])")
            else:
                seen[k] = i

    fs = spec.get("filesystem") or {}
    paths: dict[str, list[str]] = {}
    for access in ("read", "write", "exec"):
        out: list[str] = []
        for i, p in enumerate(fs.get(access) or []):
            try:
                out.append(_check_path(p, home))
            except ValueError as err:
                problem(("spec", "filesystem", access, i), f"{p!r} {err}")
                out.append(p)
        unique(("spec", "filesystem", access), out)
        paths[access] = out
    if fs.get("rollback") is True:  # each write tree becomes an overlay: folders only, and never the whole system
        for i, p in enumerate(paths["write"]):
            if p.rstrip("/") in ("", "/proc", "/sys", "/dev", "/run", "/var/lib/ebpfguard"):
                problem(("spec", "filesystem", "write", i), f"{p!r} cannot be rolled back (rollback: true makes "
                        "each write tree an overlay; name the folders the extension writes in)")
            elif not p.endswith("/"):
                problem(("spec", "filesystem", "write", i), f"{p!r} is a single file; with rollback: true each write "
                        "tree is an overlay of a folder: name its folder, ending in /")

    net = spec.get("network") or {}
    rules: dict[str, list[NetRule]] = {}
    for op in ("connect", "bind"):
        parsed: list[NetRule] = []
        for i, text in enumerate(net.get(op) or []):
            try:
                parsed.append(parse_netrule(text))
            except ValueError as err:
                problem(("spec", "network", op, i), f"{text!r} is not {NETRULE_FORMAT} ({err})")
        unique(("spec", "network", op), parsed, key=lambda r: (r.network, r.port_lo, r.port_hi, r.proto))
        if len(parsed) > 256:
            problem(("spec", "network", op), "at most 256 rules")
        rules[op] = parsed

    runtime = default_runtime_dir(user)
    ipc = _parse_ipc(spec.get("ipc") or {}, home, runtime, paths["write"], problem, unique)

    deny = list((spec.get("syscalls") or {}).get("deny") or [])
    for i, name in enumerate(deny):
        if name not in SYSCALLS_X86_64:
            problem(("spec", "syscalls", "deny", i), f"unknown syscall {name!r} (x86-64)")
    unique(("spec", "syscalls", "deny"), deny)

    response_in = dict(spec.get("response") or {})
    escalation = dict(response_in.pop("escalation", None) or {})
    quarantine = bool(response_in.pop("quarantine", False))
    if "freeze_after" in escalation and "kill_after" in escalation \
            and escalation["kill_after"] < escalation["freeze_after"]:
        problem(("spec", "response", "escalation", "kill_after"), "must not be smaller than freeze_after")
    response = {**DEFAULT_RESPONSE, **response_in}

    if problems:
        raise ManifestError(problems)
    return Manifest(
        name=meta["name"], version=str(meta.get("version", "")), publisher=meta.get("publisher", ""),
        mode=Mode(spec.get("mode", "enforce")), user=user, read=paths["read"], write=paths["write"],
        exec=paths["exec"], connect=rules["connect"], bind=rules["bind"], deny_syscalls=deny,
        resources=Resources.parse(spec.get("resources") or {}), response=response,
        escalation=Escalation.parse(escalation),
        quarantine=quarantine, home=home, ipc=ipc, runtime_dir=runtime,
        source=filename, raw=raw, lines=lines, rollout=spec.get("rollout", "enforce"),
        rollback=bool(fs.get("rollback", False)),
    )


def _parse_ipc(raw: dict[str, Any], home: str, runtime: str, write: list[str], problem: Any, unique: Any) -> Ipc:
    """spec.ipc: socket paths expanded and checked; D-Bus names and rules checked."""
    sockets: list[str] = []
    for i, p in enumerate(raw.get("unix") or []):
        where = ("spec", "ipc", "unix", i)
        if not p:
            problem(where, "must not be empty")
            continue
        try:
            path = _check_path(p, home, runtime)
        except ValueError as err:
            problem(where, f"{p!r} {err}")
            continue
        if len(path.rstrip("/").encode()) > UNIX_PATH_MAX:
            problem(where, f"{p!r} is longer than {UNIX_PATH_MAX} bytes, the most a unix socket path holds")
            continue
        inside = next((w for w in write if w.endswith("/") and path.startswith(w) or path == w), None)
        if inside:
            problem(where, f"{p!r} is inside the write tree {inside!r}: the extension could put a symlink "
                           "to any socket there")
            continue
        sockets.append(path)
    unique(("spec", "ipc", "unix"), sockets)
    buses: dict[str, DBusRules] = {}
    for bus in BUSES:
        rules = (raw.get("dbus") or {}).get(bus)
        if rules is None:
            continue
        parsed: dict[str, tuple[str, ...]] = {}
        for verb in DBUS_VERBS:
            check = check_rule if verb in ("call", "broadcast") else check_bus_name
            good = []
            for i, value in enumerate(rules.get(verb) or []):
                try:
                    good.append(check(value))
                except ValueError as err:
                    problem(("spec", "ipc", "dbus", bus, verb, i), f"{value!r}: {err}")
            unique(("spec", "ipc", "dbus", bus, verb), good)
            parsed[verb] = tuple(dict.fromkeys(good))
        buses[bus] = DBusRules(**parsed)
    return Ipc(tuple(dict.fromkeys(sockets)), buses)

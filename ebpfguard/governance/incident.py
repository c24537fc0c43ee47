"""Incident summaries: what an extension did and what was done, read from the signed forensic log and reduced to what
can leave the host (docs/incidents.md). The summary keeps the extension (name, version, publisher, policy sha256,
signature status), the techniques with their ATT&CK IDs (forensics/technique.py), the layer that decided and what was
done, times relative to each instance's launch, the kernel and the sandbox's layers, counts, and public network
destinations. Everything else is removed by rule, and a last scrub of the output fails closed.

    Host          the identifiers to remove: host name, machine and boot id, the host key, the accounts in passwd
    Anonymizer    the rules: a path, an address, a D-Bus name, a program, a sandbox layer, as the summary shows them
    summarize()   the summary of an extension's records (or of chosen ones); scrub() what the rules missed
    sign(), check()   an Ed25519 signature of the administrator's sharing key (never the host's forensic key)
    markdown()    the readable report, the signed JSON inside it
    import_summary(), imported(), received()   summaries from elsewhere, kept under STATE/incidents
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import json
import os
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ebpfguard.common.statedir import StateDir
from ebpfguard.errors import EbpfguardError
from ebpfguard.forensics import BadLine, canonical, key_id, read, record_ns
from ebpfguard.forensics import verify as verify_log
from ebpfguard.forensics.keys import host_public_key
from ebpfguard.forensics.records import VIOLATION_KINDS, Kind
from ebpfguard.forensics.technique import address_class, classify, credential_class, persistence_class

FORMAT = "ebpfguard-incident/1"
LADDER_EVENTS = ("escalation", "freeze", "thaw", "kill", "quarantine", "lift")
LADDER_STEPS = {"cgroup.freeze", "cgroup.kill", "freeze", "kill", "thaw", "quarantine", "lift", "throttle", "sigkill"}
MAX_TIMELINE = 1000
MAX_TARGETS = 20
ATTACK_URL = "https://attack.mitre.org/techniques/"

# What the summary removes, each by a rule of its own (docs/incidents.md says how): listed in every summary.
REMOVED = ("user names", "uids and gids", "home paths", "file names under a home", "file names outside system folders",
           "file contents", "command lines, arguments and environment", "program names of non-system programs",
           "instance ids, cgroups and pids", "D-Bus senders and object paths", "host name, machine id and boot id",
           "loopback, private and link-local addresses", "absolute times")


class IncidentError(EbpfguardError):
    """A summary could not be made, written, verified or imported; the message says why."""

    exit_code = 1


# ---- the host's identifiers ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    home: str


@dataclass(frozen=True)
class Host:
    """What identifies this host and its people. Read from /etc and /proc (roots injectable for tests)."""

    hostnames: tuple[str, ...] = ()
    machine_id: str = ""
    boot_id: str = ""
    key_id: str = ""  # the host's forensic signing key
    accounts: tuple[Account, ...] = ()
    uid_min: int = 1000  # login.defs UID_MIN: below it (and nobody), an account is the system's, not a person's
    bin_dirs: tuple[str, ...] = ("/usr/bin", "/bin", "/usr/sbin", "/sbin")

    @classmethod
    def read(cls, state_dir: str | os.PathLike[str] | None = None, etc: str = "/etc", proc: str = "/proc") -> Host:
        def text(path: str) -> str:
            try:
                return Path(path).read_text(errors="replace").strip()
            except OSError:
                return ""

        names = {os.uname().nodename, text(f"{etc}/hostname")}
        hostnames = tuple(sorted({n for name in names if name for n in (name, name.split(".")[0])}
                                 - {"localhost", "localhost.localdomain"}))  # these name no host
        accounts = []
        for line in text(f"{etc}/passwd").splitlines():
            f = line.split(":")
            if len(f) >= 6 and f[2].isdigit():
                accounts.append(Account(f[0], int(f[2]), f[5]))
        uid_min = 1000
        for line in text(f"{etc}/login.defs").splitlines():
            f = line.split()
            if len(f) == 2 and f[0] == "UID_MIN" and f[1].isdigit():
                uid_min = int(f[1])
        kid = ""
        if state_dir is not None:
            try:
                kid = key_id(host_public_key(state_dir))
            except EbpfguardError:
                pass  # no host key: nothing of it to find
        return cls(hostnames, text(f"{etc}/machine-id"), text(f"{proc}/sys/kernel/random/boot_id"), kid,
                   tuple(accounts), uid_min)

    def person(self, a: Account) -> bool:
        return a.uid >= self.uid_min and a.uid != 65534 and a.name != "nobody"

    def account(self, name: str | None = None, uid: int | None = None) -> Account | None:
        for a in self.accounts:
            if (name is not None and a.name == name) or (uid is not None and a.uid == uid):
                return a
        return None


# ---- the rules ---------------------------------------------------------------------------------------------

# Folders kept whole (each component still checked for a name): what is there is the same on every host.
SYSTEM = ("etc", "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "boot", "dev", "var/spool/cron",
          "run/dbus", "var/run/dbus", "run/systemd", "var/lib/dpkg", "var/lib/apt", "var/log/journal")
TOP_FOLDERS = {"bin", "boot", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32", "media", "mnt", "opt", "proc",
               "root", "run", "sbin", "snap", "srv", "sys", "tmp", "usr", "var", "nix"}
# the second folder kept where the first says little (/var/tmp/<file> against /var/<file>)
SECOND = {"var": {"tmp", "lib", "cache", "log", "spool", "mail", "opt", "www", "backups", "local", "crash", "run"},
          "run": {"user", "lock", "shm", "containerd", "podman", "docker"}, "dev": {"shm", "mqueue", "pts"}}
SHARED_SOCKETS = {"/run/docker.sock", "/var/run/docker.sock", "/run/containerd/containerd.sock",
                  "/run/podman/podman.sock", "/run/dbus/system_bus_socket", "/var/run/dbus/system_bus_socket"}
RUN_USER = {"bus", "wayland-0", "wayland-1", "pipewire-0", "pulse/native", "keyring/control", "keyring/ssh",
            "gnupg/S.gpg-agent", "gnupg/S.gpg-agent.ssh", "docker.sock", "podman/podman.sock", "systemd/private",
            "at-spi/bus"}
# Under a home: folders and file names that are the same for everyone (credential stores, start-up files)
HOME_FOLDERS = {".ssh", ".gnupg", ".gnupg/private-keys-v1.d", ".aws", ".azure", ".kube", ".docker", ".config",
                ".config/gcloud", ".config/gh", ".config/autostart", ".config/systemd", ".config/systemd/user",
                ".local", ".local/share", ".local/share/keyrings", ".local/bin", ".password-store", ".mozilla",
                ".mozilla/firefox", ".thunderbird", ".config/google-chrome", ".config/chromium", ".cache"}
HOME_NAMES = {"id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "id_ecdsa_sk", "id_ed25519_sk", "identity",
              "authorized_keys", "authorized_keys2", "known_hosts", "config", ".netrc", ".git-credentials",
              "credentials", "config.json", "hosts.yml", ".pgpass", ".my.cnf", ".npmrc", ".pypirc", ".bash_history",
              ".zsh_history", ".python_history", "secring.gpg", "pubring.kbx", "trustdb.gpg", "Login Data", "Cookies",
              "Web Data", "logins.json", "key3.db", "key4.db", "cookies.sqlite", "signons.sqlite", ".bashrc",
              ".bash_profile", ".bash_login", ".bash_logout", ".profile", ".zshrc", ".zprofile", ".zshenv",
              "login.keyring", "user.keystore"}
HEX64 = re.compile(r"[0-9a-f]{64}")
CGROUP_FILE = re.compile(r"^(cgroup|memory|cpu|cpuset|pids|io|hugetlb|rdma|misc)\.[a-z_.]+$")
_WORD = r"(?<![A-Za-z0-9]){}(?![A-Za-z0-9])"


def _words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[A-Za-z0-9]+", text)}


class Anonymizer:
    """The removal rules, for one summary: what the records name (their users) and what the host is."""

    def __init__(self, host: Host, records: Iterable[Mapping[str, Any]] = ()):
        self.host = host
        names: set[str] = set()
        homes: set[str] = set()
        for rec in records:
            for name, uid in _people(rec):
                a = host.account(name=name) if name else host.account(uid=uid)
                if a is not None and host.person(a):
                    names.add(a.name)
                    homes.add(a.home)
                elif a is None and name and name not in ("root", "nobody", "operator"):
                    names.add(name)  # no longer in passwd: still someone's name
        self.names = names  # the users the records name: the scrub looks for these
        # every person's name and home (the rules remove them wherever they are; the scrub checks the records')
        self.all_names = names | {a.name for a in host.accounts if host.person(a)}
        self.homes = sorted({h.rstrip("/") for h in homes | {a.home for a in host.accounts if host.person(a)}
                             if h.startswith("/") and h.rstrip("/") and not _system(h)} | {"/root"},
                            key=len, reverse=True)
        self.record_homes = {h.rstrip("/") for h in homes if h.startswith("/") and h.rstrip("/")}
        ids = {n for n in (*self.all_names, *host.hostnames) if n and n.lower() not in vocabulary()}
        self._ident = [re.compile(_WORD.format(re.escape(n)), re.I) for n in sorted(ids)]
        self._hex = [x.lower() for x in (host.machine_id, host.boot_id, host.boot_id.replace("-", ""), host.key_id)
                     if len(x) >= 8]

    # -- pieces

    def identifying(self, text: str) -> bool:
        low = text.lower()
        return any(p.search(text) for p in self._ident) or any(x in low for x in self._hex)

    def component(self, c: str) -> str:
        return "<file>" if self.identifying(c) else c

    def path(self, p: Any) -> str:
        """A file or socket path as the summary shows it: a home is ~, a file under it keeps its name only if that
        name is a well-known one, outside the system folders only the top folder stays, /proc/<pid>."""
        if not isinstance(p, str) or not p:
            return ""
        if p.startswith("@"):  # an abstract unix socket name
            return "@" + self.path(p[1:]) if p[1:].startswith("/") else "@<socket>"
        if not p.startswith("/"):
            return "<file>"
        norm = os.path.normpath(p)
        norm = "/" + norm.lstrip("/")
        for h in self.homes:
            if norm == h or norm.startswith(h + "/"):
                return self._home(norm[len(h):].strip("/").split("/") if norm != h else [])
        parts = norm.strip("/").split("/") if norm != "/" else []
        if not parts:
            return "/"
        if parts[0] == "home" or parts[:2] == ["var", "home"]:  # a home no account names (any more)
            skip = 1 if parts[0] == "home" else 2
            return "/" + "/".join(parts) if len(parts) == skip else self._home(parts[skip + 1:])
        if parts[0] == "proc":
            return self._proc(parts)
        if parts[0] == "sys":
            return self._sys(parts)
        if norm in SHARED_SOCKETS:
            return norm
        if parts[:2] == ["run", "user"] or parts[:3] == ["var", "run", "user"]:
            base = "/run/user" if parts[0] == "run" else "/var/run/user"
            rest = parts[3:] if parts[0] == "run" else parts[4:]
            if len(parts) == base.count("/"):
                return base
            tail = "/".join(rest)
            return f"{base}/<uid>" + ("" if not rest else f"/{tail}" if tail in RUN_USER else "/<file>")
        joined = "/".join(parts)
        if any(joined == s or joined.startswith(s + "/") for s in SYSTEM) and \
                not (parts[0] == "dev" and len(parts) > 1 and parts[1] in ("shm", "mqueue")):
            return "/" + "/".join(self.component(c) for c in parts)
        top = parts[0] if parts[0] in TOP_FOLDERS or not self.identifying(parts[0]) else "<file>"
        if len(parts) == 1:
            return f"/{top}" if top in TOP_FOLDERS else "/<file>"
        if parts[1] in SECOND.get(parts[0], ()):
            return f"/{top}/{parts[1]}" if len(parts) == 2 else f"/{top}/{parts[1]}/<file>"
        return f"/{top}/<file>"

    def _home(self, rel: list[str]) -> str:
        rel = [c for c in rel if c]
        if not rel:
            return "~"
        whole = "/".join(rel)
        if whole in HOME_FOLDERS:
            return "~/" + whole
        kept = 0
        for i in range(len(rel) - 1, 0, -1):
            if "/".join(rel[:i]) in HOME_FOLDERS:
                kept = i
                break
        out = ["~", *rel[:kept]]
        if len(rel) - 1 > kept and kept:
            out.append("<dir>")
        name = rel[-1]
        cls = credential_class("/~/" + whole) or persistence_class("/~/" + whole)
        if name in HOME_NAMES and cls is not None and not self.identifying(name):
            out.append(name)
        else:
            out.append(f"<{cls[0]}>" if cls else "<file>")
        return "/".join(out)

    def _proc(self, parts: list[str]) -> str:
        out = ["proc"]
        for i, c in enumerate(parts[1:], 1):
            prev = parts[i - 1]
            if prev in ("root", "cwd", "map_files", "exe") and i > 2:
                out.append("<file>")
                break
            if c.isdigit():
                out.append("<fd>" if prev in ("fd", "fdinfo") else "<pid>")
            else:
                out.append(self.component(c))
        return "/" + "/".join(out)

    def _sys(self, parts: list[str]) -> str:
        for prefix in (["sys", "fs", "cgroup"], ["sys", "fs", "bpf"]):
            if parts[:3] == prefix:
                rest = parts[3:]
                if not rest:
                    return "/" + "/".join(prefix)
                last = rest[-1] if prefix[2] == "cgroup" and CGROUP_FILE.match(rest[-1]) else "<file>"
                mid = "<dir>/" if len(rest) > 1 and last != "<file>" else ""
                return "/" + "/".join(prefix) + "/" + mid + last
        return "/" + "/".join(self.component(c) for c in parts)

    def address(self, address: Any) -> tuple[str | None, str]:
        """(the address if it is public, else None; its class)."""
        cls = address_class(str(address or ""))
        return (str(address) if cls == "public" else None), cls

    def dbus_name(self, name: Any) -> str:
        n = str(name or "")
        if not n:
            return ""
        if n.startswith(":"):
            return "<unique name>"
        n = re.sub(r"\d{3,}", "<n>", n)  # an instance number or a pid some services put in their names
        return "<name>" if self.identifying(n) else n

    def program(self, comm: Any) -> str | None:
        """The program's name if it is one of the system's (a packaged program names no one), else None."""
        c = str(comm or "")
        if not c or "/" in c or self.identifying(c):
            return None
        return c if any(os.path.isfile(os.path.join(d, c)) for d in self.host.bin_dirs) else None

    def layer(self, layer: Any) -> str:
        s = str(layer)
        name, sep, arg = s.partition(":")
        if sep and arg.startswith("/"):
            return f"{name}:{self.path(arg)}"
        return "<layer>" if self.identifying(s) else s

    def word(self, text: Any) -> str:
        """A short value kept as the record gives it (a version, a syscall name): unless it names someone."""
        s = str(text)
        return "<removed>" if self.identifying(s) else s


def _people(rec: Mapping[str, Any]) -> Iterator[tuple[str | None, int | None]]:
    """Every (name, uid) a record names: the envelope's uid, the sandbox's user, whoever did or launched it."""
    d = _map(rec.get("detail"))
    if isinstance(rec.get("uid"), int):
        yield None, rec["uid"]
    sb = _map(d.get("sandbox"))
    if isinstance(sb.get("user"), str):
        yield sb["user"], None
    for k in ("uid", "launched_by"):
        if isinstance(sb.get(k), int):
            yield None, sb[k]
    for k in ("by", "user", "launched_by"):
        v = d.get(k)
        if isinstance(v, str) and v:
            yield v, None
        elif isinstance(v, int):
            yield None, v
        elif isinstance(v, Mapping) and isinstance(v.get("uid"), int):
            yield None, v["uid"]


def _map(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _system(path: str) -> bool:
    """Is this no one's home: the root, a system folder, a place that does not exist?"""
    rel = path.strip("/")
    return not rel or any(rel == s or rel.startswith(s + "/") for s in SYSTEM) or \
        rel.split("/")[0] in ("proc", "sys", "nonexistent", "run", "tmp")


# ---- the summary ---------------------------------------------------------------------------------------------

def _day(ns: int | None) -> str | None:
    if ns is None:
        return None
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%d")


def _secs(ns: int) -> float:
    return round(ns / 1e9, 3)


def split_action(action: str, rec: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """(response, the layer that decided or did it, a ladder step's note): "eacces:landlock" is eacces by Landlock,
    "cgroup.freeze:escalation(2 in 60s)" the agent's freeze on escalation, "quarantine" the agent's."""
    d = _map(rec.get("detail"))
    if action.startswith("cgroup."):
        step, _, note = action.partition(":")
        return step, "agent", note.replace("(", " (") or None
    if ":" in action:
        response, _, layer = action.partition(":")
        return response, layer.split("(")[0], None
    by = "operator" if rec.get("kind") == "lifecycle" and d.get("by") else "agent"
    return action, by, None


@dataclass
class _Instance:
    iid: str
    launch_ns: int | None = None
    first_ns: int | None = None
    start: dict[str, Any] | None = None
    stop: dict[str, Any] | None = None
    sha: str | None = None
    mode: str | None = None
    violations: int = 0
    n: int = 0

    @property
    def zero(self) -> int | None:
        """The launch: the earliest moment the records know of the instance (its first exec, which the kernel
        timed, precedes the agent's start record)."""
        return self.first_ns


@dataclass
class _Version:
    sha: str
    version: str | None = None
    publisher: str | None = None
    publisher_key_id: str | None = None
    signature: str = "unknown"
    modes: set[str] = field(default_factory=set)


def _manifest_meta(state: StateDir, sha: str) -> dict[str, Any]:
    """metadata of the exact manifest bytes the records name (STATE/policies/<sha256>), when kept."""
    try:
        doc = yaml.safe_load(state.policy(sha).read_bytes())
    except (OSError, yaml.YAMLError):
        return {}
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    return meta if isinstance(meta, dict) else {}


def summarize(state_dir: str | os.PathLike[str], extension: str | None = None, seqs: Iterable[int] = (),
              since_ns: int | None = None, host: Host | None = None,
              now_ns: int | None = None) -> dict[str, Any]:
    """The unsigned summary of ``extension``'s records (since ``since_ns``), or of the records ``seqs``, from the
    verified log under ``state_dir``. IncidentError when the log fails verification or nothing is selected."""
    return _summary(state_dir, extension, seqs, since_ns, host, now_ns)[0]


def _summary(state_dir: str | os.PathLike[str], extension: str | None, seqs: Iterable[int], since_ns: int | None,
             host: Host | None, now_ns: int | None) -> tuple[dict[str, Any], Anonymizer]:
    state = StateDir.of(state_dir)
    verdict = verify_log(state)
    if not verdict.ok:
        raise IncidentError(f"the forensic log in {state} fails verification: {verdict}")
    wanted = sorted(set(seqs))
    if not extension and not wanted:
        raise IncidentError("give --extension NAME or --seq N")
    if wanted:  # which extension the records are of: a first pass, so that only its records are kept after
        chosen = [r for r in read(state) if not isinstance(r, BadLine) and r.get("seq") in wanted]
        missing = sorted(set(wanted) - {r.get("seq") for r in chosen})
        if missing:
            raise IncidentError(f"the forensic log has no record {', '.join(map(str, missing))}")
        names = sorted({str(r.get("extension")) for r in chosen})
        if len(names) > 1 or names == ["None"]:
            raise IncidentError("one summary is of one extension: records " + ", ".join(
                f"{r.get('seq')} ({r.get('extension') or 'no extension'})" for r in chosen))
        extension = names[0]
    ours = [r for r in read(state) if not isinstance(r, BadLine) and r.get("extension") == extension]
    selected = [r for r in ours if (not wanted or r.get("seq") in wanted)
                and (since_ns is None or (record_ns(r) or 0) >= since_ns) and r.get("kind") != Kind.CHECKPOINT]
    if not selected:
        since = " in that time" if since_ns is not None else ""
        raise IncidentError(f"the forensic log has no record of {extension}{since}")
    anon = Anonymizer(host if host is not None else Host.read(state), ours)
    builder = _Builder(state, str(extension), anon, ours, selected, "records" if wanted else "extension", now_ns)
    return builder.build(), anon


class _Builder:
    def __init__(self, state: StateDir, name: str, anon: Anonymizer, ours: list[dict[str, Any]],
                 selected: list[dict[str, Any]], by: str, now_ns: int | None):
        self.state, self.name, self.anon, self.by = state, name, anon, by
        self.ours, self.selected = ours, selected
        self.now_ns = now_ns
        self.instances: dict[str, _Instance] = {}
        self.versions: dict[str, _Version] = {}

    def _context(self) -> None:
        """Instances (their launch, their end) and versions, from every record of the extension."""
        chosen = {id(r) for r in self.selected}
        for r in self.ours:
            d = _map(r.get("detail"))
            sha = r.get("policy_sha256")
            sha = sha if isinstance(sha, str) and HEX64.fullmatch(sha) else None
            if sha and (r.get("kind") == Kind.POLICY or id(r) in chosen):
                v = self.versions.setdefault(sha, _Version(sha))
                if r.get("kind") == Kind.POLICY:
                    if d.get("version") is not None:
                        v.version = str(d["version"])
                    sig = _map(d.get("signature"))
                    if sig and (d.get("event") == "loaded" or v.signature == "unknown"):
                        v.signature = str(sig.get("status") or "unknown")
                        kid = str(sig.get("key_id") or "")
                        if sig.get("ok"):
                            v.publisher = str(sig.get("publisher") or "")
                            v.publisher_key_id = kid if re.fullmatch(r"[0-9a-f]{16}", kid) else None
                if isinstance(r.get("mode"), str) and id(r) in chosen:
                    v.modes.add(r["mode"])
            iid = r.get("instance")
            if not isinstance(iid, str) or not iid:
                continue
            inst = self.instances.setdefault(iid, _Instance(iid))
            t = record_ns(r)
            execs = [p.get("exec_ns") for p in d.get("procs") or [] if isinstance(p, Mapping)]
            for when in (t, *(x for x in execs if isinstance(x, int))):
                if when is not None and (inst.first_ns is None or when < inst.first_ns):
                    inst.first_ns = when
            if r.get("kind") == Kind.LIFECYCLE and d.get("event") in ("start", "adopted") and inst.start is None:
                inst.start, inst.launch_ns = r, t
            if r.get("kind") == Kind.LIFECYCLE and d.get("event") == "stop":
                inst.stop = r
            if sha:
                inst.sha = inst.sha or sha
            if isinstance(r.get("mode"), str):
                inst.mode = inst.mode or r["mode"]
        used = {r.get("instance") for r in self.selected}
        live = sorted((i for i in self.instances.values() if i.iid in used),
                      key=lambda i: (i.zero or 0, i.iid))
        for n, inst in enumerate(live, 1):
            inst.n = n
            if inst.sha:
                self.versions.setdefault(inst.sha, _Version(inst.sha))
        for sha, v in self.versions.items():
            if v.version is None or v.publisher is None:
                meta = _manifest_meta(self.state, sha)
                if v.version is None and meta.get("version") is not None:
                    v.version = str(meta["version"])
                if v.publisher is None and isinstance(meta.get("publisher"), str):
                    v.publisher = meta["publisher"]  # the manifest's claim; `signature` says if a key vouched

    def _when(self, r: dict[str, Any]) -> tuple[int | None, float | None]:
        inst = self.instances.get(str(r.get("instance")))
        t = record_ns(r)
        if inst is None or inst.n == 0 or t is None or inst.zero is None:
            return (inst.n if inst and inst.n else None), None
        return inst.n, _secs(t - inst.zero)

    def _target(self, r: Mapping[str, Any]) -> str:
        kind, d = r.get("kind"), _map(r.get("detail"))
        a = self.anon
        if kind in (Kind.FILE, Kind.EXEC):
            return a.path(d.get("path") or d.get("raw_path"))
        if kind == Kind.NETWORK:
            if d.get("path"):
                return a.path(d["path"])
            addr, cls = a.address(d.get("address"))
            port = d.get("port")
            where = addr if addr is not None else cls
            if addr is not None and ":" in addr:
                where = f"[{addr}]"
            return f"{where}:{port}" if isinstance(port, int) else where
        if kind == Kind.IPC:
            dest = a.dbus_name(d.get("destination") or d.get("name"))
            member = ".".join(a.dbus_name(x) for x in (d.get("interface"), d.get("member")) if x)
            return f"{dest} {member}".strip()
        if kind in (Kind.SYSCALL, Kind.PRIVILEGE):
            return a.word(d.get("syscall") or "")
        if kind == Kind.RESOURCE:
            return " ".join(a.word(x) for x in (d.get("resource"), d.get("event")) if x)
        if kind == Kind.CORRELATION:
            return a.word(d.get("rule") or "")
        if kind == Kind.ANOMALY:
            v = d.get("value")
            if isinstance(v, str) and v.startswith("/"):
                return a.path(v)
            m = re.match(r"^\[?([0-9A-Fa-f:.]+)\]?:(\d+)(/\w+)?$", str(v or ""))
            if m:
                addr, cls = a.address(m.group(1))
                return f"{addr or cls}:{m.group(2)}{m.group(3) or ''}"
            return f"{a.word(d.get('what') or 'value')}"
        return ""

    def _actions(self, r: Mapping[str, Any]) -> list[str]:
        out = []
        for act in r.get("actions") or []:
            response, layer, note = split_action(str(act), r)
            out.append(f"{response}:{layer}" + (f" ({note})" if note else ""))
        return [self.anon.word(x) for x in out]

    def build(self) -> dict[str, Any]:
        self._context()
        a = self.anon
        techniques: dict[str, dict[str, Any]] = {}
        kinds: Counter[str] = Counter()
        verdicts: Counter[str] = Counter()
        responses: Counter[tuple[str, str]] = Counter()
        public: dict[tuple[str, Any, Any, Any], dict[str, Any]] = {}
        local: dict[tuple[str, Any, Any, Any], dict[str, Any]] = {}
        ladder: list[dict[str, Any]] = []
        rollback: list[dict[str, Any]] = []
        policy: list[dict[str, Any]] = []
        timeline: list[dict[str, Any]] = []
        shadow = violations = 0
        days = [x for x in (record_ns(r) for r in self.selected) if x is not None]
        for r in self.selected:
            kind, d = str(r.get("kind")), _map(r.get("detail"))
            n, t = self._when(r)
            entry: dict[str, Any] = {"instance": n, "t": t}
            for act in r.get("actions") or []:
                response, layer, note = split_action(str(act), r)
                responses[(a.word(response), a.word(layer))] += 1
                if layer in ("agent", "operator") and response in LADDER_STEPS:  # not what the deciding layer did
                    why = note or ("escalation" if d.get("event") == "escalation" else None)
                    ladder.append({"instance": n, "t": t, "step": a.word(response.removeprefix("cgroup.")),
                                   "by": layer, "why": a.word(why) if why else None})
            if kind in VIOLATION_KINDS:
                if r.get("verdict") == "shadow":
                    shadow += 1
                    continue
                violations += 1
                tech = classify(r)
                target = self._target(r)
                verdict = a.word(r.get("verdict") or "none")
                name = a.word(tech.name)
                kinds[kind] += 1
                verdicts[verdict] += 1
                inst = self.instances.get(str(r.get("instance")))
                if inst is not None:
                    inst.violations += 1
                te = techniques.setdefault(name, {
                    "technique": name, "attack_id": tech.attack, "attack_name": tech.attack_name,
                    "count": 0, "kinds": [], "verdicts": {}, "targets": [], "targets_omitted": 0, "programs": [],
                    "first_t": t})
                te["count"] += 1
                if kind not in te["kinds"]:
                    te["kinds"].append(kind)
                te["verdicts"][verdict] = te["verdicts"].get(verdict, 0) + 1
                if target and target not in te["targets"]:
                    if len(te["targets"]) < MAX_TARGETS:
                        te["targets"].append(target)
                    else:
                        te["targets_omitted"] += 1
                prog = a.program(r.get("comm"))
                if prog and prog not in te["programs"]:
                    te["programs"].append(prog)
                if t is not None and (te["first_t"] is None or t < te["first_t"]):
                    te["first_t"] = t
                if kind == Kind.NETWORK and not d.get("path") and d.get("address"):
                    addr, cls = a.address(d.get("address"))
                    key = (addr or cls, d.get("port"), d.get("proto"), d.get("op"))
                    book = public if addr is not None else local
                    de = book.setdefault(key, {
                        **({"address": addr} if addr is not None else {"class": cls}),
                        "port": d.get("port") if isinstance(d.get("port"), int) else None,
                        "proto": a.word(d["proto"]) if isinstance(d.get("proto"), str) else None,
                        "op": a.word(d.get("op") or "connect"), "count": 0, "verdicts": {}})
                    de["count"] += 1
                    de["verdicts"][verdict] = de["verdicts"].get(verdict, 0) + 1
                entry.update({"event": "violation", "kind": kind, "technique": name,
                              "attack_id": tech.attack, "target": target, "verdict": verdict,
                              "actions": self._actions(r)})
            elif kind == Kind.LIFECYCLE:
                ev = str(d.get("event") or "")
                if ev in ("start", "adopted"):
                    entry.update({"event": "launch" if ev == "start" else "adopted"})
                elif ev == "stop":
                    entry.update({"event": "stop", "exit_status": d.get("exit_status")
                                  if isinstance(d.get("exit_status"), int) else None,
                                  "killed_by_agent": bool(d.get("killed_by_agent"))})
                elif ev in LADDER_EVENTS:
                    entry.update({"event": ev, "by": "operator" if d.get("by") else "agent",
                                  "actions": self._actions(r)})
                else:
                    continue  # processes, readopted, outage: the agent's own account, nothing the extension did
            elif kind == Kind.ROLLBACK:
                outcome = a.word(d.get("event") or "")
                counts = _map(d.get("counts"))
                rb = {"instance": n, "t": t, "outcome": outcome,
                      "changes": d.get("count") if isinstance(d.get("count"), int) else 0,
                      "counts": {a.word(k): v for k, v in counts.items() if isinstance(v, int)},
                      "conflicts": len(d.get("conflicts") or []), "errors": len(d.get("errors") or []),
                      "trees": sorted({a.path(x) for x in d.get("trees") or []})}
                rollback.append(rb)
                entry.update({"event": "rollback", "outcome": outcome, "changes": rb["changes"]})
            elif kind == Kind.POLICY:
                ev = str(d.get("event") or "")
                sig = _map(d.get("signature"))
                day = _day(record_ns(r))
                policy.append({"event": a.word(ev), "version": a.word(d["version"]) if d.get("version") is not None
                               else None, "signature": a.word(sig.get("status")) if sig.get("status") else None,
                               "day": day})
                entry.update({"event": f"policy {a.word(ev)}", "day": day})
            else:
                continue
            timeline.append(entry)
        timeline.sort(key=lambda e: (e["instance"] is None, e["instance"] or 0, e["t"] if e["t"] is not None else 0))
        omitted = max(0, len(timeline) - MAX_TIMELINE)
        by_technique = {k: v["count"] for k, v in techniques.items()}
        instances, sandboxes = [], []  # instances that ran in the same sandbox name it once
        for i in sorted(self.instances.values(), key=lambda i: i.n):
            if i.n:
                row, sb = self._instance(i)
                if sb is not None and sb not in sandboxes:
                    sandboxes.append(sb)
                row["sandbox"] = sandboxes.index(sb) + 1 if sb is not None else None
                instances.append(row)
        return {
            "format": FORMAT,
            "generated": _day(self.now_ns if self.now_ns is not None else time.time_ns()),
            "extension": {"name": self.name, "versions": [self._version(v) for v in self.versions.values()]},
            "selection": {"by": self.by, "records": len(self.selected)},
            "period": {"first": _day(min(days)) if days else None, "last": _day(max(days)) if days else None},
            "log": {"verified": True},
            "instances": instances,
            "sandboxes": sandboxes,
            "counts": {"violations": violations, "shadow": shadow, "by_kind": dict(kinds.most_common()),
                       "by_verdict": dict(verdicts.most_common()),
                       "by_technique": dict(sorted(by_technique.items(), key=lambda kv: -kv[1])),
                       "by_response": {f"{r}:{layer}": c for (r, layer), c in responses.most_common()}},
            "techniques": sorted(techniques.values(), key=lambda x: -x["count"]),
            "responses": [{"response": r, "layer": layer, "count": c} for (r, layer), c in responses.most_common()],
            "ladder": ladder,
            "rollback": rollback,
            "destinations": sorted(public.values(), key=lambda x: -x["count"]),
            "other_destinations": sorted(local.values(), key=lambda x: -x["count"]),
            "policy_events": policy,
            "timeline": timeline[:MAX_TIMELINE],
            "timeline_omitted": omitted,
            "removed": list(REMOVED),
        }

    def _version(self, v: _Version) -> dict[str, Any]:
        a = self.anon
        return {"version": a.word(v.version) if v.version is not None else None, "policy_sha256": v.sha,
                "publisher": a.word(v.publisher) if v.publisher else None,
                "publisher_key_id": v.publisher_key_id or None, "signature": a.word(v.signature),
                "modes": sorted(a.word(m) for m in v.modes)}

    def _instance(self, i: _Instance) -> tuple[dict[str, Any], dict[str, Any] | None]:
        a = self.anon
        d = _map((i.start or {}).get("detail"))
        sb = _map(d.get("sandbox"))
        kern = _map(sb.get("kernel")) or None
        stop = _map((i.stop or {}).get("detail"))
        end = None
        if i.stop is not None:
            end = "ended while no agent ran" if stop.get("ended") else "killed by the agent" \
                if stop.get("killed_by_agent") else "exited"
        ran = None
        end_ns = record_ns(i.stop) if i.stop is not None else None
        if end_ns is not None and i.zero is not None:
            ran = _secs(end_ns - i.zero)
        v = self.versions.get(i.sha or "")
        inst = {"n": i.n, "version": a.word(v.version) if v and v.version is not None else None,
                "policy_sha256": i.sha, "mode": a.word(i.mode) if i.mode else None,
                "launched": _day(i.zero), "launch_known": i.launch_ns is not None,
                "adopted": bool(i.start is not None and d.get("event") == "adopted"), "ran_s": ran, "end": end,
                "exit_status": stop.get("exit_status") if isinstance(stop.get("exit_status"), int) else None,
                "violations": i.violations}
        if not sb:
            return inst, None
        kernel = {"release": a.word(kern.get("release") or ""), "ebpf": a.word(kern.get("ebpf") or "")} \
            if kern else None
        return inst, {"layers": [a.layer(x) for x in sb.get("layers") or []], "kernel": kernel}


# ---- the format ---------------------------------------------------------------------------------------------

def _obj(props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": list(props), "additionalProperties": False, "properties": props}


_STR, _INT, _BOOL = {"type": "string"}, {"type": "integer", "minimum": 0}, {"type": "boolean"}
_DAY = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
_SHA = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_KEYID = {"type": "string", "pattern": "^[0-9a-f]{16}$"}
_ATTACK = {"type": ["string", "null"], "pattern": "^T[0-9]{4}(\\.[0-9]{3})?$"}
_T = {"type": ["number", "null"], "description": "seconds after the instance's launch (null: not known)"}
_N = {"type": ["integer", "null"], "minimum": 1, "description": "the instance's number in this summary"}
_COUNTS = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
_NULLSTR = {"type": ["string", "null"]}


def _nullable(node: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [node, {"type": "null"}]}


SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://ebpfguard.io/schemas/incident-summary-1.json",
    "title": "ebpfguard incident summary",
    **_obj({
        "format": {"const": FORMAT},
        "generated": {**_DAY, "description": "the day the summary was made (UTC)"},
        "extension": _obj({"name": _STR, "versions": {"type": "array", "items": _obj({
            "version": _NULLSTR, "policy_sha256": _SHA, "publisher": _NULLSTR,
            "publisher_key_id": _nullable(_KEYID), "signature": {**_STR, "description": "the manifest's signature "
                                                                   "status as the host's trust store judged it"},
            "modes": {"type": "array", "items": _STR}})}}),
        "selection": _obj({"by": {"enum": ["extension", "records"]}, "records": _INT}),
        "period": _obj({"first": _nullable(_DAY), "last": _nullable(_DAY)}),
        "log": _obj({"verified": {"const": True}}),
        "instances": {"type": "array", "items": _obj({
            "n": {"type": "integer", "minimum": 1}, "version": _NULLSTR, "policy_sha256": _nullable(_SHA),
            "mode": _NULLSTR, "launched": _nullable(_DAY), "launch_known": _BOOL, "adopted": _BOOL,
            "ran_s": {"type": ["number", "null"]}, "end": {"enum": [None, "exited", "killed by the agent",
                                                                   "ended while no agent ran"]},
            "exit_status": {"type": ["integer", "null"]}, "violations": _INT,
            "sandbox": {"type": ["integer", "null"], "minimum": 1, "description": "its number in sandboxes"}})},
        "sandboxes": {"type": "array", "items": _obj({
            "layers": {"type": "array", "items": _STR},
            "kernel": _nullable(_obj({"release": _STR, "ebpf": _STR}))})},
        "counts": _obj({"violations": _INT, "shadow": _INT, "by_kind": _COUNTS, "by_verdict": _COUNTS,
                        "by_technique": _COUNTS, "by_response": _COUNTS}),
        "techniques": {"type": "array", "items": _obj({
            "technique": _STR, "attack_id": _ATTACK, "attack_name": _NULLSTR, "count": _INT,
            "kinds": {"type": "array", "items": _STR}, "verdicts": _COUNTS,
            "targets": {"type": "array", "items": _STR}, "targets_omitted": _INT,
            "programs": {"type": "array", "items": _STR}, "first_t": _T})},
        "responses": {"type": "array", "items": _obj({"response": _STR, "layer": _STR, "count": _INT})},
        "ladder": {"type": "array", "items": _obj({"instance": _N, "t": _T, "step": _STR,
                                                   "by": {"enum": ["agent", "operator"]}, "why": _NULLSTR})},
        "rollback": {"type": "array", "items": _obj({
            "instance": _N, "t": _T, "outcome": _STR, "changes": _INT, "counts": _COUNTS, "conflicts": _INT,
            "errors": _INT, "trees": {"type": "array", "items": _STR}})},
        "destinations": {"type": "array", "items": _obj({
            "address": _STR, "port": {"type": ["integer", "null"]}, "proto": _NULLSTR, "op": _STR, "count": _INT,
            "verdicts": _COUNTS})},
        "other_destinations": {"type": "array", "items": _obj({
            "class": {"enum": ["loopback", "private", "link-local", "multicast", "unspecified", "reserved",
                               "unparsed"]},
            "port": {"type": ["integer", "null"]}, "proto": _NULLSTR, "op": _STR, "count": _INT,
            "verdicts": _COUNTS})},
        "policy_events": {"type": "array", "items": _obj({"event": _STR, "version": _NULLSTR, "signature": _NULLSTR,
                                                          "day": _nullable(_DAY)})},
        "timeline": {"type": "array", "items": {
            "type": "object", "required": ["instance", "t", "event"],
            "additionalProperties": False,
            "properties": {"instance": _N, "t": _T, "event": _STR, "kind": _STR, "technique": _STR,
                           "attack_id": _ATTACK, "target": _STR, "verdict": _STR,
                           "actions": {"type": "array", "items": _STR}, "exit_status": {"type": ["integer", "null"]},
                           "killed_by_agent": _BOOL, "by": {"enum": ["agent", "operator"]}, "outcome": _STR,
                           "changes": _INT, "day": _nullable(_DAY)}}},
        "timeline_omitted": _INT,
        "removed": {"type": "array", "items": _STR},
        "signer": _nullable(_obj({"key_id": _KEYID, "public_key": {
            "type": "string", "pattern": "^-----BEGIN PUBLIC KEY-----\\n"}})),
        "signature": {"anyOf": [{"type": "string", "pattern": "^[A-Za-z0-9+/]{86}==$",
                                 "description": "Ed25519, base64, over the canonical JSON of every other field"},
                                {"type": "null"}]},
    }),
}

# A summary of nothing: its report's words are the format's own (vocabulary)
EMPTY: dict[str, Any] = {"format": FORMAT, "extension": {"name": "", "versions": [{}]}, "instances": [{"sandbox": 1}],
                         "sandboxes": [{"kernel": {"release": ""}}],
                         "techniques": [{"targets_omitted": 1}], "ladder": [{"why": "x"}], "rollback": [{}],
                         "timeline": [{"event": e} for e in ("violation", "stop", "rollback", "launch")],
                         "other_destinations": [{}], "destinations": [{}], "timeline_omitted": 1,
                         "counts": {"shadow": 1}, "signer": {}, "signature": "x"}
VOCABULARY = ("user no_new_privs rlimits landlock seccomp mountns readonly mask sockets dbus proxy session system "
              "rollback overlay abi fs signal scope abstract unix none audit tracepoints bpf lsm kernel agent "
              "operator escalation enforce shadow denied killed allowed detected exited connect send bind call "
              "read write exec file network ipc syscall privilege resource lifecycle policy correlation anomaly "
              "loaded rejected promoted flagged discarded committed kept freeze thaw kill quarantine lift throttle "
              "eacces eperm erofs sigkill tcp udp")


# ---- the last check: fail closed ---------------------------------------------------------------------------

def _strings(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            if k in ("signer", "signature") and not where:
                continue  # not from the records: the sharing key's
            yield f"{where}.{k}".lstrip("."), str(k)
            yield from _strings(v, f"{where}.{k}".lstrip("."))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{where}[{i}]")
    elif node is not None:
        yield where, str(node)


@functools.cache
def vocabulary() -> frozenset[str]:
    """The words the format itself uses (keys, techniques, layers, the report's text): a name that is one of
    them (a person called "user") cannot be told apart from it, so the scrub leaves those to the rules."""
    from ebpfguard.forensics import technique

    text = " ".join([*REMOVED, *(t for _, c, _, n in (*technique.CREDENTIALS, *technique.PERSISTENCE) for t in (c, n)),
                     *(t for _, n, _, an in technique.DBUS for t in (n, an or "")), json.dumps(SCHEMA),
                     markdown(EMPTY), VOCABULARY])
    return frozenset(_words(text))


def scrub(summary: Mapping[str, Any], anon: Anonymizer, rendered: str = "") -> list[str]:
    """What of this host and its people the rules left in the summary (and in its ``rendered`` report), the
    signature aside, each as "the host name in extension.versions[0].version"; empty when none is left."""
    host = anon.host
    vocab = vocabulary()
    checks: list[tuple[str, re.Pattern[str]]] = []
    for n in sorted({*host.hostnames} - {"localhost", "localhost.localdomain"}):
        if n.lower() not in vocab:
            checks.append(("the host name", re.compile(_WORD.format(re.escape(n)), re.I)))
    for label, value in (("the machine id", host.machine_id), ("the boot id", host.boot_id),
                         ("the boot id", host.boot_id.replace("-", "")), ("the host's forensic key id", host.key_id)):
        if len(value) >= 8:
            checks.append((label, re.compile(re.escape(value), re.I)))
    for n in sorted(anon.names):
        if n.lower() not in vocab:
            checks.append((f"the user name {n!r}", re.compile(_WORD.format(re.escape(n)), re.I)))
    for h in sorted(anon.record_homes):
        checks.append((f"the home {h}", re.compile(re.escape(h) + r"(?![A-Za-z0-9])")))
    found: list[str] = []
    for where, text in _strings(summary):
        found += [f"{label} in {where}" for label, pat in checks if pat.search(text)]
    found += [f"{label} in the Markdown report" for label, pat in checks if rendered and pat.search(rendered)]
    return sorted(set(found))


def share(state_dir: str | os.PathLike[str], *, extension: str | None = None, seqs: Iterable[int] = (),
          since_ns: int | None = None, key: Ed25519PrivateKey | None = None, fmt: str = "json",
          host: Host | None = None, now_ns: int | None = None) -> str:
    """The summary as it is written out (JSON or Markdown), signed with ``key`` when given; IncidentError if the
    key is the host's, or if the scrub finds an identifier the rules left (nothing is written then)."""
    state = StateDir.of(state_dir)
    host = host if host is not None else Host.read(state)
    if key is not None and host.key_id and key_id(key.public_key()) == host.key_id:
        raise IncidentError(f"that key is this host's forensic signing key (key id {host.key_id}): a summary is "
                            "signed with a sharing key of your own (`ebpfguard incident keygen -o FILE`)")
    summary, anon = _summary(state, extension, seqs, since_ns, host, now_ns)
    left = scrub(summary, anon, markdown(summary))
    if left:
        raise IncidentError("refusing to write the summary: the removal rules left " + "; ".join(left[:5]) +
                            (f" (and {len(left) - 5} more)" if len(left) > 5 else ""))
    doc = sign(summary, key) if key is not None else {**summary, "signer": None, "signature": None}
    return markdown(doc) if fmt == "md" else json.dumps(doc, indent=2) + "\n"


# ---- signatures ----------------------------------------------------------------------------------------------

def public_pem(pub: Ed25519PublicKey) -> str:
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def sign(summary: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """The summary with its signer (key id, public key) and an Ed25519 signature over the canonical JSON of all
    the rest (chain.canonical: sorted keys, ASCII, no spaces; the signature field left out)."""
    pub = key.public_key()
    doc = {**summary, "signer": {"key_id": key_id(pub), "public_key": public_pem(pub)}, "signature": None}
    doc["signature"] = base64.b64encode(key.sign(canonical(doc))).decode()
    return doc


def keygen(out: str | os.PathLike[str]) -> str:
    """A new sharing key: OUT (PKCS#8 PEM, 0600) and OUT.pub (its public half, PEM). Returns its key id."""
    path = Path(out)
    pub_path = path.with_name(path.name + ".pub")
    if pub_path.exists():
        raise IncidentError(f"{pub_path} exists: refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    _write_exclusive(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()), 0o600, "a key")
    _write_exclusive(pub_path, public_pem(key.public_key()).encode(), 0o644, "a key")
    return key_id(key.public_key())


def load_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    p = Path(path)
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except FileNotFoundError:
        raise IncidentError(f"{p}: no such key file") from None
    except OSError as err:
        raise IncidentError(f"{p}: {err.strerror}") from err
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise IncidentError(f"{p} is not an unencrypted PEM private key (make one with `ebpfguard incident "
                            "keygen -o FILE`)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IncidentError(f"{p} is not an Ed25519 key")
    return key


def load_pubkey(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    p = Path(path)
    try:
        key = serialization.load_pem_public_key(p.read_bytes())
    except FileNotFoundError:
        raise IncidentError(f"{p}: no such key file") from None
    except OSError as err:
        raise IncidentError(f"{p}: {err.strerror}") from err
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise IncidentError(f"{p} is not a PEM public key (expected '-----BEGIN PUBLIC KEY-----', as `ebpfguard "
                            "incident keygen` writes in FILE.pub)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise IncidentError(f"{p} is not an Ed25519 public key")
    return key


def trusted_keys(folder: str | os.PathLike[str] | None, files: Iterable[str | os.PathLike[str]] = ()
                 ) -> tuple[dict[str, Ed25519PublicKey], list[str]]:
    """The keys an administrator trusts: every PEM public key in ``folder`` and ``files``, by key id; and what
    in the folder is not one (each said, then skipped)."""
    keys: dict[str, Ed25519PublicKey] = {}
    skipped: list[str] = []
    for f in files:
        k = load_pubkey(f)
        keys[key_id(k)] = k
    if folder is not None:
        for p in sorted(Path(folder).iterdir()):
            if p.is_file() and not p.name.startswith("."):
                try:
                    k = load_pubkey(p)
                except IncidentError as err:
                    skipped.append(str(err))
                    continue
                keys[key_id(k)] = k
    return keys, skipped


@dataclass
class Check:
    """What verifying a summary found: status ok, unsigned, tampered, untrusted or invalid, and why."""

    status: str
    reason: str = ""
    key_id: str = ""
    doc: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def __str__(self) -> str:
        return f"ok: signed by {self.key_id}" if self.ok else f"{self.status}: {self.reason}"


def parse(data: bytes, where: str) -> dict[str, Any]:
    """A summary from a file's bytes: JSON, or a Markdown report (its last ```json block)."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise IncidentError(f"{where} is not an incident summary (not UTF-8 text)") from None
    if not text.lstrip().startswith("{"):
        start = text.rfind("```json\n")
        end = text.find("\n```", start + 8) if start >= 0 else -1
        if start < 0 or end < 0:
            raise IncidentError(f"{where} is not an incident summary (neither JSON nor a report with its JSON block)")
        text = text[start + 8:end]
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise IncidentError(f"{where} is not an incident summary (not JSON: {err})") from None
    if not isinstance(doc, dict):
        raise IncidentError(f"{where} is not an incident summary (a JSON object is expected)")
    if doc.get("format") != FORMAT:
        raise IncidentError(f"{where} is not an incident summary: format is {doc.get('format')!r}, not {FORMAT!r}")
    return doc


def check(doc: Mapping[str, Any], trusted: Mapping[str, Ed25519PublicKey] | None = None) -> Check:
    """Schema, then the signature with the embedded key; with ``trusted``, the signer must be one of them."""
    errors = sorted(jsonschema.Draft202012Validator(SCHEMA).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        at = "/".join(str(x) for x in e.path) or "(top)"
        return Check("invalid", f"not an incident summary as docs/incident-schema.json describes it: at {at}: "
                     f"{e.message}")
    signer = doc.get("signer")
    if signer is None or doc.get("signature") is None:
        return Check("unsigned", "the summary carries no signature (it was shared without --key)", doc=dict(doc))
    assert isinstance(signer, Mapping)
    try:
        pub = serialization.load_pem_public_key(str(signer["public_key"]).encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return Check("invalid", "signer.public_key is not a PEM public key")
    if not isinstance(pub, Ed25519PublicKey):
        return Check("invalid", "signer.public_key is not an Ed25519 key")
    kid = key_id(pub)
    if signer.get("key_id") != kid:
        return Check("tampered", f"signer.key_id {signer.get('key_id')!r} is not the embedded key's ({kid})", kid)
    try:
        pub.verify(base64.b64decode(str(doc["signature"]), validate=True), canonical(dict(doc)))
    except (InvalidSignature, binascii.Error, ValueError):
        return Check("tampered", f"bad signature: the summary was altered after key {kid} signed it", kid)
    if trusted is not None and kid not in trusted:
        known = ", ".join(sorted(trusted)) or "none"
        return Check("untrusted", f"signed by key {kid}, which is none of the trusted keys ({known})", kid)
    return Check("ok", key_id=kid, doc=dict(doc))


# ---- the readable report -----------------------------------------------------------------------------------

def _cell(v: Any) -> str:
    s = "-" if v is None or v == "" else str(v)
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("`", "'")


def _code(v: Any) -> str:
    return f"`{_cell(v)}`" if v not in (None, "") else "-"


def attack_link(tid: str | None, name: str | None = None) -> str:
    if not tid:
        return "-"
    url = ATTACK_URL + tid.replace(".", "/") + "/"
    return f"[{tid}]({url})" + (f" {_cell(name)}" if name else "")


def _t(t: Any) -> str:
    return f"+{t:.3f} s" if isinstance(t, int | float) else "-"


def _counts(d: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"


def markdown(doc: Mapping[str, Any]) -> str:
    """The summary as a Markdown report; the summary itself (what the signature covers) in its last JSON block."""
    ext = doc.get("extension") or {}
    versions = ext.get("versions") or []
    title = f"{ext.get('name', '?')} " + ", ".join(str(v.get("version") or "?") for v in versions)
    out = [f"# Incident summary: {_cell(title.strip())}", "",
           "What an extension did and what was done, from a signed forensic log, anonymized by `ebpfguard incident "
           "share`: times are seconds after the instance's launch, days are UTC; removed: "
           + ", ".join(doc.get("removed") or REMOVED) + ".", "", "## Extension", "",
           "| Name | Version | Publisher | Policy sha256 | Signature | Modes |", "|---|---|---|---|---|---|"]
    for v in versions:
        pub = v.get("publisher") or "-"
        if v.get("publisher_key_id"):
            pub += f" (key {v['publisher_key_id']})"
        modes = ", ".join(v.get("modes") or [])
        out.append(f"| {_cell(ext.get('name'))} | {_cell(v.get('version'))} | {_cell(pub)} | "
                   f"{_code(v.get('policy_sha256'))} | {_cell(v.get('signature'))} | {_cell(modes)} |")
    period = doc.get("period") or {}
    counts = doc.get("counts") or {}
    out += ["", f"{len(doc.get('instances') or [])} instance(s), {counts.get('violations', 0)} violation(s)"
            + (f", {counts['shadow']} shadow refusal(s)" if counts.get("shadow") else "")
            + f", from {period.get('first') or '-'} to {period.get('last') or '-'}"
            + f" ({(doc.get('selection') or {}).get('records', 0)} records of a verified log).", "",
            "## What it tried", ""]
    techs = doc.get("techniques") or []
    if techs:
        out += ["| Technique | ATT&CK | Count | Verdicts | Targets |", "|---|---|---|---|---|"]
        for t in techs:
            targets = ", ".join(_code(x) for x in t.get("targets") or []) or "-"
            if t.get("targets_omitted"):
                targets += f" and {t['targets_omitted']} more"
            out.append(f"| {_cell(t.get('technique'))} | {attack_link(t.get('attack_id'), t.get('attack_name'))} | "
                       f"{t.get('count')} | {_cell(_counts(t.get('verdicts') or {}))} | {targets} |")
    else:
        out.append("Nothing: no violation in the records summarized.")
    out += ["", "## What was done", ""]
    resp = doc.get("responses") or []
    if resp:
        out += ["| Response | Layer | Count |", "|---|---|---|"]
        out += [f"| {_cell(r.get('response'))} | {_cell(r.get('layer'))} | {r.get('count')} |" for r in resp]
    else:
        out.append("No response was recorded.")
    ladder = doc.get("ladder") or []
    if ladder:
        out += ["", "Ladder steps:", ""]
        out += [f"- instance {s.get('instance') or '-'}, {_t(s.get('t'))}: {_cell(s.get('step'))} by "
                f"{_cell(s.get('by'))}" + (f" ({_cell(s['why'])})" if s.get("why") else "") for s in ladder]
    rb = doc.get("rollback") or []
    if rb:
        out += ["", "Rollback:", ""]
        out += [f"- instance {r.get('instance') or '-'}, {_t(r.get('t'))}: {_cell(r.get('outcome'))}, "
                f"{r.get('changes', 0)} change(s)" + (f" ({_cell(_counts(r['counts']))})" if r.get("counts") else "")
                + (f", {r['conflicts']} conflict(s)" if r.get("conflicts") else "")
                + (f" in {', '.join(_code(x) for x in r['trees'])}" if r.get("trees") else "") for r in rb]
    out += ["", "## Instances", "", "| # | Version | Mode | Launched | Ran | End | Violations | Sandbox |",
            "|---|---|---|---|---|---|---|---|"]
    for i in doc.get("instances") or []:
        ran = f"{i['ran_s']:.3f} s" if isinstance(i.get("ran_s"), int | float) else "-"
        end = i.get("end") or "-"
        if i.get("exit_status") is not None:
            end += f" ({i['exit_status']})"
        out.append(f"| {i.get('n')} | {_cell(i.get('version'))} | {_cell(i.get('mode'))} | {_cell(i.get('launched'))}"
                   f"{'' if i.get('launch_known') else ' (first record)'} | {ran} | {_cell(end)} | "
                   f"{i.get('violations', 0)} | {_cell(i.get('sandbox'))} |")
    sandboxes = doc.get("sandboxes") or []
    if sandboxes:
        out += ["", "| Sandbox | Kernel | Layers |", "|---|---|---|"]
        for n, sb in enumerate(sandboxes, 1):
            k = sb.get("kernel") or {}
            kern = f"{k.get('release')} ({k.get('ebpf')})" if k else "-"
            out.append(f"| {n} | {_cell(kern)} | {_cell(', '.join(sb.get('layers') or []))} |")
    out += ["", "## Timeline", "", "Seconds after the launch of each instance.", "",
            "| Instance | Time | Event |", "|---|---|---|"]
    for e in doc.get("timeline") or []:
        ev = str(e.get("event"))
        if ev == "violation":
            what = f"{e.get('kind')}: {_cell(e.get('technique'))}"
            if e.get("attack_id"):
                what += f" ({attack_link(e['attack_id'])})"
            what += f" {_code(e.get('target'))} → {_cell(e.get('verdict'))}"
            if e.get("actions"):
                what += " (" + _cell(", ".join(e["actions"])) + ")"
        elif ev == "stop":
            what = "stop" + (", killed by the agent" if e.get("killed_by_agent") else "") + (
                f", exit status {e['exit_status']}" if e.get("exit_status") is not None else "")
        elif ev == "rollback":
            what = f"rollback {_cell(e.get('outcome'))}: {e.get('changes', 0)} change(s)"
        elif e.get("actions"):
            what = f"{_cell(ev)} by {_cell(e.get('by'))} ({_cell(', '.join(e['actions']))})"
        else:
            what = _cell(ev) + (f" ({e['day']})" if e.get("day") else "")
        out.append(f"| {e.get('instance') or '-'} | {_t(e.get('t'))} | {what} |")
    if doc.get("timeline_omitted"):
        out.append(f"| | | and {doc['timeline_omitted']} more |")
    out += ["", "## Destinations", ""]
    dests = doc.get("destinations") or []
    if dests:
        out += ["Public destinations it tried:", "", "| Address | Port | Protocol | Operation | Count | Verdicts |",
                "|---|---|---|---|---|---|"]
        out += [f"| {_code(d.get('address'))} | {d.get('port') if d.get('port') is not None else '-'} | "
                f"{_cell(d.get('proto'))} | {_cell(d.get('op'))} | {d.get('count')} | "
                f"{_cell(_counts(d.get('verdicts') or {}))} |" for d in dests]
    else:
        out.append("No public destination.")
    other = doc.get("other_destinations") or []
    if other:
        out += ["", "Other destinations (their class only): " + ", ".join(
            f"{_cell(d.get('class'))}" + (f" port {d['port']}" if d.get("port") is not None else "")
            + f" ({_cell(d.get('op'))}, {d.get('count')}×)" for d in other) + "."]
    out += ["", "## Signature", ""]
    signer = doc.get("signer")
    if isinstance(signer, Mapping) and doc.get("signature"):
        out.append(f"Signed with Ed25519 key `{_cell(signer.get('key_id'))}` (its public key is in the JSON below); "
                   "check it with `ebpfguard incident verify FILE --pubkey KEY.pub`.")
    elif "signature" in doc:
        out.append("Unsigned: shared without a key, so nothing shows who wrote it or that it is unchanged.")
    out += ["", "<details><summary>The summary as JSON (what the signature covers)</summary>", "", "```json",
            json.dumps(doc, indent=2), "```", "", "</details>", ""]
    return "\n".join(out)


# ---- summaries received from elsewhere -----------------------------------------------------------------------

def store_dir(state_dir: str | os.PathLike[str]) -> Path:
    return StateDir.of(state_dir).root / "incidents"


def digest_of(doc: Mapping[str, Any]) -> str:
    """A summary's name in the store: the SHA-256 of its canonical JSON, signature included (the same summary
    however it was laid out is stored once)."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
                          ).hexdigest()


@dataclass
class Imported:
    sha256: str
    path: Path
    doc: dict[str, Any]
    new: bool = True


def import_summary(state_dir: str | os.PathLike[str], path: str | os.PathLike[str],
                   trusted: Mapping[str, Ed25519PublicKey]) -> Imported:
    """Verify the summary at ``path`` against ``trusted`` and keep it as STATE/incidents/<sha256>.json (0600, in
    a 0700 folder, written atomically); IncidentError with why when it is refused (nothing is stored)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise IncidentError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise IncidentError(f"{p} is a folder, not a summary") from None
    except OSError as err:
        raise IncidentError(f"{p}: {err.strerror}") from err
    doc = parse(data, str(p))
    c = check(doc, trusted)
    if not c.ok:
        raise IncidentError(f"{p}: {c}")
    folder = store_dir(state_dir)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise IncidentError(f"cannot create {folder}: {err.strerror}") from err
    sha = digest_of(doc)
    dest = folder / f"{sha}.json"
    if dest.exists():
        return Imported(sha, dest, doc, new=False)
    body = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    tmp = folder / f".{sha}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        _write_exclusive(tmp, body, 0o600, "a file")
        try:
            os.link(tmp, dest)  # exclusive: a second import of the same summary finds it there
        except FileExistsError:
            return Imported(sha, dest, doc, new=False)
        finally:
            tmp.unlink(missing_ok=True)
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as err:
        raise IncidentError(f"cannot write {dest}: {err.strerror}") from err
    return Imported(sha, dest, doc)


def imported(state_dir: str | os.PathLike[str], extension: str | None = None) -> list[Imported]:
    """The summaries kept under STATE/incidents (of ``extension``), oldest import first; a file there that is not
    one is skipped (the store is written only by import)."""
    folder = store_dir(state_dir)
    out = []
    try:
        files = sorted(folder.glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name))
    except OSError:
        return []
    for p in files:
        try:
            doc = parse(p.read_bytes(), str(p))
        except (OSError, IncidentError):
            continue
        if extension is None or (doc.get("extension") or {}).get("name") == extension:
            out.append(Imported(p.stem, p, doc, new=False))
    return out


def brief(item: Imported) -> dict[str, Any]:
    """One imported summary in a line's worth: what `incident list` and `provenance` show of it."""
    doc = item.doc
    ext = doc.get("extension") or {}
    signer = doc.get("signer") or {}
    counts = doc.get("counts") or {}
    techs = [{"technique": t.get("technique"), "attack_id": t.get("attack_id"), "count": t.get("count")}
             for t in doc.get("techniques") or []]
    return {"sha256": item.sha256, "extension": ext.get("name"),
            "versions": [{"version": v.get("version"), "policy_sha256": v.get("policy_sha256")}
                         for v in ext.get("versions") or []],
            "signer": signer.get("key_id"), "period": doc.get("period"), "violations": counts.get("violations", 0),
            "techniques": techs, "destinations": [f"{d.get('address')}:{d.get('port')}"
                                                  for d in doc.get("destinations") or []],
            "imported": dt.datetime.fromtimestamp(item.path.stat().st_mtime, dt.UTC).strftime("%Y-%m-%d")
            if item.path.exists() else None}


def received(state_dir: str | os.PathLike[str], name: str, versions: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """The imported summaries of extension ``name``, each with the local version it matches (by policy sha256,
    else by version) among ``versions`` [(version, sha256)], or None."""
    local = list(versions)
    out = []
    for item in imported(state_dir, name):
        b = brief(item)
        match = None
        for v in b["versions"]:
            hit = next((lv for lv in local if lv[1] and lv[1] == v.get("policy_sha256")), None) or \
                next((lv for lv in local if lv[0] and lv[0] == v.get("version")), None)
            if hit:
                match = {"version": hit[0], "sha256": hit[1],
                         "by": "policy sha256" if hit[1] == v.get("policy_sha256") else "version"}
                break
        out.append({**b, "matches": match})
    return out


def _write_exclusive(path: Path, data: bytes, mode: int, what: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        raise IncidentError(f"{path} exists: refusing to overwrite {what}") from None
    except OSError as err:
        raise IncidentError(f"cannot create {path}: {err.strerror}") from err
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_out(path: str | os.PathLike[str], text: str) -> None:
    """The summary to OUT, atomically (a reader never sees half of it)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        _write_exclusive(tmp, text.encode(), 0o644, "a file")
        os.replace(tmp, p)
    except OSError as err:
        raise IncidentError(f"cannot write {p}: {err.strerror}") from err
    finally:
        tmp.unlink(missing_ok=True)

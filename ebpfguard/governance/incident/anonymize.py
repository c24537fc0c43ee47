"""The removal rules. Host: the identifiers to remove (host name, machine and boot id, the host key, the accounts in
passwd). Anonymizer: a path, an address, a D-Bus name, a program, a sandbox layer, as the summary shows them.
vocabulary(): the words the format itself uses, which a name cannot be told apart from."""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ebpfguard.errors import EbpfguardError
from ebpfguard.forensics import key_id
from ebpfguard.forensics.keys import host_public_key
from ebpfguard.forensics.technique import address_class, credential_class, persistence_class
from ebpfguard.governance.incident.report import markdown
from ebpfguard.governance.incident.schema import EMPTY, REMOVED, SCHEMA, VOCABULARY

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




@functools.cache
def vocabulary() -> frozenset[str]:
    """The words the format itself uses (keys, techniques, layers, the report's text): a name that is one of
    them (a person called "user") cannot be told apart from it, so the scrub leaves those to the rules."""
    from ebpfguard.forensics import technique

    text = " ".join([*REMOVED, *(t for _, c, _, n in (*technique.CREDENTIALS, *technique.PERSISTENCE) for t in (c, n)),
                     *(t for _, n, _, an in technique.DBUS for t in (n, an or "")), json.dumps(SCHEMA),
                     markdown(EMPTY), VOCABULARY])
    return frozenset(_words(text))

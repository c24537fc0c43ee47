"""What a violation record was an attempt at, in a vocabulary shared beyond one host: a technique name and, where one
fits, its MITRE ATT&CK (Enterprise) ID. Incident summaries (incident.py) and the fleet report (fleet.py) count by it.

The classification reads the record as the host wrote it (the real path, the real address) and says only the class:
`credential file read` for ~/.ssh/id_ed25519, never the path. An ID is given only where the technique's own
description covers what the record shows; otherwise it is null (a denied read of an ordinary file is no technique).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Technique:
    name: str  # the ebpfguard vocabulary: stable, lowercase, what the counts are keyed by
    attack: str | None = None  # MITRE ATT&CK Enterprise technique ID
    attack_name: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"technique": self.name, "attack_id": self.attack, "attack_name": self.attack_name}


# Credential stores by the file name or the folder they sit in: (pattern on the path, class, ATT&CK ID, name).
# The class is what an anonymized summary shows in place of a path under a home.
CREDENTIALS: tuple[tuple[re.Pattern[str], str, str, str], ...] = tuple(
    (re.compile(p), cls, tid, tname) for p, cls, tid, tname in (
        (r"/\.ssh/(id_[a-z0-9_]+|identity)$", "ssh private key", "T1552.004", "Private Keys"),
        (r"/\.ssh/[^/]*\.(pem|key)$", "ssh private key", "T1552.004", "Private Keys"),
        (r"/\.gnupg/(private-keys-v1\.d/|secring\.gpg)", "gpg private key", "T1552.004", "Private Keys"),
        (r"\.(pem|key|p12|pfx)$", "private key file", "T1552.004", "Private Keys"),
        (r"/\.netrc$", ".netrc", "T1552.001", "Credentials In Files"),
        (r"/\.git-credentials$", ".git-credentials", "T1552.001", "Credentials In Files"),
        (r"/\.aws/credentials$", "cloud credentials", "T1552.001", "Credentials In Files"),
        (r"/\.config/gcloud/", "cloud credentials", "T1552.001", "Credentials In Files"),
        (r"/\.azure/", "cloud credentials", "T1552.001", "Credentials In Files"),
        (r"/\.kube/config$", "kubeconfig", "T1552.001", "Credentials In Files"),
        (r"/\.docker/config\.json$", "container registry credentials", "T1552.001", "Credentials In Files"),
        (r"/\.pgpass$|/\.my\.cnf$", "database credentials", "T1552.001", "Credentials In Files"),
        (r"/\.npmrc$|/\.pypirc$", "package registry token", "T1552.001", "Credentials In Files"),
        (r"/\.config/gh/hosts\.yml$", "package registry token", "T1552.001", "Credentials In Files"),
        (r"/\.(bash|zsh|python)_history$", "shell history", "T1552.003", "Shell History"),
        (r"/(Login Data|Cookies|Web Data)$", "browser profile store", "T1555.003", "Credentials from Web Browsers"),
        (r"/(logins\.json|key[34]\.db|cookies\.sqlite|signons\.sqlite)$", "browser profile store", "T1555.003",
         "Credentials from Web Browsers"),
        (r"/\.local/share/keyrings/", "desktop keyring", "T1555", "Credentials from Password Stores"),
        (r"/\.password-store/", "password store", "T1555", "Credentials from Password Stores"),
        (r"^/etc/(g?shadow)-?$", "system password hashes", "T1003.008", "/etc/passwd and /etc/shadow"),
    ))

# Where a write makes something run later, or elsewhere: (pattern, class, ATT&CK ID, name).
PERSISTENCE: tuple[tuple[re.Pattern[str], str, str, str], ...] = tuple(
    (re.compile(p), cls, tid, tname) for p, cls, tid, tname in (
        (r"^/etc/cron|^/var/spool/cron/|^/etc/anacrontab$", "scheduled task", "T1053.003", "Cron"),
        (r"/systemd/(user|system)/[^/]*\.timer$", "scheduled task", "T1053.006", "Systemd Timers"),
        (r"/systemd/(user|system)/|^/etc/systemd/|^/lib/systemd/|^/usr/lib/systemd/", "service unit",
         "T1543.002", "Systemd Service"),
        (r"/\.config/autostart/|^/etc/xdg/autostart/", "session autostart entry", "T1547.013",
         "XDG Autostart Entries"),
        (r"/\.(bashrc|bash_profile|bash_login|bash_logout|profile|zshrc|zprofile|zshenv)$|^/etc/profile"
         r"|^/etc/bash\.bashrc$", "shell start-up file", "T1546.004", "Unix Shell Configuration Modification"),
        (r"/\.ssh/authorized_keys2?$", "ssh authorized keys", "T1098.004", "SSH Authorized Keys"),
        (r"^/etc/ld\.so\.preload$", "dynamic linker preload", "T1574.006", "Dynamic Linker Hijacking"),
        (r"^/etc/sudoers", "sudoers", "T1548.003", "Sudo and Sudo Caching"),
        (r"^/etc/(passwd|group|shadow)$", "account database", "T1136.001", "Local Account"),
    ))

SHELLS = {"sh", "bash", "dash", "zsh", "fish", "ksh", "csh", "tcsh", "busybox"}
INTERPRETERS = {"python": ("T1059.006", "Python"), "perl": ("T1059", "Command and Scripting Interpreter"),
                "ruby": ("T1059", "Command and Scripting Interpreter"), "node": ("T1059.007", "JavaScript"),
                "osascript": ("T1059", "Command and Scripting Interpreter")}
DOWNLOADERS = {"curl", "wget", "nc", "ncat", "socat", "scp", "sftp", "rsync", "ftp"}

# D-Bus services by what a call to them is an attempt at
DBUS: tuple[tuple[str, str, str | None, str | None], ...] = (
    ("org.freedesktop.systemd1", "D-Bus call to a service manager", "T1543.002", "Systemd Service"),
    ("org.freedesktop.secrets", "D-Bus call to a secret store", "T1555", "Credentials from Password Stores"),
    ("org.gnome.keyring", "D-Bus call to a secret store", "T1555", "Credentials from Password Stores"),
    ("org.kde.kwalletd", "D-Bus call to a secret store", "T1555", "Credentials from Password Stores"),
    ("org.freedesktop.login1", "D-Bus call to the login manager", None, None),
    ("org.freedesktop.PolicyKit1", "D-Bus call to polkit", "T1548", "Abuse Elevation Control Mechanism"),
    ("org.freedesktop.portal.Desktop", "D-Bus call to a desktop portal", None, None),
    ("org.freedesktop.Flatpak", "D-Bus call to a sandbox manager", "T1611", "Escape to Host"),
    ("org.freedesktop.portal.Flatpak", "D-Bus call to a sandbox manager", "T1611", "Escape to Host"),
)

ESCAPE_SYSCALLS = {"mount", "umount2", "unshare", "setns", "pivot_root", "chroot", "open_by_handle_at",
                   "fsopen", "fsmount", "move_mount", "open_tree", "clone", "clone3"}
ELEVATE_SYSCALLS = {"setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid",
                    "capset", "setgroups"}
MODULE_SYSCALLS = {"init_module", "finit_module", "delete_module"}
INJECT_SYSCALLS = {"ptrace", "process_vm_writev", "process_vm_readv", "pidfd_getfd"}
STEALTH_SYSCALLS = {"memfd_create", "memfd_secret"}

_WRITE_BLOCKERS = ("fs.write_file", "fs.make_", "fs.remove_", "fs.truncate", "fs.refer", "fs.ioctl_dev")


def _access(rec: Mapping[str, Any]) -> str:
    """read, write or exec, from the record or from what the layer that decided says it blocked."""
    d = rec.get("detail") or {}
    acc = d.get("access")
    if isinstance(acc, str) and acc:
        return "exec" if acc == "exec" else ("read" if acc == "read" else "write")
    blockers = [str(b) for b in d.get("blockers") or []]
    if any(b == "fs.execute" for b in blockers):
        return "exec"
    if any(b.startswith(_WRITE_BLOCKERS) for b in blockers):
        return "write"
    if any(str(a).startswith("erofs") for a in rec.get("actions") or []):
        return "write"  # a read-only mount refused it: only a write gets EROFS
    return "read"


def credential_class(path: str) -> tuple[str, str, str] | None:
    """(class, ATT&CK ID, name) of a well-known credential store at ``path``, or None."""
    for pat, cls, tid, tname in CREDENTIALS:
        if pat.search(path):
            return cls, tid, tname
    return None


def persistence_class(path: str) -> tuple[str, str, str] | None:
    for pat, cls, tid, tname in PERSISTENCE:
        if pat.search(path):
            return cls, tid, tname
    return None


def address_class(address: str) -> str:
    """public, or the class of a non-public address: loopback, private, link-local, multicast, reserved."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return "unparsed"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_private:
        return "private"  # RFC 1918, ULA, CGNAT, documentation ranges (is_private covers them)
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return "public"


def _syscall_technique(name: str) -> Technique:
    if name in INJECT_SYSCALLS:
        return Technique("process injection attempt", "T1055.008", "Ptrace System Calls")
    if name in MODULE_SYSCALLS:
        return Technique("kernel module load attempt", "T1547.006", "Kernel Modules and Extensions")
    if name in ESCAPE_SYSCALLS:
        return Technique("namespace or mount escape attempt", "T1611", "Escape to Host")
    if name in ELEVATE_SYSCALLS:
        return Technique("privilege attempt", "T1548", "Abuse Elevation Control Mechanism")
    if name == "bpf":
        return Technique("eBPF program load attempt", "T1014", "Rootkit")
    if name in STEALTH_SYSCALLS:
        return Technique("fileless execution attempt", "T1620", "Reflective Code Loading")
    if name in ("kill", "tkill", "tgkill", "pidfd_send_signal"):
        return Technique("signal to a process outside the instance")
    return Technique("dangerous syscall")


def classify(rec: Mapping[str, Any]) -> Technique:
    """The technique a violation record is an attempt at (any kind; an allowed or lifecycle record gets its kind)."""
    kind = str(rec.get("kind"))
    d = rec.get("detail") or {}
    if kind in ("file", "exec"):
        path = str(d.get("path") or "")
        acc = "exec" if kind == "exec" else _access(rec)
        if acc == "exec":
            base = os.path.basename(path)
            if base in SHELLS:
                return Technique("exec of an unlisted program", "T1059.004", "Unix Shell")
            for name, (tid, tname) in INTERPRETERS.items():
                if base.startswith(name):
                    return Technique("exec of an unlisted program", tid, tname)
            if base in DOWNLOADERS:
                return Technique("exec of an unlisted program", "T1105", "Ingress Tool Transfer")
            return Technique("exec of an unlisted program")
        if acc == "read":
            cred = credential_class(path)
            if cred:
                return Technique("credential file read", cred[1], cred[2])
            return Technique("read outside the read trees")
        pers = persistence_class(path)
        if pers:
            return Technique(f"{pers[0]} write", pers[1], pers[2])
        return Technique("write outside the write trees")
    if kind == "network":
        op = str(d.get("op") or "connect")
        if d.get("path") or d.get("socket") == "unix" or d.get("proto") == "unix":
            p = str(d.get("path") or "")
            if "docker.sock" in p or "containerd" in p or "podman" in p:
                return Technique("container runtime socket connect", "T1611", "Escape to Host")
            return Technique("connect to an unlisted local socket")
        if op == "bind":
            return Technique("listening on an unlisted port", "T1571", "Non-Standard Port")
        cls = address_class(str(d.get("address") or ""))
        if cls == "public":
            return Technique("connect to an unlisted destination", "T1071", "Application Layer Protocol")
        return Technique(f"connect to an unlisted {cls} address")
    if kind == "ipc":
        dest = str(d.get("destination") or d.get("name") or "")
        for service, what, attack, attack_name in DBUS:
            if dest == service or dest.startswith(service + "."):
                return Technique(what, attack, attack_name)
        return Technique("D-Bus call to an unlisted service")
    if kind in ("syscall", "privilege"):
        return _syscall_technique(str(d.get("syscall") or ""))
    if kind == "resource":
        res = str(d.get("resource") or "")
        if res == "pids":
            return Technique("process flood", "T1499", "Endpoint Denial of Service")
        if res == "memory":
            return Technique("memory exhaustion", "T1499", "Endpoint Denial of Service")
        return Technique("resource exhaustion", "T1496", "Resource Hijacking")
    if kind == "correlation":
        return Technique(f"correlated sequence ({d.get('rule') or 'rule'})")
    if kind == "anomaly":
        return Technique(f"anomaly ({d.get('what') or 'baseline'})")
    return Technique(kind)

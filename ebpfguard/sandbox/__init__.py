"""The launcher's layers, applied between fork and exec of every launched extension:
an unprivileged user, no_new_privs, a Landlock ruleset, a seccomp filter and rlimits.

Sandbox.prepare() runs in the launcher (root): it decides the user, builds the Landlock ruleset fd
and the seccomp program, and lists what is and is not enforced. In the child, drop() runs before it
joins its cgroup and confine() after; every descendant inherits what they set. These layers are the kernel's
own object-level checks: they keep holding when the agent is gone.
"""

from __future__ import annotations

import os
import pwd
import resource
from dataclasses import dataclass, field
from typing import Any

from ebpfguard.errors import EbpfguardError
from ebpfguard.manifest.compile import bus_sockets as bus_paths
from ebpfguard.manifest.load import NEVER_ALLOWED, Manifest
from ebpfguard.sandbox import landlock, mountns, seccomp


class SandboxError(EbpfguardError):
    pass


@dataclass
class Sandbox:
    uid: int
    gid: int
    user: str
    home: str
    ruleset_fd: int | None
    seccomp_prog: bytes
    rlimits: dict[int, tuple[int, int]]
    layers: list[str]
    not_enforced: list[str] = field(default_factory=list)
    landlock_abi: int = 0
    mounts: mountns.MountPlan | None = None
    bus_paths: dict[str, str] = field(default_factory=dict)  # bus -> where its proxy appears in the namespace
    runtime_dir: str = ""
    seccomp_log: bool = False  # installed with SECCOMP_FILTER_FLAG_LOG: its refusals reach audit
    landlock_later: Any = None  # a Landlock plan built in the child, after its overlays are mounted

    @classmethod
    def prepare(cls, m: Manifest, mode: str | None = None, *, allow_root: bool = False,
                landlock_abi: int | None = None, proxies: dict[str, str] | None = None,
                overlays: dict[str, tuple[str, str]] | None = None, check_proxies: bool = True) -> Sandbox:
        """``proxies``: where each D-Bus proxy socket of the instance must appear (the real bus's path)
        -> the proxy's socket. ``overlays``: write tree -> (upper, work) of its rollback overlay.
        ``check_proxies=False``: a check of the manifest before any instance exists (so before its proxies
        are started); such a Sandbox is for close() only, never for a launch."""
        pw = extension_user(m)
        if pw.pw_uid == 0 and not (m.user in ("root", "0") and allow_root):
            raise SandboxError("refusing to run an extension as root: spec.user must name an unprivileged "
                               "user (root needs both spec.user: root and the agent's allow_root)")
        abi = landlock.abi() if landlock_abi is None else landlock_abi
        audit = (mode or m.mode) == "audit"
        plan = landlock.plan(m, abi, mode)
        layers = ["user", "no_new_privs", "rlimits"]
        not_enforced = list(plan.not_enforced)
        fd = None
        if abi > 0 and plan.enforced:
            fd, skipped = landlock.build(plan)
            layers += [f"landlock-abi{abi}"] + [f"landlock-{x}" for x in plan.enforced]
            not_enforced += [f"landlock: {s} not granted" for s in skipped]
        # seccomp denies what the manifest wants denied; "alert" kinds and audit mode are recorded only
        deny = seccomp_denied(m, mode)
        reports = bool(deny) and abi >= 7 and "fs" in plan.enforced  # as audit_reports() says
        layers.append("seccomp" if deny else "seccomp: none (audit)" if audit else "seccomp: none")
        rl = {resource.RLIMIT_CORE: (0, 0)}  # no core dumps: they would carry the extension's secrets
        mounts = None
        if audit:
            not_enforced.append("mount namespace: audit mode changes nothing")
        else:
            mounts = mountns.plan(m, mode, pw.pw_uid, pw.pw_gid, proxies, overlays=overlays)
            layers += mounts.describe()
            not_enforced += [f"mount namespace: write tree {s} not bound" for s in mounts.skipped]
            unmounted = sorted(set(overlays or {}) - {t for t, _, _ in mounts.overlays})
            if unmounted:  # its rollback record would say "discarded" of changes made to the real tree
                raise SandboxError(f"rollback: no overlay can be mounted on the write tree {', '.join(unmounted)}")
            if not mounts.readonly:
                not_enforced.append("mount namespace: not read-only (a write tree is / or file response is alert)")
        if m.rollback and audit:
            not_enforced.append("rollback: audit mode writes to the real trees")
        if m.rollback and not audit and not overlays:
            not_enforced.append("rollback: no rollback area was made (no write tree is an existing folder)")
        if m.ipc.dbus and audit:
            not_enforced.append("d-bus proxy: audit mode filters nothing")
        elif m.ipc.dbus:
            missing = [b for b, t in bus_paths(m).items() if t not in (proxies or {})]
            if missing and check_proxies:
                raise SandboxError(f"spec.ipc.dbus names the {', '.join(missing)} bus but no proxy was started "
                                   "for it")
            layers.append("dbus-proxy:" + ",".join(sorted(m.ipc.dbus)))
        later = None
        if fd is not None and mounts is not None and (mounts.overlays or plan.private):
            # Landlock's rules hold inodes: those of the real folders would not cover the overlays and the
            # private /tmp mounted over them, so the ruleset is built again in the child, once they are
            # mounted (isolate)
            os.close(fd)
            fd, later = None, plan
        return cls(pw.pw_uid, pw.pw_gid, pw.pw_name, pw.pw_dir, fd, seccomp.build(deny), rl, layers, not_enforced,
                   abi, mounts, bus_paths(m) if not audit else {}, m.runtime_dir, reports, later)

    def environ(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The extension's environment: the bus addresses lead to its proxies (or are removed: the real
        buses are out of reach), XDG_RUNTIME_DIR to its masked runtime folder."""
        env = dict(os.environ if base is None else base)
        if self.mounts is None:
            return env
        buses = {"session": "DBUS_SESSION_BUS_ADDRESS", "system": "DBUS_SYSTEM_BUS_ADDRESS"}
        for bus, var in buses.items():
            env.pop(var, None)
            if bus in self.bus_paths:
                env[var] = f"unix:path={self.bus_paths[bus]}"
        if self.runtime_dir:
            env["XDG_RUNTIME_DIR"] = self.runtime_dir
        return env

    def isolate(self) -> None:
        """In the child, first, as root: the instance's own mount namespace."""
        if self.mounts is not None:
            mountns.enter(self.mounts)
        if self.landlock_later is not None:
            self.ruleset_fd, _ = landlock.build(self.landlock_later)

    def drop(self) -> None:
        """In the child, before it joins its cgroup: rlimits, no_new_privs and the user. Done outside
        the extension cgroup so that the launcher's own setuid is not an extension's violation; the
        cgroup fds were opened by root, and the kernel checks a migration against the opener."""
        for res, lim in self.rlimits.items():
            resource.setrlimit(res, lim)
        seccomp.no_new_privs()
        if os.getuid() != self.uid or os.getgid() != self.gid:
            os.setgroups([])
            os.setresgid(self.gid, self.gid, self.gid)
            os.setresuid(self.uid, self.uid, self.uid)

    def confine(self) -> None:
        """In the child, inside its cgroup, right before exec: Landlock, then seccomp last, so that it
        cannot deny the steps before it."""
        if self.ruleset_fd is not None:
            landlock.restrict_self(self.ruleset_fd, self.landlock_abi)
        seccomp.install(self.seccomp_prog, log=self.seccomp_log)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"user": self.user, "uid": self.uid, "layers": self.layers,
                               "not_enforced": self.not_enforced}
        if self.mounts is not None:
            out["mount"] = self.mounts.summary()
        if "landlock-fs" in self.layers and self.landlock_abi >= 7:
            out["landlock_reports"] = True  # restricted with LOG_NEW_EXEC_ON: its denials reach audit
        if self.seccomp_log:
            out["seccomp_reports"] = True
        return out

    def close(self) -> None:
        if self.ruleset_fd is not None:
            os.close(self.ruleset_fd)
            self.ruleset_fd = None


def landlock_confines(m: Manifest, mode: str | None = None) -> bool:
    """Will the launcher restrict an instance of ``m`` with a Landlock ruleset that handles files (any
    ABI, not audit mode)? Sandbox.describe() says the same after the fact ("landlock-fs")."""
    abi = landlock.abi()
    return abi >= 1 and (mode or m.mode) != "audit" and "fs" in landlock.plan(m, abi, mode).enforced


def landlock_reports(m: Manifest, mode: str | None = None) -> bool:
    """Will the launcher restrict an instance of ``m`` with a Landlock ruleset that reports its denials
    to audit (ABI 7+, files handled, not audit mode)? Its seccomp filter then reports its refusals too.
    Sandbox.describe() says the same after the fact."""
    abi = landlock.abi()
    return abi >= 7 and (mode or m.mode) != "audit" and "fs" in landlock.plan(m, abi, mode).enforced


def seccomp_denied(m: Manifest, mode: str | None = None) -> dict[str, str]:
    """What the launcher's seccomp filter refuses: syscall name -> "kill" (the never-allowed ones, and
    kinds whose response is kill: the call never runs) or "errno" (EPERM). Nothing in audit mode;
    "alert" kinds are recorded only (by the syscall gates), never refused."""
    if (mode or m.mode) == "audit":
        return {}
    return {name: ("kill" if name in NEVER_ALLOWED or m.response.get(kind) == "kill" else "errno")
            for name, kind in m.all_denied_syscalls().items()
            if name in NEVER_ALLOWED or m.response.get(kind) != "alert"}


def extension_user(m: Manifest) -> pwd.struct_passwd:
    """Who the extension runs as: spec.user, else the user who invoked sudo, else nobody."""
    user = m.user or _invoking_user() or "nobody"
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError as err:
        raise SandboxError(f"spec.user {user!r} does not exist on this host") from err


def _invoking_user() -> str | None:
    uid = os.environ.get("SUDO_UID")
    return uid if uid and uid != "0" else None

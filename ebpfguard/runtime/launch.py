"""The one launch loop: prepare -> sandbox -> spawn -> poll -> drain -> release, for every caller that runs
an instance in this process (a standalone ``ebpfguard run``, ``learn``, ``simulate`` and ``bench``). The
agent runs the same stages, split across its control requests (prepare, started, exited) when root's client
spawns, and as start_for_caller() then its loop's watch when it launches for a user (the launch request); what
each stage means is the engine's (runtime/engine.py).

    prepare   the instance's cgroup, policy slot, proxies and rollback overlays (Engine.prepare)
    sandbox   the launcher's layers for it: user, mount namespace, Landlock, seccomp (sandbox/)
    spawn     fork, join the cgroup, confine, exec (sandbox/launcher.py): its first instruction runs inside
    poll      the engine handles its events and resource reports while the leader runs
    drain     the leader exited: its children and grandchildren still count, until the cgroup is empty
    release   stop record, rollback decision, the cgroup removed (Engine.release)
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ebpfguard.errors import EbpfguardError
from ebpfguard.instance.store import Instance, State
from ebpfguard.manifest.load import Manifest
from ebpfguard.runtime.engine import Engine
from ebpfguard.sandbox import Sandbox, landlock_confines, landlock_reports
from ebpfguard.sandbox.launcher import check_command, exit_status, spawn


@dataclass
class Ended:
    """How one launched instance ended."""

    status: int                      # the command's exit status; 128+N when signal N ended it
    pid: int                         # its leader's pid
    state: State                     # running (ended by itself), frozen or killed (by the ladder or the loop)
    records: list[dict[str, Any]] = field(default_factory=list)  # what it caused, when collected
    timed_out: bool = False          # the loop killed it at its deadline


@dataclass
class LaunchOptions:
    mode: str | None = None                  # audit | enforce; None: the manifest's
    sandbox: bool = True                     # the launcher's layers (False: the cgroup and the programs alone)
    shadow: Manifest | None = None           # a staged version deciding beside it (spec.rollout: shadow)
    on_instance: Callable[[Instance], Sequence[str]] | None = None  # may rewrite argv once the cgroup exists
    on_started: Callable[[Instance], None] | None = None  # after the leader is in (signed file lists)
    timeout: float | None = None             # kill it after this long (None: wait as long as it runs)
    stop_when_frozen: bool = False           # end it once the ladder froze it (the simulator does not wait)
    collect: bool = True                     # keep the records it caused in Ended.records
    interactive: bool = False                # a terminal's Ctrl-C goes to the command, not to this process
    poll_ms: int = 10


def launch(engine: Engine, m: Manifest, argv: Sequence[str], opts: LaunchOptions | None = None) -> Ended:
    """Run ``argv`` as one instance of ``m`` under ``engine`` until its cgroup is empty."""
    o = opts or LaunchOptions()
    records: list[dict[str, Any]] = []
    if o.collect:
        engine.subscribers.append(records.append)
    inst = engine.prepare(m, o.mode, sandboxed=o.sandbox, landlocked=o.sandbox and landlock_confines(m, o.mode),
                          landlock_reports=o.sandbox and landlock_reports(m, o.mode), shadow=o.shadow)
    try:
        argv = list(o.on_instance(inst) if o.on_instance is not None else argv)
        sb = (Sandbox.prepare(m, o.mode, proxies=inst.proxy_folders(),
                              overlays=inst.rollback.overlays() if inst.rollback else None)
              if o.sandbox else None)
        try:
            with _sigint_ignored(o.interactive):
                proc = spawn(argv, inst.cgroup.procs_files(), sandbox=sb)
        finally:
            if sb is not None:
                sb.close()
        engine.started(inst, proc.pid, argv, sb.describe() if sb else None)
        if o.on_started is not None:
            o.on_started(inst)
        ended = Ended(0, proc.pid, State.RUNNING, records)
        deadline = time.monotonic() + o.timeout if o.timeout is not None else None
        with _sigint_ignored(o.interactive):
            while proc.poll() is None:
                engine.poll(o.poll_ms)
                engine.check_resources()
                if o.stop_when_frozen and inst.state == State.FROZEN:
                    ended.state = State.FROZEN
                    engine.kill(inst)
                if deadline is not None and time.monotonic() > deadline:
                    ended.timed_out = True
                    engine.kill(inst)
                    deadline = time.monotonic() + 5  # the kill's own grace
            ended.status = exit_status(proc.returncode)
            engine.leader_exited(inst, ended.status)
            while inst.cgroup.populated() and (deadline is None or time.monotonic() < deadline):
                engine.poll(o.poll_ms)
            engine.poll(0)
        if ended.state != State.FROZEN and inst.state in (State.KILLED, State.FROZEN):
            ended.state = inst.state
        return ended
    finally:
        engine.release(inst, kill=_still_running(inst))
        if o.collect:
            engine.subscribers.remove(records.append)


def _still_running(inst: Instance) -> bool:
    """Something is left in the cgroup (an error or a deadline cut the loop short): release kills it."""
    try:
        return inst.cgroup.populated()
    except (OSError, EbpfguardError):
        return True


@contextlib.contextmanager
def _sigint_ignored(on: bool) -> Iterator[None]:
    """Like a shell: the terminal's Ctrl-C reaches the command, which decides; the launcher waits for it. A handler
    that does nothing, not SIG_IGN: an ignored signal stays ignored across exec, a handled one is reset."""
    if not on:
        yield
        return
    old = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def start_for_caller(engine: Engine, m: Manifest, argv: Sequence[str], *, uid: int, mode: str | None = None,
                     env: dict[str, str] | None = None, cwd: str = "/", umask: int = 0o022, stdio: Sequence[int] = (),
                     shadow: Manifest | None = None) -> tuple[Instance, subprocess.Popen[bytes]]:
    """prepare, sandbox, spawn and started for a user's launch through the agent: ``m`` was parsed as that
    user (manifest.load.parse as_user), so the instance runs as them; their environment is filtered by the
    manifest (caller_environ); ``stdio`` are the caller's own stdin, stdout and stderr, ``cwd`` is entered with
    their rights in the instance's namespace, ``umask`` is theirs (not the agent's 0077). The caller's loop
    then watches the process and releases the instance once its cgroup is empty. A launch that fails leaves
    nothing behind."""
    check_command(m, argv, mode, look=False)
    inst = engine.prepare(m, mode, landlocked=landlock_confines(m, mode), landlock_reports=landlock_reports(m, mode),
                          shadow=shadow)
    try:
        if inst.rollback is not None:  # whose area it is, after a restart too (rollback list, commit, discard)
            inst.rollback.meta["launched_by"] = uid
            inst.rollback.save()
        sb = Sandbox.prepare(m, mode, proxies=inst.proxy_folders(),
                             overlays=inst.rollback.overlays() if inst.rollback else None)
        try:
            if sb.uid != uid:  # parse(as_user) made spec.user the caller: never anyone else's rights
                raise EbpfguardError(f"the instance would run as uid {sb.uid}, not as its caller (uid {uid})")
            reachable(sb)
            base = caller_environ(m, env or {}, pwd.getpwuid(uid))
            std = [*stdio, None, None, None][:3]
            proc = spawn(argv, inst.cgroup.procs_files(), env=sb.environ(base), sandbox=sb, stdin=std[0],
                         stdout=std[1], stderr=std[2], cwd=cwd, umask=umask)
        finally:
            sb.close()
        engine.started(inst, proc.pid, list(argv), {**sb.describe(), "launched_by": uid})
    except BaseException:
        engine.release(inst, kill=_still_running(inst))
        raise
    return inst, proc


def reachable(sb: Sandbox) -> None:
    """What the launcher carries into a user's instance from the host (a grant under its private /tmp), it opens as
    root: each must be a folder or file the user reaches themselves, through no symlink, or the launch is refused
    (a grant on /tmp/link -> /home/victim/Documents, or below another service's 0700 PrivateTmp folder, would
    otherwise show it). Checked with the user's file rights just before the launch."""
    from ebpfguard.sandbox.rollback import RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, _UserRights, openat2  # noqa: PLC0415

    carried = [c.source for c in (sb.mounts.carry if sb.mounts is not None else [])]
    if not carried:
        return
    with _UserRights(sb.uid, sb.gid):
        for source in carried:
            try:
                os.close(openat2(-100, source, os.O_PATH, resolve=RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS))
            except OSError as err:
                why = "a symlink is on its way" if err.errno == errno.ELOOP else err.strerror
                raise EbpfguardError(f"the manifest grants {source}, which {sb.user} cannot reach themselves "
                                     f"({why}): it is not carried into the instance") from None


_X_DISPLAY = re.compile(r"^(?:unix)?:(\d+)(?:\.\d+)?$")


def caller_environ(m: Manifest, env: dict[str, str], pw: pwd.struct_passwd) -> dict[str, str]:
    """The caller's environment as its plug-in gets it: DISPLAY (and XAUTHORITY) only where the manifest grants
    that X server's socket, WAYLAND_DISPLAY only where it grants the compositor's; HOME, USER, LOGNAME and SHELL
    from the user's account. The D-Bus addresses and XDG_RUNTIME_DIR are the sandbox's to set (Sandbox.environ)."""
    out = {k: v for k, v in env.items() if isinstance(k, str) and isinstance(v, str) and "=" not in k and k}
    display = _X_DISPLAY.match(out.get("DISPLAY", ""))
    if display is None or not m.ipc.unix_allows(f"/tmp/.X11-unix/X{display.group(1)}"):
        out.pop("DISPLAY", None)
        out.pop("XAUTHORITY", None)
    wayland = out.get("WAYLAND_DISPLAY", "")
    where = wayland if wayland.startswith("/") else f"{m.runtime_dir}/{wayland}"
    if not wayland or not m.ipc.unix_allows(where):
        out.pop("WAYLAND_DISPLAY", None)
    out.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name, SHELL=pw.pw_shell or "/bin/sh")
    return out

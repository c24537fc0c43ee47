"""The one launch loop: prepare -> sandbox -> spawn -> poll -> drain -> release, for every caller that runs
an instance in this process (a standalone ``ebpfguard run``, ``learn``, ``simulate`` and ``bench``). The
agent runs the same stages, split across its control requests (prepare, started, exited) because the client
spawns; what each stage means is the engine's (runtime/engine.py).

    prepare   the instance's cgroup, policy slot, proxies and rollback overlays (Engine.prepare)
    sandbox   the launcher's layers for it: user, mount namespace, Landlock, seccomp (sandbox/)
    spawn     fork, join the cgroup, confine, exec (sandbox/launcher.py): its first instruction runs inside
    poll      the engine handles its events and resource reports while the leader runs
    drain     the leader exited: its children and grandchildren still count, until the cgroup is empty
    release   stop record, rollback decision, the cgroup removed (Engine.release)
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ebpfguard.errors import EbpfguardError
from ebpfguard.instance.store import Instance, State
from ebpfguard.manifest.load import Manifest
from ebpfguard.runtime.engine import Engine
from ebpfguard.sandbox import Sandbox, landlock_confines, landlock_reports
from ebpfguard.sandbox.launcher import exit_status, spawn


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
    inst = engine.prepare(m, o.mode, landlocked=o.sandbox and landlock_confines(m, o.mode),
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

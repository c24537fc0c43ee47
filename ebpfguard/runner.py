"""``ebpfguard run``: launch a command as an extension instance, standalone or through the agent."""

from __future__ import annotations

import signal
import time
from collections.abc import Sequence

from .launcher import exit_status, resolve, spawn
from .manifest.load import Manifest


def run_standalone(m: Manifest, argv: Sequence[str], state_dir: str, mode: str | None = None) -> int:
    """Load the programs in this process, run ``argv`` in a new extension cgroup, wait for the
    cgroup to empty (children and grandchildren included), unload. Returns the command's status."""
    from .engine import Engine  # noqa: PLC0415

    argv = resolve(argv)
    eng = Engine(state_dir)
    try:
        inst = eng.prepare(m, mode)
        # like a shell: the terminal's Ctrl-C goes to the command, which decides; we wait for it
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            proc = spawn(argv, inst.cgroup.procs_files())
        finally:
            signal.signal(signal.SIGINT, old)
        eng.started(inst, proc.pid, list(argv))
        prev_int = signal.signal(signal.SIGINT, lambda *_: None)
        try:
            while proc.poll() is None:
                eng.poll(50)
            status = exit_status(proc.returncode)
            eng.leader_exited(inst, status)
            while inst.cgroup.populated():
                eng.poll(50)
            eng.poll(0)
        finally:
            signal.signal(signal.SIGINT, prev_int)
        eng.release(inst)
        return status
    finally:
        eng.close()


def wait_populated(cgroup_populated: callable, timeout: float) -> bool:  # type: ignore[valid-type]
    deadline = time.monotonic() + timeout
    while cgroup_populated():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True

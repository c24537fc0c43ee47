"""Rollback areas no agent holds: when no agent runs, `ebpfguard rollback` acts on the areas on disk
(STATE/rollback/<instance>/), whose instances went down with the agent or the host that ran them. The
answers have the shape of the agent's rollback operation, so that one printer serves both."""

from __future__ import annotations

import os
from typing import Any

from ebpfguard.common.statedir import StateDir
from ebpfguard.errors import EbpfguardError
from ebpfguard.forensics import ForensicLog
from ebpfguard.kernel.cgroups import CgroupManager
from ebpfguard.pipeline.record import Recorder, finish_rollback
from ebpfguard.sandbox.rollback import pending

ACTIONS = ("list", "show", "commit", "discard")


def offline(state_dir: str | os.PathLike[str] | StateDir, action: str, instance: str | None, by: str,
            cgroups: CgroupManager | None = None) -> dict[str, Any]:
    """``list`` the areas on disk, ``show`` one instance's, or ``commit``/``discard`` it (a signed record of
    kind rollback, written by ``by``). An instance whose cgroup still has processes is refused: only an agent
    can stop it first. ``cgroups``: the hierarchy to look in (the host's by default)."""
    if action not in ACTIONS:
        raise ValueError(f"rollback action {action!r} is not one of {', '.join(ACTIONS)}")
    state = StateDir.of(state_dir)
    areas = pending(state.rollback, set())
    if action == "list":
        return {"running": [], "pending": [a.show() for a in areas]}
    layer = next((a for a in areas if a.instance == instance), None)
    if layer is None:
        raise EbpfguardError(f"no rollback area for an instance {instance!r} in {state.rollback}")
    if action == "show":
        return layer.show()
    cgroups = cgroups or CgroupManager()
    if any(cg.name == instance and cg.populated() for cg in cgroups.existing()):
        raise EbpfguardError(f"{instance} still runs (its agent is gone): start the agent, which takes it back, "
                             "then commit or discard through it")
    detail = finish_rollback(layer, action, Recorder(ForensicLog(state)), state.rollback_kept, by=by)
    return {"instance": instance, "stopped": False, "event": detail["event"], "count": detail["count"],
            "conflicts": detail.get("conflicts") or []}

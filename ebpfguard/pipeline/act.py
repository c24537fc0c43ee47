"""Stage 4, act: apply a Decision's steps to the instance's cgroup, to the kernel maps and to a held
process, and say which were done. The only stage that changes anything outside the agent."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ebpfguard.errors import EbpfguardError
from ebpfguard.instance.store import Instance, State
from ebpfguard.kernel.cgroups import freeze, throttle
from ebpfguard.pipeline.decide import FREEZE, KILL, QUARANTINE, RESUME, SIGKILL_AGENT, THROTTLE, step_of

if TYPE_CHECKING:
    from ebpfguard.kernel.sensor import SensorLike

log = logging.getLogger("ebpfguard")


class Actuator:
    def __init__(self, sensor: SensorLike):
        self.sensor = sensor

    def apply(self, inst: Instance | None, todo: Iterable[str], tgid: int) -> list[str]:
        """Do each step in order; returns the steps done (a step that could not be done is logged and
        left out, so the record never claims it)."""
        done = []
        for step in todo:
            op = step_of(step)
            try:
                if op == RESUME:
                    self.resume(tgid)
                elif op == SIGKILL_AGENT:
                    os.kill(tgid, signal.SIGKILL)
                elif inst is None:
                    continue
                elif op == KILL:
                    self.kill(inst)
                elif op == FREEZE:
                    self.freeze(inst)
                elif op == THROTTLE:
                    self.throttle(inst)
                elif op == QUARANTINE:
                    self.quarantine(inst, True)
                else:
                    raise ValueError(f"unknown step {step!r}")
            except ProcessLookupError:
                continue
            except (OSError, EbpfguardError) as err:
                log.error("failed to %s %s: %s", step, inst.id if inst else tgid, err)
                continue
            done.append(step)
        return done

    @staticmethod
    def resume(tgid: int) -> None:
        try:
            os.kill(tgid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def freeze(self, inst: Instance) -> None:
        freeze(inst.cgroup, True)
        inst.state = State.FROZEN

    def thaw(self, inst: Instance) -> None:
        freeze(inst.cgroup, False)
        inst.state = State.RUNNING
        inst.recent.clear()

    def kill(self, inst: Instance) -> None:
        if inst.state == State.FROZEN:  # a frozen task dies only once thawed
            freeze(inst.cgroup, False)
        inst.cgroup.kill()
        inst.state = State.KILLED
        inst.discard = True  # what it changed is rolled back (rollback.py), if its manifest asks

    def throttle(self, inst: Instance) -> None:
        throttle(inst.cgroup)
        inst.state = State.THROTTLED

    def quarantine(self, inst: Instance, on: bool) -> None:
        self.sensor.quarantine(inst.cgroup_id, on)
        inst.quarantined = on

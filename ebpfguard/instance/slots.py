"""Policy slots: each distinct (manifest, mode) compiled once into the kernel maps and shared by
every instance that runs it; and the archive of the exact manifest bytes records name."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ebpfguard.common.abi import c
from ebpfguard.common.statedir import StateDir
from ebpfguard.errors import EbpfguardError
from ebpfguard.manifest.compile import CompiledPolicy, compile
from ebpfguard.manifest.load import Manifest

if TYPE_CHECKING:
    from ebpfguard.kernel.sensor import SensorLike

log = logging.getLogger("ebpfguard")


@dataclass
class Slot:
    index: int
    manifest: Manifest
    mode: str
    compiled: CompiledPolicy
    refs: int = 0
    shadow: Slot | None = None  # a staged version deciding beside this one (spec.rollout: shadow)
    watch: tuple[tuple[str, str], ...] = ()  # where correlation rules start (correlate.py)
    baseline: bool = False  # allowed execs, writes and network are reported (baseline.py)


class Slots:
    def __init__(self, sensor: SensorLike, state: StateDir):
        self.sensor = sensor
        self.state = state
        self.by_index: dict[int, Slot] = {}

    def get(self, index: int) -> Slot | None:
        return self.by_index.get(index)

    def __iter__(self) -> Iterator[Slot]:
        return iter(list(self.by_index.values()))

    def __len__(self) -> int:
        return len(self.by_index)

    def acquire(self, m: Manifest, mode: str, shadow: Manifest | None = None,
                watch: tuple[tuple[str, str], ...] = (), arm_ms: int = 0, baseline: bool = False) -> Slot:
        """The slot of (m, mode), and with ``shadow`` a slot of its own for the shadow version, which the
        kernel consults on what m allows (it decides in enforce mode: what it would refuse)."""
        want = shadow.sha256 if shadow is not None else None
        for s in self.by_index.values():
            if s.manifest.sha256 == m.sha256 and s.mode == mode and s.watch == watch and s.baseline == baseline and \
                    (s.shadow.manifest.sha256 if s.shadow else None) == want:
                s.refs += 1
                return s
        sh = self.acquire(shadow, "enforce") if shadow is not None else None
        free = [i for i in range(c("MAX_SLOTS")) if i not in self.by_index]
        if not free:
            if sh is not None:
                self.release(sh.index)
            raise EbpfguardError(f"all {c('MAX_SLOTS')} policy slots are in use")
        cp = compile(m, free[0], mode, shadow=sh.index if sh else None, watch=watch, arm_ms=arm_ms, baseline=baseline)
        self.archive(m)
        self.sensor.write_policy(cp)
        s = Slot(free[0], m, mode, cp, refs=1, shadow=sh, watch=watch, baseline=baseline)
        self.by_index[s.index] = s
        return s

    def release(self, index: int) -> None:
        s = self.by_index.get(index)
        if s is None:
            return
        s.refs -= 1
        if s.refs <= 0:
            self.sensor.clear_policy(s.compiled)
            del self.by_index[index]
            if s.shadow is not None:
                self.release(s.shadow.index)

    def archive(self, m: Manifest) -> None:
        """Keep the exact manifest bytes each record's policy_sha256 names: STATE/policies/<sha256>."""
        path = self.state.policy(m.sha256)
        if path.exists():
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{m.sha256}.{os.getpid()}")
            tmp.write_bytes(m.raw)
            os.replace(tmp, path)
        except OSError as err:
            log.error("failed to archive policy %s: %s", m.sha256[:12], err.strerror)

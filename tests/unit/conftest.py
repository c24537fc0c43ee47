"""Fixtures the unit tiers share: an engine on the in-memory FakeSensor, a fixture cgroup tree and a clock
that moves only when a test moves it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ebpfguard.forensics import read
from ebpfguard.forensics.records import undeclared
from ebpfguard.kernel.cgroups import CgroupManager
from ebpfguard.runtime.engine import Engine
from ebpfguard.testing import FakeSensor, ManualClock


@pytest.fixture
def cgroot(tmp_path: Path) -> Path:
    """A hybrid-layout fixture tree: v2 at unified/ (no cgroup.freeze: the v1 freezer file is used)."""
    root = tmp_path / "cg"
    for d in ("unified", "memory", "cpu", "pids", "freezer"):
        (root / d).mkdir(parents=True)
        (root / d / "cgroup.procs").write_text("")
    return root


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def engine(tmp_path: Path, cgroot: Path, clock: ManualClock) -> Iterator[Engine]:
    eng = Engine(tmp_path / "state", sensor=FakeSensor(), cgroups=CgroupManager(cgroot), clock=clock)
    yield eng
    # every record the test wrote has the shape forensics/records.py declares for its kind
    odd = {(r.get("kind"), f) for r in read(eng.state) if isinstance(r, dict) for f in undeclared(r)}
    assert not odd, f"fields no record shape declares (forensics/records.py): {sorted(odd, key=str)}"

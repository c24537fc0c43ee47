"""Baselines in the kernel tier: an allowed connect to a destination the baseline never saw is one anomaly record
(the connect goes through); a destination in the baseline is none."""

from __future__ import annotations

import pytest

from ebpfguard.governance.baseline import Baseline
from ebpfguard.runtime.engine import Engine

from .harness import World, run_ext

pytestmark = pytest.mark.kernel


def test_a_new_allowed_destination_is_one_anomaly(engine: Engine, world: World) -> None:
    port = world.port("tcp4_ok")
    # it knows the helper and the folder its marker goes to, not the destination
    empty = Baseline("egtest", None, "test", 1, executables={str(world.helper)}, folders={str(world.out)})
    engine.baseline_for = lambda m: empty
    try:
        # two connects to the same new destination: one anomaly record
        res = run_ext(engine, world, world.manifest(), ["connect-seq", str(port), str(port)], sandbox=True)
        assert res.rc_errno() == (0, 0) and world.saw_connection("tcp4_ok")  # allowed: it went through
        anomalies = [r for r in res.records if r["kind"] == "anomaly"]
        assert len(anomalies) == 1, res.records
        a = anomalies[0]
        assert a["verdict"] == "allowed" and a["actions"] == []  # alert: recorded, nothing done
        assert a["detail"]["what"] == "destination" and a["detail"]["value"] == f"127.0.0.1/32:{port}/tcp"
        assert a["detail"]["baseline"]["source"] == "test"
        assert res.violations() == anomalies  # nothing else: no refusal
        known = Baseline("egtest", None, "test", 1, destinations={f"connect 127.0.0.1/32:{port}/tcp"},
                         executables={str(world.helper)}, folders={str(world.out)})
        engine.baseline_for = lambda m: known
        res = run_ext(engine, world, world.manifest(), ["connect4", str(port)], sandbox=True)
        assert res.rc_errno() == (0, 0) and world.saw_connection("tcp4_ok")
        assert not [r for r in res.records if r["kind"] == "anomaly"], res.records
    finally:
        engine.baseline_for = None

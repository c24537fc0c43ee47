"""Correlation in the kernel tier: a credential location read (allowed) and then a connect (allowed) give exactly
one correlation record naming both seqs, and the ladder acts on it; either step alone gives none."""

from __future__ import annotations

from ebpfguard.pipeline.correlate import Correlator, parse_rules
from ebpfguard.runtime.engine import Engine

from .conftest import World, run_ext

RULES = """apiVersion: ebpfguard.io/v1
kind: CorrelationRules
rules:
  - name: credential-read-then-network
    description: a credential read, then a connection
    within: 10s
    response: freeze
    steps:
      - {{kind: file, access: [read], path: ["{secret}/"]}}
      - {{kind: network, op: [connect, send]}}
"""


def granted(world: World) -> str:
    """world.manifest() that lets the extension read the secret folder: the read is allowed, and watched."""
    return world.manifest().replace(f'read: ["{world.allowed}/"]', f'read: ["{world.allowed}/", "{world.secret}/"]')


def test_credential_read_then_connect_is_one_correlation_and_the_ladder_acts(engine: Engine, world: World) -> None:
    engine.observers.correlator = Correlator(parse_rules(RULES.format(secret=world.secret), "test"))
    try:
        port = world.port("tcp4_ok")
        res = run_ext(engine, world, granted(world), ["read-connect", f"{world.secret}/s.txt", str(port), "3000"],
                      sandbox=True)
        assert world.saw_connection("tcp4_ok")  # both steps were allowed: the connect went through
        read = [r for r in res.records if r["kind"] == "file" and r["detail"]["path"] == f"{world.secret}/s.txt"]
        conn = [r for r in res.records if r["kind"] == "network" and r["detail"]["port"] == port]
        assert [r["verdict"] for r in read] == ["allowed"] and [r["verdict"] for r in conn] == ["allowed"], \
            res.records
        corr = [r for r in res.records if r["kind"] == "correlation"]
        assert len(corr) == 1, corr
        c = corr[0]
        assert c["detail"]["rule"] == "credential-read-then-network"
        assert c["detail"]["seqs"] == [read[0]["seq"], conn[0]["seq"]]
        assert c["verdict"] == "detected" and "cgroup.freeze" in c["actions"], c
        assert res.marker is None  # frozen before it could finish lingering (then ended)
    finally:
        engine.observers.correlator = None


def test_either_step_alone_is_no_correlation(engine: Engine, world: World) -> None:
    engine.observers.correlator = Correlator(parse_rules(RULES.format(secret=world.secret), "test"))
    try:
        only_read = run_ext(engine, world, granted(world), ["read", f"{world.secret}/s.txt"], sandbox=True)
        only_connect = run_ext(engine, world, granted(world), ["connect4", str(world.port("tcp4_ok"))],
                               sandbox=True)
        assert world.saw_connection("tcp4_ok")  # (and drained: the listener is shared by the session)
        for res in (only_read, only_connect):
            assert not [r for r in res.records if r["kind"] == "correlation"], res.records
        # allowed steps are recorded only when their sequence completes: neither run has a record of them
        assert not [r for r in only_read.records if r["kind"] == "file"], only_read.records
        assert not [r for r in only_connect.records if r["kind"] == "network"], only_connect.records
    finally:
        engine.observers.correlator = None

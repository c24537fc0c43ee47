"""Correlation in the kernel tier: a credential location read (allowed) and then a connect (allowed) give exactly
one correlation record naming both seqs, and the ladder acts on it; either step alone gives none."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ebpfguard.forensics import read
from ebpfguard.pipeline.correlate import Correlator, parse_rules
from ebpfguard.runtime.engine import Engine

from .harness import World, run_ext

pytestmark = pytest.mark.kernel

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


def test_a_standalone_run_is_watched_by_the_shipped_rules(world: World, tmp_path: Path) -> None:
    """`ebpfguard run` with no agent loads the shipped correlation rules (policies/correlation/default.yaml): a
    file written in the home and then executed is the written-then-executed rule, recorded and killed."""
    drop = world.base / "drop"
    drop.mkdir(exist_ok=True)
    drop.chmod(0o777)
    dropped = drop / "x"
    m = tmp_path / "m.yaml"
    m.write_text(world.manifest().replace(f'write: ["{world.out}/"]', 'write: ["~/drop/"]')
                 .replace(f'exec: ["{world.helper}"]', f'exec: ["/usr/bin/", "/bin/", "{world.helper}", "~/drop/x"]')
                 .replace(f'read: ["{world.allowed}/"]', f'read: ["/usr/", "/lib/", "/etc/", "{world.base}/"]'))
    state = tmp_path / "st"
    env = {k: v for k, v in os.environ.items() if k != "SUDO_USER"}
    env["HOME"] = str(world.base)  # ~ in the manifest and in the shipped rules
    try:
        r = subprocess.run([str(Path(sys.executable).parent / "ebpfguard"), "run", "-m", str(m), "--state-dir",
                            str(state), "--", "/bin/sh", "-c", f"cp {world.helper} {dropped} && {dropped} "
                            f"{world.out}/m-standalone noop"], env=env, capture_output=True, text=True,
                           timeout=180, check=False)
        records = [rec for rec in read(state) if isinstance(rec, dict) and rec.get("kind") == "correlation"]
        assert [c["detail"]["rule"] for c in records] == ["written-then-executed"], (r.returncode, r.stderr)
        assert records[0]["verdict"] == "detected" and any(a.startswith("cgroup.kill") for a in records[0]["actions"])
    finally:
        shutil.rmtree(drop, ignore_errors=True)

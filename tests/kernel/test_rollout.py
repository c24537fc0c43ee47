"""Staged rollout in the kernel: a shadow version decides on the same events as the enforced one and records
what it would refuse, without acting; made the enforced version, it refuses the same actions."""

from __future__ import annotations

import errno

import pytest

from ebpfguard.runtime.engine import Engine

from .harness import World, run_ext

pytestmark = pytest.mark.kernel


def shadow_of(world: World) -> str:
    """world.manifest() staged without the read tree ``allowed`` and without the tcp4_ok connect rule."""
    text = world.manifest()
    narrower = (text.replace("  mode: enforce\n", "  mode: enforce\n  rollout: shadow\n")
                .replace(f'read: ["{world.allowed}/"]', f'read: ["{world.out}/"]')
                .replace(f'      - "127.0.0.1/32:{world.port("tcp4_ok")}/tcp"\n', ""))
    assert narrower.count("\n") == text.count("\n") and "rollout: shadow" in narrower
    return narrower


def test_a_connect_the_shadow_would_refuse_succeeds_and_is_recorded(engine: Engine, world: World) -> None:
    port = world.port("tcp4_ok")
    res = run_ext(engine, world, world.manifest(), ["connect4", str(port)], shadow=shadow_of(world))
    assert res.rc_errno() == (0, 0) and world.saw_connection("tcp4_ok")
    net = [r for r in res.records if r["kind"] == "network"]
    assert len(net) == 1 and net[0]["verdict"] == "shadow" and net[0]["actions"] == [], net
    assert net[0]["detail"]["port"] == port and net[0]["detail"]["shadow"]["version"] == "1"
    # nothing was refused: the shadow record is the only one, and the instance counts no violation
    assert [r["verdict"] for r in res.violations()] == ["shadow"]


def test_the_promoted_shadow_refuses_the_same_connect(engine: Engine, world: World) -> None:
    res = run_ext(engine, world, shadow_of(world), ["connect4", str(world.port("tcp4_ok"))])
    assert res.rc_errno() == (-1, errno.EPERM) and not world.saw_connection("tcp4_ok")
    assert [r["verdict"] for r in res.records if r["kind"] == "network"] == ["denied"]


@pytest.mark.parametrize("sandbox", [False, True], ids=["adopted-layers", "launched-landlocked"])
def test_a_read_the_shadow_would_refuse_succeeds_and_is_recorded(engine: Engine, world: World,
                                                                   sandbox: bool) -> None:
    path = f"{world.allowed}/a.txt"
    res = run_ext(engine, world, world.manifest(), ["read", path], shadow=shadow_of(world), sandbox=sandbox)
    assert res.rc_errno()[0] >= 0
    files = [r for r in res.records if r["kind"] == "file" and r["detail"]["path"] == path]
    assert [r["verdict"] for r in files] == ["shadow"], res.records
    assert [r for r in res.violations() if r["verdict"] != "shadow"] == []
    res = run_ext(engine, world, shadow_of(world), ["read", path], sandbox=sandbox)
    files = [r for r in res.records if r["kind"] == "file" and r["detail"]["path"] == path]
    if sandbox or getattr(engine.sensor, "lsm", False):  # Landlock, or the BPF-LSM file hook, refuses it
        assert res.rc_errno()[0] == -1 and res.rc_errno()[1] in (errno.EACCES, errno.EPERM)
        assert [r["verdict"] for r in files] == ["denied"], res.records
    else:  # only the tracepoints watch an adopted process here: they see it, they cannot refuse it
        assert [r["verdict"] for r in files] == ["detected"], res.records

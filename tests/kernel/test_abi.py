"""The pure compiler's byte layouts match the compiled program's own map types (alignchecker)."""

from __future__ import annotations

import ctypes

import pytest

from ebpfguard.common.abi import c
from ebpfguard.manifest.compile import EXT_POLICY, NET_KEY, NET_VALUE_SIZE, PATH_KEY
from ebpfguard.runtime.engine import Engine

pytestmark = pytest.mark.kernel


def test_map_layouts_match_compile(engine: Engine) -> None:
    sizes = engine.sensor.map_sizes()
    assert sizes["ext_policy"] == (4, EXT_POLICY.size)
    assert sizes["path_rules"] == (PATH_KEY.size, 1)
    assert sizes["net_rules"] == (NET_KEY.size, NET_VALUE_SIZE)
    assert sizes["cgroup_slot"] == (8, 4)
    leaf = engine.sensor.bpf["ext_policy"].Leaf
    assert [f[0] for f in leaf._fields_][:3] == ["flags", "slot", "response"]
    assert leaf.sys_deny.offset == 16 and leaf.sys_priv.offset == 16 + 8 * c("SYSCALL_WORDS")


def test_event_type_has_every_field_the_decoder_reads(engine: Engine) -> None:
    ev = engine.sensor.bpf["events"].event(ctypes.create_string_buffer(1024))
    names = {f[0] for f in type(ev)._fields_}
    assert {"ts_ns", "cgroup_id", "uptr", "aux", "pid", "tgid", "uid", "slot", "kind", "verdict", "syscall_nr",
            "flags", "dirfd", "op", "family", "port", "proto", "repeats", "addr", "comm", "path"} <= names
    assert ctypes.sizeof(type(ev)) == 8 * 4 + 4 * 4 + 2 * 2 + 4 * 4 + 2 * 2 + 1 + 3 + 4 + 4 + 16 + 16 + c("PATH_MAX")

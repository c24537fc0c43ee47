"""Every struct the agent shares with the kernel (bpf/include/) is the compiled program's own, and the agent's
byte layouts of them match it field by field (alignchecker)."""

from __future__ import annotations

import ctypes
import re
import struct
from typing import Any

import pytest

from ebpfguard.common.abi import c
from ebpfguard.common.resources import bpf_dir, bpf_include_dir
from ebpfguard.kernel.loader import CG_LOCAL
from ebpfguard.manifest.compile import EXT_POLICY, NET_KEY, NET_VALUE_HEAD, NET_VALUE_SIZE, PATH_KEY, PORT_RANGE
from ebpfguard.runtime.engine import Engine

pytestmark = pytest.mark.kernel

STRUCT = re.compile(r"^struct (eg_\w+) \{\n(.*?)^\};", re.M | re.S)
FIELD = re.compile(r"^\s*(?:struct\s+)?\w+\s+(\w+)(?:\[[^\]]+\])?;", re.M)
# the agent's own byte layouts (struct formats) of the structs it writes
MIRRORS = {"eg_ext_policy": EXT_POLICY, "eg_path_key": PATH_KEY, "eg_net_key": NET_KEY, "eg_port_range": PORT_RANGE,
           "eg_cg_local": CG_LOCAL}


def header_structs() -> dict[str, list[str]]:
    """struct name -> its field names, as bpf/include/*.h declare them."""
    return {name: FIELD.findall(body) for h in sorted(bpf_include_dir().glob("*.h"))
            for name, body in STRUCT.findall(h.read_text())}


def compiled_types(engine: Engine) -> dict[str, Any]:
    """struct name -> the ctypes type bcc built for it from the compiled program (its maps' keys and values).
    eg_cg_local is the value of a map the loader makes itself (bcc declares no cgroup-storage table), so it
    is compiled here alone, from the same header."""
    from bcc import BPF

    b = engine.sensor.bpf
    net_value = b["net_rules"].Leaf
    alone = BPF(text='#include "include/maps.h"\nBPF_ARRAY(cg_local_layout, struct eg_cg_local, 1);',
                cflags=[f"-I{bpf_dir()}"])
    try:
        cg_local = alone["cg_local_layout"].Leaf
    finally:
        alone.cleanup()
    return {
        "eg_event": type(b["events"].event(ctypes.create_string_buffer(1024))),
        "eg_ext_policy": b["ext_policy"].Leaf,
        "eg_path_key": b["path_rules"].Key,
        "eg_net_key": b["net_rules"].Key,
        "eg_net_value": net_value,
        "eg_port_range": dict(net_value._fields_)["r"]._type_,
        "eg_cg_local": cg_local,
        "eg_share": b["share"].Leaf,
        "eg_last": b["last_event"].Leaf,
    }


def layout(t: Any) -> list[tuple[int, int]]:
    """(offset, size) of each field of a ctypes structure."""
    return [(getattr(t, name).offset, getattr(t, name).size) for name, *_ in t._fields_]


def format_layout(fmt: struct.Struct) -> list[tuple[int, int]]:
    """(offset, size) of each field of a little-endian struct format: "8Q" is one array field, "3x" the
    header's explicit pad[3]."""
    out, off = [], 0
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt.format.lstrip("<=")):
        n = int(count or 1)
        size = n if code in "sx" else n * struct.calcsize("<" + code)
        out.append((off, size))
        off += size
    assert off == fmt.size
    return out


def test_every_shared_struct_is_the_compiled_programs(engine: Engine) -> None:
    declared, types = header_structs(), compiled_types(engine)
    assert set(declared) == set(types), "a struct of bpf/include/ that this test does not check, or one gone"
    for name, fields in declared.items():
        assert [f[0] for f in types[name]._fields_] == fields, name


def test_the_agents_layouts_match_the_compiled_program(engine: Engine) -> None:
    types = compiled_types(engine)
    for name, fmt in MIRRORS.items():
        assert format_layout(fmt) == layout(types[name]), name
        assert ctypes.sizeof(types[name]) == fmt.size, name
    net_value = types["eg_net_value"]
    assert net_value.r.offset == NET_VALUE_HEAD.size and ctypes.sizeof(net_value) == NET_VALUE_SIZE
    assert format_layout(NET_VALUE_HEAD) == layout(net_value)[:2]


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

"""Kind, Verdict, EvFlag and the other enums are bpf/include's #defines, every one of them, and nothing else;
the shared header documents every map; the program text bcc compiles holds each header once."""

from __future__ import annotations

import re
from enum import IntEnum, IntFlag

import pytest

from ebpfguard.common.abi import Access, EvFlag, Kind, LifeOp, NetOp, Verdict, constants
from ebpfguard.common.resources import bpf_dir, bpf_include_dir
from ebpfguard.kernel.loader import SOURCES, program_source
from ebpfguard.manifest.syscall_table import SYSCALLS_X86_64
from ebpfguard.sandbox.seccomp import CLONE_NS_FLAGS


@pytest.mark.parametrize(("enum", "prefix"), [(Kind, "KIND_"), (Verdict, "V_"), (EvFlag, "EV_"), (Access, "ACC_"),
                                              (NetOp, "NET_"), (LifeOp, "LIFE_")])
def test_enum_is_the_header(enum: type[IntEnum] | type[IntFlag], prefix: str) -> None:
    defined = {k.removeprefix("EG_" + prefix): v for k, v in constants().items()
               if k.startswith("EG_" + prefix) and k != "EG_KIND_MAX" and not k.startswith("EG_NET_RANGES")}
    assert defined and {m.name: int(m.value) for m in enum} == defined  # type: ignore[union-attr]


def test_labels() -> None:
    assert Kind.PRIVILEGE.label == "privilege" and Verdict.NONE.label is None and Verdict.DENIED.label == "denied"
    assert (EvFlag.EMPTY_PATH | EvFlag.HELD).labels() == ["empty-path", "held"]


def test_named_numbers_match_the_kernel() -> None:
    c = constants()
    assert (c["EG_SIGKILL"], c["EG_SIGSTOP"], c["EG_SIGSYS"]) == (9, 19, 31)
    assert (c["EG_NR_PTRACE"], c["EG_NR_UNSHARE"]) == (SYSCALLS_X86_64["ptrace"], SYSCALLS_X86_64["unshare"])
    # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWTIME, as <linux/sched.h> defines them
    assert CLONE_NS_FLAGS == c["EG_CLONE_NS"] == 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 \
        | 0x20000000 | 0x40000000 | 0x80


DECLARED = re.compile(r'^\s*BPF_(?:[A-Z_]+\(|TABLE\("[a-z_]+",\s*[^,]+,\s*[^,]+,\s*)([a-z_0-9]+)', re.M)
DOCUMENTED = re.compile(r"^ \*   ([a-z_0-9]+)\s+(?:ARRAY|HASH|LRU_HASH|LPM_TRIE|CGROUP_STORAGE|RINGBUF|PERCPU_ARRAY)\b", re.M)


def test_every_map_is_documented_in_the_shared_header() -> None:
    """include/maps.h lists every map the programs declare (and cg_local, which the loader makes), and no other."""
    declared = {m for f in sorted(bpf_dir().rglob("*.bpf.[ch]")) for m in DECLARED.findall(f.read_text())}
    documented = DOCUMENTED.findall((bpf_include_dir() / "maps.h").read_text())
    assert len(documented) == len(set(documented))
    assert {"events", "ext_policy", "last_event", "gate_seen", "lsm_unix_on"} <= declared
    assert declared | {"cg_local"} == set(documented)


def test_the_program_text_has_each_project_header_once() -> None:
    """bcc rewrites map calls only in the text it is given: program_source writes in every header of bpf/include
    and bpf/lib, once each, and leaves no #include of them for the compiler."""
    assert set(SOURCES) == {f.name for f in bpf_dir().glob("*.bpf.c")}
    text = program_source()
    banners = re.findall(r"^/\* ---- (\S+) ---- \*/$", text, re.M)
    headers = {str(f.relative_to(bpf_dir())) for d in ("include", "lib") for f in (bpf_dir() / d).glob("*.h")}
    assert sorted(banners) == sorted(headers | set(SOURCES))
    assert not re.search(r'^\s*#\s*include\s+"', text, re.M)

"""Kind, Verdict, EvFlag and the other enums are events.h's #defines, every one of them, and nothing else."""

from __future__ import annotations

from enum import IntEnum, IntFlag

import pytest

from ebpfguard.common.abi import Access, EvFlag, Kind, LifeOp, NetOp, Verdict, constants
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

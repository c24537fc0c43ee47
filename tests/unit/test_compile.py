"""compile(): the exact bytes of the kernel map entries, without root."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from ebpfguard.common.abi import c, constants
from ebpfguard.manifest import compile, parse
from ebpfguard.manifest.compile import EXT_POLICY, NET_VALUE_SIZE, PATH_KEY
from ebpfguard.manifest.syscall_table import SYSCALLS_X86_64

M = """apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {name: t}
spec:
  mode: enforce
  filesystem: {read: [/usr/, /etc/hosts], write: [/tmp/t/], exec: [/usr/bin/python3]}
  network:
    connect: ["127.0.0.0/8:8000-8999/tcp", "127.0.0.1/32:53/udp", "0.0.0.0/0:443/tcp", "::1/128:80"]
    bind: ["127.0.0.1/32:9000/tcp"]
  syscalls: {deny: [kcmp]}
  response: {file: alert, exec: kill, network: block, syscall: freeze, privilege: kill}
"""


@pytest.fixture
def cp():  # type: ignore[no-untyped-def]
    return compile(parse(M.encode(), "t.yaml", home="/h"), slot=5)


def test_constants_come_from_events_h() -> None:
    k = constants()
    assert k["EG_PATH_MAX"] == 252 and k["EG_KIND_FILE"] == 1 and k["EG_RESP_KILL"] == 3
    assert PATH_KEY.size == 4 + 4 + 252 and EXT_POLICY.size == 152 and NET_VALUE_SIZE == 136


def test_ext_policy_bytes(cp) -> None:  # type: ignore[no-untyped-def]
    flags, slot, resp, *words = EXT_POLICY.unpack(cp.ext_policy)
    assert flags == c("POL_ENFORCE") and slot == 5
    assert resp[c("KIND_FILE")] == c("RESP_ALERT") and resp[c("KIND_EXEC")] == c("RESP_KILL")
    assert resp[c("KIND_SYSCALL")] == c("RESP_FREEZE") and resp[c("KIND_NETWORK")] == c("RESP_BLOCK")
    deny, priv, shadow = words[:8], words[8:16], words[16]
    assert shadow == 0  # no shadow version
    assert EXT_POLICY.unpack(compile(parse(M.encode(), "t.yaml", home="/h"), 2, shadow=7).ext_policy)[-2] == 8
    for name, nr in (("kcmp", SYSCALLS_X86_64["kcmp"]), ("ptrace", 101), ("mount", 165)):
        assert deny[nr >> 6] >> (nr & 63) & 1, name
    assert priv[165 >> 6] >> (165 & 63) & 1          # mount escalates privilege
    assert not priv[101 >> 6] >> (101 & 63) & 1      # ptrace is a "syscall" violation
    assert cp.syscalls["kcmp"] == "syscall"


def test_path_key_layout(cp) -> None:  # type: ignore[no-untyped-def]
    keys = dict(cp.path_items())
    tree = PATH_KEY.pack(32 + 8 * 5, 5 << 8 | c("ACC_READ"), b"/usr/")
    exact = PATH_KEY.pack(32 + 8 * 11, 5 << 8 | c("ACC_READ"), b"/etc/hosts\0")
    assert tree in keys and exact in keys and keys[tree] == b"\1"
    assert tree[:4] == struct.pack("<I", 72) and tree[4:8] == struct.pack("<I", 5 << 8)
    # the directory of a tree is allowed too; a write tree is also a read tree
    assert PATH_KEY.pack(32 + 8 * 5, 5 << 8, b"/usr\0") in keys
    assert PATH_KEY.pack(32 + 8 * 7, 5 << 8 | c("ACC_WRITE"), b"/tmp/t/") in keys
    assert PATH_KEY.pack(32 + 8 * 7, 5 << 8 | c("ACC_READ"), b"/tmp/t/") in keys


def test_path_matcher_mirrors_the_kernel(cp) -> None:  # type: ignore[no-untyped-def]
    assert cp.allows_path("/usr/lib/x.so", "read") and cp.allows_path("/usr", "read")
    assert not cp.allows_path("/usrx", "read") and not cp.allows_path("/usr/lib/x.so", "write")
    assert cp.allows_path("/etc/hosts", "read") and not cp.allows_path("/etc/hosts2", "read")
    assert cp.allows_path("/tmp/t/a", "read") and cp.allows_path("/tmp/t/a", "write")
    assert cp.allows_path("/usr/bin/python3", "exec") and not cp.allows_path("/usr/bin/python3.11", "exec")


def test_net_entries_carry_the_ports_of_containing_cidrs(cp) -> None:  # type: ignore[no-untyped-def]
    by = {(e.op, str(e.network)): e for e in cp.nets}
    host = by[("connect", "127.0.0.1/32")]
    # /32 holds its own udp/53 plus the tcp ranges of 127/8 and 0/0
    assert set(host.ranges) == {(53, 53, 17), (8000, 8999, 6), (443, 443, 6)}
    assert set(by[("connect", "0.0.0.0/0")].ranges) == {(443, 443, 6)}
    assert ("send", "127.0.0.1/32") in by                                   # UDP sendto uses connect rules
    assert ("connect", "::ffff:7f00:1/128") in by                        # v4-mapped v6
    assert ("bind", "127.0.0.1/32") in by and ("bind", "0.0.0.0/0") not in by
    k = host.key(5)
    assert k == struct.pack("<II16s", 64, 5 << 8 | c("NET_CONNECT") << 4 | 4,
                            ipaddress.IPv4Address("127.0.0.1").packed)
    v = host.value()
    assert len(v) == NET_VALUE_SIZE and struct.unpack_from("<I", v)[0] == 3


def test_audit_mode_clears_the_enforce_flag() -> None:
    m = parse(M.encode(), "t.yaml", home="/h")
    assert EXT_POLICY.unpack(compile(m, 1, "audit").ext_policy)[0] == 0


def test_too_many_port_rules_for_one_address() -> None:
    rules = ", ".join(f'"127.0.0.1/32:{p}/tcp"' for p in range(1000, 1020))
    text = M.replace('connect: ["127.0.0.0/8:8000-8999/tcp", "127.0.0.1/32:53/udp", "0.0.0.0/0:443/tcp", "::1/128:80"]',
                     f"connect: [{rules}]")
    from ebpfguard.errors import ManifestError

    with pytest.raises(ManifestError, match="at most 16 per address"):
        compile(parse(text.encode(), "t.yaml", home="/h"), 0)


def test_slot_bounds() -> None:
    m = parse(M.encode(), "t.yaml", home="/h")
    with pytest.raises(ValueError):
        compile(m, c("MAX_SLOTS"))

"""Kernel tier: real eBPF programs, real cgroups, real child processes. The session's fixtures (the world and
one engine, compiled once); what the tests share is in harness.py.

These tests never skip in CI: when eBPF cannot be loaded the session fails with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebpfguard.common.resources import data_root
from ebpfguard.errors import KernelError
from ebpfguard.forensics import read
from ebpfguard.forensics.records import undeclared
from ebpfguard.kernel.features import bpf_lsm_status
from ebpfguard.runtime.engine import Engine

from .harness import World, need_root


@pytest.fixture(scope="session")
def world() -> Iterator[World]:
    """Files an unprivileged extension user could reach by file permissions alone (the secret is
    world-readable): whatever stops it in these tests is ebpfguard's layers, not DAC."""
    need_root()
    # outside /tmp and /var/tmp, which each launched instance sees as private empty folders: what these
    # tests check is what Landlock, seccomp and the programs do to paths the extension can see
    base = Path(tempfile.mkdtemp(prefix="ebpfguard-kt-", dir="/var/lib"))
    base.chmod(0o755)
    w = World(base, base / "allowed", base / "secret", base / "out", base / "copy", base / "bin" / "egact",
              base / "copy" / "egact")
    for d in (w.allowed, w.secret, w.out, w.copy, w.helper.parent, base / "home" / ".config" / "autostart"):
        d.mkdir(parents=True)
        d.chmod(0o755)
    for d in (w.out, base / "home", base / "home" / ".config", base / "home" / ".config" / "autostart"):
        d.chmod(0o777)
    (w.allowed / "a.txt").write_text("public\n")
    (w.secret / "s.txt").write_text("SECRET-BYTES\n")
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is needed to build the kernel tier's helper (make setup installs it)")
    subprocess.run([gcc, "-static", "-O1", "-pthread", "-o", str(w.helper), str(data_root() / "sim" / "egact.c")], check=True)
    shutil.copy2(w.helper, w.helper_copy)
    for name, family, kind in (("tcp4_ok", socket.AF_INET, socket.SOCK_STREAM),
                               ("tcp4_bad", socket.AF_INET, socket.SOCK_STREAM),
                               ("tcp6_ok", socket.AF_INET6, socket.SOCK_STREAM),
                               ("tcp6_bad", socket.AF_INET6, socket.SOCK_STREAM),
                               ("udp_ok", socket.AF_INET, socket.SOCK_DGRAM),
                               ("udp_bad", socket.AF_INET, socket.SOCK_DGRAM)):
        s = socket.socket(family, kind)
        s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            s.listen(16)
        w.listeners[name] = s
    yield w
    for s in w.listeners.values():
        s.close()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def engine(world: World) -> Iterator[Engine]:
    try:
        eng = Engine(str(world.base / "state"))
    except KernelError as err:
        pytest.fail(f"eBPF cannot be loaded here: {err}")
    lsm = getattr(eng.sensor, "lsm", False)
    if os.environ.get("EG_REQUIRE_LSM") and not lsm:  # the VM tier's BPF-LSM guest: fail, never skip
        eng.close()
        pytest.fail(f"BPF-LSM is required here, but the programs loaded without it: {bpf_lsm_status()[1]}")
    yield eng
    eng.close()
    # every record the session wrote has the shape forensics/records.py declares for its kind
    odd = {(r.get("kind"), f) for r in read(eng.state) if isinstance(r, dict) for f in undeclared(r)}
    assert not odd, f"fields no record shape declares (forensics/records.py): {sorted(odd, key=str)}"
    leftover = [p.name for p in eng.cgroups.slice_v2.iterdir() if p.is_dir() and p.name.startswith("egtest-")] if eng.cgroups.slice_v2.exists() else []
    assert not leftover, f"cgroups left behind: {leftover}"


# What the VM tier runs again on Debian's own kernel (6.1, with and without BPF-LSM, pure cgroup v2, Landlock
# ABI 2): the tests whose outcome depends on the kernel, the hooks that decide (LSM programs or tracepoints and
# Landlock), the cgroup v2 controllers, the struct layouts. The rest is user space the host's run shows.
GUEST_FILES = {"test_abi.py", "test_lsm.py", "test_containment.py", "test_ladder.py"}
GUEST_TESTS = {
    # test_guard.py: each decision as the hooks of that kernel make it
    "test_file_read_forbidden_recorded", "test_file_read_forbidden_killed", "test_file_write_forbidden",
    "test_relative_dirfd_and_dotdot_are_resolved", "test_pending_path_with_kill_response_is_killed_while_held",
    "test_exec_allowed", "test_exec_killed_before_the_new_image_runs", "test_tcp_connect_denied_eperm",
    "test_tcp_connect_killed", "test_udp_sendto_allowed_and_denied", "test_bind_allowed_and_denied",
    "test_audit_mode_denies_nothing_and_records_everything", "test_processes_outside_extensions_are_untouched",
    "test_identical_repeats_are_suppressed_and_counted", "test_syscall_tracepoints_are_detached_while_no_extension_runs",
    # test_ipc.py: unix sockets (the LSM hook, or the cgroup unix hooks a 6.1 kernel lacks)
    "test_a_granted_socket_works", "test_an_ungranted_socket_is_refused_in_the_kernel",
    "test_a_relative_socket_path_is_refused", "test_kill_response_kills_before_the_peer_hears",
    "test_audit_mode_lets_it_through_and_records_it", "test_a_process_outside_every_extension_is_untouched",
    "test_the_real_bus_is_out_of_reach",
    # test_rollback.py: overlays and the ladder on that kernel
    "test_killed_by_the_ladder_the_real_tree_is_as_before", "test_a_clean_exit_commits_exactly_its_changes",
}


# Where BPF-LSM is required (EG_REQUIRE_LSM) the engine fixture has loaded the LSM programs already: compiling
# them again apart (minutes under emulation) shows nothing more there.
NOT_WHERE_LSM_IS_REQUIRED = {"test_the_lsm_programs_compile_and_fail_only_at_loading_where_unusable"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    lsm_required = bool(os.environ.get("EG_REQUIRE_LSM"))
    for item in items:
        name = getattr(item, "originalname", item.name)
        if lsm_required and name in NOT_WHERE_LSM_IS_REQUIRED:
            continue
        if item.path.name in GUEST_FILES or name in GUEST_TESTS:
            item.add_marker(pytest.mark.guest)

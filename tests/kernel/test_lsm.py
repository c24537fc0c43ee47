"""The BPF-LSM backend. On hosts where LSM programs cannot load (these machines: no BPF trampolines)
the probe must say so and why, and the programs must still compile; the denial tests run in the VM
tier (a stock distro kernel booted with lsm=...,bpf) and are skipped here with the probe's reason."""

from __future__ import annotations

import errno

import pytest

from ebpfguard.kernel.features import bpf_lsm_status
from ebpfguard.kernel.loader import program_source
from ebpfguard.runtime.engine import Engine

from .harness import World, run_ext

pytestmark = pytest.mark.kernel
USABLE, WHY = bpf_lsm_status()
needs_lsm = pytest.mark.skipif(not USABLE, reason=f"BPF-LSM unavailable: {WHY}")


def test_probe_names_why_bpf_lsm_is_unavailable_or_the_sensor_uses_it(engine: Engine) -> None:
    usable, why = bpf_lsm_status()
    assert engine.sensor.lsm == usable
    if not usable:
        assert why and ("trampolines" in why or "headers" in why or "active LSMs" in why), why


def test_the_lsm_programs_compile_and_fail_only_at_loading_where_unusable() -> None:
    from bcc import BPF

    from ebpfguard.common.resources import bpf_dir

    # EG_CG_LOCAL_FD: the cgroup programs' storage map, made by the Sensor; only compiled here, never loaded
    cflags = [f"-I{bpf_dir()}", "-Wno-macro-redefined", "-Wno-unused-function", "-DEG_LSM", "-DEG_CG_LOCAL_FD=-1"]
    try:
        b = BPF(text=program_source(), cflags=cflags)
    except Exception as err:  # bcc: "Failed to compile BPF module" vs "Failed to load BPF program b'lsm__...'"
        assert not USABLE, f"BPF-LSM is usable here, yet the programs did not load: {err}"
        assert "Failed to compile" not in str(err), f"lsm.bpf.c does not compile: {err}"
        # bcc names EPERM at load "Need super-user privileges" (we are root); the same source without
        # -DEG_LSM loads (the engine fixture), so it is the LSM programs that the kernel refuses
        assert "super-user" in str(err) or "Permission denied" in str(err) or "lsm__" in str(err), err
        return
    names = {n.decode() if isinstance(n, bytes) else n for n in b.funcs}
    b.cleanup()
    # where bpf is not among the active LSMs the kernel loads and attaches LSM programs that it never
    # calls: the probe reads the LSM list, not the load, to say so
    assert USABLE or "active LSMs" in WHY, WHY
    assert {"lsm__file_open", "lsm__bprm_check_security", "lsm__ptrace_access_check",
                       "lsm__task_alloc"} <= names


@needs_lsm
@pytest.mark.bpf_lsm
def test_lsm_denies_a_forbidden_open_without_landlock(engine: Engine, world: World) -> None:
    """Without the launcher's layers (as for an adopted process) the LSM hook denies on the resolved
    file: a symlink in an allowed folder does not help."""
    link = world.out / "lsm-link"
    res = run_ext(engine, world, world.manifest("block"), ["symlink-read", f"{world.secret}/s.txt", str(link)])
    link.unlink(missing_ok=True)
    assert res.rc_errno() == (-1, errno.EACCES)
    rec = next(r for r in res.violations() if r["kind"] == "file")
    assert rec["detail"]["path"] == f"{world.secret}/s.txt" and rec["actions"] == ["eacces:lsm"]


@needs_lsm
@pytest.mark.bpf_lsm
def test_lsm_denies_exec_of_a_renamed_copy(engine: Engine, world: World) -> None:
    import shutil

    copy = world.out / "lsm-renamed"
    shutil.copy2(world.helper, copy)
    try:
        res = run_ext(engine, world, world.manifest("block"), ["exec", str(copy), "{marker2}", "noop"])
    finally:
        copy.unlink()
    assert res.rc_errno() == (-1, errno.EACCES) and res.marker2 is None


@needs_lsm
@pytest.mark.bpf_lsm
def test_lsm_denies_new_user_namespaces_by_clone(engine: Engine, world: World) -> None:
    res = run_ext(engine, world, world.manifest("block"), ["clone-newuser"])
    assert res.rc_errno() == (-1, errno.EPERM)
    assert any(r["kind"] == "privilege" and r["actions"] == ["eperm:lsm"] for r in res.violations())


@needs_lsm
@pytest.mark.bpf_lsm
def test_lsm_denies_ptrace(engine: Engine, world: World) -> None:
    import subprocess

    target = subprocess.Popen(["sleep", "30"])
    try:
        res = run_ext(engine, world, world.manifest("block"), ["ptrace", str(target.pid)])
    finally:
        target.kill()
        target.wait()
    assert res.rc_errno() == (-1, errno.EPERM)

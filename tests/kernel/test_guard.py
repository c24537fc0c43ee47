"""Every kind, allowed and forbidden, on real processes in real extension cgroups."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ebpfguard.kernel.loader import TRACEPOINT_NAMES
from ebpfguard.manifest.load import BUILTIN_PRIVILEGE, BUILTIN_SYSCALL, parse
from ebpfguard.manifest.syscall_table import SYSCALLS_X86_64
from ebpfguard.runtime.engine import Engine
from ebpfguard.sandbox.launcher import spawn

from .harness import Result, World, free_port, run_ext

pytestmark = pytest.mark.kernel
SIGKILL_STATUS = 128 + 9


def only(res: Result, kind: str) -> dict[str, Any]:
    v = res.violations()
    assert len(v) == 1, f"expected one {kind} violation, got {v}"
    assert v[0]["kind"] == kind
    assert v[0]["pid"] == res.pid and v[0]["tgid"] == res.pid
    assert v[0]["extension"] == "egtest"
    return v[0]


# ---- files ------------------------------------------------------------------------------------
def test_file_read_allowed(engine: Engine, world: World) -> None:
    res = run_ext(engine, world, world.manifest(), ["read", f"{world.allowed}/a.txt"])
    assert res.rc_errno()[0] >= 0 and res.violations() == []


def test_file_read_forbidden_recorded(engine: Engine, world: World) -> None:
    res = run_ext(engine, world, world.manifest(), ["read", f"{world.secret}/s.txt"])
    rec = only(res, "file")
    assert rec["detail"]["path"] == f"{world.secret}/s.txt" and rec["detail"]["access"] == "read"
    if engine.sensor.lsm:  # the file_open hook refuses the opened file itself, before the syscall returns
        assert rec["detail"]["syscall"] is None and rec["detail"]["flags"] == ["lsm"]
        assert rec["verdict"] == "denied" and rec["actions"] == ["eacces:lsm"]
        assert res.rc_errno() == (-1, errno.EACCES)
    else:  # a tracepoint sees the call; with no layer of its own to refuse it, the open goes through
        assert rec["detail"]["syscall"] == "open" or rec["detail"]["syscall"] == "openat"
        assert rec["verdict"] == "detected" and res.rc_errno()[0] >= 0


def test_file_read_forbidden_killed(engine: Engine, world: World) -> None:
    res = run_ext(engine, world, world.manifest("kill"), ["read", f"{world.secret}/s.txt"])
    rec = only(res, "file")
    assert rec["verdict"] == "killed" and rec["actions"] == ["sigkill:kernel", "cgroup.kill"]
    assert res.status == SIGKILL_STATUS and res.marker is None


def test_file_write_allowed(engine: Engine, world: World) -> None:
    res = run_ext(engine, world, world.manifest(), ["write", f"{world.out}/w.txt"])
    assert res.rc_errno()[0] >= 0 and res.violations() == []


def test_file_write_forbidden(engine: Engine, world: World) -> None:
    target = world.allowed / "new.txt"  # readable tree, not writable
    res = run_ext(engine, world, world.manifest("kill"), ["write", str(target)])
    rec = only(res, "file")
    flags = {"flags": ["lsm"]} if engine.sensor.lsm else {}
    assert rec["detail"] == {"path": str(target), "access": "write", "syscall": rec["detail"]["syscall"], **flags}
    assert res.status == SIGKILL_STATUS and res.marker is None


@pytest.mark.parametrize("how", ["chdir-read", "readat", "dotdot"])
def test_relative_dirfd_and_dotdot_are_resolved(engine: Engine, world: World, how: str) -> None:
    bad = {"chdir-read": ["chdir-read", str(world.secret), "s.txt"],
           "readat": ["readat", str(world.secret), "s.txt"],
           "dotdot": ["read", f"{world.allowed}/../secret/s.txt"]}[how]
    good = {"chdir-read": ["chdir-read", str(world.allowed), "a.txt"],
            "readat": ["readat", str(world.allowed), "a.txt"],
            "dotdot": ["read", f"{world.allowed}/../allowed/a.txt"]}[how]
    ok = run_ext(engine, world, world.manifest(), good)
    assert ok.rc_errno()[0] >= 0 and ok.violations() == [], "an allowed relative access was reported"
    res = run_ext(engine, world, world.manifest(), bad)
    if engine.sensor.lsm and how == "readat":
        # the file_open hook refuses the secret directory's own open: the openat of s.txt never happens
        rec = [r for r in res.violations() if r["detail"]["path"] == str(world.secret)]
        assert len(rec) == 1 and rec[0]["verdict"] == "denied" and res.rc_errno()[0] == -1
        return
    # (readat also opens the secret directory itself, a forbidden read of its own)
    rec = [r for r in res.violations() if r["detail"]["path"] == f"{world.secret}/s.txt"]
    assert len(rec) == 1 and rec[0]["pid"] == res.pid and rec[0]["detail"]["access"] == "read"
    if engine.sensor.lsm:  # decided on the opened file: its path is the file's, with no string to resolve
        assert rec[0]["detail"]["flags"] == ["lsm"] and "raw_path" not in rec[0]["detail"]
    else:
        assert rec[0]["detail"]["raw_path"] == bad[-1]


@pytest.mark.parametrize("pad", [1, 2, 3, 4, 5, 6, 7, 8, 150])
def test_dotdot_is_seen_wherever_it_falls_in_the_scan(engine: Engine, world: World, pad: int) -> None:
    """The kernel scans for '..' eight bytes at a time, stepping four (files.bpf.c: path_has_dotdot):
    a '..' at every offset against those windows, and far into a long path, still sends the path to
    be resolved; a string match alone would take it for a read inside the allowed tree."""
    sub = world.allowed / ("d" * pad)
    sub.mkdir(exist_ok=True)
    try:
        res = run_ext(engine, world, world.manifest(), ["read", f"{sub}/../../secret/s.txt"])
    finally:
        sub.rmdir()
    rec = [r for r in res.violations() if r["detail"]["path"] == f"{world.secret}/s.txt"]
    # under BPF-LSM the opened file is decided, not the string: no scan, the resolved path
    assert len(rec) == 1 and ("lsm" if engine.sensor.lsm else "dotdot") in rec[0]["detail"].get("flags", []), \
        res.violations()


def test_pending_path_with_kill_response_is_killed_while_held(engine: Engine, world: World) -> None:
    res = run_ext(engine, world, world.manifest("kill"), ["chdir-read", str(world.secret), "s.txt"])
    rec = only(res, "file")
    # a tracepoint holds the process while its relative path is resolved; the LSM hook needs no hold
    assert rec["verdict"] == "killed" and ("lsm" if engine.sensor.lsm else "held") in rec["detail"]["flags"]
    assert res.status == SIGKILL_STATUS and res.marker is None


# ---- exec -------------------------------------------------------------------------------------
def test_exec_allowed(engine: Engine, world: World) -> None:
    res = run_ext(engine, world, world.manifest(), ["exec", str(world.helper), "{marker2}", "noop"])
    assert res.marker2 is not None and res.marker2.startswith("0 0 ") and res.violations() == []
    # lineage: the leader's two execs (one ran the other), their parent, and how it ended
    procs = [p for r in res.records if r["detail"].get("event") == "processes" for p in r["detail"]["procs"]]
    assert [(p["pid"], p.get("exe"), p.get("ppid")) for p in procs] == [(res.pid, str(world.helper), os.getpid())] * 2
    assert "exit" not in procs[0] and procs[1]["exit"] == 0 and procs[1]["exit_ns"] > procs[1]["exec_ns"]


def test_lineage_names_each_binary_its_parent_and_how_it_ended(engine: Engine, world: World) -> None:
    """A shell's children, as a forensic reader finds them: who ran what, and how each ended (an exit
    status, or the signal that killed it), in processes records rather than a record per exec."""
    from ebpfguard.instance.lineage import processes
    from ebpfguard.lab.simulate import execute

    # a shell gives a background job /dev/null for stdin: where BPF-LSM decides, that open is refused unless granted
    text = world.manifest().replace(f'exec: ["{world.helper}"]', 'exec: ["/usr/", "/bin/"]').replace(
        f'read: ["{world.allowed}/"]', f'read: ["{world.allowed}/", "/dev/null"]')
    m = parse(text.encode(), "egtest.yaml", home=str(world.base))
    status, pid, records, _ = execute(engine, m, ["/bin/sh", "-c", "/bin/false; /bin/sleep 5 & /bin/sleep 0.3; "
                                                  "kill -KILL $!; wait; exit 3"], sandbox=False)
    assert status == 3
    procs = processes(records)
    leader = [p for p in procs if p["pid"] == pid]
    assert leader == [{"pid": pid, "ppid": os.getpid(), "exe": "/bin/sh", "exec_ns": leader[0]["exec_ns"], "exit": 3,
                       "exit_ns": leader[0]["exit_ns"]}]
    by_exe = {(p.get("exe"), p.get("exit"), p.get("signal")): p for p in procs if p["pid"] != pid}
    assert set(by_exe) == {("/bin/false", 1, None), ("/bin/sleep", 0, None), ("/bin/sleep", None, "SIGKILL")}
    assert all(p["ppid"] == pid for p in by_exe.values())
    execs = sum(1 for r in records if r["kind"] == "lifecycle" and r["detail"]["event"] in ("exec", "exit"))
    assert execs == 0  # no record per exec or exit


def test_exec_of_a_copied_binary_recorded(engine: Engine, world: World) -> None:
    res = run_ext(engine, world, world.manifest(), ["exec", str(world.helper_copy), "{marker2}", "noop"])
    rec = only(res, "exec")
    assert rec["detail"]["path"] == str(world.helper_copy) and rec["detail"]["access"] == "exec"


def test_exec_killed_before_the_new_image_runs(engine: Engine, world: World) -> None:
    res = run_ext(engine, world, world.manifest("kill"), ["exec", str(world.helper_copy), "{marker2}", "noop"])
    rec = only(res, "exec")
    assert rec["verdict"] == "killed"
    assert res.status == SIGKILL_STATUS and res.marker is None and res.marker2 is None


# ---- network ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["4", "6"])
def test_tcp_connect_allowed(engine: Engine, world: World, family: str) -> None:
    res = run_ext(engine, world, world.manifest(), [f"connect{family}", str(world.port(f"tcp{family}_ok"))])
    assert res.rc_errno() == (0, 0) and res.violations() == []
    assert world.saw_connection(f"tcp{family}_ok")


@pytest.mark.parametrize("family", ["4", "6"])
def test_tcp_connect_denied_eperm(engine: Engine, world: World, family: str) -> None:
    port = world.port(f"tcp{family}_bad")
    res = run_ext(engine, world, world.manifest(), [f"connect{family}", str(port)])
    assert res.rc_errno() == (-1, errno.EPERM)
    assert not world.saw_connection(f"tcp{family}_bad")
    rec = only(res, "network")
    assert rec["verdict"] == "denied" and rec["detail"]["port"] == port
    assert rec["detail"]["address"] == ("127.0.0.1" if family == "4" else "::1")
    assert rec["detail"]["op"] == "connect" and rec["detail"]["proto"] == "tcp"


@pytest.mark.parametrize("family", ["4", "6"])
def test_tcp_connect_killed(engine: Engine, world: World, family: str) -> None:
    res = run_ext(engine, world, world.manifest("kill"), [f"connect{family}", str(world.port(f"tcp{family}_bad"))])
    assert res.status == SIGKILL_STATUS and res.marker is None
    assert not world.saw_connection(f"tcp{family}_bad")
    assert only(res, "network")["verdict"] == "killed"


def test_udp_sendto_allowed_and_denied(engine: Engine, world: World) -> None:
    ok = run_ext(engine, world, world.manifest(), ["udp4", str(world.port("udp_ok"))])
    assert ok.rc_errno() == (5, 0) and ok.violations() == [] and world.saw_connection("udp_ok")
    port = world.port("udp_bad")
    bad = run_ext(engine, world, world.manifest(), ["udp4", str(port)])
    assert bad.rc_errno() == (-1, errno.EPERM) and not world.saw_connection("udp_bad")
    rec = only(bad, "network")
    assert rec["detail"]["op"] == "send" and rec["detail"]["proto"] == "udp" and rec["detail"]["port"] == port
    killed = run_ext(engine, world, world.manifest("kill"), ["udp4", str(port)])
    assert killed.status == SIGKILL_STATUS and killed.marker is None and not world.saw_connection("udp_bad")


def test_bind_allowed_and_denied(engine: Engine, world: World) -> None:
    good = free_port()
    ok = run_ext(engine, world, world.manifest(bind_port=good), ["bind4", str(good)])
    assert ok.rc_errno() == (0, 0) and ok.violations() == []
    other = free_port()
    bad = run_ext(engine, world, world.manifest(bind_port=good), ["bind4", str(other)])
    assert bad.rc_errno() == (-1, errno.EPERM)
    rec = only(bad, "network")
    assert rec["detail"]["op"] == "bind" and rec["detail"]["port"] == other


# ---- denied syscalls --------------------------------------------------------------------------
# harmless arguments: each call fails or changes nothing, so a miss cannot hurt the test machine
HARMLESS = {
    "ptrace": [0x4206, -1], "process_vm_readv": [0x7FFFFFF0, 0, 0, 0], "process_vm_writev": [0x7FFFFFF0, 0, 0, 0],
    "mount": [0, 0, 0, 0], "umount2": [0, 0], "unshare": [0], "setns": [-1, 0], "bpf": [-1, 0, 0],
    "init_module": [0, 0, 0], "finit_module": [-1, 0, 0], "delete_module": [0, 0], "kexec_load": [0, 0, 0, 0xDEAD],
    "kexec_file_load": [-1, -1, 0, 0], "io_uring_setup": [0, 0], "memfd_create": [0, 0], "setuid": [0],
    "setgid": [0], "setreuid": [-1, -1], "setregid": [-1, -1], "setresuid": [-1, -1, -1],
    "setresgid": [-1, -1, -1], "setfsuid": [-1], "setfsgid": [-1], "setgroups": [-1, 0], "capset": [0, 0],
    "keyctl": [-1], "add_key": [0, 0, 0, 0], "request_key": [0, 0, 0, 0], "userfaultfd": [-1],
    "perf_event_open": [0, 0, 0, 0], "personality": [0xFFFFFFFF], "pivot_root": [0, 0], "chroot": [0],
}
DENIED = sorted(set(BUILTIN_PRIVILEGE) | set(BUILTIN_SYSCALL))


def test_every_builtin_denied_syscall_has_harmless_arguments() -> None:
    assert set(DENIED) <= set(HARMLESS)


@pytest.mark.parametrize("name", DENIED)
def test_denied_syscall(engine: Engine, world: World, name: str) -> None:
    nr = SYSCALLS_X86_64[name]
    args = ["sys", str(nr), *map(str, HARMLESS[name])]
    if not os.path.isdir(f"/sys/kernel/tracing/events/syscalls/sys_enter_{TRACEPOINT_NAMES.get(name, name)}"):
        # not built into this kernel: the call cannot do anything, prove that instead
        res = run_ext(engine, world, world.manifest(), args)
        assert res.rc_errno() == (-1, errno.ENOSYS), f"{name} has no tracepoint but is not ENOSYS"
        assert name in engine.sensor.missing_gates
        return
    kind = "privilege" if name in BUILTIN_PRIVILEGE else "syscall"
    res = run_ext(engine, world, world.manifest(), args)
    rec = only(res, kind)
    assert rec["detail"] == {"syscall": name, "nr": nr} and rec["verdict"] == "detected"
    killed = run_ext(engine, world, world.manifest("kill"), args)
    assert killed.status == SIGKILL_STATUS and killed.marker is None
    assert only(killed, kind)["verdict"] == "killed"


def test_manifest_added_syscall_is_denied(engine: Engine, world: World) -> None:
    text = world.manifest("kill").replace("  response:", "  syscalls:\n    deny: [getppid]\n  response:")
    res = run_ext(engine, world, text, ["sys", str(SYSCALLS_X86_64["getppid"])])
    assert res.status == SIGKILL_STATUS and only(res, "syscall")["detail"]["syscall"] == "getppid"


# ---- audit mode -------------------------------------------------------------------------------
def test_audit_mode_denies_nothing_and_records_everything(engine: Engine, world: World) -> None:
    man = world.manifest("kill", mode="audit")
    cases = [
        (["read", f"{world.secret}/s.txt"], "file", None),
        (["exec", str(world.helper_copy), "{marker2}", "noop"], "exec", None),
        (["connect4", str(world.port("tcp4_bad"))], "network", "tcp4_bad"),
        (["udp4", str(world.port("udp_bad"))], "network", "udp_bad"),
        (["sys", str(SYSCALLS_X86_64["unshare"]), "0"], "privilege", None),
    ]
    for args, kind, listener in cases:
        res = run_ext(engine, world, man, args)
        assert res.status == 0, f"{args} was stopped in audit mode"
        assert res.marker is not None or res.marker2 is not None
        rec = only(res, kind)
        assert rec["verdict"] == "allowed" and rec["mode"] == "audit"
        if listener:
            assert world.saw_connection(listener), f"{args}: audit mode blocked the traffic"


def test_mode_override_from_the_command_line(engine: Engine, world: World) -> None:
    res = run_ext(engine, world, world.manifest("kill"), ["read", f"{world.secret}/s.txt"], mode="audit")
    assert res.status == 0 and only(res, "file")["verdict"] == "allowed"


# ---- outside every extension ------------------------------------------------------------------
def test_processes_outside_extensions_are_untouched(engine: Engine, world: World) -> None:
    """With an extension active (maps populated, programs attached), a process outside does every
    forbidden thing: nothing is recorded and nothing happens to it."""
    m = parse(world.manifest("kill").encode(), "egtest.yaml", home=str(world.base))
    records: list[dict[str, Any]] = []
    engine.subscribers.append(records.append)
    inst = engine.prepare(m)
    sleeper = spawn([str(world.helper), str(world.out / "sleeper"), "sys", str(SYSCALLS_X86_64["pause"])],
                    inst.cgroup.procs_files())
    try:
        pids = []
        for i, args in enumerate([
            ["read", f"{world.secret}/s.txt"], ["write", f"{world.allowed}/outside.txt"],
            ["exec", str(world.helper_copy), str(world.out / "outside-exec"), "noop"],
            ["connect4", str(world.port("tcp4_bad"))], ["connect6", str(world.port("tcp6_bad"))],
            ["udp4", str(world.port("udp_bad"))], ["sys", str(SYSCALLS_X86_64["unshare"]), "0"],
            ["sys", str(SYSCALLS_X86_64["setuid"]), "0"],
        ]):
            marker = world.out / f"outside-{i}"
            p = subprocess.run([str(world.helper), str(marker), *args], timeout=10)
            pids.append(p.returncode)
            assert p.returncode == 0, f"{args}: outside process died ({p.returncode})"
            if args[0] == "exec":
                assert (world.out / "outside-exec").read_text().startswith("0 0 ")
            else:
                rc, err = marker.read_text().splitlines()[0].split()[:2]
                assert int(rc) >= 0, f"{args}: failed outside an extension (errno {err})"
        assert world.saw_connection("tcp4_bad") and world.saw_connection("tcp6_bad")
        assert world.saw_connection("udp_bad")
        engine.poll(50)
        assert [r for r in records if r["kind"] not in ("lifecycle", "checkpoint")] == []
    finally:
        engine.release(inst, kill=True)
        engine.subscribers.remove(records.append)
    assert sleeper.wait(5) == -9


# ---- nothing lost -----------------------------------------------------------------------------
def distinct_targets(engine: Engine, world: World, name: str, n: int) -> Path:
    """A folder under the secret tree whose names 0..n-1 are n different violations. The tracepoints see
    the string of an open, so the names need not exist; the BPF-LSM hook sees opened files only (an
    ENOENT never reaches it), so under BPF-LSM they are made first."""
    d = world.secret / name
    if engine.sensor.lsm and not (d / str(n - 1)).exists():
        d.mkdir(exist_ok=True)
        d.chmod(0o755)
        for i in range(n):
            (d / str(i)).touch(0o644)
    return d


def _flood(engine: Engine, world: World, args: list[str], poll: bool) -> tuple[dict[str, int], list[dict[str, Any]]]:
    m = parse(world.manifest().encode(), "egtest.yaml", home=str(world.base))
    before = engine.sensor.counters()
    got: list[dict[str, Any]] = []
    engine.subscribers.append(got.append)
    inst = engine.prepare(m)
    try:
        proc = spawn([str(world.helper), str(world.out / "flood"), *args], inst.cgroup.procs_files())
        while proc.poll() is None:
            if poll:
                engine.poll(5)
            else:
                time.sleep(0.01)  # nobody reads meanwhile: the ring fills up
        deadline = time.monotonic() + 5
        while inst.cgroup.populated() and time.monotonic() < deadline:
            time.sleep(0.01)
        after = engine.sensor.counters()
        for _ in range(50):
            engine.poll(10)
    finally:
        engine.release(inst)
        engine.subscribers.remove(got.append)
    return {k: after[k] - before[k] for k in after}, got


def test_ring_buffer_overflow_is_counted_not_lost(engine: Engine, world: World) -> None:
    """A flood of different violations, larger than the ring buffer, with nobody reading: every
    attempt is an event or a counted drop."""
    n = 20000
    d, got = _flood(engine, world, ["flood-distinct", str(n), str(distinct_targets(engine, world, "flood", n))],
                    poll=False)
    lost = d["drops"] + d["over_share"]
    assert d["over_share"] > 0, "the flood did not pass the cgroup's share of the ring buffer; raise n"
    # n opens plus the exec and exit of the helper: each an event, a counted drop or a suppressed repeat
    assert d["events"] + lost + d["suppressed"] == n + 2 and d["suppressed"] == 0
    delivered = len([r for r in got if r["kind"] == "file"])
    assert delivered + lost >= n
    over = [r for r in got if r["detail"].get("event") == "over-share"]
    stop = next(r for r in got if r["detail"].get("event") == "stop")
    assert sum(r["detail"]["records"] for r in over) == stop["detail"]["over_share"] == d["over_share"]


def test_one_extensions_flood_does_not_drop_anothers_records(engine: Engine, world: World) -> None:
    """While one instance floods distinct violations faster than the agent can record them, a second
    instance's burst is recorded in full: the flooder is held to its share of the ring buffer, and
    what it could not reserve is counted for it and recorded as such."""
    m = parse(world.manifest().encode(), "egtest.yaml", home=str(world.base))
    got: list[dict[str, Any]] = []
    engine.subscribers.append(got.append)
    flooder, quiet = engine.prepare(m), engine.prepare(m)
    n = 300  # 2 ms apart: they reach the kernel throughout the flood
    # the flooder has a CPU of its own and the other instance shares the agent's: the flooder takes
    # every slot the agent frees at once, as on a machine with more cores than this test's two
    cpus = sorted(os.sched_getaffinity(0))
    agent_cpus = os.sched_getaffinity(0)
    try:
        flood_dir, quiet_dir = distinct_targets(engine, world, "flood", 20000), distinct_targets(engine, world, "b", n)
        a = spawn([str(world.helper), str(world.out / "flood-a"), "floodfor-distinct", "3", str(flood_dir)],
                  flooder.cgroup.procs_files())
        if len(cpus) > 1:
            os.sched_setaffinity(a.pid, {cpus[0]})
            os.sched_setaffinity(0, {cpus[1]})
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            engine.poll(5)
        b = spawn([str(world.helper), str(world.out / "flood-b"), "flood-distinct", str(n), str(quiet_dir),
                   "2"], quiet.cgroup.procs_files())
        if len(cpus) > 1:
            os.sched_setaffinity(b.pid, {cpus[1]})
        while a.poll() is None or b.poll() is None:
            engine.poll(5)
        for _ in range(20):
            engine.poll(10)
        over_a = engine.sensor.over_share(flooder.cgroup_id)
        over_b = engine.sensor.over_share(quiet.cgroup_id)
    finally:
        os.sched_setaffinity(0, agent_cpus)
        engine.release(flooder, kill=True)
        engine.release(quiet, kill=True)
        engine.subscribers.remove(got.append)
    assert over_a > 0, "the flooder never passed its share: the agent kept up, the test proves nothing"
    assert over_b == 0
    mine = {r["detail"]["path"] for r in got if r["kind"] == "file" and r["instance"] == quiet.id}
    assert mine == {f"{world.secret}/b/{i}" for i in range(n)}
    stop = next(r for r in got if r["detail"].get("event") == "stop" and r["instance"] == flooder.id)
    assert stop["detail"]["over_share"] == over_a


def test_identical_repeats_are_suppressed_and_counted(engine: Engine, world: World) -> None:
    """One violation repeated as fast as possible costs one record a second, not the ring buffer: the
    suppressed repeats are counted globally and for the instance, and nothing is dropped."""
    n = 20000
    d, got = _flood(engine, world, ["flood", str(n), f"{world.secret}/s.txt"], poll=True)
    assert d["events"] + d["drops"] + d["suppressed"] == n + 2
    assert d["drops"] == 0 and d["suppressed"] >= n - 50
    files = [r for r in got if r["kind"] == "file"]
    assert 1 <= len(files) <= 50 and all(r["detail"]["path"] == f"{world.secret}/s.txt" for r in files)
    stop = next(r for r in got if r["detail"].get("event") == "stop")
    assert stop["detail"]["repeats_suppressed"] == d["suppressed"]
    assert sum(r["detail"].get("repeats_suppressed", 0) for r in files) <= d["suppressed"]


def test_cgroup_filter_collisions_fall_back_to_the_hash(engine: Engine, world: World) -> None:
    """Two bound cgroups with the same low bits share a filter entry; both stay enforced."""
    from ebpfguard.common.abi import c

    m = parse(world.manifest().encode(), "egtest.yaml", home=str(world.base))
    inst = engine.prepare(m)
    filt = engine.sensor.bpf["cgroup_filter"]
    size = c("FILTER_SLOTS")
    idx = filt.Key(inst.cgroup_id & (size - 1))
    twin = inst.cgroup_id + size  # a cgroup id that no task has; only its low bits matter here
    try:
        assert filt[idx].value == inst.cgroup_id
        engine.sensor.bind(twin, inst.slot)
        assert filt[idx].value == c("FILTER_SHARED")
        records: list[dict[str, Any]] = []
        engine.subscribers.append(records.append)
        try:
            p = spawn([str(world.helper), str(world.out / "twin"), "read", f"{world.secret}/s.txt"],
                      inst.cgroup.procs_files())
            assert p.wait(10) == 0
            deadline = time.monotonic() + 5
            while not [r for r in records if r["kind"] == "file"] and time.monotonic() < deadline:
                engine.poll(20)
        finally:
            engine.subscribers.remove(records.append)
        assert [r["detail"]["path"] for r in records if r["kind"] == "file"] == [f"{world.secret}/s.txt"]
        engine.sensor.unbind(twin)
        assert filt[idx].value == inst.cgroup_id
    finally:
        engine.sensor.unbind(twin)
        engine.release(inst, kill=True)
    assert filt[idx].value == 0


def test_syscall_tracepoints_are_detached_while_no_extension_runs(engine: Engine, world: World) -> None:
    """Any attached syscall tracepoint sends every task on the host down the slow syscall path: with
    no instance for IDLE_DETACH_S, none stays; the next instance gets them back before it runs."""
    from ebpfguard.kernel.loader import IDLE_DETACH_S

    sensor: Any = engine.sensor
    syscall_tps = lambda: [tp for tp in sensor.bpf.tracepoint_fds if tp.startswith(b"syscalls:")]  # noqa: E731
    assert not engine.instances
    sensor.idle_check(time.monotonic() + IDLE_DETACH_S + 1)
    assert syscall_tps() == [] and not sensor.watching
    res = run_ext(engine, world, world.manifest(), ["read", f"{world.secret}/s.txt"])  # no launcher layers
    rec = only(res, "file")
    assert rec["detail"]["path"] == f"{world.secret}/s.txt"
    if engine.sensor.lsm:  # the LSM hook refuses on its own
        assert res.rc_errno() == (-1, errno.EACCES) and rec["verdict"] == "denied"
    else:  # the tracepoints alone detect (a file block without Landlock)
        assert res.rc_errno()[0] >= 0 and rec["verdict"] == "detected"
    assert sensor.watching and len(syscall_tps()) >= len(sensor.syscall_tracepoints)


# ---- audit, turned off by another program ---------------------------------------------------------------------
def test_audit_turned_off_by_another_program_comes_back_on_for_the_reports(engine: Engine) -> None:
    from ebpfguard.kernel.laudit import MARKER, LandlockAudit  # noqa: PLC0415

    reader = engine.audit.reader
    assert reader is not None, "the kernel tier needs Landlock's audit reports (KERNEL.md)"
    if not os.path.exists(MARKER):  # audit was on before ebpfguard: someone else's configuration, left alone
        assert reader.maintain() is None
        return
    # journald turns audit off as it starts; the rule ebpfguard added is still there: a second reader (a standalone
    # run, the simulator) turns audit on again instead of failing on that rule
    off = subprocess.run(["auditctl", "-e", "0"], capture_output=True, text=True)
    assert off.returncode == 0, off.stderr
    second = LandlockAudit()
    try:
        assert reader.status()["enabled"] == 1
    finally:
        second.close()  # not the last reader: audit stays on
    assert reader.status()["enabled"] == 1
    # and the reader that runs on puts it back at its next look
    assert subprocess.run(["auditctl", "-e", "0"], capture_output=True).returncode == 0
    assert reader.maintain() == "another program turned audit off (journald does as it starts): turned on again"
    assert reader.status()["enabled"] == 1 and reader.maintain() is None

"""Programs compiled once and kept (kernel/kept.py): the pins in bpffs, who may take a kept set, what goes stale.

Each test makes real Sensors (bcc, bpffs, the kernel's own objects); a set opened from its pins has no bcc module:
nothing was compiled for it. Not in the VM tier's guests, where each set these tests need beside the tier's own
engine costs a compile of minutes: there the e2e agents (GUEST_E2E) show a kept set taken back, its BPF-LSM
links included.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from ebpfguard.kernel import kept
from ebpfguard.kernel.loader import Sensor

TOP = Path(__file__).resolve().parents[2]


def member_of(s: Sensor) -> tuple[str, int]:
    m = s._member
    assert m is not None, s.kept
    return m.hash, m.n


def test_a_sensor_after_another_opens_its_set_emptied_and_compiles_nothing() -> None:
    first = Sensor()
    try:
        assert first.kept in ("compiled and kept", "reused"), first.kept
        t = first.bpf["cgroup_slot"]
        t[t.Key(424242)] = t.Leaf(7)  # what a bound cgroup leaves
        where = member_of(first)
        attached = len(first.bpf.tracepoint_fds)
    finally:
        first.close()
    again = Sensor()
    try:
        assert again.kept == "reused" and again.bpf.module is None  # no bcc module: no compile, no verifier
        assert member_of(again) == where
        assert len(list(again.bpf["cgroup_slot"].keys())) == 0  # emptied for its new user
        assert len(again.bpf.tracepoint_fds) == attached  # attached as the first had them
        assert again.adopted >= attached  # taken over: the first left its links attached, nothing was attached anew
        pins = kept.PIN_ROOT / where[0] / str(where[1])
        assert (pins / "progs" / "syscall_gate").exists() and (pins / "maps" / "events").exists()
    finally:
        again.close()


def test_two_sensors_at_once_have_sets_of_their_own() -> None:
    a, b = Sensor(), Sensor()
    try:
        assert member_of(a) != member_of(b) and member_of(a)[0] == member_of(b)[0]
        ta, tb = a.bpf["cgroup_slot"], b.bpf["cgroup_slot"]
        ta[ta.Key(31337)] = ta.Leaf(3)
        assert len(list(tb.keys())) == 0
    finally:
        a.close()
        b.close()


KILLED = """
import os, sys, time
from ebpfguard.kernel.loader import Sensor
s = Sensor(owner=sys.argv[1])
print(s._member.n, flush=True)
time.sleep(600)
"""


def test_a_killed_agents_set_waits_for_it_and_a_stale_set_goes() -> None:
    owner = tempfile.mkdtemp(prefix="eg-kept-owner-")
    proc = subprocess.Popen([sys.executable, "-c", KILLED, owner], stdout=subprocess.PIPE, text=True, cwd=TOP)
    try:
        assert proc.stdout is not None
        n = int(proc.stdout.readline())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        other = Sensor()  # anyone else: not the killed agent's set, which its cgroups' programs may still use
        try:
            assert member_of(other)[1] != n
        finally:
            other.close()
        back = Sensor(owner=owner)  # the agent again: its own set, as it left it
        try:
            assert back.kept == "reused" and member_of(back)[1] == n
            h = back.set_hash
        finally:
            back.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(owner, ignore_errors=True)
    # a set of another hash (an older version's), free, nobody's: removed by the next Sensor
    stale = "0" * 24
    m, complete = kept.acquire(stale, "")
    assert not complete
    s = Sensor()
    try:
        (m.pins / "maps").mkdir(parents=True)
        rc = s._lib.bpf_obj_pin(s.bpf["counters"].map_fd, str(m.pins / "maps" / "counters").encode())
        assert rc == 0, ctypes.get_errno()
        (m.meta_dir / "meta.json").write_text(json.dumps({"hash": stale}))
        m.release()
    finally:
        s.close()
    assert (kept.PIN_ROOT / stale).is_dir()
    s = Sensor()
    try:
        assert s.set_hash == h
        assert not (kept.PIN_ROOT / stale).exists() and not (kept.META_ROOT / stale).exists()
        assert (kept.PIN_ROOT / h).is_dir()  # its own stays
    finally:
        s.close()
    assert os.path.isdir(kept.META_ROOT / h)


def test_unload_detaches_and_removes_every_free_set() -> None:
    s = Sensor()
    h, n = member_of(s)
    s.close()  # leaves its links attached, idle
    pins = kept.PIN_ROOT / h / str(n)
    assert any((pins / "links").iterdir())
    r = subprocess.run([sys.executable, "-m", "ebpfguard.cli.main", "agent", "--unload"], capture_output=True,
                       text=True, cwd=TOP, timeout=120)
    assert r.returncode == 0 and f"{h}/{n}" in r.stdout, r.stdout + r.stderr
    assert not pins.exists() and not (kept.META_ROOT / h / str(n)).exists()
    again = Sensor()  # compiles afresh: nothing was left to take over
    try:
        assert again.kept == "compiled and kept" and again.adopted == 0
    finally:
        again.close()

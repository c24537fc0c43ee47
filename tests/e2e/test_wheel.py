"""The wheel on its own: built from this checkout, installed by pip into a fresh virtualenv (its dependencies
from Debian's packages), and run away from the checkout."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def sh(*argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, **kw)  # type: ignore[call-overload]


def bpf_files(d: Path) -> set[str]:
    return {p.relative_to(d).as_posix() for p in d.rglob("*") if p.suffix in (".c", ".h")}


def test_the_wheel_works_on_its_own(tmp_path: Path) -> None:
    """A wheel installed by pip into a fresh virtualenv, away from this checkout, runs every command that
    needs no kernel: its data (bpf/ with its include/ and lib/, policies/, sim/) comes from inside the wheel."""
    pip = Path(os.environ.get("VIRTUAL_ENV", TOP / ".venv")) / "bin" / "pip"
    build = sh(str(pip), "wheel", "-q", "--no-deps", "-w", str(tmp_path / "wheel"), str(TOP))
    assert build.returncode == 0, build.stderr
    (whl,) = (tmp_path / "wheel").glob("ebpfguard-*.whl")
    if sh("dpkg", "-s", "ebpfguard").returncode == 0:
        pytest.fail("an ebpfguard package is installed: pip would take it for the wheel's own install")
    venv = tmp_path / "venv"
    # the dependencies come from Debian's packages (installed by make setup), so pip needs no index
    assert sh("/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)).returncode == 0
    inst = sh(str(venv / "bin" / "pip"), "install", "-q", "--no-index", str(whl))
    assert inst.returncode == 0, inst.stdout + inst.stderr
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "LANG": "C.UTF-8"}

    def eg(*args: str) -> subprocess.CompletedProcess[str]:
        return sh(str(venv / "bin" / "ebpfguard"), *args, cwd=str(away), env=env)

    where = sh(str(venv / "bin" / "python"), "-c", "import ebpfguard.common.resources as r; print(r.data_root())",
               cwd=str(away), env=env)
    assert where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr
    # the eBPF sources with their folders (the families, lib/, include/), and the program text they make
    bpf = Path(where.stdout.strip()) / "bpf"
    assert bpf_files(bpf) == bpf_files(TOP / "bpf") and {"include/events.h", "lib/record.bpf.h"} <= bpf_files(bpf)
    r = eg("agent", "--ebpf")
    assert r.returncode == 0 and "/* ---- include/maps.h ---- */" in r.stdout, r.stdout[-2000:] + r.stderr
    assert not re.search(r'^\s*#\s*include\s+"', r.stdout, re.M), "a header of bpf/ that the wheel does not carry"
    shipped = sorted(str(p) for p in (Path(where.stdout.strip()) / "policies").glob("*.yaml"))
    assert len(shipped) >= 4
    r = eg("policy", "validate", *shipped)
    assert r.returncode == 0 and r.stdout.count(": ok (") == len(shipped), r.stdout + r.stderr
    r = eg("simulate", "--list")
    assert r.returncode == 0 and "fs-dotdot" in r.stdout, r.stdout + r.stderr
    assert eg("--version").returncode == 0
    assert eg("forensics", "verify", "--help").returncode == 0
    # a forensic log written by the installed package, then read by its own verify, show and export
    state = tmp_path / "state"
    w = sh(str(venv / "bin" / "python"), "-c",
           "import sys; from ebpfguard.forensics import ForensicLog\n"
           "log = ForensicLog(sys.argv[1])\n"
           "[log.append({'kind': 'file', 'detail': {'path': f'/secret/{i}'}, 'verdict': 'denied'}) for i in range(3)]",
           str(state), cwd=str(away), env=env)
    assert w.returncode == 0, w.stderr
    r = eg("forensics", "verify", "--state-dir", str(state))
    assert r.returncode == 0 and "3 records" in r.stdout, r.stdout + r.stderr
    r = eg("forensics", "show", "--state-dir", str(state), "--json")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 3, r.stdout + r.stderr
    r = eg("forensics", "export", "--state-dir", str(state), "-o", str(tmp_path / "bundle.tar.gz"))
    assert r.returncode == 0 and (tmp_path / "bundle.tar.gz").stat().st_size > 0, r.stdout + r.stderr

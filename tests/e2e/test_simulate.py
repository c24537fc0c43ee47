"""`ebpfguard simulate` as CI runs it: every technique in the catalog contained on this host, and a
manifest that lets an escape through is reported as missed (exit 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
EG = [sys.executable, "-m", "ebpfguard.cli.main"]


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the e2e tier needs root, and CI runs it as root")
        pytest.skip("the e2e tier needs root")


def sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EG, "simulate", *args], capture_output=True, text=True, timeout=300)


def test_every_technique_is_contained(tmp_path: Path) -> None:
    from ebpfguard.lab.simulate import TECHNIQUES

    state = tmp_path / "state"
    r = sim("--json", "--require", "contained", "--state-dir", str(state))
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["id"] for x in results] == [t.id for t in TECHNIQUES], r.stderr
    bad = [x for x in results if x["outcome"] not in ("blocked", "contained")]
    assert not bad and r.returncode == 0, bad or r.stderr
    records = {}
    for line in (state / "forensics" / "records.jsonl").read_text().splitlines():
        rec = json.loads(line)
        records[rec["seq"]] = rec
    for x in results:
        if x["seq"] is not None:  # the seq it reports is a real violation record of that technique
            rec = records[x["seq"]]
            assert rec["kind"] not in ("lifecycle", "checkpoint") and rec["extension"] == "sim-plugin"
    unrecorded = [f"{x['id']} ({x['by']})" for x in results if x["seq"] is None]
    assert len(unrecorded) <= 6, f"{len(unrecorded)} techniques with no violation record: {unrecorded}"
    by_id = {x["id"]: x for x in results}
    assert by_id["dos-forkbomb"]["outcome"] == "contained" and "pids" in by_id["dos-forkbomb"]["by"]
    assert by_id["agent-bpf"]["outcome"] == "contained" and "sigsys:seccomp" in by_id["agent-bpf"]["by"]
    # the world's HOME lies outside /tmp, as a real one does: metadata changes meet the read-only mount
    assert all("erofs:mountns" in by_id[t]["by"] for t in ("meta-chmod-key", "meta-backdate-rc", "meta-xattr-rc"))
    assert "eperm:kernel" in by_id["exfil-dns"]["by"] and "eacces:landlock" in by_id["cred-ssh"]["by"]
    assert by_id["cred-ssh"]["latency_us"] is not None and by_id["cred-ssh"]["latency_us"] < 1e6
    v = subprocess.run([*EG, "forensics", "verify", "--state-dir", str(state)], capture_output=True, text=True)
    assert v.returncode == 0, v.stderr
    assert not Path("/var/lib/ebpfguard-sim").exists(), "the simulator left its world behind"


def test_a_manifest_that_lets_an_escape_through_is_missed(tmp_path: Path) -> None:
    leaky = tmp_path / "leaky.yaml"
    leaky.write_text("""apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {name: leaky, version: "1"}
spec:
  mode: enforce
  filesystem:
    read: ["~/.ssh/"]
    write: ["~/.config/autostart/"]
""")
    r = sim("-m", str(leaky), "-t", "cred-ssh", "-t", "persist-autostart", "-t", "exfil-tcp",
            "--state-dir", str(tmp_path / "state"))
    assert r.returncode == 1, r.stdout + r.stderr
    rows = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines()[1:] if line.split()}
    assert rows["cred-ssh"] == "missed" and rows["persist-autostart"] == "missed"
    assert rows["exfil-tcp"] == "blocked"  # no network granted: the cgroup program denies it
    assert "2 missed" in r.stdout


def test_list_and_bad_arguments() -> None:
    r = sim("--list")
    assert r.returncode == 0 and "cred-ssh" in r.stdout and "dos-forkbomb" in r.stdout
    r = sim("-t", "no-such-thing")
    assert r.returncode == 2 and "unknown technique" in r.stderr

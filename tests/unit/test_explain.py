"""explain: the rule, the action and the fix, from a record and its archived manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from ebpfguard.cli.main import main
from ebpfguard.errors import EbpfguardError
from ebpfguard.forensics import ForensicLog
from ebpfguard.forensics.explain import explain

MANIFEST = b"""apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {name: md-preview, version: "1.4.2"}
spec:
  mode: enforce
  filesystem:
    read: [/usr/, /etc/ld.so.cache]
    write: [/tmp/md-preview/]
  network:
    connect: ["127.0.0.1/32:8765/tcp"]
  syscalls:
    deny: [kcmp]
  resources: {pids: 8}
  response: {file: block, network: block}
"""


@pytest.fixture
def state(tmp_path: Path) -> Path:
    sha = hashlib.sha256(MANIFEST).hexdigest()
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / sha).write_bytes(MANIFEST)
    log = ForensicLog(tmp_path)
    base = {"extension": "md-preview", "policy_sha256": sha, "mode": "enforce"}
    log.append({**base, "kind": "file", "verdict": "denied", "actions": ["eacces:landlock"],
                "detail": {"path": "/etc/hostname", "access": "read", "syscall": "openat"}})
    log.append({**base, "kind": "network", "verdict": "denied", "actions": ["eperm:kernel"],
                "detail": {"op": "connect", "address": "10.1.2.3", "port": 443, "proto": "tcp"}})
    log.append({**base, "kind": "syscall", "verdict": "denied", "detail": {"syscall": "kcmp", "nr": 312}})
    log.append({**base, "kind": "syscall", "verdict": "killed", "detail": {"syscall": "ptrace", "nr": 101}})
    log.append({**base, "kind": "resource", "verdict": "denied",
                "detail": {"resource": "pids", "event": "fork_refused", "count": 3, "limit": 8}})
    log.append({**base, "kind": "lifecycle", "detail": {"event": "start"}})
    log.append({"extension": "x", "policy_sha256": "ab" * 32, "kind": "file", "detail": {"path": "/a"}})
    return tmp_path


def test_file(state: Path) -> None:
    e = explain(str(state), 1)
    assert e["rule"] == "no entry of spec.filesystem.read (line 7) covers '/etc/hostname'; nearest: '/etc/ld.so.cache'"
    assert e["fix"] == 'if this read is legitimate, add to spec.filesystem.read: "/etc/hostname" (or the tree "/etc/")'
    assert e["actions"] == ["eacces:landlock"] and e["response"].startswith("file: block (spec.response.file (line 14))")


def test_network(state: Path) -> None:
    e = explain(str(state), 2)
    assert e["rule"] == "no rule of spec.network.connect (line 10) allows 10.1.2.3:443/tcp"
    assert e["fix"] == 'if this connect is legitimate, add to spec.network.connect: "10.1.2.3/32:443/tcp"'


def test_syscalls(state: Path) -> None:
    assert explain(str(state), 3)["rule"] == "spec.syscalls.deny[0] (line 12) denies kcmp"
    e = explain(str(state), 4)
    assert "built-in deny set" in e["rule"] and e["fix"].startswith("none in the manifest")


def test_resource_and_lifecycle(state: Path) -> None:
    assert explain(str(state), 5)["rule"] == "spec.resources.pids (line 13) = 8 was reached (fork_refused)"
    assert explain(str(state), 6)["why"].startswith("not a violation")


def test_missing(state: Path) -> None:
    with pytest.raises(EbpfguardError, match="no record with seq 99"):
        explain(str(state), 99)
    with pytest.raises(EbpfguardError, match="is not archived"):
        explain(str(state), 7)


def test_cli(state: Path) -> None:
    r = CliRunner().invoke(main, ["explain", "1", "--state-dir", str(state)])
    assert r.exit_code == 0 and "fix:" in r.output and "md-preview 1.4.2" in r.output
    assert CliRunner().invoke(main, ["explain", "99", "--state-dir", str(state)]).exit_code == 1

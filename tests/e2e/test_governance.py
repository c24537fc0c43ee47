"""Signed manifests and extension files with a real agent: --require-signed rejects what no trusted key signed
(recorded and on status), audit-mode manifests load with their signature status on record, and a launch with
--files is refused, with a record naming the file, when the extension's files are not what was signed."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebpfguard.governance.trust import TrustStore, keygen, sign

from .test_agent import EG, Agent, eg

pytestmark = pytest.mark.e2e

SIGNED = """apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {{name: {name}, version: "{version}", publisher: acme}}
spec:
  mode: {mode}
  filesystem:
    read: [/usr/, /lib/, /lib64/, /etc/ld.so.cache, {ext}/]
    exec: [/usr/bin/sh, /bin/sh, /usr/bin/dash, /bin/dash, {ext}/bin/]
"""


@pytest.fixture
def signed(tmp_path: Path) -> Iterator[tuple[Agent, Path, Path]]:
    # the extension's folder where its unprivileged user can reach it (pytest's tmp is root's, 0700)
    ext = Path(tempfile.mkdtemp(prefix="eg-ext-", dir="/var/tmp"))
    ext.chmod(0o755)
    (ext / "bin").mkdir(mode=0o755)
    tool = ext / "bin" / "tool"
    tool.write_text("#!/bin/sh\necho signed tool ran\n")
    tool.chmod(0o755)
    key, trust = tmp_path / "acme.key", tmp_path / "trust"
    keygen("acme", key)
    TrustStore(trust).add(f"{key}.pub")
    policies = tmp_path / "staged"
    policies.mkdir()
    (policies / "acme-tool.yaml").write_text(SIGNED.format(name="acme-tool", version="1", mode="enforce", ext=ext))
    sign(key, policies / "acme-tool.yaml", ext)
    (policies / "acme-audit.yaml").write_text(SIGNED.format(name="acme-audit", version="1", mode="audit", ext=ext))
    a = Agent(tmp_path, "--require-signed", "--trust", str(trust))  # its shell-tool.yaml is unsigned, enforce
    for f in policies.iterdir():
        f.rename(a.policies / f.name)
    deadline = time.monotonic() + 30
    while len(a.status()["policies"]) < 2:
        assert time.monotonic() < deadline, a.status()
        time.sleep(0.2)
    try:
        yield a, ext, key
    finally:
        a.stop()
        shutil.rmtree(ext)


def test_require_signed_rejects_the_unsigned_enforce_manifest_and_records_why(signed: tuple[Agent, Path, Path]
                                                                              ) -> None:
    a, _, _ = signed
    st = a.status()
    assert st["require_signed"] is True
    loaded = {p["name"]: p for p in st["policies"]}
    assert set(loaded) == {"acme-tool", "acme-audit"}, loaded  # not shell-tool
    assert loaded["acme-tool"]["signature"]["ok"] and loaded["acme-tool"]["signature"]["publisher"] == "acme"
    assert loaded["acme-audit"]["signature"]["status"] == "unsigned"  # audit: loaded, said unsigned
    err = next(e for f, e in st["policy_errors"].items() if f.endswith("shell-tool.yaml"))
    assert err == "signature required: unsigned: no signature shell-tool.yaml.sig beside the manifest", err
    recs = [r for r in a.records() if r["kind"] == "policy"]
    by = {(r["detail"]["name"], r["detail"]["event"]): r for r in recs}
    assert by[("shell-tool", "rejected")]["detail"]["signature"]["status"] == "unsigned"
    assert by[("acme-audit", "loaded")]["detail"]["signature"]["status"] == "unsigned"
    assert by[("acme-tool", "loaded")]["detail"]["signature"]["status"] == "signed"
    assert "signatures required" in eg("status", state=a.state).stdout
    assert eg("run", "-e", "shell-tool", "--", "true", state=a.state).returncode != 0


def test_a_launch_with_files_runs_clean_when_untampered_and_is_refused_after(signed: tuple[Agent, Path, Path]
                                                                             ) -> None:
    a, ext, _ = signed
    r = eg("run", "-e", "acme-tool", "--files", str(ext), "--", str(ext / "bin" / "tool"), state=a.state)
    assert r.returncode == 0 and "signed tool ran" in r.stdout, r.stdout + r.stderr
    dropper = ext / "bin" / "dropper"
    dropper.write_text("#!/bin/sh\necho dropped\n")
    dropper.chmod(0o755)
    r = eg("run", "-e", "acme-tool", "--files", str(ext), "--", str(ext / "bin" / "tool"), state=a.state)
    assert r.returncode == 126 and "dropped" not in r.stdout, r.stdout + r.stderr
    assert "launch refused: acme-tool: files: bin/dropper: extra executable, not in the signed list" in r.stderr
    refused = [x for x in a.records() if x["kind"] == "policy" and x["detail"]["event"] == "launch-refused"]
    assert len(refused) == 1 and refused[0]["verdict"] == "denied" and "bin/dropper" in refused[0]["detail"]["reason"]
    assert not [x for x in a.records() if x["detail"].get("event") == "start" and x["extension"] == "acme-tool"
                and x["seq"] > refused[0]["seq"]], "an instance started after the refusal"
    dropper.unlink()
    (ext / "bin" / "tool").write_text("#!/bin/sh\necho tampered\n")
    r = eg("run", "-e", "acme-tool", "--files", str(ext), "--", str(ext / "bin" / "tool"), state=a.state)
    assert r.returncode == 126 and "bin/tool: changed (sha256 " in r.stderr, r.stderr


def test_a_client_manifest_with_files_needs_its_signature(signed: tuple[Agent, Path, Path], tmp_path: Path) -> None:
    a, ext, key = signed
    m = tmp_path / "client.yaml"
    m.write_text(SIGNED.format(name="acme-client", version="2", mode="enforce", ext=ext))
    r = eg("run", "-m", str(m), "--files", str(ext), "--", str(ext / "bin" / "tool"), state=a.state)
    assert r.returncode == 126 and "unsigned: the manifest came without a signature" in r.stderr, r.stderr
    sign(key, m, ext)
    r = eg("run", "-m", str(m), "--files", str(ext), "--", str(ext / "bin" / "tool"), state=a.state)
    assert r.returncode == 0 and "signed tool ran" in r.stdout, r.stdout + r.stderr
    assert eg("forensics", "verify", state=a.state).returncode == 0



def test_provenance_of_two_versions_an_incident_and_a_flag(signed: tuple[Agent, Path, Path]) -> None:
    a, ext, key = signed
    # version 1 reads a file its manifest does not grant: one incident
    r = eg("run", "-e", "acme-tool", "--", "/bin/sh", "-c", "read x < /etc/hostname", state=a.state)
    assert r.returncode != 0, r.stderr
    v1 = next(p["sha256"] for p in a.status()["policies"] if p["name"] == "acme-tool")
    m = a.policies / "acme-tool.yaml"
    m.write_text(SIGNED.format(name="acme-tool", version="2", mode="enforce", ext=ext))
    sign(key, m, ext)
    deadline = time.monotonic() + 30
    while next(p["sha256"] for p in a.status()["policies"] if p["name"] == "acme-tool") == v1:
        assert time.monotonic() < deadline, "version 2 was not loaded"
        time.sleep(0.2)
    r = eg("run", "-e", "acme-tool", "--", str(ext / "bin" / "tool"), state=a.state)
    assert r.returncode == 0, r.stderr
    r = eg("flag", "acme-tool", "--reason", "renderer CVE under review", state=a.state)
    assert r.returncode == 0 and "flagged (record " in r.stdout, r.stdout + r.stderr
    r = eg("provenance", "acme-tool", state=a.state)
    print(r.stdout)
    assert r.returncode == 0, r.stderr
    assert "publisher   acme" in r.stdout and "flagged     YES since " in r.stdout
    assert "renderer CVE under review" in r.stdout and "log         verified, " in r.stdout
    js = json.loads(eg("provenance", "acme-tool", "--json", state=a.state).stdout)
    assert [v["version"] for v in js["versions"]] == ["1", "2"], js["versions"]
    assert all(v["signature"] == "signed" for v in js["versions"]) and [v["instances"] for v in js["versions"]] == [1, 1]
    assert js["violations"] == 1 and js["incidents"][0]["what"] == "/etc/hostname", js["incidents"]
    assert js["incidents"][0]["version_sha256"] == v1
    assert eg("flag", "acme-tool", "--clear", state=a.state).returncode == 0
    assert json.loads(eg("provenance", "acme-tool", "--json", state=a.state).stdout)["flag"] is None
    unknown = eg("provenance", "no-such-extension", state=a.state)
    assert unknown.returncode == 1 and "has no record of no-such-extension" in unknown.stderr


SHADOWED = """apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {{name: staged-tool, version: "{version}"}}
spec:
  mode: enforce
  rollout: {rollout}
  filesystem:
    read: [/usr/, /lib/, /lib64/, /etc/ld.so.cache, {reads}]
    exec: [/usr/bin/sh, /bin/sh, /usr/bin/dash, /bin/dash]
"""


def test_a_shadow_version_records_what_it_would_refuse_and_denies_it_once_promoted(tmp_path: Path) -> None:
    # not under /tmp or /var/tmp, which an instance sees private unless granted: Landlock must be what refuses
    ext = Path(tempfile.mkdtemp(prefix="ebpfguard-ext-", dir="/var/lib"))
    ext.chmod(0o755)
    (ext / "data.txt").write_text("payload\n")
    (ext / "data.txt").chmod(0o644)
    a = Agent(tmp_path)
    try:
        (a.policies / "staged-tool.yaml").write_text(SHADOWED.format(version="1", rollout="enforce",
                                                                       reads=f"{ext}/"))
        (a.policies / "staged-tool.next.yaml").write_text(SHADOWED.format(version="2", rollout="shadow",
                                                                            reads="/nonexistent/"))
        deadline = time.monotonic() + 30
        while not a.status().get("shadows"):
            assert time.monotonic() < deadline, a.status()
            time.sleep(0.2)
        st = a.status()
        assert [p["version"] for p in st["policies"] if p["name"] == "staged-tool"] == ["1"]
        assert st["shadows"][0]["version"] == "2" and st["shadows"][0]["enforced"]
        cmd = ["run", "-e", "staged-tool", "--", "/bin/sh", "-c", f"read x < {ext}/data.txt && echo got $x"]
        r = eg(*cmd, state=a.state)
        assert r.returncode == 0 and "got payload" in r.stdout, r.stdout + r.stderr  # the enforced version allows
        recs = [x for x in a.records() if x["extension"] == "staged-tool" and x["kind"] == "file"]
        shadow = [x for x in recs if x["detail"].get("path") == f"{ext}/data.txt"]
        assert [x["verdict"] for x in shadow] == ["shadow"], recs
        assert shadow[0]["detail"]["shadow"]["version"] == "2" and shadow[0]["actions"] == []
        assert not [x for x in recs if x["verdict"] not in ("shadow",)], "a refusal under the enforced version"
        r = eg("policy", "promote", "staged-tool", state=a.state)
        assert r.returncode == 0 and "2 (" in r.stdout and "replacing 1 (" in r.stdout, r.stdout + r.stderr
        st = a.status()
        assert [p["version"] for p in st["policies"] if p["name"] == "staged-tool"] == ["2"] and not st["shadows"]
        r = eg(*cmd, state=a.state)
        assert r.returncode != 0 and "got payload" not in r.stdout, r.stdout + r.stderr
        deadline = time.monotonic() + 10  # Landlock's report comes through audit, a moment later
        while True:
            recs = [x for x in a.records() if x["extension"] == "staged-tool" and x["kind"] == "file"]
            denied = [x for x in recs if x["detail"].get("path") == f"{ext}/data.txt" and x["verdict"] == "denied"]
            if denied or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        v2 = next(p["sha256"] for p in st["policies"] if p["name"] == "staged-tool")
        assert len(denied) == 1 and denied[0]["policy_sha256"] == v2, \
            [(x["instance"], x["verdict"], x["detail"].get("path"), x["actions"]) for x in recs]
        promoted = [x for x in a.records() if x["kind"] == "policy" and x["detail"]["event"] == "promoted"]
        assert len(promoted) == 1 and promoted[0]["detail"]["replaces"]["version"] == "1"
        again = eg("policy", "promote", "staged-tool", state=a.state)
        assert again.returncode == 1 and "has no shadow version loaded" in again.stderr
    finally:
        a.stop()
        shutil.rmtree(ext)


def test_an_exec_in_the_signed_folder_of_an_unsigned_file_is_a_violation(signed: tuple[Agent, Path, Path]) -> None:
    a, ext, _ = signed
    late = ext / "bin" / "late"
    script = f"while [ ! -x {late} ]; do :; done; {late}; {ext}/bin/tool"
    runner = subprocess.Popen([*EG, "run", "--state-dir", str(a.state), "-e", "acme-tool", "--files", str(ext),
                               "--", "/bin/sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.monotonic() + 30
        while not a.status()["instances"]:  # launched: the files were as signed
            assert runner.poll() is None and time.monotonic() < deadline, runner.communicate()
            time.sleep(0.1)
        tmp = ext / "bin" / ".late"
        tmp.write_text("#!/bin/sh\necho unsigned code ran\n")
        tmp.chmod(0o755)
        tmp.rename(late)  # dropped into the folder after the launch check
        out, err = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert "signed tool ran" in out, out + err  # block: the exec is detected, not refused
    deadline = time.monotonic() + 10
    while True:
        execs = [x for x in a.records() if x["kind"] == "exec" and x["extension"] == "acme-tool"]
        if execs or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(execs) == 1, execs  # the signed tool is not one
    rec = execs[0]
    assert rec["detail"]["path"] == str(late) and rec["verdict"] == "detected", rec
    assert rec["detail"]["signed"]["reason"] == "not in the signed file list" and rec["detail"]["signed"]["file"] == \
        "bin/late"

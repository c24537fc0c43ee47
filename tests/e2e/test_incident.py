"""An incident summary of a real user's plug-in, made by a real agent: the plug-in reads its user's own SSH key, which
its manifest does not grant, and connects to a loopback port; root shares the summary, signed with a sharing key.
The summary says what happened (a credential file read, T1552.004, of ~/.ssh/id_ed25519; a loopback connect) and
names neither the user, nor their uid or home, nor the host; `incident verify` accepts it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import SLOW, Served, User, serve, wait

pytestmark = pytest.mark.e2e

PORT = 47113
POLICY = """apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {name: leaky-tool, version: "0.3.1", publisher: example}
spec:
  mode: enforce
  filesystem:
    read: [/usr/, /lib/, /lib64/, /etc/ld.so.cache, ~/work/]
    exec: [/usr/bin/sh, /bin/sh, /usr/bin/dash, /bin/dash, /usr/bin/cat, /bin/cat, /usr/bin/python3]
  response: {file: block, network: block}
"""
PLUGIN = (f'cat "$HOME/.ssh/id_ed25519"; /usr/bin/python3 -S -c "import socket; s = socket.socket(); '
          f's.settimeout(2); s.connect((\'127.0.0.1\', {PORT}))"; exit 0')


@pytest.fixture(scope="module")
def served(users: tuple[User, User]) -> Iterator[Served]:
    with serve({"leaky-tool.yaml": POLICY}) as s:
        yield s


def eg(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ebpfguard.cli.main", *args], capture_output=True, text=True,
                          timeout=60 * SLOW)


def test_a_shared_summary_says_what_the_plugin_did_and_names_no_one(served: Served, users: tuple[User, User],
                                                                    tmp_path: Path) -> None:
    u = users[0]
    ssh = u.home / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nzq-the-users-own-key\n")
    for p in (ssh, ssh / "id_ed25519"):
        os.chown(p, u.uid, u.gid)
    os.chmod(ssh / "id_ed25519", 0o600)
    r = served.as_user(u, "run", "-e", "leaky-tool", "--", "/bin/sh", "-c", PLUGIN)
    assert "zq-the-users-own-key" not in r.stdout, r.stdout + r.stderr + served.output()
    wait("the read and the connect are recorded", lambda: {"file", "network"} <= {
        x["kind"] for x in served.records() if x.get("extension") == "leaky-tool"})

    key = tmp_path / "share.key"
    assert eg(served, "incident", "keygen", "-o", str(key)).returncode == 0
    out = tmp_path / "leaky-tool.json"
    r = eg(served, "incident", "share", "--state-dir", str(served.state), "--extension", "leaky-tool", "--key",
           str(key), "-o", str(out))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    doc = json.loads(text)
    cred = next(t for t in doc["techniques"] if t["technique"] == "credential file read")
    assert cred["attack_id"] == "T1552.004" and "~/.ssh/id_ed25519" in cred["targets"], cred
    assert any(d["class"] == "loopback" and d["port"] == PORT for d in doc["other_destinations"]), doc
    assert f"loopback:{PORT}" in {t for te in doc["techniques"] for t in te["targets"]}
    assert doc["extension"]["versions"][0]["version"] == "0.3.1" and doc["instances"][0]["violations"] >= 2

    body = json.dumps({k: v for k, v in doc.items() if k not in ("signer", "signature")})
    host = os.uname().nodename
    for name in (u.name, str(u.home), "/home/"):
        assert name not in body, name
    assert not re.search(rf"(?<![0-9A-Za-z.]){u.uid}(?![0-9A-Za-z.])", body), u.uid
    assert not re.search(rf"(?<![A-Za-z0-9]){re.escape(host)}(?![A-Za-z0-9])", body, re.I), host
    assert "127.0.0.1" not in body

    r = eg(served, "incident", "verify", str(out), "--pubkey", f"{key}.pub")
    assert r.returncode == 0 and r.stdout.startswith("ok: signed by "), r.stdout + r.stderr

"""learn -> enforce, round trip, on three real programs from Debian's packages: a Python script plug-in, jq, and
curl talking to a loopback HTTP service. The learned manifest runs each with zero violations; the same program
made to try an escape is still refused; the learned manifest validates."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_agent import SLOW

pytestmark = pytest.mark.e2e
EG = [sys.executable, "-m", "ebpfguard.cli.main"]

PLUGIN = '''import html, json, pathlib, sys
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
doc = json.loads(src.read_text())
dst.write_text("<h1>" + html.escape(doc["title"]) + "</h1>\\n")
if len(sys.argv) > 3:  # the escape: read what no one granted it
    print(open(sys.argv[3]).read())
'''


def eg(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EG, *args], capture_output=True, text=True, timeout=timeout * SLOW)


@pytest.fixture
def world() -> Iterator[Path]:
    if not shutil.which("jq") or not shutil.which("curl"):
        pytest.fail("jq and curl are needed (make setup installs them)")
    # outside /tmp and /var/tmp, which an enforced instance sees private
    w = Path(tempfile.mkdtemp(prefix="ebpfguard-learn-", dir="/var/lib"))
    w.chmod(0o755)
    (w / "out").mkdir(mode=0o777)
    (w / "out").chmod(0o777)
    (w / "www").mkdir(mode=0o755)
    (w / "plugin.py").write_text(PLUGIN)
    (w / "doc.json").write_text(json.dumps({"title": "Q3 <report>", "items": [1, 2, 3]}))
    (w / "www" / "hello.txt").write_text("hello from loopback\n")
    (w / "secret.txt").write_text("SECRET-BYTES\n")
    for f in ("plugin.py", "doc.json", "www/hello.txt", "secret.txt"):
        (w / f).chmod(0o644)  # world-readable: only ebpfguard can keep the extension out of the secret
    yield w
    shutil.rmtree(w)


def violations(state: Path) -> list[dict[str, object]]:
    r = eg("forensics", "show", "--json", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    return [x for x in recs if x["kind"] not in ("lifecycle", "checkpoint", "policy")]


def learn_then_enforce(w: Path, name: str, argv: list[str], escape: list[str]) -> tuple[str, str, list[dict]]:  # type: ignore[type-arg]
    out = w / f"{name}.yaml"
    r = eg("learn", "-o", str(out), "--name", name, "--", *argv)
    assert r.returncode == 0 and out.exists(), r.stdout + r.stderr
    manifest = out.read_text()
    print(f"---- learned {name}.yaml ----\n{manifest}")
    assert eg("policy", "validate", str(out)).returncode == 0
    state = w / f"state-{name}"
    run = eg("run", "--standalone", "--state-dir", str(state), "-m", str(out), "--", *argv)
    assert run.returncode == 0, run.stdout + run.stderr
    assert violations(state) == [], [(v["kind"], v["detail"].get("path"), v["detail"].get("blockers")) for v in violations(state)]  # zero violations
    bad = eg("run", "--standalone", "--state-dir", str(state), "-m", str(out), "--", *escape)
    assert "SECRET-BYTES" not in bad.stdout and "from the other service" not in bad.stdout, bad.stdout
    return manifest, run.stdout, violations(state)


def test_a_python_script_plugin(world: Path) -> None:
    argv = ["/usr/bin/python3", str(world / "plugin.py"), str(world / "doc.json"), str(world / "out" / "doc.html")]
    manifest, _, denied = learn_then_enforce(world, "py-plugin", argv, [*argv, str(world / "secret.txt")])
    assert (world / "out" / "doc.html").read_text() == "<h1>Q3 &lt;report&gt;</h1>\n"
    assert f'"{world}/secret.txt"' not in manifest
    assert [(d["kind"], d["detail"]["path"], d["verdict"]) for d in denied] == \
        [("file", f"{world}/secret.txt", "denied")]


def test_jq(world: Path) -> None:
    argv = ["/usr/bin/jq", "-r", ".title", str(world / "doc.json")]
    manifest, out, denied = learn_then_enforce(world, "jq", argv, ["/usr/bin/jq", "-R", ".", str(world / "secret.txt")])
    assert out == "Q3 <report>\n"
    assert [(d["kind"], d["detail"]["path"], d["verdict"]) for d in denied] == \
        [("file", f"{world}/secret.txt", "denied")]


def _serve(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(["/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                             str(root), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "the loopback service did not start"
            time.sleep(0.1)


def test_curl_to_a_loopback_service(world: Path) -> None:
    (world / "other").mkdir(mode=0o755)
    (world / "other" / "x.txt").write_text("from the other service\n")
    svc, port = _serve(world / "www")
    other, other_port = _serve(world / "other")
    try:
        argv = ["/usr/bin/curl", "-sS", f"http://127.0.0.1:{port}/hello.txt"]
        escape = ["/usr/bin/curl", "-sS", f"http://127.0.0.1:{other_port}/x.txt"]
        manifest, out, denied = learn_then_enforce(world, "curl", argv, escape)
    finally:
        for p in (svc, other):
            p.terminate()
            p.wait(10)
    assert out == "hello from loopback\n"
    assert f'"127.0.0.1/32:{port}/tcp"' in manifest
    assert [(d["kind"], d["detail"]["port"], d["verdict"]) for d in denied] == [("network", other_port, "denied")]

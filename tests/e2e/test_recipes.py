"""The recipes of docs/recipes.md against the real platforms Debian ships, run by a user the test creates: a notebook
kernel started by jupyter_client through its kernelspec, and an editor's language server (pylsp) spoken to over
stdio, each launched as the user through the agent with the shipped manifest (policies/jupyter-kernel.yaml,
policies/python-lsp.yaml). Each must do its job (a cell's result, an interrupt, a shutdown; a hover answer), and a
credential read from inside it (a cell; a plug-in pylsp loads) must fail and be recorded with its path."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import SLOW, TOP, Served, User, serve, wait

pytestmark = pytest.mark.e2e

SHIPPED = ("jupyter-kernel.yaml", "python-lsp.yaml")
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key, planted by the test\n"


@pytest.fixture(scope="module")
def served(users: tuple[User, User]) -> Iterator[Served]:
    with serve({name: (TOP / "policies" / name).read_text() for name in SHIPPED}) as s:
        yield s


def _mine(u: User, path: Path, text: str | None = None, mode: int = 0o755) -> Path:
    """A folder (or a file, with text) of the user's, and the folders above it up to their home."""
    for p in reversed([path, *path.parents] if text is None else list(path.parents)):
        if p.is_relative_to(u.home) and p != u.home and not p.exists():
            p.mkdir()
            os.chown(p, u.uid, u.gid)
    if text is not None:
        path.write_text(text)
        os.chown(path, u.uid, u.gid)
    os.chmod(path, mode)
    return path


def _plant_key(u: User) -> Path:
    _mine(u, u.home / ".ssh", mode=0o700)
    return _mine(u, u.home / ".ssh" / "id_ed25519", KEY, 0o600)


def _instances(s: Served) -> list[dict[str, Any]]:
    return list(s.status()["instances"])


def _refused(s: Served, extension: str) -> list[tuple[str, Any]]:
    """What the extension was refused, for a failure's message."""
    return [(x["kind"], x["detail"].get("path") or x["detail"]) for x in s.records()
            if x.get("extension") == extension and x["kind"] not in ("lifecycle", "policy")]


# ---- a notebook kernel: jupyter_client starts ipykernel through the kernelspec ------------------------------

# What a front end does (jupyter_server, through MultiKernelManager: the connection file in the user's runtime
# folder), run as the user: execute a cell, read a credential from one, interrupt a sleeping one, shut down.
FRONT_END = r"""
import json, os, queue, sys, time
T0 = time.monotonic()
from jupyter_client.multikernelmanager import MultiKernelManager
from jupyter_core.paths import jupyter_runtime_dir

os.makedirs(jupyter_runtime_dir(), mode=0o700, exist_ok=True)
mkm = MultiKernelManager(connection_dir=jupyter_runtime_dir())
kid = mkm.start_kernel(kernel_name=sys.argv[1])
km = mkm.get_kernel(kid)
client = km.provisioner.process
kc = km.client()
kc.start_channels()
kc.wait_for_ready(timeout=60)
out = {"connection_file": km.connection_file, "client_pid": client.pid}

def run(code, timeout=30, when_printing=None):
    msg_id = kc.execute(code)
    got = {"stdout": "", "result": None, "error": None}
    deadline = time.monotonic() + timeout
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            got["error"] = "no answer within %ss" % timeout
            return got
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            got["stdout"] += content["text"]
            if when_printing is not None:
                when_printing()
                when_printing = None
        elif kind == "execute_result":
            got["result"] = content["data"]["text/plain"]
        elif kind == "error":
            got["error"] = content["ename"] + ": " + content["evalue"]
        elif kind == "status" and content["execution_state"] == "idle":
            return got

def step(what):
    print(round(time.monotonic() - T0, 2), what, file=sys.stderr, flush=True)

step("ready")
out["cell"] = run("sum(range(10)) * 6 + 12")
step("cell")
out["secret"] = run("import os\nopen(os.path.expanduser('~/.ssh/id_ed25519')).read()")
step("secret")
t0 = time.monotonic()
out["interrupted"] = run("import time\nprint('sleeping', flush=True)\ntime.sleep(60)", timeout=40,
                         when_printing=km.interrupt_kernel)
out["interrupt_seconds"] = time.monotonic() - t0
step("interrupted")
out["after"] = run("'still here'")
kc.stop_channels()
t0 = time.monotonic()
step("shutting down")
mkm.shutdown_kernel(kid, now=False)
out["shutdown_seconds"] = time.monotonic() - t0
out["client_status"] = client.wait(30)
print(json.dumps(out))
"""


def test_a_notebook_kernel_runs_interrupts_shuts_down_and_cannot_read_a_key(served: Served,
                                                                          users: tuple[User, User]) -> None:
    u = users[0]
    key = _plant_key(u)
    notebooks = _mine(u, u.home / "notebooks")
    spec = {"argv": [*served.argv("run", "-e", "jupyter-kernel", "--"),
                     "/usr/bin/python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (ebpfguard)", "language": "python", "interrupt_mode": "signal",
            "env": {"IPYTHONDIR": "/tmp/ipython"}}
    _mine(u, u.home / ".local/share/jupyter/kernels/python3-guarded/kernel.json", json.dumps(spec), 0o644)
    try:
        r = subprocess.run(["/usr/bin/python3", "-c", FRONT_END, "python3-guarded"], user=u.uid, group=u.gid,
                           extra_groups=[], env=served.env(u), cwd=notebooks, capture_output=True, text=True,
                           timeout=90 * SLOW)
    except subprocess.TimeoutExpired as err:  # run killed the front end: its kernel's client goes too
        served.root("kill", "jupyter-kernel")
        pytest.fail(f"the front end hung: {err.stderr!r}\n{served.output()}")
    assert r.returncode == 0, r.stdout + r.stderr + served.output()
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["connection_file"].startswith(str(u.home / ".local/share/jupyter/runtime/")), got
    assert got["cell"] == {"stdout": "", "result": "282", "error": None}, got
    assert got["secret"]["result"] is None and got["secret"]["error"].startswith("PermissionError"), got
    assert got["interrupted"]["stdout"] == "sleeping\n" and got["interrupted"]["error"] == "KeyboardInterrupt: "
    assert got["interrupt_seconds"] < 20 * SLOW, got
    assert got["after"]["result"] == "'still here'", got  # an interrupt stops the cell, not the kernel
    assert got["shutdown_seconds"] < 10 * SLOW and got["client_status"] == 0, got  # a clean exit, not a kill

    wait("the agent releases the kernel", lambda: not _instances(served))
    recs = [x for x in served.records() if x.get("extension") == "jupyter-kernel"]
    (start,) = [x for x in recs if x["kind"] == "lifecycle" and x["detail"]["event"] == "start"]
    assert start["detail"]["sandbox"]["uid"] == u.uid and start["detail"]["sandbox"]["launched_by"] == u.uid
    ends = [x["detail"]["event"] for x in recs if x["kind"] == "lifecycle" and x["instance"] == start["instance"]]
    assert "stop" in ends and "kill" not in ends, ends
    denied = [x["detail"].get("path") for x in recs if x["kind"] == "file"]
    assert str(key) in denied, recs
    # the manifest grants what the kernel needs: what else it was refused is only psutil's walk of /proc at shutdown
    assert not [p for p in denied if p != str(key) and not p.startswith("/proc")], denied


# ---- a language server over stdio: pylsp, and a plug-in of the user's that goes for their key ---------------

PLUGIN = '''"""A pylsp plug-in gone bad: at initialize it reads the user's SSH key, and says how that went."""
import os

from pylsp import hookimpl


@hookimpl
def pylsp_initialize(config, workspace):
    try:
        with open(os.path.expanduser("~/.ssh/id_ed25519")) as f:
            outcome = "read %d bytes" % len(f.read())
    except OSError as err:
        outcome = type(err).__name__
    workspace.show_message("egplug: " + outcome)
'''

SOURCE = '''def greet(name):
    """Say hello to someone by name."""
    return "hello " + name


greet("world")
'''


class Lsp:
    """The editor's side: Content-Length framed JSON-RPC over the server's stdin and stdout."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc, self.ids, self.inbox = proc, 0, queue.Queue[dict[str, Any]]()
        self.notes: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            length = None
            while (line := self.proc.stdout.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if not line or length is None:
                return
            self.inbox.put(json.loads(self.proc.stdout.read(length)))

    def send(self, method: str, params: dict[str, Any], request: bool = True) -> int | None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
        if request:
            self.ids += 1
            msg["id"] = self.ids
        body = json.dumps(msg).encode()
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.proc.stdin.flush()
        return msg.get("id")

    def call(self, method: str, params: dict[str, Any], timeout: float = 30) -> Any:
        want = self.send(method, params)
        while True:
            msg = self.inbox.get(timeout=timeout * SLOW)
            if msg.get("id") == want and "method" not in msg:
                assert "error" not in msg, msg
                return msg["result"]
            self.notes.append(msg)


def test_a_language_server_answers_and_its_plugin_cannot_read_a_key(served: Served, users: tuple[User, User]) -> None:
    u = users[0]
    key = _plant_key(u)
    site = subprocess.run(["/usr/bin/python3", "-c", "import site; print(site.getusersitepackages())"],
                          user=u.uid, group=u.gid, env=served.env(u), capture_output=True, text=True,
                          check=True).stdout.strip()
    plugins = _mine(u, Path(site))
    _mine(u, plugins / "egplug.py", PLUGIN, 0o644)
    _mine(u, plugins / "egplug-1.0.dist-info", mode=0o755)
    _mine(u, plugins / "egplug-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: egplug\nVersion: 1.0\n", 0o644)
    _mine(u, plugins / "egplug-1.0.dist-info/entry_points.txt", "[pylsp]\negplug = egplug\n", 0o644)
    project = _mine(u, u.home / "src/hello")
    doc = _mine(u, project / "hello.py", SOURCE, 0o644)
    proc = subprocess.Popen(served.argv("run", "-e", "python-lsp", "--", "/usr/bin/pylsp"), user=u.uid,
                            group=u.gid, extra_groups=[], env=served.env(u), cwd=project, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lsp = Lsp(proc)
        init = lsp.call("initialize", {"processId": None, "rootUri": project.as_uri(), "capabilities": {}})
        assert init["capabilities"]["hoverProvider"] is True, init
        lsp.send("initialized", {}, request=False)
        lsp.send("textDocument/didOpen", {"textDocument": {"uri": doc.as_uri(), "languageId": "python",
                                                           "version": 1, "text": SOURCE}}, request=False)
        hover = lsp.call("textDocument/hover", {"textDocument": {"uri": doc.as_uri()},
                                                "position": {"line": 5, "character": 2}})
        assert "Say hello to someone by name." in json.dumps(hover), (hover, _refused(served, "python-lsp"))
        said = [n["params"]["message"] for n in lsp.notes if n.get("method") == "window/showMessage"]
        assert said == ["egplug: PermissionError"], lsp.notes  # the plug-in was loaded and its read refused
        assert lsp.call("shutdown", {}) is None
        lsp.send("exit", {}, request=False)
        assert proc.wait(30 * SLOW) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    wait("the agent releases the server", lambda: not _instances(served))
    refused = _refused(served, "python-lsp")
    assert ("file", str(key)) in refused, refused
    assert all(what == ("file", str(key)) for what in refused), refused  # the manifest grants what pylsp needs

"""The agent and the CLI as a user runs them: real agent process, real control socket, real cgroups."""

from __future__ import annotations

import calendar
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ebpfguard.instance.lineage import processes
from ebpfguard.kernel.cgroups import CgroupManager
from ebpfguard.sandbox import landlock

pytestmark = pytest.mark.e2e
EG = [sys.executable, "-m", "ebpfguard.cli.main"]
TOP = Path(__file__).resolve().parents[2]
SLICE = CgroupManager().slice_v2
LANDLOCK_REPORTS = landlock.abi() >= 7  # file refusals are recorded from Landlock's own reports

MANIFEST = """apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {{name: {name}, version: "1"}}
spec:
  mode: enforce
  filesystem:
    read: [/usr/, /lib/, /lib64/, /etc/ld.so.cache]
    write: [/dev/null]
    exec: [/usr/bin/sh, /bin/sh, /usr/bin/cat, /bin/cat, /usr/bin/sleep, /bin/sleep, /usr/bin/dash, /bin/dash]
  response: {{file: {file}}}
"""


# in the VM tier's guest (software emulation) a compile takes ~20x the host's: the waits stretch with it
SLOW = 5.0 if os.environ.get("EGVM_KERNEL") else 1.0


def lines_until(proc: subprocess.Popen[str], prefix: str, within: float) -> str:
    """What ``proc`` wrote up to and including its first line starting with ``prefix`` (within ``within`` s)."""
    assert proc.stdout is not None
    fd, got, deadline = proc.stdout.fileno(), b"", time.monotonic() + within
    while not any(line.startswith(prefix.encode()) for line in got.split(b"\n")[:-1]):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no line starting {prefix!r} within {within:g} s: {got!r}"
        chunk = os.read(fd, 65536)  # unbuffered: what is left stays in the pipe for communicate()
        assert chunk, f"the output ended before a line starting {prefix!r}: {got!r}"
        got += chunk
    return got.decode()


def procs_of(cgroup: Path) -> list[str]:
    """Each process left in a cgroup: pid, state, command line (what a failed wait for its end shows)."""
    out = []
    for pid in (cgroup / "cgroup.procs").read_text().split():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            out.append(f"{pid} {stat.rsplit(')', 1)[1].split()[0]} {cmd.strip()}")
        except OSError:
            out.append(f"{pid} gone")
    return out


def record_ns(t: str) -> int:
    """A record's RFC 3339 time with ns, as ns since the epoch."""
    return calendar.timegm(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S")) * 1_000_000_000 + int(t[20:29])


def eg(*args: str, state: Path, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    timeout *= SLOW
    n = 2 if args[0] in ("forensics", "policy") else 1  # --state-dir goes right after the (sub)command
    return subprocess.run([*EG, *args[:n], "--state-dir", str(state), *args[n:]],
                          capture_output=True, text=True, timeout=timeout, **kw)


class Agent:
    def __init__(self, tmp: Path, *extra: str):
        if os.geteuid() != 0:
            if os.environ.get("CI"):
                pytest.fail("the e2e tier needs root, and CI runs it as root")
            pytest.skip("the e2e tier needs root")
        self.state = tmp / "state"
        self.policies = tmp / "policies"
        self.policies.mkdir()
        (self.policies / "shell-tool.yaml").write_text(MANIFEST.format(name="shell-tool", file="block"))
        self.log = open(tmp / "agent.log", "w+")
        self.proc = subprocess.Popen([*EG, "agent", "--state-dir", str(self.state), "--policy-dir", str(self.policies),
                                      *extra], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60 * SLOW
        try:
            while eg("status", state=self.state).returncode != 0:
                assert self.proc.poll() is None, self.output()
                assert time.monotonic() < deadline, f"the agent did not start enforcing: {self.output()}"
                time.sleep(0.2)
        except BaseException:
            self.stop()  # an agent that never answered is stopped all the same (by its pid), its programs unloaded
            raise

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def successor(self, tmp: Path, env: dict[str, str] | None = None, within: float = 60,
                  meanwhile: Any = None) -> Agent:
        """A second agent on the same state and policies (this one was killed), once it enforces; it takes this
        one's place, so that the fixture stops it. ``meanwhile`` is called while it starts."""
        second = Agent.__new__(Agent)
        second.state, second.policies = self.state, self.policies
        second.log = open(tmp / "agent2.log", "w+")
        second.proc = subprocess.Popen([*EG, "agent", "--state-dir", str(self.state), "--policy-dir",
                                        str(self.policies)], stdout=second.log, stderr=subprocess.STDOUT,
                                       env={**os.environ, **(env or {})})
        self.proc, self.log = second.proc, second.log
        deadline = time.monotonic() + within * SLOW
        while eg("status", state=self.state).returncode != 0:
            assert time.monotonic() < deadline and second.proc.poll() is None, second.output()
            if meanwhile is not None:
                meanwhile()
            else:
                time.sleep(0.2)
        return second

    def status(self) -> dict[str, Any]:
        r = eg("status", "--json", state=self.state)
        assert r.returncode == 0, r.stderr
        return dict(json.loads(r.stdout))

    def records(self) -> list[dict[str, Any]]:
        r = eg("forensics", "show", "--json", state=self.state)
        assert r.returncode == 0, r.stderr
        return [json.loads(line) for line in r.stdout.splitlines()]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = Agent(tmp_path)
    yield a
    a.stop()


@pytest.fixture(scope="module")
def one_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """One agent for tests that leave it as they found it (refused requests): started, and compiled, once."""
    a = Agent(tmp_path_factory.mktemp("one-agent"))
    yield a
    a.stop()


def test_status_lists_policies_and_instances(agent: Agent) -> None:
    st = agent.status()
    assert st["agent"]["state"] == "enforcing" and [p["name"] for p in st["policies"]] == ["shell-tool"]
    assert st["agent"]["landlock_reports"] == ("on" if LANDLOCK_REPORTS else "off")
    runner = subprocess.Popen([*EG, "run", "--state-dir", str(agent.state), "-e", "shell-tool", "--", "sleep", "3"])
    try:
        deadline = time.monotonic() + 10 * SLOW
        while not agent.status()["instances"]:
            assert time.monotonic() < deadline and runner.poll() is None, runner.communicate()[0]
            time.sleep(0.1)
        inst = agent.status()["instances"][0]
        assert inst["extension"] == "shell-tool" and inst["pid"] in inst["pids"]
        assert Path(inst["cgroup"]).is_dir() and inst["mode"] == "enforce"
        text = eg("status", state=agent.state).stdout
        assert "shell-tool" in text and "instances (1)" in text
    finally:
        assert runner.wait(20) == 0
    deadline = time.monotonic() + 5 * SLOW
    while agent.status()["instances"]:
        assert time.monotonic() < deadline, "the instance was not released"
        time.sleep(0.1)


def test_run_through_the_agent_records_and_returns_the_status(agent: Agent, tmp_path: Path) -> None:
    m = tmp_path / "m.yaml"
    m.write_text(MANIFEST.format(name="reader", file="block"))
    # the violation comes from a grandchild: sh -> sh -> cat, all inside the extension's cgroup
    r = eg("run", "-m", str(m), "--", "sh", "-c", "sh -c 'cat /etc/hostname >/dev/null'; exit 7", state=agent.state)
    assert r.returncode == 7, r.stderr
    deadline = time.monotonic() + 5 * SLOW
    while not [x for x in agent.records() if x["detail"].get("event") == "stop"]:
        assert time.monotonic() < deadline, "no stop record"
        time.sleep(0.1)
    recs = [x for x in agent.records() if x["extension"] == "reader"]
    files = [x for x in recs if x["kind"] == "file" and x["detail"]["path"] == "/etc/hostname"]
    assert len(files) == 1, recs  # one refusal, one record
    start = next(x for x in recs if x["detail"].get("event") == "start")
    if LANDLOCK_REPORTS:  # recorded from Landlock's own report: the domain, not the process
        assert files[0]["detail"]["blockers"] == ["fs.read_file"] and files[0]["pid"] is None
    else:
        assert files[0]["comm"] == "cat" and files[0]["pid"] != start["pid"]
    assert files[0]["cgroup_id"] == start["cgroup_id"]
    events = [x["detail"].get("event") for x in recs if x["kind"] == "lifecycle"]
    assert {"start", "processes"} <= set(events) and events[-1] == "stop"
    # the lineage: the leader ran a shell that ran cat, which failed; the leader exited 7
    procs = processes(recs)
    cat = next(p for p in procs if p.get("exe", "").endswith("/cat"))
    inner = next(p for p in procs if p["pid"] == cat["ppid"])
    assert inner["exe"].endswith("sh") and inner["ppid"] == start["pid"] and cat["exit"] == 1
    assert [p["exit"] for p in procs if p["pid"] == start["pid"] and "exit" in p] == [7]
    assert recs[-1]["detail"]["exit_status"] == 7
    v = eg("forensics", "verify", state=agent.state)
    assert v.returncode == 0 and "chain and signatures intact" in v.stdout
    ex = eg("explain", str(files[0]["seq"]), state=agent.state)
    assert ex.returncode == 0 and 'add to spec.filesystem.read: "/etc/hostname"' in ex.stdout
    archived = agent.state / "policies" / files[0]["policy_sha256"]  # the exact bytes in force, kept
    assert archived.read_bytes() == m.read_bytes()
    assert hashlib.sha256(archived.read_bytes()).hexdigest() == files[0]["policy_sha256"]


def test_killed_command_exits_128_plus_9(agent: Agent, tmp_path: Path) -> None:
    m = tmp_path / "k.yaml"
    m.write_text(MANIFEST.format(name="killme", file="kill"))
    r = eg("run", "-m", str(m), "--", "cat", "/etc/hostname", state=agent.state)
    assert r.returncode == 137 and r.stdout == ""
    killed = [x for x in agent.records() if x["extension"] == "killme" and x["kind"] == "file"]
    assert killed[0]["verdict"] == "killed"


def test_standalone_run_without_agent(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    m = tmp_path / "m.yaml"
    m.write_text(MANIFEST.format(name="alone", file="block"))
    state = tmp_path / "st"
    r = eg("run", "-m", str(m), "--", "sh", "-c", "cat /etc/hostname >/dev/null; exit 3", state=state)
    assert r.returncode == 3, r.stderr
    recs = [json.loads(x) for x in eg("forensics", "show", "--json", state=state).stdout.splitlines()]
    assert [x["detail"]["path"] for x in recs if x["kind"] == "file"].count("/etc/hostname") == 1
    # the run ends with a checkpoint mirrored in head.json: cutting its tail off is detected
    assert recs[-1]["kind"] == "checkpoint"
    assert eg("forensics", "verify", state=state).returncode == 0
    log = state / "forensics" / "records.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-1]))
    v = eg("forensics", "verify", state=state)
    assert v.returncode == 1 and "head" in (v.stdout + v.stderr), v.stdout + v.stderr


def test_bad_policy_file_does_not_stop_the_agent_and_good_changes_reload(agent: Agent) -> None:
    (agent.policies / "broken.yaml").write_bytes(b"\x00\x01garbage")
    (agent.policies / "half.yaml").write_text("apiVersion: ebpfguard.io/v1\nkind: Extension\nmetadata: {name: x}\n"
                                              "spec: {network: {connect: ['10.0.0.0/33:80']}}\n")
    deadline = time.monotonic() + 10 * SLOW
    while len(agent.status()["policy_errors"]) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    errors = agent.status()["policy_errors"]
    assert "contains NUL bytes" in errors[str(agent.policies / "broken.yaml")]
    assert "is not CIDR:port[-port][/proto]" in errors[str(agent.policies / "half.yaml")]
    assert agent.proc.poll() is None
    time.sleep(0.05)
    (agent.policies / "shell-tool.yaml").write_text(MANIFEST.format(name="shell-tool", file="kill") + "# v2\n")
    deadline = time.monotonic() + 10 * SLOW
    while "reloaded" not in agent.output():
        assert time.monotonic() < deadline
        time.sleep(0.2)


def request(state: Path, payload: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(state / "agent.sock"))
        s.sendall(payload)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return dict(json.loads(buf))


@pytest.mark.parametrize("payload,error", [
    (b"garbage\n", "request is not JSON"),
    (b"[1, 2]\n", "a request is a JSON object"),
    (b'{"op": 5}\n', "a request is a JSON object"),
    (b'{"op": "nope"}\n', "unknown op 'nope' (the agent knows ping, status, launch, signal, records, subscribe, explain, prepare,"),
    (b'{"op": "prepare"}\n', "bad prepare request: give exactly one of extension (a policy's name) or manifest_text"),
    (b'{"op": "prepare", "manifest_text": "x: [\\n"}\n', "not valid YAML/JSON"),
    (b'{"op": "prepare", "manifest_text": 7}\n', "field 'manifest_text': expected string, got integer 7"),
    (b'{"op": "prepare", "extension": "nosuch"}\n', "no policy named 'nosuch'"),
    (b'{"op": "prepare", "extension": "shell-tool", "mode": "loose"}\n',
     "field 'mode': \"loose\" is not one of \"audit\", \"enforce\""),
    (b'{"op": "prepare", "extension": "shell-tool", "user": "root"}\n', "unknown field 'user' (Prepare takes "),
    (b'{"op": "started", "instance": "x", "pid": 1}\n', "bad started request: missing field 'argv'"),
    (b'{"op": "started", "instance": "x", "pid": 1, "argv": []}\n', "no running instance 'x'"),
    (b'{"op": "exited", "instance": "x", "status": "seven"}\n', "field 'status': expected integer, got string \"seven\""),
])
def test_bad_control_requests_get_precise_errors(one_agent: Agent, payload: bytes, error: str) -> None:
    ans = request(one_agent.state, payload)
    assert ans["ok"] is False and error in ans["error"], ans
    assert request(one_agent.state, b'{"op": "ping"}\n')["ok"] is True


def test_a_second_agents_socket_is_in_its_private_state_folder(agent: Agent) -> None:
    """An agent with its own --state-dir (not the system one) serves STATE/agent.sock: the socket is 0666 like the
    system agent's /run/ebpfguard/agent.sock, but its 0700 folder keeps every other user out; past the folder
    (a link elsewhere), SO_PEERCRED still decides per request (tests/e2e/test_users.py)."""
    sock = agent.state / "agent.sock"
    assert sock.stat().st_mode & 0o777 == 0o666 and agent.state.stat().st_mode & 0o777 == 0o700
    probe = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n"
             "s.sendall(b'{\"op\":\"flag\",\"extension\":\"shell-tool\",\"reason\":\"x\"}\\n')\n"
             "print(s.recv(4096).decode())")
    denied = subprocess.run([sys.executable, "-c", probe, str(sock)], user=65534, capture_output=True, text=True)
    assert denied.returncode != 0 and "PermissionError" in denied.stderr
    link = Path(f"/tmp/ebpfguard-peercred-{os.getpid()}.sock")
    os.link(sock, link)
    try:
        refused = subprocess.run([sys.executable, "-c", probe, str(link)], user=65534, capture_output=True, text=True)
    finally:
        link.unlink()
    assert "flag is for root only" in refused.stdout and "peer is uid 65534" in refused.stdout, refused


def test_trace_follows_live_and_exits_cleanly_on_ctrl_c(agent: Agent, tmp_path: Path) -> None:
    tr = subprocess.Popen([*EG, "trace", "--state-dir", str(agent.state), "--json", "--kind", "file"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        m = tmp_path / "t.yaml"
        m.write_text(MANIFEST.format(name="traced", file="block"))
        r = eg("run", "-m", str(m), "--", "cat", "/etc/hostname", state=agent.state)
        assert r.returncode == 1 and "Permission denied" in r.stderr  # Landlock refused the read
        time.sleep(0.5)
    finally:
        tr.send_signal(signal.SIGINT)
        out, err = tr.communicate(timeout=10)
    assert tr.returncode == 0 and "Traceback" not in err
    lines = [json.loads(x) for x in out.splitlines()]
    hostname = [x for x in lines if x["detail"]["path"] == "/etc/hostname"]
    assert len(hostname) == 1 and hostname[0]["extension"] == "traced"


def test_sigterm_stops_cleanly_with_a_running_extension(agent: Agent) -> None:
    runner = subprocess.Popen([*EG, "run", "--state-dir", str(agent.state), "-e", "shell-tool", "--", "sleep", "60"],
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10 * SLOW
    while not agent.status()["instances"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    cgroup = Path(agent.status()["instances"][0]["cgroup"])
    assert agent.stop() == 0
    assert runner.wait(20) == 137
    assert not cgroup.exists()
    assert not (SLICE.exists() and [p for p in SLICE.iterdir() if p.is_dir() and p.name.startswith("shell-tool-")])
    assert not (agent.state / "agent.sock").exists()
    assert "stopped: extensions' programs detached, cgroups removed" in open(agent.log.name).read()
    stop = [x for x in agent.records() if x["kind"] == "lifecycle" and x["detail"].get("event") == "stop"]
    assert stop[-1]["detail"]["killed_by_agent"] is True


def test_layers_hold_while_the_agent_is_dead_and_a_new_agent_readopts(agent: Agent, tmp_path: Path) -> None:
    secret = Path(tempfile.mkdtemp(prefix="ebpfguard-secret-", dir="/var/lib"))  # /tmp is private to instances
    secret.chmod(0o755)
    (secret / "s.txt").write_text("SECRET-BYTES\n")
    (secret / "s.txt").chmod(0o644)  # readable by the extension's user: only ebpfguard stops it
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    m = tmp_path / "survivor.yaml"
    m.write_text(MANIFEST.format(name="survivor", file="block").replace(
        "/usr/bin/dash, /bin/dash]", "/usr/bin/dash, /bin/dash, /usr/bin/bash, /bin/bash]"))
    flag = secret / "readopted"  # the extension waits for it ([ -e ] is a stat: no layer restricts it)
    # The extension tries its forbidden open and connect once the agent is dead (the test writes a line to its stdin),
    # with bash's builtins only: an exec while no agent runs may be held for a decision (its path's page not yet
    # resident after the fork) and stays stopped until the next agent, by design, so nothing would be tried meanwhile
    script = (f"read -r go; read -r secret < {secret}/s.txt; echo cat=$?; "
              f"(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>&1; echo connect=$?; "
              f"while [ ! -e {flag} ]; do sleep 0.1; done; echo done")
    runner = subprocess.Popen([*EG, "run", "--state-dir", str(agent.state), "-m", str(m), "--", "bash", "-c", script],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 10 * SLOW
        while not agent.status()["instances"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        cgroup = Path(agent.status()["instances"][0]["cgroup"])
        killed_ns = time.time_ns()
        agent.proc.kill()  # SIGKILL: no clean shutdown, nothing detached by the agent
        agent.proc.wait(10)
        assert runner.stdin is not None
        runner.stdin.write("go\n")
        runner.stdin.flush()
        # the forbidden open and connect happen while no agent runs: the extension says when it tried them
        early = lines_until(runner, "connect=", within=60 * SLOW)
        with pytest.raises(TimeoutError):
            listener.accept()
        restarted_ns = time.time_ns()
        agent.successor(tmp_path)
        insts = agent.status()["instances"]
        assert [i["extension"] for i in insts] == ["survivor"] and insts[0]["cgroup"] == str(cgroup)
        assert "landlock-fs" in insts[0]["layers"]
        flag.touch()
        out, _ = runner.communicate(timeout=30 * SLOW)
        out = early + out
    finally:
        if runner.poll() is None:
            runner.kill()
        listener.close()
        shutil.rmtree(secret, ignore_errors=True)
    assert "SECRET-BYTES" not in out and "Permission denied" in out and "cat=1" in out
    assert "Operation not permitted" in out and "connect=1" in out and "done" in out
    deadline = time.monotonic() + 10 * SLOW
    while cgroup.exists():
        assert time.monotonic() < deadline, "the re-adopted instance's cgroup was not removed"
        time.sleep(0.2)
    events = [r["detail"].get("event") for r in agent.records() if r["extension"] == "survivor"]
    assert "readopted" in events and events[-1] == "stop"
    # the connect refused while no agent ran: the kept programs' record waited in their ring buffer, and the next
    # agent recorded it with the kernel's time (inside the outage), marked as read after the restart
    refused = [r for r in agent.records() if r["extension"] == "survivor" and r["kind"] == "network"]
    assert refused and refused[0]["verdict"] == "denied" and refused[0]["detail"].get("read_after_restart") is True, \
        refused
    assert killed_ns < record_ns(refused[0]["time"]) < restarted_ns
    outage = [r for r in agent.records() if r["kind"] == "lifecycle" and r["detail"].get("event") == "outage"]
    assert len(outage) == 1 and outage[0]["detail"]["records"] >= 1 and outage[0]["detail"]["links"] > 0, outage
    # one chain across an agent killed with SIGKILL and its successor
    assert eg("forensics", "verify", state=agent.state).returncode == 0


def test_an_instance_that_ends_while_no_agent_runs_gets_its_stop_record_and_its_changes_kept(agent: Agent,
                                                                                               tmp_path: Path) -> None:
    """The agent is SIGKILLed while an instance with rollback overlays writes; the instance ends (cleanly, unwatched)
    during the outage. The next agent records its stop ("ended while no agent ran", no exit status: its parent was
    the dead agent) and keeps its changes aside for an operator: never committed blindly, the real tree untouched."""
    tree = Path(tempfile.mkdtemp(prefix="ebpfguard-tree-", dir="/var/lib"))
    tree.chmod(0o777)
    (tree / "old.txt").write_text("before\n")
    (tree / "old.txt").chmod(0o666)  # the extension runs as an unprivileged user
    m = tmp_path / "unwatched.yaml"
    m.write_text(MANIFEST.format(name="unwatched", file="block").replace(
        "    write: [/dev/null]\n", f"    write: [{tree}/]\n    rollback: true\n"))
    go = Path(f"{tree}.go")  # outside the tree and outside /tmp (private to instances); [ -e ] is a stat
    script = (f"echo new > {tree}/new.txt; echo after > {tree}/old.txt; echo written; "
              f"while [ ! -e {go} ]; do sleep 0.1; done")
    runner = subprocess.Popen([*EG, "run", "--state-dir", str(agent.state), "-m", str(m), "--", "sh", "-c", script],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 10 * SLOW
        while not agent.status()["instances"]:
            assert time.monotonic() < deadline and runner.poll() is None, runner.communicate()[0]
            time.sleep(0.1)
        inst = agent.status()["instances"][0]
        cgroup = Path(inst["cgroup"])
        assert runner.stdout is not None and runner.stdout.readline() == "written\n"
        agent.proc.kill()  # SIGKILL: the instance outlives it
        agent.proc.wait(10)
        go.touch()  # the instance ends, with status 0, while no agent runs
        deadline = time.monotonic() + 10 * SLOW
        while (cgroup / "cgroup.procs").exists() and (cgroup / "cgroup.procs").read_text().strip():
            assert time.monotonic() < deadline, f"the instance did not end: {procs_of(cgroup)}"
            time.sleep(0.1)
        agent.successor(tmp_path)
        assert agent.status()["instances"] == []
        recs = [r for r in agent.records() if r["instance"] == inst["instance"]]
        stop = [r for r in recs if r["kind"] == "lifecycle" and r["detail"].get("event") == "stop"]
        assert len(stop) == 1 and stop[0]["detail"]["ended"] == "while no agent ran", recs
        assert stop[0]["detail"]["exit_status"] is None and stop[0]["extension"] == "unwatched"
        kept = [r for r in recs if r["kind"] == "rollback"]
        assert len(kept) == 1 and kept[0]["detail"]["event"] == "kept", recs
        assert "ended while no agent ran" in kept[0]["detail"]["why"] and kept[0]["detail"]["count"] == 2, kept
        # nothing was committed: the real tree is as before, and an operator is offered the changes
        assert (tree / "old.txt").read_text() == "before\n" and not (tree / "new.txt").exists()
        listed = eg("rollback", "list", state=agent.state)
        assert listed.returncode == 0 and inst["instance"] in listed.stdout, listed.stdout + listed.stderr
        assert eg("forensics", "verify", state=agent.state).returncode == 0
    finally:
        go.touch()
        if runner.poll() is None:
            runner.kill()
        runner.wait(10)
        shutil.rmtree(tree, ignore_errors=True)
        go.unlink(missing_ok=True)


def test_an_upgrade_swaps_the_programs_and_every_connect_meanwhile_is_denied(agent: Agent, tmp_path: Path) -> None:
    """An extension tries a forbidden connect in a loop; its agent is killed and a new version (changed program
    source: a new kept set, compiled) takes it back. Before, during and after the swap every try is refused: the
    old programs hold until the new ones replace them (BPF_PROG_ATTACH replaces in place, the new program finds
    the cgroup's slot before its own storage is written), and the old set is removed once free."""
    data = tmp_path / "data"
    for d in ("bpf", "policies", "sim", "bench"):
        if (TOP / d).is_dir():
            shutil.copytree(TOP / d, data / d)
    with open(data / "bpf" / "net.bpf.c", "a") as f:
        f.write("\n/* the next version */\n")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    flag = Path(tempfile.mkdtemp(prefix="ebpfguard-flag-", dir="/var/lib")) / "stop"
    flag.parent.chmod(0o755)
    m = tmp_path / "prober.yaml"
    m.write_text(MANIFEST.format(name="prober", file="block").replace(
        "/usr/bin/dash, /bin/dash]", "/usr/bin/dash, /bin/dash, /usr/bin/bash, /bin/bash]"))
    script = (f"n=0; while [ ! -e {flag} ]; do (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo OPEN; "
              "n=$((n+1)); sleep 0.02; done; echo tries=$n")
    runner = subprocess.Popen([*EG, "run", "--state-dir", str(agent.state), "-m", str(m), "--", "bash", "-c", script],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    accepted = 0
    try:
        deadline = time.monotonic() + 10 * SLOW
        while not agent.status()["instances"]:
            assert time.monotonic() < deadline and runner.poll() is None
            time.sleep(0.1)
        old_hash = agent.output().split("eBPF programs: ", 1)[1].split("(set ", 1)[1].split(",")[0]
        agent.proc.kill()
        agent.proc.wait(10)
        def probe() -> None:  # while the new version starts, no connect may get through
            nonlocal accepted
            try:
                listener.accept()[0].close()
                accepted += 1
            except TimeoutError:
                pass

        second = agent.successor(tmp_path, {"EBPFGUARD_DATA_DIR": str(data)}, within=120, meanwhile=probe)
        assert "eBPF programs: compiled and kept" in second.output()  # the new version's own set
        new_hash = second.output().split("(set ", 1)[1].split(",")[0]
        assert new_hash != old_hash
        for _ in range(10):  # and a while after it took the instance back
            try:
                listener.accept()[0].close()
                accepted += 1
            except TimeoutError:
                pass
        flag.touch()
        out, _ = runner.communicate(timeout=30 * SLOW)
    finally:
        flag.touch()
        if runner.poll() is None:
            runner.kill()
        runner.wait(10)
        listener.close()
        shutil.rmtree(flag.parent, ignore_errors=True)
    tries = int(out.rsplit("tries=", 1)[1].split()[0])
    assert accepted == 0 and "OPEN" not in out and tries > 100, out
    # the killed agent's set of the old version went once free (its cgroup programs were replaced); the new stays
    owner = os.path.realpath(agent.state)
    kept_for = [d for d in Path("/run/ebpfguard/sets").glob("*/*") if (d / "owner").is_file()
                and (d / "owner").read_text() == owner]
    assert [d.parent.name for d in kept_for] == [new_hash], (kept_for, old_hash, new_hash)


def test_attach_adopts_a_running_tree_and_the_ladder_commands_act_on_it(agent: Agent, tmp_path: Path) -> None:
    m = tmp_path / "adopt.yaml"
    m.write_text(MANIFEST.format(name="adoptee", file="block"))
    loop = subprocess.Popen(["sh", "-c", "while true; do cat /etc/hostname >/dev/null 2>&1; sleep 0.2; done"])
    try:
        r = eg("attach", "--pid", str(loop.pid), "-m", str(m), state=agent.state)
        assert r.returncode == 0, r.stderr
        assert "adopted pids" in r.stdout and "landlock: cannot be imposed" in r.stdout
        deadline = time.monotonic() + 10 * SLOW
        while not [x for x in agent.records() if x["extension"] == "adoptee" and x["kind"] == "file"]:
            assert time.monotonic() < deadline, "no violation from the adopted process"
            time.sleep(0.2)
        inst = agent.status()["instances"][0]
        assert inst["extension"] == "adoptee" and loop.pid in inst["pids"]
        assert "landlock-fs" not in inst["layers"]
        assert any("seccomp: cannot be imposed" in g for g in inst["not_enforced"])
        rec = next(x for x in agent.records() if x["extension"] == "adoptee" and x["kind"] == "file")
        assert rec["detail"]["path"] == "/etc/hostname" and rec["verdict"] == "detected"
        assert eg("freeze", "adoptee", state=agent.state).returncode == 0
        assert agent.status()["instances"][0]["state"].startswith("frozen")
        assert eg("thaw", "adoptee", state=agent.state).returncode == 0
        assert agent.status()["instances"][0]["state"].startswith("running")
        assert eg("quarantine", "adoptee", state=agent.state).returncode == 0
        assert "quarantined" in agent.status()["instances"][0]["state"]
        assert eg("kill", "adoptee", state=agent.state).returncode == 0
        assert loop.wait(10) == -9
        deadline = time.monotonic() + 10 * SLOW
        while agent.status()["instances"]:
            assert time.monotonic() < deadline, "the killed instance was not released"
            time.sleep(0.2)
        events = [x["detail"].get("event") for x in agent.records() if x["extension"] == "adoptee"]
        assert {"adopted", "freeze", "thaw", "quarantine", "kill"} <= set(events) and events[-1] == "stop"
    finally:
        if loop.poll() is None:
            loop.kill()
    missing = eg("attach", "--pid", "999999", "-m", str(m), state=agent.state)
    assert missing.returncode == 1 and "no process 999999" in missing.stderr


def test_metrics_scraped_over_http_match_what_happened(tmp_path: Path) -> None:
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = Agent(tmp_path, "--metrics-address", f"127.0.0.1:{port}", "--bpf-stats")
    try:
        m = tmp_path / "metered.yaml"
        m.write_text(MANIFEST.format(name="metered", file="kill"))
        r = eg("run", "-m", str(m), "--", "cat", "/etc/hostname", state=agent.state)
        assert r.returncode == 137
        deadline = time.monotonic() + 10 * SLOW
        while agent.status()["instances"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        before = len(agent.records())
        text = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        after = len(agent.records())
    finally:
        agent.stop()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}

    def value(metric: str, **labels: str) -> float:
        return samples[(metric, tuple(sorted(labels.items())))]

    assert value("ebpfguard_violations_total", extension="metered", kind="file", verdict="killed") == 1
    assert value("ebpfguard_actions_total", action="sigkill:kernel") == 1
    assert value("ebpfguard_actions_total", action="cgroup.kill") == 1
    assert value("ebpfguard_response_seconds_count") == 1 and value("ebpfguard_response_seconds_sum") > 0
    assert value("ebpfguard_ringbuf_dropped_records_total") == 0
    assert value("ebpfguard_kernel_kills_total") == 1
    assert before <= value("ebpfguard_records_written_total") <= after
    assert value("ebpfguard_records_failed_total") == 0
    assert value("ebpfguard_extensions", state="running") == 0
    # the kernel's own statistics, switched on by --bpf-stats: the openat program ran, and took time
    assert value("ebpfguard_bpf_program_runs_total", program="syscalls__sys_enter_openat") > 0
    assert value("ebpfguard_bpf_program_run_seconds_total", program="syscalls__sys_enter_openat") > 0
    assert ("ebpfguard_bpf_program_runs_total", (("program", "eg_connect4"),)) in samples
    # policies in force: the policy directory's, and those of running instances (metered has ended)
    assert not [k for k in samples if k[0] == "ebpfguard_policy_info" and ("name", "metered") in k[1]]
    assert value("ebpfguard_policy_info", name="shell-tool", version="1",
                 sha256=hashlib.sha256((agent.policies / "shell-tool.yaml").read_bytes()).hexdigest()) == 1


def test_sigkill_loop_loses_no_record_counted_as_written(tmp_path: Path) -> None:
    """SIGKILL the agent again and again while an extension keeps violating its manifest. A record
    is forwarded to syslog only after its fsync, so each datagram the test receives is a record the
    agent counted as written: every one must be in the log, unchanged, and the chain must verify
    across rotated files and all the agents' lives."""
    sock_path = tmp_path / "syslog.sock"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(str(sock_path))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.setblocking(False)
    forwarded: dict[int, dict[str, Any]] = {}

    def drain() -> None:
        while True:
            try:
                msg = rx.recv(1 << 20)
            except BlockingIOError:
                return
            rec = json.loads(msg.split(b"]: ", 1)[1])
            forwarded[rec["seq"]] = rec

    extra = ("--rotate-size", "16K", "--log-forward", f"syslog:{sock_path}")
    agent = Agent(tmp_path, *extra)
    m = tmp_path / "noisy.yaml"
    m.write_text(MANIFEST.format(name="noisy", file="block"))
    # distinct refusals (an identical one is recorded once a second), more than 30 in a few seconds
    files = " ".join(f"/etc/{f}" for f in ("hostname", "passwd", "group", "hosts", "os-release", "issue", "shells",
                                           "profile", "debian_version", "nsswitch.conf", "services", "protocols"))
    runner = subprocess.Popen([*EG, "run", "--state-dir", str(agent.state), "-m", str(m), "--", "sh", "-c",
                               f"while true; do for f in {files}; do cat $f 2>/dev/null; sleep 0.1; done; done"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lives = 4
    try:
        for life in range(lives + 1):
            if life:
                agent = Agent.__new__(Agent)
                agent.state, agent.policies = tmp_path / "state", tmp_path / "policies"
                agent.log = open(tmp_path / f"agent{life}.log", "w+")
                agent.proc = subprocess.Popen([*EG, "agent", "--state-dir", str(agent.state), "--policy-dir",
                                               str(agent.policies), *extra], stdout=agent.log,
                                              stderr=subprocess.STDOUT)
                deadline = time.monotonic() + 60 * SLOW
                while eg("status", state=agent.state).returncode != 0:
                    assert time.monotonic() < deadline and agent.proc.poll() is None, agent.output()
                    time.sleep(0.2)
            before = len(forwarded)
            deadline = time.monotonic() + 20 * SLOW
            while len(forwarded) < before + 30:  # this life writes records of its own
                assert time.monotonic() < deadline, f"life {life}: the agent wrote no records"
                time.sleep(0.05)
                drain()
            if life < lives:
                agent.proc.kill()  # SIGKILL, at whatever point it is writing
                agent.proc.wait(10)
                agent.log.close()
        assert eg("kill", "noisy", state=agent.state).returncode == 0
        runner.wait(20)
    finally:
        if runner.poll() is None:
            runner.kill()
        agent.stop()
    time.sleep(0.2)
    drain()
    rx.close()
    logged = {r["seq"]: r for r in agent.records()}
    lost = sorted(set(forwarded) - set(logged))
    assert not lost, f"records counted as written but not in the log: {lost[:10]}"
    assert all(logged[seq] == rec for seq, rec in forwarded.items())
    assert sorted(logged) == list(range(1, len(logged) + 1))
    files = list((agent.state / "forensics").glob("records-*.jsonl"))
    assert len(files) >= 2, "the test should have crossed a rotation"
    v = eg("forensics", "verify", state=agent.state)
    assert v.returncode == 0 and f"across {len(files) + 1} files" in v.stdout, v.stdout + v.stderr
    readopted = [r for r in logged.values() if r["detail"].get("event") == "readopted"]
    assert len(readopted) == lives


def test_trace_activity_streams_a_known_child_in_order_and_nothing_else(agent: Agent, tmp_path: Path) -> None:
    tracer = subprocess.Popen([*EG, "trace", "--state-dir", str(agent.state), "--activity", "--extension",
                               "shell-tool", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert tracer.stderr is not None and "following no instance yet" in tracer.stderr.readline()
        lic = "/usr/share/common-licenses/GPL-3"
        # the same file read at the same time by a process outside the extension: not in the stream
        outsider = subprocess.Popen(["sh", "-c", f"for i in 1 2 3 4 5; do cat {lic} >/dev/null; sleep 0.1; done"])
        r = eg("run", "-e", "shell-tool", "--", "sh", "-c", f"cat {lic} >/dev/null; sleep 0.1; cat /etc/hostname",
               state=agent.state)
        outsider.wait(30)
        assert r.returncode != 0  # the last cat is refused
        time.sleep(1 * SLOW)
        tracer.send_signal(signal.SIGINT)
        out, err = tracer.communicate(timeout=30)
    finally:
        if tracer.poll() is None:
            tracer.kill()
    assert tracer.returncode == 0 and "Traceback" not in err, err  # Ctrl-C ends it cleanly
    items = [json.loads(x) for x in out.splitlines()]
    assert items and {i["extension"] for i in items} == {"shell-tool"}, items
    assert len({i["instance"] for i in items}) == 1
    assert outsider.pid not in {i["pid"] for i in items}
    seq = [(i["kind"], i["verdict"], i["detail"].get("path") or i["detail"].get("event"))
           for i in items if i["kind"] in ("exec", "file", "lifecycle")]
    want = [("exec", "allowed", "/usr/bin/cat"), ("file", "allowed", lic), ("exec", "allowed", "/usr/bin/sleep"),
            ("exec", "allowed", "/usr/bin/cat"), ("file", "denied", "/etc/hostname"), ("lifecycle", None, "stop")]
    it = iter(seq)
    missing = [w for w in want if not any(s == w for s in it)]  # in this order, other events between
    assert not missing, (missing, seq)

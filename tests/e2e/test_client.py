"""An application launches its plug-ins with ebpfguard.client, as its user, through the real agent: a small Python
program run as a user the test creates (tests/e2e/conftest.py) writes to an instance's stdin and reads its stdout
over pipes, interrupts it (a trapping shell exits with its own status), kills one (137), follows what one does
(activity: its exec of a known program), reads its records, closes a handle (the instance is stopped), and gets
the agent's refusal as a typed error. The raw-socket example of docs/platforms.md runs as the user too."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import SLOW, TOP, Served, User, serve
from tests.e2e.test_users import POLICY

pytestmark = pytest.mark.e2e

PRELUDE = """\
import json, signal, sys, time
from ebpfguard import client
signal.alarm(int(40 * float(sys.argv[1])))  # a hang ends the program, not the suite
"""


@pytest.fixture(scope="module")
def served(users: tuple[User, User]) -> Iterator[Served]:
    with serve({"user-tool.yaml": POLICY.format(name="user-tool")}) as s:
        yield s


def _program(served: Served, u: User, code: str) -> dict[str, Any]:
    """Runs ``code`` (after PRELUDE) as ``u`` and returns the JSON object its last line prints."""
    r = subprocess.run(["/usr/bin/python3", "-c", PRELUDE + textwrap.dedent(code), str(SLOW)], user=u.uid,
                       group=u.gid, extra_groups=[], env=served.env(u), cwd=u.home, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60 * SLOW)
    assert r.returncode == 0 and r.stdout, r.stdout + r.stderr + served.output()[-4000:]
    return dict(json.loads(r.stdout.splitlines()[-1]))


def test_pipes_a_forwarded_signal_and_the_instances_own_status(served: Served, users: tuple[User, User]) -> None:
    u = users[0]
    got = _program(served, u, """
        script = 'trap "echo got INT; exit 3" INT; read line; echo "you said $line"; id -u; while :; do sleep 0.1; done'
        inst = client.launch(["/bin/sh", "-c", script], extension="user-tool", stdin=client.PIPE, stdout=client.PIPE)
        inst.stdin.write(b"hello\\n")
        inst.stdin.flush()
        lines = [inst.stdout.readline().decode() for _ in range(2)]
        polled = inst.poll()
        inst.signal("SIGINT")
        status = inst.wait(30)
        rest = inst.stdout.read().decode()
        inst.close()
        print(json.dumps({"lines": lines, "polled": polled, "status": status, "rest": rest, "user": inst.user,
                          "pid": inst.pid, "cgroup": inst.cgroup, "layers": inst.layers}))
    """)
    assert got["lines"] == ["you said hello\n", f"{u.uid}\n"] and got["polled"] is None, got
    assert got["status"] == 3 and got["rest"] == "got INT\n", got
    assert got["user"] == u.name and got["pid"] > 0 and got["cgroup"].startswith("/sys/fs/cgroup/"), got
    assert isinstance(got["layers"], list)


def test_activity_a_kill_and_the_records(served: Served, users: tuple[User, User]) -> None:
    got = _program(served, users[0], """
        inst = client.launch(["/bin/sh", "-c", "read go; /usr/bin/id -u; exec /usr/bin/sleep 60"],
                             extension="user-tool", stdin=client.PIPE, stdout=client.PIPE)
        items = inst.activity()  # following from now on: the exec of id comes after "go"
        inst.stdin.write(b"go\\n")
        inst.stdin.flush()
        uid = inst.stdout.readline().decode()
        execs = []
        for item in items:
            if item.get("kind") == "exec":
                execs.append(item["detail"].get("path"))
                if execs[-1].endswith("/id"):
                    break
        inst.kill()
        status = inst.wait(30)
        tail = list(items)  # the iterator ends once the instance has ended
        deadline = time.monotonic() + 10
        while not any(r["detail"].get("event") == "stop" for r in inst.records(["lifecycle"])):
            assert time.monotonic() < deadline, inst.records()
            time.sleep(0.2)
        events = [r["detail"].get("event") for r in inst.records(["lifecycle"])]
        inst.close()
        print(json.dumps({"uid": uid, "execs": execs, "status": status, "tail": len(tail), "events": events}))
    """)
    assert got["uid"] == f"{users[0].uid}\n" and got["status"] == 137, got
    assert got["execs"][-1] in ("/usr/bin/id", "/bin/id"), got
    assert got["events"][0] == "start" and "kill" in got["events"] and got["events"][-1] == "stop", got


def test_closing_the_handle_stops_the_instance(served: Served, users: tuple[User, User]) -> None:
    got = _program(served, users[0], """
        from ebpfguard.common.statedir import DEFAULT
        from ebpfguard.service.control import Client
        from ebpfguard.service.protocol import Status

        def running():
            with Client(DEFAULT) as c:
                return [i.instance for i in c.request(Status()).instances]

        with client.launch(["/usr/bin/sleep", "60"], extension="user-tool", stdout=client.DEVNULL) as inst:
            before = running()
        t0 = time.monotonic()
        while inst.id in running() and time.monotonic() - t0 < 20:
            time.sleep(0.1)
        try:
            inst.wait()
            waited = "returned"
        except client.ControlError as err:
            waited = str(err)
        print(json.dumps({"id": inst.id, "before": before, "after": running(), "waited": waited,
                          "seconds": time.monotonic() - t0}))
    """)
    assert got["before"] == [got["id"]] and got["after"] == [], got  # stopped while the program still ran
    assert got["waited"] == f"{got['id']}: the handle was closed before the instance ended (closing stopped it)"


def test_a_refused_launch_is_a_typed_error_with_the_agents_words(served: Served, users: tuple[User, User]) -> None:
    u = users[0]
    bad = u.home / "as-root.yaml"
    bad.write_text(POLICY.format(name="escalate").replace("spec:\n", "spec:\n  user: root\n", 1))
    os.chown(bad, u.uid, u.gid)
    got = _program(served, u, f"""
        out = {{}}
        for name, kw in (("root", {{"manifest": {str(bad)!r}}}), ("nope", {{"extension": "no-such-policy"}})):
            try:
                client.launch(["/usr/bin/id"], stdout=client.PIPE, **kw)
            except client.Refused as err:
                out[name] = [type(err).__name__, str(err), err.exit_code, isinstance(err, client.ControlError)]
        print(json.dumps(out))
    """)
    kind, message, code, typed = got["root"]
    assert (kind, code, typed) == ("Refused", 2, True), got
    assert f"spec.user: names 'root', but an instance you launch runs as you ({u.name})" in message, got
    assert got["nope"][0] == "Refused" and "no policy named 'no-such-policy'" in got["nope"][1], got
    assert served.status()["instances"] == []


def test_the_raw_socket_example_of_the_docs_launches_passes_ctrl_c_and_exits_with_the_status(
        served: Served, users: tuple[User, User]) -> None:
    u = users[0]
    doc = (TOP / "docs" / "platforms.md").read_text()
    block = re.search(r"## A worked example: Python, the raw socket.*?```python\n(.*?)```", doc, re.S)
    assert block, "docs/platforms.md has no raw-socket example"
    example = u.home / "raw_launch.py"
    example.write_text(block.group(1))
    script = 'trap "echo got INT; exit 3" INT; echo ready; while :; do sleep 0.1; done'
    proc = subprocess.Popen(["/usr/bin/python3", str(example), "user-tool", "/bin/sh", "-c", script], user=u.uid,
                            group=u.gid, extra_groups=[], env=served.env(u), cwd=u.home, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30 * SLOW)
        assert proc.returncode == 3 and out == "got INT\n", out + err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

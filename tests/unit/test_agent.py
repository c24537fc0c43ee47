"""The agent without root: its handlers behind the real server, driven by the real client over a socketpair, on an
engine with the in-memory FakeSensor and a fixture cgroup tree; every operation's happy path, the refusals the table
makes (unknown operation, unknown field, wrong type, missing field, a peer outside the caller class), and the
policy folder on its own (load, reject and keep, signatures required, shadow and promotion)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ebpfguard.forensics import BadLine, read
from ebpfguard.governance.policydir import REQUIRE_SIGNED_FILE, PolicyDir
from ebpfguard.governance.trust import TrustStore, keygen, sign
from ebpfguard.manifest.load import Mode, parse
from ebpfguard.runtime.engine import Engine
from ebpfguard.sandbox.rollback import Layer
from ebpfguard.service import protocol as p
from ebpfguard.service.agent import Agent
from ebpfguard.service.control import Client, Refused
from ebpfguard.testing import FakeSensor

MANIFEST = """apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {{name: {name}, version: "{version}", publisher: acme}}
spec:
  mode: {mode}
{rollout}  filesystem: {{read: [/usr/], write: [], exec: [/usr/bin/true, /usr/bin/sleep]}}
"""
ROOT = p.Peer(pid=1, uid=0, gid=0)


def manifest(name: str = "tool", version: str = "1", mode: str = "enforce", shadow: bool = False) -> str:
    return MANIFEST.format(name=name, version=version, mode=mode, rollout="  rollout: shadow\n" if shadow else "")


class Served:
    """The agent's server stepping in a thread (the test is the client); ``lock`` keeps the test's looks at the
    engine apart from a request being handled."""

    def __init__(self, agent: Agent):
        self.agent = agent
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                self.agent.server.step(0)
            time.sleep(0.001)

    def connect(self, peer: p.Peer = ROOT) -> socket.socket:
        ours, theirs = socket.socketpair()
        with self.lock:
            self.agent.server.credentials = lambda sock: peer  # a socketpair's real peer is the test itself
            self.agent.server.add(theirs)
        ours.settimeout(5)
        return ours

    def client(self, peer: p.Peer = ROOT) -> Client:
        return Client.over(self.connect(peer))

    def raw(self, payload: bytes) -> dict[str, Any]:
        with self.connect() as s:
            s.sendall(payload)
            return dict(json.loads(s.makefile("rb").readline()))


@pytest.fixture
def agent(tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Agent]:
    # status names why BPF-LSM is not in force; as root, finding out loads a program: not in this tier
    monkeypatch.setattr("ebpfguard.service.agent.bpf_lsm_status", lambda: (False, "not probed in the unit tier"))
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "tool.yaml").write_text(manifest())
    a = Agent(str(engine.state.root), str(policies), engine=engine, trust_dir=str(tmp_path / "trust"))
    a.setup()
    a.scan_policies()
    yield a
    a.server.close()


@pytest.fixture
def served(agent: Agent) -> Iterator[Served]:
    s = Served(agent)
    yield s
    s.stop.set()
    s.thread.join()


def sensor(agent: Agent) -> FakeSensor:
    assert isinstance(agent.engine.sensor, FakeSensor)
    return agent.engine.sensor


# ---- every operation ------------------------------------------------------------------------------------------
def test_ping_and_status(served: Served, agent: Agent) -> None:
    with served.client() as c:
        assert c.request(p.Ping()).pid == os.getpid()
        report = c.request(p.Status())
        assert report.agent.state == "enforcing" and report.agent.cgroup_mode == agent.engine.cgroups.mode
        assert report.agent.layers[-1] == "bpf-lsm: unavailable: not probed in the unit tier"
        assert [(x.name, x.version, x.mode) for x in report.policies] == [("tool", "1", "enforce")]
        assert report.policies[0].signature is not None and not report.policies[0].signature["ok"]
        assert report.instances == [] and report.shadows == [] and report.policy_errors == {}
        legacy = c.request("status")  # by name: the wire's dict, as the command line reads it
        assert legacy["ok"] is True and legacy["policies"][0]["name"] == "tool"


def test_prepare_started_exited_and_the_launcher_gone(served: Served, agent: Agent) -> None:
    with served.client() as c:
        ans = c.request(p.Prepare(extension="tool"))
        inst = next(i for i in agent.engine.instances.values() if i.id == ans.instance)
        assert ans.procs_files == inst.cgroup.procs_files() and ans.manifest_path.endswith("tool.yaml")
        assert "name: tool" in ans.manifest_text and ans.allow_root is False and ans.rollback == {}
        assert c.request(p.Started(instance=ans.instance, pid=os.getpid(), argv=["/usr/bin/true"],
                                   sandbox={"layers": ["landlock-fs"]})) == p.Done()
        assert inst.leader_pid == os.getpid() and inst.argv == ["/usr/bin/true"]
        (status,) = c.request(p.Status()).instances
        assert status.instance == ans.instance and status.pid == os.getpid() and "landlock-fs" in status.layers
        assert c.request(p.Exited(instance=ans.instance, status=0)) == p.Done()
        assert inst.exit_status == 0
        other = c.request(p.Prepare(extension="tool"))
        orphan = next(i for i in agent.engine.instances.values() if i.id == other.instance)
        assert not orphan.launcher_done
    deadline = time.monotonic() + 5
    while not orphan.launcher_done:  # the connection that prepared it closed: its launcher is gone
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_prepare_a_manifest_of_the_callers_in_audit_mode(served: Served, agent: Agent) -> None:
    with served.client() as c:
        ans = c.request(p.Prepare(manifest_text=manifest("mine"), manifest_path="/home/u/mine.yaml",
                                  home="/home/u", mode=Mode.AUDIT))
    inst = next(i for i in agent.engine.instances.values() if i.id == ans.instance)
    assert (inst.manifest.name, inst.mode, ans.home) == ("mine", "audit", "/home/u")


def test_prepare_refusals_are_the_agents_own_errors(served: Served) -> None:
    with served.client() as c:
        with pytest.raises(Refused, match="no policy named 'nosuch'") as err:
            c.request(p.Prepare(extension="nosuch"))
        assert err.value.exit_code == 1
        with pytest.raises(Refused, match="not valid YAML/JSON"):
            c.request(p.Prepare(manifest_text="x: [\n"))
        with pytest.raises(Refused, match="no running instance 'x'"):
            c.request(p.Started(instance="x", pid=1, argv=[]))


def test_the_ladder_by_hand(served: Served, agent: Agent) -> None:
    with served.client() as c:
        ans = c.request(p.Prepare(extension="tool"))
        inst = next(i for i in agent.engine.instances.values() if i.id == ans.instance)
        assert c.request(p.Freeze(name="tool")) == p.Acted(instances=[ans.instance])
        assert inst.state == "frozen"
        assert c.request(p.Thaw(name=ans.instance)).instances == [ans.instance]
        assert inst.state == "running"
        c.request(p.Quarantine(name="tool"))
        assert inst.cgroup_id in sensor(agent).quarantined
        c.request(p.Quarantine(name="tool", lift=True))
        assert inst.cgroup_id not in sensor(agent).quarantined
        assert c.request(p.Kill(name="tool")).instances == [ans.instance]
        assert inst.state == "killed"
        with pytest.raises(Refused, match="no running instance or extension named 'other'"):
            c.request(p.Freeze(name="other"))


def test_attach_a_running_process(served: Served, agent: Agent) -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        with served.client() as c:
            ans = c.request(p.Attach(pid=child.pid, manifest_text=manifest("adopted"), mode=Mode.AUDIT))
        assert ans.pids == [child.pid] and any("landlock" in gap for gap in ans.not_enforced)
        inst = next(i for i in agent.engine.instances.values() if i.id == ans.instance)
        assert inst.leader_pid == child.pid and inst.mode == "audit"
    finally:
        child.kill()
        child.wait()


def test_flag_and_clear(served: Served, agent: Agent) -> None:
    with served.client() as c:
        first = c.request(p.Flag(extension="tool", reason="CVE-2026-1", by="alice")).seq
        assert c.request("flag", extension="tool", reason=None, clear=True, by="alice")["seq"] > first
    from ebpfguard.forensics import read

    flags = [r["detail"] for r in read(agent.engine.state) if isinstance(r, dict) and r.get("kind") == "policy"
             and r["detail"].get("event") in ("flagged", "unflagged")]
    assert [(d["event"], d["by"]) for d in flags] == [("flagged", "alice"), ("unflagged", "alice")]


def test_promote_a_shadow_version(served: Served, agent: Agent) -> None:
    assert agent.policies.dir is not None
    (agent.policies.dir / "tool-next.yaml").write_text(manifest(version="2", shadow=True))
    with served.lock:
        agent.scan_policies()
    with served.client() as c:
        (shadow,) = c.request(p.Status()).shadows
        assert (shadow.name, shadow.version, shadow.enforced) == ("tool", "2", True)
        ans = c.request(p.Promote(extension="tool"))
        assert ans.version == "2" and ans.replaces is not None and ans.replaces.version == "1"
        assert [x.version for x in c.request(p.Status()).policies] == ["2"]
        with pytest.raises(Refused, match="'tool' has no shadow version loaded"):
            c.request(p.Promote(extension="tool"))
    assert json.loads(agent.policies.promoted_file.read_text()) == {"tool": ans.sha256}  # type: ignore[union-attr]


def test_activity_follows_an_extension_and_streams_its_lines(served: Served, agent: Agent) -> None:
    with served.client() as launcher, served.client() as tracer:
        assert tracer.request(p.Activity(extension="tool")).following == []
        ans = launcher.request(p.Prepare(extension="tool"))
        inst = next(i for i in agent.engine.instances.values() if i.id == ans.instance)
        assert inst.cgroup_id in sensor(agent).traced  # from its first exec
        with served.lock:
            agent.engine.observers.subscribers[-1](inst.cgroup_id, {"extension": "tool", "kind": "exec", "n": 1})
            agent.engine.observers.subscribers[-1](inst.cgroup_id + 1, {"extension": "other", "kind": "exec"})
        assert next(tracer.lines()) == {"extension": "tool", "kind": "exec", "n": 1}
        inst.cgroup.join(4242)
        with served.client() as by_pid:
            assert by_pid.request(p.Activity(pid=4242)).following == [ans.instance]
        with pytest.raises(Refused, match="pid 1 is in no extension instance"):
            tracer.request(p.Activity(pid=1))
        with pytest.raises(Refused, match=r"no extension or instance named 'nosuch' \(policies and running "
                                          r"instances: tool\)"):
            tracer.request(p.Activity(extension="nosuch"))
    deadline = time.monotonic() + 5
    while inst.cgroup_id in sensor(agent).traced:  # no one follows it any more
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_subscriber_hears_of_its_own_instances_and_refusals_only(served: Served, agent: Agent) -> None:
    with served.client() as root, served.client(USER) as mine, served.client(OTHER) as theirs:
        assert mine.request(p.Subscribe()) == p.Subscribed(uid=USER.uid, running=[])
        assert theirs.request(p.Subscribe()).uid == OTHER.uid
        ans = root.request(p.Prepare(extension="tool"))
        inst = next(i for i in agent.engine.instances.values() if i.id == ans.instance)
        with served.lock:  # as the agent's launch for USER records it
            agent.engine.started(inst, os.getpid(), ["/usr/bin/true"], {"launched_by": USER.uid, "layers": []})
        first = next(mine.lines())
        assert first["record"]["kind"] == "lifecycle" and first["record"]["detail"]["event"] == "start"
        assert first["record"]["instance"] == ans.instance
        with served.lock:
            agent._refused(USER.uid, "tool", "no policy named 'tool'")
            agent._refused(OTHER.uid, "theirs", "refused")
        assert next(mine.lines()) == {"refusal": {"extension": "tool", "error": "no policy named 'tool'"}}
        assert next(theirs.lines()) == {"refusal": {"extension": "theirs", "error": "refused"}}  # nothing before


def pending_area(agent: Agent, real: Path) -> Layer:
    """A rollback area an instance left when its agent went down: one file written in ``real``."""
    root = agent.engine.rollback_root / "tool-left"
    upper, work = root / "0" / "upper", root / "0" / "work"
    upper.mkdir(parents=True)
    work.mkdir()
    real.mkdir()
    (upper / "new.txt").write_text("the extension's\n")
    layer = Layer(root, {"instance": "tool-left", "extension": "tool", "started_ns": time.time_ns(),
                         "trees": [{"target": str(real), "upper": str(upper), "work": str(work)}]})
    layer.save()
    return layer


def test_rollback_list_show_and_discard_what_an_instance_left(served: Served, agent: Agent, tmp_path: Path) -> None:
    with served.client() as c:
        assert c.request(p.Rollback(action=p.RollbackAction.LIST)) == p.RollbackResult(running=[], pending=[])
        assert c.request("rollback", action="list", id=None, by="root") == {"ok": True, "running": [], "pending": []}
        with pytest.raises(Refused, match="no rollback area for an instance 'gone'"):
            c.request(p.Rollback(action=p.RollbackAction.SHOW, id="gone"))
        pending_area(agent, tmp_path / "real")
        (area,) = c.request(p.Rollback(action=p.RollbackAction.LIST)).pending or []
        assert (area.instance, area.extension, area.count, area.state) == ("tool-left", "tool", 1, None)
        shown = c.request("rollback", action="show", id="tool-left")
        assert shown["trees"] == [str(tmp_path / "real")] and shown["count"] == 1 and "state" not in shown
        done = c.request(p.Rollback(action=p.RollbackAction.DISCARD, id="tool-left", by="alice"))
        assert (done.instance, done.stopped, done.event, done.count, done.conflicts) == (
            "tool-left", False, "discarded", 1, [])
        assert c.request(p.Rollback(action=p.RollbackAction.LIST)).pending == []
    assert not (tmp_path / "real" / "new.txt").exists()


def test_the_answer_types_name_every_key_of_what_they_carry(agent: Agent, tmp_path: Path) -> None:
    """Status and rollback answers carry what Instance.summary() and Layer.show() say: a key one of them gains
    must gain a field in the table too (the agent would leave it out)."""
    inst = agent.engine.prepare(parse(manifest().encode(), "tool.yaml", home="/nonexistent"))
    assert set(inst.summary()) == {f.name for f in dataclasses.fields(p.InstanceState)}
    layer = pending_area(agent, tmp_path / "real")
    assert set(layer.show()) | {"state"} == {f.name for f in dataclasses.fields(p.RollbackArea)}


# ---- what the table refuses ---------------------------------------------------------------------------------
@pytest.mark.parametrize("payload,error", [
    (b"garbage\n", "request is not JSON"),
    (b"[1, 2]\n", "a request is a JSON object with a string 'op'"),
    (b'{"op": "nope"}\n', "unknown op 'nope' (the agent knows ping, status, launch, signal, records, subscribe, explain, prepare, started, exited, freeze, thaw, "
                          "kill, quarantine, attach, flag, promote, activity, rollback)"),
    (b'{"op": "status", "verbose": true}\n', "bad status request: unknown field 'verbose' (Status takes no fields)"),
    (b'{"op": "exited", "instance": "x", "status": "seven"}\n',
     "bad exited request: field 'status': expected integer, got string \"seven\""),
    (b'{"op": "started", "instance": "x", "pid": 1}\n', "bad started request: missing field 'argv'"),
    (b'{"op": "prepare", "extension": "tool", "mode": "loose"}\n',
     "bad prepare request: field 'mode': \"loose\" is not one of \"audit\", \"enforce\""),
])
def test_a_malformed_request_gets_a_precise_error_and_the_agent_keeps_serving(served: Served, payload: bytes,
                                                                             error: str) -> None:
    ans = served.raw(payload)
    assert ans["ok"] is False and ans["exit_code"] == 2 and ans["error"].startswith(error), ans
    assert served.raw(b'{"op": "ping"}\n')["ok"] is True


USER = p.Peer(pid=9, uid=1000, gid=1000)
OTHER = p.Peer(pid=10, uid=1001, gid=1001)


def _owned_by(agent: Agent, ident: str, uid: int) -> None:
    inst = next(i for i in agent.engine.instances.values() if i.id == ident)
    inst.sandbox["launched_by"] = uid  # as the agent's launch for that user records it


def test_a_user_sees_and_acts_on_their_own_instances_only(served: Served, agent: Agent) -> None:
    with served.client() as root:
        mine = root.request(p.Prepare(extension="tool")).instance
        theirs = root.request(p.Prepare(extension="tool")).instance
        _owned_by(agent, mine, USER.uid)
        _owned_by(agent, theirs, OTHER.uid)
        with served.client(USER) as c:
            assert c.request(p.Ping()).pid == os.getpid()
            report = c.request(p.Status())
            assert [i.instance for i in report.instances] == [mine] and report.instances[0].launched_by == USER.uid
            assert report.policy_errors == {}
            # by id, another user's instance is answered as if it did not exist; by name, only the caller's own
            with pytest.raises(Refused, match=f"no running instance or extension named '{theirs}'"):
                c.request(p.Kill(name=theirs))
            assert c.request(p.Freeze(name="tool")).instances == [mine]
            assert c.request(p.Thaw(name="tool")).instances == [mine]
            assert c.request(p.Activity(extension="tool")).following == [mine]
            with pytest.raises(Refused, match=f"no extension or instance named '{theirs}'"):
                c.request(p.Activity(extension=theirs))
            assert c.request(p.Rollback(action=p.RollbackAction.LIST)) == p.RollbackResult(running=[], pending=[])
        assert {i.instance for i in root.request(p.Status()).instances} == {mine, theirs}  # root sees every one


@pytest.mark.parametrize("op", [p.Flag(extension="tool", reason="x"), p.Promote(extension="tool"),
                                p.Prepare(extension="tool"), p.Started(instance="i", pid=1, argv=[]),
                                p.Exited(instance="i", status=0), p.Attach(pid=1, manifest_text="x")])
def test_root_operations_refuse_a_user(served: Served, op: p.Request[Any]) -> None:
    with served.client(USER) as c:
        with pytest.raises(Refused, match=f"{p.BY_REQUEST[type(op)].name} is for root only .*; this connection's "
                                          "peer is uid 1000") as err:
            c.request(op)
        assert err.value.exit_code == 1
        assert c.request(p.Ping()).pid == os.getpid()  # the connection still serves


def test_a_users_record_names_them_not_what_they_claim(served: Served, agent: Agent) -> None:
    with served.client() as root:
        mine = root.request(p.Prepare(extension="tool")).instance
    _owned_by(agent, mine, USER.uid)
    agent._who(p.Session(USER), "root")  # the account may not exist here: then "uid 1000"
    assert agent._who(p.Session(USER), "root") != "root" and "1000" in agent._who(p.Session(USER), "root")
    assert agent._who(p.Session(p.Peer(pid=1, uid=0, gid=0)), "alice") == "alice"


def test_a_users_connections_are_limited_and_others_still_served(served: Served, agent: Agent) -> None:
    socks = [served.connect(USER) for _ in range(agent.limits.connections)]
    try:
        with served.connect(USER) as over:
            answer = json.loads(over.makefile("rb").readline())
            assert answer["ok"] is False and "has 16 connections open to the agent (the limit)" in answer["error"]
            assert over.recv(1) == b""
        with served.client(OTHER) as c:
            assert c.request(p.Ping()).pid == os.getpid()
    finally:
        for s in socks:
            s.close()


def test_a_users_request_size_is_limited(served: Served, agent: Agent) -> None:
    with served.connect(USER) as s:
        s.sendall(b"x" * (agent.limits.request_bytes + 2))
        f = s.makefile("rb")
        assert json.loads(f.readline())["error"] == f"request longer than {agent.limits.request_bytes} bytes"
        assert f.readline() == b""


def test_a_launch_without_its_stdio_or_with_a_folder_is_refused(served: Served, tmp_path: Path) -> None:
    import array  # noqa: PLC0415

    req = {"op": "launch", "extension": "tool", "argv": ["/bin/true"]}
    with served.client(USER) as c:
        with pytest.raises(Refused, match="carries the caller's stdin, stdout and stderr .*: 0 file descriptors"):
            c.request("launch", extension="tool", argv=["/bin/true"])
    with served.connect(USER) as s:
        d = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            s.sendmsg([json.dumps(req).encode() + b"\n"],
                      [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, d, 2]))])
        finally:
            os.close(d)
        answer = json.loads(s.makefile("rb").readline())
        assert answer == {"ok": False, "error": "the stdout passed is a folder, not a stream", "exit_code": 2}
    r, w = os.pipe()
    os.close(r)
    with served.connect(USER) as s:  # a pipe nobody reads any more
        try:
            s.sendmsg([json.dumps(req).encode() + b"\n"],
                      [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, w, 2]))])
        finally:
            os.close(w)
        answer = json.loads(s.makefile("rb").readline())
        assert answer == {"ok": False, "exit_code": 2, "error": "the stdout passed is a pipe whose reading end is "
                                                                "closed: nothing could be written"}
    with served.connect(USER) as s:  # more descriptors than a request carries: refused, hung up on
        s.sendmsg([json.dumps(req).encode() + b"\n"],
                  [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2, 0]))])
        f = s.makefile("rb")
        assert json.loads(f.readline())["error"] == "a request carries at most 3 file descriptors"
        assert f.readline() == b""


def test_a_launch_naming_another_user_is_refused(served: Served) -> None:
    import pwd  # noqa: PLC0415

    user = pwd.getpwuid(65534)  # nobody: a user every host has
    text = manifest("mine").replace("spec:\n", "spec:\n  user: root\n", 1)
    assert "user: root" in text
    with served.connect(p.Peer(pid=9, uid=user.pw_uid, gid=user.pw_gid)) as s:
        import array  # noqa: PLC0415

        s.sendmsg([json.dumps({"op": "launch", "manifest_text": text, "argv": ["/bin/true"]}).encode() + b"\n"],
                  [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])
        answer = json.loads(s.makefile("rb").readline())
    assert answer["ok"] is False and answer["exit_code"] == 2, answer
    assert f"spec.user: names 'root', but an instance you launch runs as you ({user.pw_name})" in answer["error"]


@pytest.mark.parametrize(("payload", "error"), [
    (b"[" * 100_000 + b"\n", "request is not JSON: nested too deeply"),
    (json.dumps({"op": "prepare", "manifest_text": "[" * 3000 + "]" * 3000}).encode() + b"\n",
     "nested deeper than 32 levels: not a manifest"),
    (json.dumps({"op": "prepare", "manifest_text": "a: &a [x, x]\nb: [*a, *a]\n"}).encode() + b"\n",
     "YAML anchors and aliases (&name, *name) are not accepted in a manifest"),
])
def test_a_request_built_to_crash_or_stall_the_agent_gets_an_error(served: Served, payload: bytes,
                                                                   error: str) -> None:
    ans = served.raw(payload)
    assert ans["ok"] is False and error in ans["error"] and ans["exit_code"] == 2, ans
    assert served.raw(b'{"op": "ping"}\n')["ok"] is True  # still serving


def test_an_overlong_request_is_refused_and_its_connection_closed(served: Served) -> None:
    with served.connect() as s:
        s.sendall(b"x" * (p.MAX_REQUEST + 2))
        f = s.makefile("rb")
        assert json.loads(f.readline())["error"] == f"request longer than {p.MAX_REQUEST} bytes"
        assert f.readline() == b""


# ---- the policy folder ------------------------------------------------------------------------------------------
def test_the_policy_folder_loads_rejects_keeps_and_forgets(tmp_path: Path) -> None:
    d = tmp_path / "policies"
    d.mkdir()
    (d / "tool.yaml").write_text(manifest())
    (d / "notes.txt").write_text("not a manifest")
    pd = PolicyDir(d, tmp_path / "trust")
    (line,) = pd.scan()
    assert line.startswith("policy tool 1 loaded from tool.yaml") and set(pd.manifests()) == {"tool"}
    assert pd.scan() == []  # nothing changed
    (d / "tool.yaml").write_text("x: [\n")
    os.utime(d / "tool.yaml", ns=(1, 1))
    (line,) = pd.scan()
    assert line.startswith("policy tool.yaml rejected, previous version kept:") and pd.manifests()["tool"].version == "1"
    assert str(d / "tool.yaml") in pd.errors
    (d / "tool.yaml").write_text(manifest(version="2"))
    (line,) = pd.scan()
    assert line.startswith("policy tool reloaded:") and pd.manifests()["tool"].version == "2" and not pd.errors
    (d / "tool.yaml").unlink()
    assert pd.scan() == ["policy tool removed (tool.yaml is gone)"] and pd.manifests() == {}
    assert [e["event"] for _, e in pd.pending] == ["loaded", "loaded"]


def test_the_policy_folder_requires_signatures_where_asked(tmp_path: Path) -> None:
    d, trust = tmp_path / "policies", tmp_path / "trust"
    d.mkdir()
    (d / "tool.yaml").write_text(manifest())
    (d / "watch.yaml").write_text(manifest("watch", mode="audit"))
    (d / "signed.yaml").write_text(manifest("signed"))
    keygen("acme", tmp_path / "acme.key")
    TrustStore(trust).add(f"{tmp_path / 'acme.key'}.pub")
    sign(tmp_path / "acme.key", d / "signed.yaml")
    (d / REQUIRE_SIGNED_FILE).write_text("")
    pd = PolicyDir(d, trust)
    lines = pd.scan()
    assert pd.require_signed and set(pd.manifests()) == {"watch", "signed"}
    assert any(x.startswith("policy tool.yaml rejected: signature required: ") for x in lines), lines
    signature = pd.signature(pd.manifests()["signed"])
    assert signature is not None and signature.ok and signature.publisher == "acme"
    assert ("tool", "rejected") in [(m.name, e["event"]) for m, e in pd.pending]


def test_a_promotion_outlives_the_policy_folder(tmp_path: Path) -> None:
    d = tmp_path / "policies"
    d.mkdir()
    (d / "tool.yaml").write_text(manifest())
    (d / "tool-next.yaml").write_text(manifest(version="2", shadow=True))
    pd = PolicyDir(d, tmp_path / "trust", promoted_file=tmp_path / "promoted.json")
    pd.scan()
    assert (pd.manifests()["tool"].version, pd.shadows()["tool"].version) == ("1", "2")
    old, new = pd.promote("tool")
    assert old is not None and (old.version, new.version) == ("1", "2") and pd.shadows() == {}
    again = PolicyDir(d, tmp_path / "trust", promoted_file=tmp_path / "promoted.json")
    again.scan()
    assert again.manifests()["tool"].version == "2"
    with pytest.raises(Exception, match="'tool' has no shadow version loaded"):
        again.promote("tool")


def test_a_users_own_manifest_under_require_signed_needs_a_trusted_signature(
        tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    import array  # noqa: PLC0415
    import pwd  # noqa: PLC0415

    monkeypatch.setattr("ebpfguard.service.agent.bpf_lsm_status", lambda: (False, "not probed in the unit tier"))

    def reached(*_a: Any, **_k: Any) -> Any:
        raise p.BadRequest("the signature passed: the launch itself is the e2e tier's")

    monkeypatch.setattr("ebpfguard.service.agent.start_for_caller", reached)
    policies, trust, own = tmp_path / "policies", tmp_path / "trust", tmp_path / "own"
    policies.mkdir()
    own.mkdir()
    (policies / REQUIRE_SIGNED_FILE).write_text("")
    keygen("acme", tmp_path / "acme.key")
    keygen("acme", tmp_path / "stranger.key")
    TrustStore(trust).add(f"{tmp_path / 'acme.key'}.pub")
    (own / "mine.yaml").write_text(manifest("mine"))
    (own / "theirs.yaml").write_text(manifest("theirs"))
    sign(tmp_path / "acme.key", own / "mine.yaml")
    sign(tmp_path / "stranger.key", own / "theirs.yaml")
    a = Agent(str(engine.state.root), str(policies), engine=engine, trust_dir=str(trust))
    a.setup()
    a.scan_policies()
    served = Served(a)
    nobody = pwd.getpwuid(65534)

    def launch(text: str, signature: str | None) -> dict[str, Any]:
        req = {"op": "launch", "manifest_text": text, "manifest_path": "/home/u/mine.yaml", "argv": ["/bin/true"],
               **({"signature_text": signature} if signature is not None else {})}
        with served.connect(p.Peer(pid=9, uid=nobody.pw_uid, gid=nobody.pw_gid)) as s:
            s.sendmsg([json.dumps(req).encode() + b"\n"],
                      [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])
            return dict(json.loads(s.makefile("rb").readline()))

    mine, sig = (own / "mine.yaml").read_text(), (own / "mine.yaml.sig").read_text()
    try:
        unsigned = launch(mine, None)
        assert not unsigned["ok"] and "came without a signature (no mine.yaml.sig beside it)" in unsigned["error"]
        stranger = launch((own / "theirs.yaml").read_text(), (own / "theirs.yaml.sig").read_text())
        assert not stranger["ok"] and stranger["exit_code"] == 126, stranger
        assert "launch refused: theirs: untrusted" in stranger["error"]
        tampered = launch(mine.replace("/usr/bin/true", "/usr/bin/env"), sig)
        assert not tampered["ok"] and "launch refused: mine: tampered" in tampered["error"], tampered
        signed = launch(mine, sig)
        assert not signed["ok"] and "the signature passed" in signed["error"], signed
        refused = [r for r in read(engine.state) if not isinstance(r, BadLine) and r["kind"] == "policy"
                   and r["detail"]["event"] == "launch-refused"]
        assert [(r["extension"], r["detail"]["signature"]["status"]) for r in refused] == [
            ("theirs", "untrusted"), ("mine", "tampered")]
    finally:
        served.stop.set()
        served.thread.join()
        a.server.close()

"""The control protocol's table on its own: every operation's request and answer round-trip through the wire, the
validator names the field and the fault, the caller classes authorize by the peer's uid, each row's handler is its
own operation's, the client checks a request before it is sent, and docs/protocol.md is the table's."""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path
from typing import Any, cast

import pytest

from ebpfguard.manifest.load import Mode
from ebpfguard.service import protocol as p
from ebpfguard.service.control import Client, Refused
from ebpfguard.service.wire import decode, to_wire

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
ROOT = p.Peer(pid=1, uid=0, gid=0)
USER = p.Peer(pid=2, uid=1000, gid=1000)

# one valid request per operation, as a client would build it
REQUESTS: dict[str, p.Request[Any]] = {
    "ping": p.Ping(),
    "status": p.Status(),
    "launch": p.Launch(extension="e", argv=["/usr/bin/env", "-i"], env={"LANG": "C"}, cwd="/home/u"),
    "signal": p.Signal(instance="i", signal="SIGINT"),
    "records": p.Records(since_seq=7, extension="e", kinds=["file"], limit=10),
    "subscribe": p.Subscribe(),
    "explain": p.Explain(seq=7),
    "prepare": p.Prepare(manifest_text="x", manifest_path="/m.yaml", home="/home/u", mode=Mode.AUDIT, files="/ext",
                         signature_text="sig"),
    "started": p.Started(instance="i", pid=7, argv=["/bin/true", "-x"], sandbox={"layers": ["landlock-fs"]}),
    "exited": p.Exited(instance="i", status=137),
    "freeze": p.Freeze(name="i"),
    "thaw": p.Thaw(name="i"),
    "kill": p.Kill(name="i"),
    "quarantine": p.Quarantine(name="i", lift=True),
    "attach": p.Attach(pid=7, manifest_text="x", mode=Mode.ENFORCE),
    "flag": p.Flag(extension="e", reason="CVE", by="alice"),
    "promote": p.Promote(extension="e"),
    "activity": p.Activity(pid=7),
    "rollback": p.Rollback(action=p.RollbackAction.SHOW, id="i"),
}


def test_the_table_names_each_operation_and_request_type_once() -> None:
    assert list(REQUESTS) == [op.name for op in p.OPERATIONS]
    assert len({op.request for op in p.OPERATIONS}) == len(p.OPERATIONS)
    for op in p.OPERATIONS:
        assert dataclasses.is_dataclass(op.request) and dataclasses.is_dataclass(op.answer)
        assert op.request.__dataclass_params__.frozen and op.answer.__dataclass_params__.frozen


def test_each_operations_caller_class() -> None:
    """What only root may do (policies, root's own launcher, adoption), what a user does on their own, and ping."""
    by = {c: sorted(op.name for op in p.OPERATIONS if op.caller is c) for c in p.Caller}
    assert by == {p.Caller.ROOT: ["attach", "exited", "flag", "prepare", "promote", "started"],
                  p.Caller.OWNER: ["activity", "explain", "freeze", "kill", "launch", "quarantine", "records",
                                   "rollback", "signal", "status", "subscribe", "thaw"],
                  p.Caller.ANYONE: ["ping"]}


def test_each_rows_handler_is_the_method_of_its_own_operation() -> None:
    called: list[tuple[str, object]] = []

    class Recorder:
        def __getattr__(self, name: str) -> Any:
            def handler(s: p.Session, req: object) -> str:
                called.append((name, req))
                return "answer"
            return handler

    session = p.Session(ROOT)
    for op in p.OPERATIONS:
        assert op.handler(Recorder(), session, REQUESTS[op.name]) == "answer"
    assert called == [(op.name, REQUESTS[op.name]) for op in p.OPERATIONS]


@pytest.mark.parametrize("name", list(REQUESTS))
def test_every_request_round_trips_through_the_wire(name: str) -> None:
    req = REQUESTS[name]
    wire = json.loads(json.dumps(p.encode_request(req)))
    assert wire["op"] == name
    op = p.operation_of(wire)
    assert op.name == name and op.parse(wire) == req


def test_answers_round_trip_and_a_sparse_answer_leaves_out_what_its_action_has_not() -> None:
    op = p.BY_NAME["promote"]
    ans = p.Promoted(name="e", version="2", sha256="ab", replaces=p.Replaced(version="1", sha256="cd"))
    wire = json.loads(json.dumps(p.encode_answer(op, ans)))
    assert wire == {"ok": True, "name": "e", "version": "2", "sha256": "ab", "replaces": {"version": "1", "sha256": "cd"}}
    assert p.decode_answer(op, wire) == ans
    done = p.RollbackResult(instance="i", stopped=True, event="discarded")
    assert p.encode_answer(p.BY_NAME["rollback"], done) == {"ok": True, "instance": "i", "stopped": True,
                                                             "event": "discarded"}
    prepared = p.Prepared(instance="i", procs_files=["/a"], cgroup="/c", manifest_text="x", manifest_path="m",
                          home=None, allow_root=False, dbus_proxies={}, rollback={"/srv": ("/u", "/w")})
    wire = json.loads(json.dumps(p.encode_answer(p.BY_NAME["prepare"], prepared)))
    assert wire["rollback"] == {"/srv": ["/u", "/w"]} and wire["home"] is None
    assert p.decode_answer(p.BY_NAME["prepare"], wire) == prepared


def test_an_answer_field_a_newer_agent_added_is_ignored_a_missing_one_is_named() -> None:
    op = p.BY_NAME["ping"]
    assert p.decode_answer(op, {"ok": True, "pid": 1, "started": "t", "uptime": 5}) == p.Pong(pid=1, started="t")
    with pytest.raises(Exception, match="the agent's ping answer: missing field 'started'"):
        p.decode_answer(op, {"ok": True, "pid": 1})


def test_a_handler_that_answers_another_type_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="the ping handler answered a Done, not a Pong"):
        p.encode_answer(p.BY_NAME["ping"], p.Done())


def bad(obj: dict[str, Any]) -> str:
    with pytest.raises(p.BadRequest) as err:
        p.operation_of(obj).parse(obj)
    assert err.value.exit_code == 2
    return str(err.value)


def test_an_unknown_operation_lists_the_known_ones_from_the_table() -> None:
    known = ", ".join(op.name for op in p.OPERATIONS)
    assert bad({"op": "nope"}) == f"unknown op 'nope' (the agent knows {known})"
    assert bad({"op": 5}) == "a request is a JSON object with a string 'op'"


@pytest.mark.parametrize("obj,error", [
    ({"op": "ping", "verbose": True}, "bad ping request: unknown field 'verbose' (Ping takes no fields)"),
    ({"op": "exited", "instance": "i", "status": 0, "signal": 9},
     "bad exited request: unknown field 'signal' (Exited takes instance, status)"),
    ({"op": "exited", "instance": "i", "status": "seven"},
     "bad exited request: field 'status': expected integer, got string \"seven\""),
    ({"op": "exited", "instance": "i", "status": True}, "field 'status': expected integer, got boolean true"),
    ({"op": "exited", "instance": 3, "status": 0}, "field 'instance': expected string, got integer 3"),
    ({"op": "started", "instance": "i", "pid": 1, "argv": ["/bin/sh", 5]},
     "field 'argv[1]': expected string, got integer 5"),
    ({"op": "started", "instance": "i", "pid": 1, "argv": "/bin/sh"}, "field 'argv': expected [string], got string"),
    ({"op": "started", "instance": "i", "pid": 1, "argv": [], "sandbox": []},
     "field 'sandbox': expected {string: any}, got list []"),
    ({"op": "started", "instance": "i", "pid": 1}, "bad started request: missing field 'argv'"),
    ({"op": "exited", "status": 0}, "bad exited request: missing field 'instance'"),
    ({"op": "prepare", "extension": "e", "mode": "loose"},
     "bad prepare request: field 'mode': \"loose\" is not one of \"audit\", \"enforce\""),
    ({"op": "prepare"}, "bad prepare request: give exactly one of extension (a policy's name) or manifest_text"),
    ({"op": "prepare", "extension": "e", "manifest_text": "x"}, "give exactly one of extension"),
    ({"op": "prepare", "manifest_text": 7}, "field 'manifest_text': expected string, got integer 7"),
    ({"op": "activity"}, "bad activity request: give exactly one of extension or pid"),
    ({"op": "rollback", "action": "undo"}, "field 'action': \"undo\" is not one of \"list\", \"show\", \"commit\""),
    ({"op": "rollback", "action": "commit"}, "bad rollback request: field 'id': rollback commit needs an instance id"),
    ({"op": "flag", "extension": "e"}, "bad flag request: a flag needs a reason"),
    ({"op": "flag", "extension": "", "clear": True}, "field 'extension': an empty name"),
    ({"op": "quarantine", "name": "i", "lift": "yes"}, "field 'lift': expected boolean, got string \"yes\""),
])
def test_a_malformed_request_is_refused_naming_the_field_and_the_fault(obj: dict[str, Any], error: str) -> None:
    assert error in bad(obj)


def test_a_null_field_is_the_same_as_one_left_out() -> None:
    req = p.BY_NAME["rollback"].parse({"op": "rollback", "action": "list", "id": None, "by": None})
    assert req == p.Rollback(action=p.RollbackAction.LIST)
    assert "id" not in p.encode_request(req)
    assert bad({"op": "exited", "instance": "i", "status": None}).endswith("field 'status': expected integer, got null")


def test_the_caller_classes_admit_by_uid() -> None:
    assert p.Caller.ROOT.admits(ROOT) and not p.Caller.ROOT.admits(USER)
    assert p.Caller.OWNER.admits(USER) and p.Caller.ANYONE.admits(USER)
    p.authorize(p.BY_NAME["flag"], ROOT)
    with pytest.raises(p.NotAllowed, match=r"flag is for root only \(uid 0 only: .*\); this connection's peer is "
                                           r"uid 1000"):
        p.authorize(p.BY_NAME["flag"], USER)
    for caller in (p.Caller.OWNER, p.Caller.ANYONE):
        p.authorize(dataclasses.replace(p.BY_NAME["flag"], caller=caller), USER)
    assert p.owns(ROOT, 1000) and p.owns(USER, 1000) and not p.owns(USER, 1001) and not p.owns(USER, 0)


@pytest.mark.parametrize(("fields", "error"), [
    ({"extension": "e", "argv": ["true"]}, "field 'argv': a command whose first word is an absolute path"),
    ({"extension": "e", "argv": []}, "field 'argv': a command whose first word is an absolute path"),
    ({"extension": "e", "argv": ["/bin/true"], "cwd": "rel"}, "field 'cwd': an absolute path"),
    ({"argv": ["/bin/true"]}, "give exactly one of extension (a policy's name) or manifest_text"),
])
def test_a_launch_request_is_checked(fields: dict[str, Any], error: str) -> None:
    with pytest.raises(p.BadRequest, match=f"bad launch request: {error}".replace("(", r"\(").replace(")", r"\)")):
        p.BY_NAME["launch"].parse(fields)


def test_only_the_forwarded_signals_are_sent() -> None:
    with pytest.raises(p.BadRequest, match="'SIGKILL' is not forwarded"):
        p.BY_NAME["signal"].parse({"instance": "i", "signal": "SIGKILL"})


def test_the_reference_is_the_table() -> None:
    text = p.reference()
    for op in p.OPERATIONS:
        assert f"### {op.name}\n\nCaller: **{op.caller.value}**" in text
        for f in dataclasses.fields(cast(Any, op.request)):
            assert f"| `{f.name}` |" in text
    assert DOC.read_text() == text, (
        "docs/protocol.md differs from the protocol table in ebpfguard/service/protocol.py: regenerate it with "
        "`python -m ebpfguard.service.protocol > docs/protocol.md`")


def test_the_wire_codec_decodes_nested_answers_and_names_nested_fields() -> None:
    state = {"pid": 1, "started": "t", "state": "enforcing", "state_dir": "/s", "cgroup_mode": "v2",
             "counters": {"events": 1}, "records_written": 0, "records_failed": 0, "landlock_reports": "off",
             "metrics": {"address": None, "error": None}, "syscall_gates": [], "syscalls_not_in_kernel": [],
             "layers": []}
    report = {"agent": state, "policies": [], "shadows": [], "require_signed": False, "trust": "/t",
              "policy_errors": {}, "instances": [], "others": 0}
    assert to_wire(decode(p.Report, report, strict=True)) == report
    with pytest.raises(ValueError, match=r"field 'agent.counters\[\"events\"\]': expected integer, got string \"1\""):
        decode(p.Report, {**report, "agent": {**state, "counters": {"events": "1"}}}, strict=True)
    with pytest.raises(ValueError, match="unknown field 'agent.extra'"):
        decode(p.Report, {**report, "agent": {**state, "extra": 1}}, strict=True)


# ---- the client -----------------------------------------------------------------------------------------------
def test_the_client_checks_a_request_by_name_before_sending_it() -> None:
    a, b = socket.socketpair()
    with a, Client.over(b) as c:
        with pytest.raises(p.BadRequest, match="unknown op 'nope'"):
            c.request("nope")
        with pytest.raises(p.BadRequest, match="field 'pid': expected integer"):
            c.request("attach", pid="7", manifest_text="x")
        a.setblocking(False)
        with pytest.raises(BlockingIOError):
            a.recv(1)  # nothing went out


def test_the_client_raises_a_failure_with_its_exit_code_and_reads_a_typed_answer() -> None:
    a, b = socket.socketpair()
    with a, Client.over(b) as c:
        a.sendall(b'{"ok": false, "error": "refused by a signature check", "exit_code": 126}\n')
        with pytest.raises(Refused, match="refused by a signature check") as err:
            c.request(p.Ping())
        assert err.value.exit_code == 126
        assert json.loads(a.recv(4096)) == {"op": "ping"}
        a.sendall(b'{"ok": true, "pid": 9, "started": "t"}\n')
        assert c.request(p.Ping()) == p.Pong(pid=9, started="t")
        a.sendall(b'{"ok": true, "pid": 9, "started": "t"}\n')
        assert c.request("ping") == {"ok": True, "pid": 9, "started": "t"}

"""Desktop users launch their plug-ins through the root agent, as themselves: real users (useradd, removed after),
the real agent, its control socket at a 0755 folder of root's, and the user's own `ebpfguard run` (the package
copied where any user can read it: the checkout may sit in root's home). Judged as a user and an attacker would:
the instance runs as its caller with the caller's stdio, files and signals; a second user can neither see nor touch
it; a manifest naming root is refused; the limits hold and the agent serves everyone else meanwhile."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import SLOW, Served, User, serve, wait

pytestmark = pytest.mark.e2e

POLICY = """apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {{name: {name}, version: "1"}}
spec:
  mode: enforce
  filesystem:
    read: [/usr/, /lib/, /lib64/, /etc/ld.so.cache, /etc/passwd, ~/work/]
    write: [~/work/]
    exec: [/usr/bin/sh, /bin/sh, /usr/bin/dash, /bin/dash, /usr/bin/cat, /bin/cat, /usr/bin/id, /bin/id,
           /usr/bin/sleep, /bin/sleep, /usr/bin/true, /bin/true]
  response: {{file: block}}
"""


@pytest.fixture(scope="module")
def served(users: tuple[User, User]) -> Iterator[Served]:
    with serve({"user-tool.yaml": POLICY.format(name="user-tool")}) as s:
        yield s


def _instances(s: Served) -> list[dict[str, Any]]:
    return list(s.status()["instances"])


def test_the_socket_reaches_every_user_and_its_folder_is_roots(served: Served, users: tuple[User, User]) -> None:
    st = os.stat(served.socket)
    assert st.st_mode & 0o777 == 0o666 and st.st_uid == 0
    folder = os.stat(served.socket.parent)
    assert folder.st_mode & 0o777 == 0o755 and folder.st_uid == 0
    r = served.as_user(users[0], "status", "--json")
    assert r.returncode == 0, r.stderr
    ans = json.loads(r.stdout)
    assert ans["agent"]["state"] == "enforcing" and [p["name"] for p in ans["policies"]] == ["user-tool"]


def test_a_user_launches_a_policy_by_name_as_themselves(served: Served, users: tuple[User, User]) -> None:
    u = users[0]
    r = served.as_user(u, "run", "-e", "user-tool", "--", "/bin/sh", "-c",
                       'id -u; cat > "$HOME/work/out.txt"; cat "$HOME/work/out.txt"; exit 7',
                       input="typed by the user\n", umask=0o027)
    assert r.returncode == 7, r.stdout + r.stderr + served.output()
    assert r.stdout.splitlines() == [str(u.uid), "typed by the user"], r.stdout
    made = (u.home / "work" / "out.txt").stat()
    assert (made.st_uid, made.st_gid) == (u.uid, u.gid)  # their files stay theirs
    assert made.st_mode & 0o777 == 0o640  # made with the umask of the client that launched it
    start = next(x for x in served.records() if x["kind"] == "lifecycle" and x["detail"]["event"] == "start"
                 and x["extension"] == "user-tool" and x["detail"].get("sandbox", {}).get("launched_by") == u.uid)
    assert start["detail"]["sandbox"]["uid"] == u.uid and start["detail"]["sandbox"]["user"] == u.name


def test_a_user_launches_their_own_manifest_and_a_credential_read_fails(served: Served,
                                                                       users: tuple[User, User]) -> None:
    u = users[0]
    mine = u.home / "mine.yaml"
    mine.write_text(POLICY.format(name="own-tool"))
    os.chown(mine, u.uid, u.gid)
    secret = u.home / ".ssh-like-secret"
    secret.write_text("the user's own key\n")
    os.chown(secret, u.uid, u.gid)
    os.chmod(secret, 0o600)
    r = served.as_user(u, "run", "-m", str(mine), "--", "/bin/cat", str(secret))
    assert r.returncode != 0 and "the user's own key" not in r.stdout, r.stdout + r.stderr
    wait("the refused read is recorded", lambda: any(
        x["kind"] == "file" and x["extension"] == "own-tool" and x["detail"].get("path") == str(secret)
        for x in served.records()))
    # the user reads their own records through the agent (the log is root's); the other user sees none of them
    r = served.as_user(u, "forensics", "show", "--json", "--kind", "file")
    assert r.returncode == 0, r.stderr
    (rec,) = [x for x in map(json.loads, r.stdout.splitlines()) if x["detail"].get("path") == str(secret)]
    why = served.as_user(u, "explain", str(rec["seq"]))
    assert why.returncode == 0 and "spec.filesystem" in why.stdout, why.stdout + why.stderr
    other = users[1]
    theirs = served.as_user(other, "forensics", "show", "--json")
    assert theirs.returncode == 0 and str(secret) not in theirs.stdout and "own-tool" not in theirs.stdout
    refused = served.as_user(other, "explain", str(rec["seq"]))
    assert refused.returncode != 0 and f"no record {rec['seq']} of an instance uid {other.uid} launched" in \
        refused.stderr, refused.stderr


def test_a_manifest_naming_root_or_another_user_is_refused(served: Served, users: tuple[User, User]) -> None:
    u, other = users
    for who in ("root", other.name):
        bad = u.home / f"as-{who}.yaml"
        bad.write_text(POLICY.format(name="escalate").replace("spec:\n", f"spec:\n  user: {who}\n", 1))
        os.chown(bad, u.uid, u.gid)
        before = len(served.records())
        r = served.as_user(u, "run", "-m", str(bad), "--", "/usr/bin/id", "-u")
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"spec.user: names '{who}', but an instance you launch runs as you ({u.name})" in r.stderr
        assert r.stdout == "" and not _instances(served)
        assert not [x for x in served.records()[before:] if x.get("extension") == "escalate"]  # nothing ran


def test_a_second_user_can_neither_see_nor_touch_the_first_users_instance(served: Served,
                                                                           users: tuple[User, User]) -> None:
    u, other = users
    client = served.start_as_user(u, "run", "-e", "user-tool", "--", "/bin/sleep", "60",
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait("the instance runs", lambda: bool(_instances(served)))
        (inst,) = _instances(served)
        assert inst["launched_by"] == u.uid and inst["user"] == u.name
        theirs = json.loads(served.as_user(other, "status", "--json").stdout)
        assert theirs["instances"] == [] and theirs["others"] == 1  # counted, never named
        assert "instances (0; 1 more of other users)" in served.as_user(other, "status").stdout
        for cmd in (("kill", inst["instance"]), ("kill", "user-tool"), ("freeze", inst["instance"])):
            r = served.as_user(other, *cmd)
            assert r.returncode != 0 and "no running instance or extension named" in r.stderr, r.stderr
        r = served.as_user(other, "rollback", "discard", inst["instance"])
        assert r.returncode != 0 and "no rollback area" in r.stderr, r.stdout + r.stderr
        assert _instances(served)[0]["state"] == "running"  # untouched
        mine = json.loads(served.as_user(u, "status", "--json").stdout)
        assert [i["instance"] for i in mine["instances"]] == [inst["instance"]]
        r = served.as_user(u, "kill", "user-tool")  # the owner may
        assert r.returncode == 0, r.stderr
        assert client.wait(30 * SLOW) == 128 + signal.SIGKILL
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    wait("the instance is released", lambda: not _instances(served))


def test_signals_reach_the_instance_and_the_status_is_its_own(served: Served, users: tuple[User, User]) -> None:
    u = users[0]
    script = 'trap "echo got INT; exit 3" INT; echo ready; while :; do sleep 0.1; done'
    client = served.start_as_user(u, "run", "-e", "user-tool", "--", "/bin/sh", "-c", script,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == "ready\n"
        client.send_signal(signal.SIGINT)
        assert client.wait(30 * SLOW) == 3
        assert client.stdout.read() == "got INT\n"
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()


def test_a_client_that_dies_stops_its_instance(served: Served, users: tuple[User, User]) -> None:
    u = users[0]
    client = served.start_as_user(u, "run", "-e", "user-tool", "--", "/bin/sleep", "60",
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait("the instance runs", lambda: bool(_instances(served)))
    (inst,) = _instances(served)
    client.kill()
    client.wait()
    wait("the instance of a dead client is stopped", lambda: not _instances(served))
    recs = [x for x in served.records() if x.get("instance") == inst["instance"]]
    assert any(x["kind"] == "lifecycle" and x["detail"]["event"] == "kill" and
               x["detail"].get("why") == "the connection that launched it closed" for x in recs), recs
    assert any(x["kind"] == "lifecycle" and x["detail"]["event"] == "stop" for x in recs)


def test_a_folder_the_user_cannot_enter_is_a_precise_error(served: Served, users: tuple[User, User]) -> None:
    u = users[0]
    r = served.as_user(u, "run", "-e", "user-tool", "--", "/usr/bin/id", "-u", cwd="/root")
    assert r.returncode != 0 and r.stdout == ""
    assert "failed to enter the working directory /root" in r.stderr and "Permission denied" in r.stderr, r.stderr
    assert not _instances(served)
    hidden = Path(tempfile.mkdtemp(prefix="eg-cwd-", dir="/tmp"))  # the host's /tmp: not in the instance's view
    try:
        os.chown(hidden, u.uid, u.gid)
        r = served.as_user(u, "run", "-e", "user-tool", "--", "/usr/bin/id", "-u", cwd=str(hidden))
        assert r.returncode != 0 and r.stdout == ""
        assert f"failed to enter the working directory {hidden}: it is not in the instance's view" in r.stderr, \
            r.stderr
    finally:
        hidden.rmdir()


LAUNCH_LOOP = r"""
import array, json, os, socket, sys, time
t0 = time.monotonic()
s = socket.socket(socket.AF_UNIX)
s.connect(os.environ["EBPFGUARD_SOCKET"])
f = s.makefile("rb")
ok = refused = 0
errors = set()
req = json.dumps({"op": "launch", "extension": "user-tool", "argv": ["/bin/true"]}).encode() + b"\n"
for _ in range(int(sys.argv[1])):
    s.sendmsg([req], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])
    while True:
        line = json.loads(f.readline())
        if "exited" not in line:
            break
    if line["ok"]:
        ok += 1
    else:
        refused += 1
        errors.add(line["error"])
print(json.dumps({"ok": ok, "refused": refused, "errors": sorted(errors), "seconds": time.monotonic() - t0}))
"""


def test_a_thousand_launches_in_a_loop_hit_the_limit_and_others_are_served(served: Served,
                                                                          users: tuple[User, User]) -> None:
    u, other = users
    loop = subprocess.Popen(["/usr/bin/python3", "-c", LAUNCH_LOOP, "1000"], user=u.uid, group=u.gid,
                            extra_groups=[], env=served.env(u), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    r = served.as_user(other, "status", "--json")  # while it runs, another user is served
    assert r.returncode == 0, r.stderr
    out, err = loop.communicate(timeout=300 * SLOW)
    assert loop.returncode == 0, err
    got = json.loads(out)
    windows = int(got["seconds"] // 10) + 1  # the limit: 20 launches in any 10 s
    assert 0 < got["ok"] <= 20 * windows and got["ok"] + got["refused"] == 1000, got
    assert any("launched 20 instances in the last 10 s (the limit is 20)" in e for e in got["errors"]), got
    wait("the launched instances end", lambda: not _instances(served), within=60)
    assert served.root("status").returncode == 0
    # the limit is a window, not a ban: once 10 s have passed the same user is served again (and the module's
    # later tests launch as this user)
    wait("the user is served again", lambda: served.as_user(u, "run", "-e", "user-tool", "--", "/bin/true")
         .returncode == 0, within=30)


@pytest.mark.parametrize("payload,error", [
    (b"garbage\n", "request is not JSON"),
    (b'{"op": "flag", "extension": "user-tool", "reason": "x"}\n', "flag is for root only"),
    (b'{"op": "launch", "extension": "user-tool", "argv": ["true"]}\n', "an absolute path"),
    (b'{"op": "signal", "instance": "x", "signal": "SIGKILL"}\n', "'SIGKILL' is not forwarded"),
])
def test_bad_requests_of_a_user_get_precise_errors(served: Served, users: tuple[User, User], payload: bytes,
                                                   error: str) -> None:
    probe = ("import os,socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(os.environ['EBPFGUARD_SOCKET'])\n"
             "s.sendall(sys.stdin.buffer.read())\nprint(s.makefile('rb').readline().decode())")
    r = subprocess.run(["/usr/bin/python3", "-c", probe], input=payload, user=users[0].uid, group=users[0].gid,
                       extra_groups=[], env=served.env(users[0]), capture_output=True, timeout=30)
    ans = json.loads(r.stdout)
    assert ans["ok"] is False and error in ans["error"], ans
    assert served.root("status").returncode == 0


def test_passed_descriptors_must_be_streams(served: Served, users: tuple[User, User]) -> None:
    u = users[0]
    probe = ("import array,json,os,socket\ns=socket.socket(socket.AF_UNIX)\ns.connect(os.environ['EBPFGUARD_SOCKET'])\n"
             "d=os.open(os.environ['HOME'],os.O_RDONLY)\n"
             "s.sendmsg([json.dumps({'op':'launch','extension':'user-tool','argv':['/bin/true']}).encode()+b'\\n'],"
             "[(socket.SOL_SOCKET,socket.SCM_RIGHTS,array.array('i',[d,1,2]))])\n"
             "print(s.makefile('rb').readline().decode())")
    r = subprocess.run(["/usr/bin/python3", "-c", probe], user=u.uid, group=u.gid, extra_groups=[],
                       env=served.env(u), capture_output=True, text=True, timeout=30)
    assert json.loads(r.stdout) == {"ok": False, "error": "the stdin passed is a folder, not a stream",
                                    "exit_code": 2}, r.stdout + r.stderr
    assert not _instances(served)


def test_a_user_cannot_put_a_running_process_under_a_policy(served: Served, users: tuple[User, User]) -> None:
    """attach is root's: an adopted process keeps its privileges, so a setuid program started in it later would run
    under the adopting user's policy, freeze and kill. Even a tree of the user's own is refused; nothing moves."""
    u = users[0]
    mine = u.home / "adopt.yaml"
    mine.write_text(POLICY.format(name="adopted-tool"))
    os.chown(mine, u.uid, u.gid)
    theirs = subprocess.Popen(["/bin/sleep", "60"], user=u.uid, group=u.gid, extra_groups=[])
    try:
        r = served.as_user(u, "attach", "--pid", str(theirs.pid), "--manifest", str(mine))
        assert r.returncode != 0 and "attach is for root only" in r.stderr and f"peer is uid {u.uid}" in r.stderr, \
            r.stderr
        assert not served.status()["instances"] and theirs.poll() is None
    finally:
        theirs.kill()
        theirs.wait()

FAKE_AGENT = r"""
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o666)
s.listen(4)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(json.dumps({"ok": True, "pid": 1, "started": "now"}).encode() + b"\n")
    c.close()
"""


def test_root_never_takes_orders_from_a_socket_a_user_serves(served: Served, users: tuple[User, User]) -> None:
    """$EBPFGUARD_SOCKET kept across su or sudo -E could lead root's client to a user's fake agent."""
    u = users[0]
    fake = u.home / "agent.sock"
    proc = subprocess.Popen(["/usr/bin/python3", "-c", FAKE_AGENT, str(fake)], user=u.uid, group=u.gid,
                            extra_groups=[], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        r = subprocess.run(served.argv("status"), env={**served.env(), "EBPFGUARD_SOCKET": str(fake)},
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and f"{fake} is served by uid {u.uid}, not by the agent (root): not used" in \
            r.stderr, r.stdout + r.stderr
    finally:
        proc.kill()
        proc.wait()


def test_a_grant_under_the_private_tmp_is_carried_only_if_the_user_reaches_it(served: Served,
                                                                             users: tuple[User, User]) -> None:
    """The launcher carries a host path granted under /tmp into the private one, as root: a symlink to another
    user's folder, or a folder the user cannot enter, is refused; a folder of theirs is carried."""
    u, other = users
    tag = os.urandom(4).hex()
    theirs = other.home / f"private-{tag}"
    theirs.mkdir(mode=0o755)  # readable in itself, inside the other user's home (0700 on Debian's useradd? made so)
    os.chmod(other.home, 0o700)
    (theirs / "notes.txt").write_text("the other user's\n")
    link, own = Path(f"/tmp/eg-link-{tag}"), Path(f"/tmp/eg-own-{tag}")
    os.symlink(theirs, link)
    os.lchown(link, u.uid, u.gid)
    own.mkdir()
    os.chown(own, u.uid, u.gid)
    (own / "mine.txt").write_text("mine\n")
    try:
        for granted, ok in ((link, False), (own, True)):
            m = u.home / f"carry-{granted.name}.yaml"
            m.write_text(POLICY.format(name="carry-tool").replace("~/work/]\n    write", f"~/work/, {granted}/]\n"
                                                                                         "    write", 1))
            os.chown(m, u.uid, u.gid)
            r = served.as_user(u, "run", "-m", str(m), "--", "/bin/sh", "-c", f"cat {granted}/*.txt")
            if ok:
                assert r.returncode == 0 and r.stdout == "mine\n", r.stdout + r.stderr
            else:
                assert r.returncode != 0 and "the other user's" not in r.stdout, r.stdout + r.stderr
                assert f"the manifest grants {granted}, which {u.name} cannot reach themselves (a symlink is on " \
                       "its way)" in r.stderr, r.stderr
    finally:
        link.unlink()
        shutil.rmtree(own)
        shutil.rmtree(theirs)

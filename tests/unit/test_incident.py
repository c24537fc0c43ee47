"""Incident summaries (governance/incident.py, `ebpfguard incident`): every removal rule fed a canary through a real
signed log, which then appears nowhere in the JSON nor in the Markdown report; what the summary still says;
signatures (a tampered summary fails, the host's key is refused); the schema; import, list and provenance; and a
precise error with a non-zero exit, never a traceback, for each bad input."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from ebpfguard.cli.main import main
from ebpfguard.common.clock import rfc3339_ns
from ebpfguard.forensics import ForensicLog, host_public_key, key_id
from ebpfguard.forensics.records import undeclared
from ebpfguard.governance import incident as inc
from ebpfguard.governance.incident import Account, Anonymizer, Host, IncidentError

TOP = Path(__file__).resolve().parents[2]
DOC_SCHEMA = json.loads((TOP / "docs" / "incident-schema.json").read_text())

T0 = int(dt.datetime(2026, 12, 3, 13, 37, 42, tzinfo=dt.UTC).timestamp()) * 10**9 + 123_456_789
MANIFEST = b"""apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {name: md-preview, version: "1.4.2", publisher: acme}
spec: {mode: enforce}
"""
SHA = hashlib.sha256(MANIFEST).hexdigest()
INSTANCE = "md-preview-zq4711ab"
CGROUP = "/sys/fs/cgroup/ebpfguard.slice/md-preview-zq4711ab"
UID, GID = 43117, 43118
HOSTNAME = "zqhost-canary"
MACHINE_ID = "5c0ffee0d15ea5e5ca7ca7f00dfacade"
BOOT_ID = "b007b007-1d1d-4e4e-9a9a-c0c0c0c0c0c0"
HOST = Host(hostnames=(HOSTNAME,), machine_id=MACHINE_ID, boot_id=BOOT_ID,
            accounts=(Account("root", 0, "/root"), Account("daemon", 1, "/usr/sbin"), Account("zqalice", UID,
                      "/home/zqalice"), Account("zqbob", 43200, "/srv/people/zqbob"),
                      Account("nobody", 65534, "/nonexistent")))
LAYERS = ["user", "no_new_privs", "rlimits", "landlock-abi7", "landlock-fs", "seccomp", "mountns",
          "mountns-mask:/run/user", "rollback-overlay:/home/zqalice/zqproject"]


def at(seconds: float) -> str:
    return rfc3339_ns(T0 + int(seconds * 1e9))


def start(t: float = 0.0, **sandbox: Any) -> dict[str, Any]:
    sb = {"user": "zqalice", "uid": UID, "launched_by": UID, "layers": LAYERS,
          "kernel": {"release": "6.1.0-zq-amd64", "ebpf": "bpf-lsm"},
          "mount": {"writable": ["/home/zqalice/zqproject"], "readonly": True}, **sandbox}
    return {"kind": "lifecycle", "time": at(t), "pid": 44000, "tgid": 44000, "comm": "zqlauncher",
            "detail": {"event": "start", "argv": ["/home/zqalice/bin/zq-argv-canary", "--token=zqsecret-arg"],
                       "cgroup": CGROUP, "sandbox": sb}}


def file(path: str, t: float, access: str = "read", verdict: str = "denied", **kw: Any) -> dict[str, Any]:
    return {"kind": "file", "time": at(t), "pid": 44001, "tgid": 44001, "uid": UID, "comm": kw.pop("comm", "cat"),
            "verdict": verdict, "actions": kw.pop("actions", ["eacces:landlock"]),
            "detail": {"path": path, "access": access, "syscall": "openat", **kw}}


def connect(address: str, port: int, t: float = 2.0, proto: str = "tcp") -> dict[str, Any]:
    return {"kind": "network", "time": at(t), "pid": 44002, "uid": UID, "verdict": "denied",
            "actions": ["eperm:kernel"], "detail": {"op": "connect", "address": address, "port": port, "proto": proto}}


def write_log(state: Path, records: list[dict[str, Any]], *, with_start: bool = True) -> Path:
    """A real signed log: the policy record, the instance's start, then ``records``, each in the envelope the
    engine gives (pipeline/record.py), appended by ForensicLog."""
    (state / "policies").mkdir(parents=True, exist_ok=True)
    (state / "policies" / SHA).write_bytes(MANIFEST)
    log = ForensicLog(state)
    base = {"extension": "md-preview", "policy_sha256": SHA, "mode": "enforce"}
    log.append({**base, "kind": "policy", "time": at(-60), "actions": [],
                "detail": {"event": "loaded", "name": "md-preview", "version": "1.4.2", "file": "md-preview.yaml",
                           "signature": {"status": "signed", "ok": True, "publisher": "acme",
                                         "key_id": "283a0aacaeb68bec", "reason": "signed by acme"}}})
    for rec in ([start()] if with_start else []) + records:
        full = {**base, "instance": INSTANCE, "cgroup_id": 987654, **rec}
        assert undeclared(full) == [], undeclared(full)
        log.append(full)
    return state


def outputs(state: Path, host: Host = HOST, **kw: Any) -> tuple[str, str, dict[str, Any]]:
    """The summary of md-preview as JSON and as Markdown (both validated against docs/incident-schema.json)."""
    host = dataclasses.replace(host, key_id=key_id(host_public_key(state)))
    kw.setdefault("extension", "md-preview")
    js = inc.share(state, host=host, **kw)
    md = inc.share(state, host=host, fmt="md", **kw)
    doc = json.loads(js)
    jsonschema.validate(doc, DOC_SCHEMA)
    jsonschema.validate(inc.parse(md.encode(), "report.md"), DOC_SCHEMA)
    return js, md, doc


def nowhere(texts: tuple[str, ...] | list[str], *canaries: str | int) -> None:
    for text in texts:
        for c in canaries:
            if isinstance(c, int):
                assert not re.search(rf"(?<![0-9]){c}(?![0-9])", text), f"{c} is in the output"
            else:
                assert c.lower() not in text.lower(), f"{c!r} is in the output"


def targets(doc: dict[str, Any]) -> set[str]:
    return {t for te in doc["techniques"] for t in te["targets"]}


# ---- each removal rule, fed a canary -----------------------------------------------------------------------

def test_user_names_are_removed(tmp_path: Path) -> None:
    write_log(tmp_path, [
        file("/etc/shadow", 1.0),
        {"kind": "lifecycle", "time": at(3), "actions": ["kill"], "detail": {"event": "kill", "by": "zqalice"}},
        {"kind": "rollback", "time": at(4), "detail": {"event": "discarded", "by": "zqgone", "count": 0,
                                                       "counts": {}, "trees": []}},
        {"kind": "policy", "time": at(5), "instance": None, "detail": {"event": "flagged", "name": "md-preview",
                                                                       "by": "zqbob", "reason": "zq"}},
    ])
    js, md, doc = outputs(tmp_path)
    nowhere((js, md), "zqalice", "zqbob", "zqgone")
    assert {"step": "kill", "by": "operator"}.items() <= doc["ladder"][0].items()


def test_uids_and_gids_are_removed(tmp_path: Path) -> None:
    write_log(tmp_path, [
        file("/etc/shadow", 1.0),
        {"kind": "rollback", "time": at(4), "detail": {"event": "committed", "by": "zqalice", "count": 1,
                                                       "counts": {"write": 1}, "trees": ["/home/zqalice/zqproject"],
                                                       "user": {"uid": UID, "gid": GID}}},
        {"kind": "lifecycle", "time": at(5), "pid": 44000, "detail": {"event": "stop", "exit_status": 0}},
    ])
    js, md, _ = outputs(tmp_path)
    nowhere((js, md), UID, GID)


def test_home_paths_become_tilde(tmp_path: Path) -> None:
    write_log(tmp_path, [file("/home/zqalice/.ssh/id_ed25519", 1.0), file("/root/.netrc", 1.1),
                         file("/srv/people/zqbob/.git-credentials", 1.2),  # a home passwd gives, not under /home
                         file("/home/zqcarol/.aws/credentials", 1.3),  # a home no account names any more
                         file("/var/home/zqdave/.kube/config", 1.4)])  # /home on an ostree system (Silverblue)
    js, md, doc = outputs(tmp_path)
    nowhere((js, md), "/home/", "/root", "/srv/people", "zqbob", "zqcarol", "zqdave")
    assert targets(doc) == {"~/.ssh/id_ed25519", "~/.netrc", "~/.git-credentials", "~/.aws/credentials",
                            "~/.kube/config"}


def test_file_names_under_a_home_become_their_class(tmp_path: Path) -> None:
    write_log(tmp_path, [file("/home/zqalice/Documents/zq-diary.txt", 1.0),
                         file("/home/zqalice/.ssh/zq-work.pem", 1.1),
                         file("/home/zqalice/.mozilla/firefox/zqprof.default/logins.json", 1.2),
                         file("/home/zqalice/.config/autostart/zq-evil.desktop", 1.3, access="write"),
                         file("/home/zqalice/zq-notes", 1.4)])
    js, md, doc = outputs(tmp_path)
    nowhere((js, md), "zq-diary", "Documents", "zq-work", "zqprof", "zq-evil", "zq-notes")
    assert targets(doc) == {"~/<file>", "~/.ssh/<ssh private key>", "~/.mozilla/firefox/<dir>/logins.json",
                            "~/.config/autostart/<session autostart entry>"}


def test_file_names_outside_system_folders_keep_only_their_top_folder(tmp_path: Path) -> None:
    write_log(tmp_path, [file("/tmp/zq-drop.sh", 1.0, access="write"), file("/srv/zqdata/zq.db", 1.1),
                         file("/var/tmp/zq-x", 1.2), file(f"/proc/{UID}/environ", 1.3),
                         file("/etc/shadow", 1.4), file(f"{CGROUP}/cgroup.procs", 1.5, access="write"),
                         file(f"/run/user/{UID}/zq-sock", 1.6), file("/dev/shm/zq-shm", 1.7),
                         file("/etc/ssh/ssh_host_ed25519_key", 1.8)])
    js, md, doc = outputs(tmp_path)
    nowhere((js, md), "zq-drop", "zqdata", "zq.db", "zq-x", "zq-sock", "zq-shm", "zq4711ab", UID)
    assert targets(doc) == {"/tmp/<file>", "/srv/<file>", "/var/tmp/<file>", "/proc/<pid>/environ", "/etc/shadow",
                            "/sys/fs/cgroup/<dir>/cgroup.procs", "/run/user/<uid>/<file>", "/dev/shm/<file>",
                            "/etc/ssh/ssh_host_ed25519_key"}


def test_file_contents_are_removed(tmp_path: Path) -> None:
    content = "deadbeef" * 8  # a changed file's sha256: as good as its contents for a short secret
    write_log(tmp_path, [
        file("/home/zqalice/.ssh/id_rsa", 1.0, verdict="detected", actions=[]),
        connect("93.184.216.34", 443, 1.1),
        {"kind": "correlation", "time": at(1.2), "verdict": "detected", "actions": ["cgroup.freeze"],
         "detail": {"rule": "credential-read-then-network", "description": "zq-description", "seqs": [3, 4],
                    "steps": [{"kind": "file", "what": "/home/zqalice/zq-step-file"}], "within_s": 30.0}},
        {"kind": "rollback", "time": at(4), "detail": {
            "event": "kept", "count": 1, "counts": {"write": 1}, "changes_sha256": content, "why": "zq-why",
            "changes": [{"op": "write", "path": "/home/zqalice/zqproject/zq-changed.txt", "sha256": content}],
            "trees": ["/home/zqalice/zqproject"]}},
    ])
    js, md, doc = outputs(tmp_path)
    nowhere((js, md), content, "zq-changed", "zq-step-file", "zq-description", "zq-why", "zqproject")
    assert doc["rollback"][0]["changes"] == 1 and doc["rollback"][0]["trees"] == ["~/<file>"]


def test_command_lines_programs_instances_and_pids_are_removed(tmp_path: Path) -> None:
    write_log(tmp_path, [
        {"kind": "lifecycle", "time": at(0.3), "pid": 44000, "detail": {"event": "processes", "procs": [
            {"pid": 44001, "ppid": 44000, "exe": "/home/zqalice/bin/zq-exe", "exec_ns": T0 + 100}]}},
        file("/etc/shadow", 1.0, comm="zqcomm"),
        file("/etc/gshadow", 1.1, comm="cat"),
        {"kind": "ipc", "time": at(1.2), "pid": 44003, "verdict": "denied", "actions": ["accessdenied:xdg-dbus-proxy"],
         "detail": {"bus": "session", "destination": "org.freedesktop.secrets", "sender": ":1.4242",
                    "interface": "org.freedesktop.Secret.Service", "member": "OpenSession", "op": "call",
                    "path": "/org/zqobjectpath/zq"}},
        {"kind": "syscall", "time": at(1.3), "pid": 44004, "verdict": "denied", "actions": ["eperm:seccomp"],
         "detail": {"syscall": "kill", "nr": 62, "target_pid": 54321}},
        {"kind": "lifecycle", "time": at(1.4), "pid": 44000, "detail": {"event": "readopted", "pids": [44000, 44005]}},
    ])
    js, md, doc = outputs(tmp_path)
    nowhere((js, md), "zq-argv-canary", "zqsecret-arg", "--token", "zqlauncher", "zqcomm", "zq-exe", "zq4711ab",
            "ebpfguard.slice", ":1.4242", "zqobjectpath", 987654, 44000, 44001, 44003, 44004, 44005, 54321)
    programs = {p for te in doc["techniques"] for p in te["programs"]}
    assert programs == {"cat"}  # a system program is named; a program of the user's is not
    assert "org.freedesktop.secrets org.freedesktop.Secret.Service.OpenSession" in targets(doc)


def test_the_hosts_identifiers_are_removed(tmp_path: Path) -> None:
    write_log(tmp_path, [file(f"/etc/ebpfguard/{HOSTNAME}.conf", 1.0),
                         file(f"/var/log/journal/{MACHINE_ID}/system.journal", 1.1),
                         file(f"/run/zq/{BOOT_ID}", 1.2), file("/proc/sys/kernel/random/boot_id", 1.3),
                         {"kind": "ipc", "time": at(1.4), "verdict": "denied", "actions": [],
                          "detail": {"destination": f"org.{HOSTNAME}.Agent", "member": "Ping", "op": "call"}}])
    js, md, doc = outputs(tmp_path)
    host_key = key_id(host_public_key(tmp_path))
    nowhere((js, md), HOSTNAME, "zqhost", MACHINE_ID, BOOT_ID, BOOT_ID.replace("-", ""), host_key)
    assert {"/etc/ebpfguard/<file>", "/var/log/journal/<file>/system.journal", "/run/<file>",
            "/proc/sys/kernel/random/boot_id", "<name> Ping"} == targets(doc)


def test_the_last_scrub_refuses_what_the_rules_left(tmp_path: Path) -> None:
    write_log(tmp_path, [file("/etc/shadow", 1.0)])
    log = ForensicLog(tmp_path)
    # an extension's name is kept as the publisher chose it: here it names the host, so nothing may be written
    ext = f"notes-{HOSTNAME}"
    log.append({"extension": ext, "policy_sha256": SHA, "kind": "file", "time": at(2), "verdict": "denied",
                "detail": {"path": "/etc/shadow"}})
    host = dataclasses.replace(HOST, key_id=key_id(host_public_key(tmp_path)))
    with pytest.raises(IncidentError, match=r"refusing to write the summary: the removal rules left the host name "
                                            r"in extension\.name; the host name in the Markdown report"):
        inc.share(tmp_path, extension=ext, host=host)
    anon = Anonymizer(host, [start()])
    assert inc.scrub({"extension": {"name": "x zqalice"}}, anon) == ["the user name 'zqalice' in extension.name"]
    assert inc.scrub({"x": f"/home/zqalice/{MACHINE_ID}"}, anon) == [
        "the home /home/zqalice in x", "the machine id in x", "the user name 'zqalice' in x"]
    assert inc.scrub({"signer": {"key_id": HOSTNAME}, "signature": HOSTNAME}, anon) == []  # the sharing key's
    # what the rules do catch never reaches the scrub: a version naming the host is removed, not refused
    log.append({"extension": "md-preview", "policy_sha256": SHA, "kind": "policy", "time": at(3),
                "detail": {"event": "loaded", "name": "md-preview", "version": f"1.4.2+{HOSTNAME}"}})
    _, _, doc = outputs(tmp_path)
    assert doc["extension"]["versions"][0]["version"] == "<removed>"
    # through the command, with this host's real name: exit 1, the reason, no file
    name = os.uname().nodename
    if name.lower() in inc.vocabulary() or name == "localhost":
        return
    ext = f"notes-{name}"
    log.append({"extension": ext, "kind": "file", "time": at(3), "verdict": "denied", "detail": {"path": "/etc/x"}})
    out = tmp_path / "out.json"
    r = cli("incident", "share", "--state-dir", str(tmp_path), "-e", ext, "-o", str(out))
    assert r.exit_code == 1 and "the removal rules left the host name in extension.name" in r.output, r.output
    assert not out.exists()


def test_local_addresses_become_their_class(tmp_path: Path) -> None:
    write_log(tmp_path, [connect("127.0.0.1", 8765), connect("10.20.30.40", 22), connect("192.168.77.5", 80),
                         connect("169.254.169.254", 80), connect("fe80::1234:5678", 443), connect("::1", 631),
                         connect("93.184.216.34", 443), connect("2606:2800:220:1:248:1893:25c8:1946", 443)])
    js, md, doc = outputs(tmp_path)
    nowhere((js, md), "127.0.0.1", "10.20.30.40", "192.168.77.5", "169.254.169.254", "fe80::1234", "::1\"")
    assert [(d["address"], d["port"]) for d in doc["destinations"]] == [("93.184.216.34", 443),
                                                                         ("2606:2800:220:1:248:1893:25c8:1946", 443)]
    assert sorted((d["class"], d["port"]) for d in doc["other_destinations"]) == [
        ("link-local", 80), ("link-local", 443), ("loopback", 631), ("loopback", 8765), ("private", 22),
        ("private", 80)]
    assert "connect to an unlisted loopback address" in doc["counts"]["by_technique"]


def test_absolute_times_become_days_and_the_rest_is_relative_to_the_launch(tmp_path: Path) -> None:
    write_log(tmp_path, [
        {"kind": "lifecycle", "time": at(0.3), "pid": 44000, "detail": {"event": "processes", "procs": [
            {"pid": 44000, "exe": "/usr/bin/python3", "exec_ns": T0 - 500_000_000}]}},  # the launch: its first exec
        file("/home/zqalice/.ssh/id_ed25519", 1.5),
        {"kind": "lifecycle", "time": at(2.25), "pid": 44000, "detail": {"event": "stop", "exit_status": 1}}])
    js, md, doc = outputs(tmp_path, now_ns=T0)
    nowhere((js, md), "13:37", "T13", "123456789", str(T0)[:10])
    assert doc["period"] == {"first": "2026-12-03", "last": "2026-12-03"} and doc["generated"] == "2026-12-03"
    (inst,) = doc["instances"]
    assert inst["launched"] == "2026-12-03" and inst["ran_s"] == 2.75 and inst["launch_known"]
    ts = {(e["event"], e["t"]) for e in doc["timeline"]}
    assert {("launch", 0.5), ("violation", 2.0), ("stop", 2.75)} <= ts
    assert doc["policy_events"] == [{"event": "loaded", "version": "1.4.2", "signature": "signed",
                                     "day": "2026-12-03"}]


# ---- what the summary still says ---------------------------------------------------------------------------

def story(state: Path) -> Path:
    return write_log(state, [
        file("/home/zqalice/.ssh/id_ed25519", 1.5),
        file("/home/zqalice/.ssh/id_ed25519", 1.6, actions=["eacces:landlock", "cgroup.freeze:escalation(2 in 60s)"]),
        {**connect("93.184.216.34", 443, 2.0), "actions": ["eperm:kernel", "quarantine"]},
        connect("127.0.0.1", 8765, 2.1),
        {"kind": "syscall", "time": at(2.2), "verdict": "killed", "actions": ["sigsys:seccomp"],
         "detail": {"syscall": "ptrace", "nr": 101}},
        {"kind": "file", "time": at(2.3), "verdict": "shadow", "actions": [], "detail": {"path": "/etc/hosts"}},
        {"kind": "lifecycle", "time": at(3), "actions": ["thaw"], "detail": {"event": "thaw", "by": "zqalice"}},
        {"kind": "lifecycle", "time": at(3.5), "actions": ["cgroup.kill:escalation(4 in 60s)"],
         "detail": {"event": "escalation", "repeats": 2}},
        {"kind": "lifecycle", "time": at(4), "pid": 44000,
         "detail": {"event": "stop", "exit_status": None, "killed_by_agent": True}},
        {"kind": "rollback", "time": at(4.5), "detail": {"event": "discarded", "by": "zqalice", "count": 3,
                                                         "counts": {"write": 2, "remove": 1},
                                                         "trees": ["/home/zqalice/zqproject"]}},
    ])


def test_a_summary_still_says_what_happened(tmp_path: Path) -> None:
    _, _, doc = outputs(story(tmp_path))
    (v,) = doc["extension"]["versions"]
    assert doc["extension"]["name"] == "md-preview"
    assert v == {"version": "1.4.2", "policy_sha256": SHA, "publisher": "acme", "publisher_key_id": "283a0aacaeb68bec",
                 "signature": "signed", "modes": ["enforce"]}
    cred = doc["techniques"][0]
    assert (cred["technique"], cred["attack_id"], cred["attack_name"], cred["count"], cred["targets"]) == \
        ("credential file read", "T1552.004", "Private Keys", 2, ["~/.ssh/id_ed25519"])
    assert cred["first_t"] == 1.5 and cred["verdicts"] == {"denied": 2} and cred["kinds"] == ["file"]
    assert doc["counts"]["by_technique"] == {"credential file read": 2, "connect to an unlisted destination": 1,
                                             "connect to an unlisted loopback address": 1,
                                             "process injection attempt": 1}
    assert doc["counts"]["violations"] == 5 and doc["counts"]["shadow"] == 1
    assert doc["counts"]["by_verdict"] == {"denied": 4, "killed": 1}
    assert doc["counts"]["by_response"] == {"eacces:landlock": 2, "eperm:kernel": 2, "cgroup.freeze:agent": 1,
                                            "quarantine:agent": 1, "sigsys:seccomp": 1, "thaw:operator": 1,
                                            "cgroup.kill:agent": 1}
    ptrace = next(t for t in doc["techniques"] if t["technique"] == "process injection attempt")
    assert ptrace["attack_id"] == "T1055.008" and ptrace["targets"] == ["ptrace"]
    assert doc["destinations"] == [{"address": "93.184.216.34", "port": 443, "proto": "tcp", "op": "connect",
                                    "count": 1, "verdicts": {"denied": 1}}]
    assert [(s["step"], s["by"], s["why"], s["t"]) for s in doc["ladder"]] == [
        ("freeze", "agent", "escalation (2 in 60s)", 1.6), ("quarantine", "agent", None, 2.0),
        ("thaw", "operator", None, 3.0), ("kill", "agent", "escalation (4 in 60s)", 3.5)]
    assert doc["rollback"] == [{"instance": 1, "t": 4.5, "outcome": "discarded", "changes": 3,
                                "counts": {"write": 2, "remove": 1}, "conflicts": 0, "errors": 0, "trees": ["~/<file>"]}]
    (inst,) = doc["instances"]
    assert inst["end"] == "killed by the agent" and inst["violations"] == 5 and inst["sandbox"] == 1
    assert doc["sandboxes"] == [{"layers": ["user", "no_new_privs", "rlimits", "landlock-abi7", "landlock-fs",
                                            "seccomp", "mountns", "mountns-mask:/run/user", "rollback-overlay:~/<file>"],
                                 "kernel": {"release": "6.1.0-zq-amd64", "ebpf": "bpf-lsm"}}]
    assert doc["selection"] == {"by": "extension", "records": 12} and doc["log"] == {"verified": True}


def test_records_chosen_by_seq_and_since(tmp_path: Path) -> None:
    story(tmp_path)
    _, _, doc = outputs(tmp_path, extension=None, seqs=[3, 5])
    assert doc["selection"] == {"by": "records", "records": 2}
    assert doc["counts"]["by_technique"] == {"credential file read": 1, "connect to an unlisted destination": 1}
    assert doc["timeline"][0]["t"] == 1.5  # still relative to the launch, which was not chosen
    _, _, doc = outputs(tmp_path, since_ns=T0 + 2_050_000_000)
    assert sum(doc["counts"]["by_technique"].values()) == 2
    seq = ForensicLog(tmp_path).append({"extension": "other", "kind": "file", "detail": {"path": "/etc/shadow"}})["seq"]
    with pytest.raises(IncidentError, match=rf"one summary is of one extension: records 3 \(md-preview\), {seq} "):
        inc.summarize(tmp_path, seqs=[3, seq], host=HOST)
    with pytest.raises(IncidentError, match="the forensic log has no record 99"):
        inc.summarize(tmp_path, seqs=[99], host=HOST)
    with pytest.raises(IncidentError, match="no record of md-preview in that time"):
        inc.summarize(tmp_path, "md-preview", since_ns=T0 + 10**12, host=HOST)


# ---- the schema, the report ---------------------------------------------------------------------------------

def test_the_published_schema_is_the_one_the_code_checks() -> None:
    assert DOC_SCHEMA == inc.SCHEMA, "docs/incident-schema.json drifted: regenerate it from incident.SCHEMA"
    jsonschema.Draft202012Validator.check_schema(DOC_SCHEMA)
    assert DOC_SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_the_vocabulary_table_names_every_attack_id_the_classification_gives() -> None:
    ids = set(re.findall(r'"(T\d{4}(?:\.\d{3})?)"', (TOP / "ebpfguard" / "forensics" / "technique.py").read_text()))
    doc = (TOP / "docs" / "incidents.md").read_text()
    table = doc[doc.index("## The technique vocabulary"):doc.index("## Verifying, importing, listing")]
    assert len(ids) > 20 and not [i for i in sorted(ids) if i not in table], "docs/incidents.md lacks them"


def test_the_markdown_report(tmp_path: Path) -> None:
    story(tmp_path)
    key = tmp_path / "share.key"
    kid = inc.keygen(key)
    md = inc.share(tmp_path, extension="md-preview", host=HOST, fmt="md", key=inc.load_key(key))
    assert md.startswith("# Incident summary: md-preview 1.4.2\n")
    for line in ("## Extension", f"| md-preview | 1.4.2 | acme (key 283a0aacaeb68bec) | `{SHA}` | signed | enforce |",
                 "| credential file read | [T1552.004](https://attack.mitre.org/techniques/T1552/004/) Private Keys "
                 "| 2 | denied 2 | `~/.ssh/id_ed25519` |",
                 "| process injection attempt | [T1055.008](https://attack.mitre.org/techniques/T1055/008/) Ptrace "
                 "System Calls | 1 | killed 1 | `ptrace` |",
                 "## What was done", "| eacces | landlock | 2 |", "| quarantine | agent | 1 |",
                 "- instance 1, +3.500 s: kill by agent (escalation (4 in 60s))",
                 "- instance 1, +4.500 s: discarded, 3 change(s) (remove 1, write 2) in `~/<file>`",
                 "| 1 | 1.4.2 | enforce | 2026-12-03 | 4.000 s | killed by the agent | 5 | 1 |",
                 "| 1 | 6.1.0-zq-amd64 (bpf-lsm) | user, no_new_privs, rlimits, landlock-abi7, landlock-fs, seccomp, "
                 "mountns, mountns-mask:/run/user, rollback-overlay:~/<file> |",
                 "| 1 | +1.500 s | file: credential file read ([T1552.004](https://attack.mitre.org/techniques/T1552/004/)) "
                 "`~/.ssh/id_ed25519` → denied (eacces:landlock) |",
                 "| `93.184.216.34` | 443 | tcp | connect | 1 | denied 1 |",
                 "Other destinations (their class only): loopback port 8765 (connect, 1×).",
                 f"Signed with Ed25519 key `{kid}`"):
        assert line in md.splitlines() or any(x.startswith(line) for x in md.splitlines()), line
    report = tmp_path / "report.md"
    report.write_text(md)
    r = cli("incident", "verify", str(report), "--pubkey", f"{key}.pub")
    assert r.exit_code == 0 and r.output == f"ok: signed by {kid}\n", r.output


# ---- signatures -----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Ran:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:  # what the user sees on the terminal, both streams
        return self.stdout + self.stderr


def cli(*args: str) -> Ran:
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:  # click 8.2 keeps stderr apart always
        runner = CliRunner()
    r = runner.invoke(main, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.stdout + r.stderr
    return Ran(r.exit_code, r.stdout, r.stderr)


def test_a_signed_summary_verifies_and_a_tampered_one_fails(tmp_path: Path) -> None:
    story(tmp_path)
    key = tmp_path / "share.key"
    r = cli("incident", "keygen", "-o", str(key))
    assert r.exit_code == 0 and "key id " in r.output
    kid = r.output.strip().rsplit(" ", 1)[1]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and Path(f"{key}.pub").read_text().startswith("-----BEGIN PUB")
    assert cli("incident", "keygen", "-o", str(key)).exit_code == 1  # never overwrites a key
    out = tmp_path / "s.json"
    r = cli("incident", "share", "--state-dir", str(tmp_path), "-e", "md-preview", "--key", str(key), "-o", str(out))
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, DOC_SCHEMA)
    assert doc["signer"]["key_id"] == kid and doc["signer"]["key_id"] != key_id(host_public_key(tmp_path))
    assert inc.check(doc).ok and str(inc.check(doc)) == f"ok: signed by {kid}"
    r = cli("incident", "verify", str(out))
    assert (r.exit_code, r.output) == (0, f"ok: signed by {kid}\n")

    tampered = json.loads(out.read_text())
    tampered["counts"]["violations"] = 0
    (tmp_path / "t.json").write_text(json.dumps(tampered))
    r = cli("incident", "verify", str(tmp_path / "t.json"))
    assert r.exit_code == 1 and r.output.startswith(f"tampered: bad signature: the summary was altered after key {kid}")
    tampered = {**doc, "signer": {**doc["signer"], "key_id": "0" * 16}}
    assert inc.check(tampered).status == "tampered"

    other = tmp_path / "other.key"
    inc.keygen(other)
    r = cli("incident", "verify", str(out), "--pubkey", f"{other}.pub")
    assert r.exit_code == 1 and r.output.startswith(f"untrusted: signed by key {kid}, which is none of the trusted")
    r = cli("incident", "verify", str(out), "--pubkey", f"{other}.pub", "--pubkey", f"{key}.pub")
    assert r.exit_code == 0

    r = cli("incident", "share", "--state-dir", str(tmp_path), "-e", "md-preview", "-o", str(tmp_path / "u.json"))
    assert r.exit_code == 0 and "unsigned summary" in r.output
    r = cli("incident", "verify", str(tmp_path / "u.json"))
    assert r.exit_code == 1 and r.output.startswith("unsigned: the summary carries no signature")


def test_the_hosts_forensic_key_is_refused(tmp_path: Path) -> None:
    story(tmp_path)
    out = tmp_path / "s.json"
    r = cli("incident", "share", "--state-dir", str(tmp_path), "-e", "md-preview", "--key",
            str(tmp_path / "keys" / "forensics.ed25519"), "-o", str(out))
    assert r.exit_code == 2 and not out.exists()
    assert f"that key is this host's forensic signing key (key id {key_id(host_public_key(tmp_path))})" in r.output


# ---- received summaries: import, list, provenance -------------------------------------------------------------

def test_import_list_and_provenance_round_trip(tmp_path: Path) -> None:
    elsewhere, here = story(tmp_path / "elsewhere"), story(tmp_path / "here")  # the same version on both
    key = tmp_path / "share.key"
    kid = inc.keygen(key)
    good = tmp_path / "good.json"
    good.write_text(inc.share(elsewhere, extension="md-preview", key=inc.load_key(key), host=HOST))
    report = tmp_path / "good.md"  # the same summary as a report: the same one, stored once
    report.write_text(inc.markdown(json.loads(good.read_text())))
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "share.pem").write_bytes(Path(f"{key}.pub").read_bytes())
    (keys / "README").write_text("not a key\n")

    r = cli("incident", "import", "--state-dir", str(here), "--keys", str(keys), str(good))
    assert r.exit_code == 0, r.output
    assert f"imported {good}: md-preview 1.4.2 (sha256 " in r.stdout and f"signed by {kid})" in r.stdout
    assert "1 imported, 0 already there, 0 refused" in r.stdout
    assert f"{keys / 'README'} is not a PEM public key" in r.stderr  # said, then skipped
    (stored,) = (here / "incidents").iterdir()
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600 and stat.S_IMODE((here / "incidents").stat().st_mode) == 0o700
    assert stored.name == inc.digest_of(json.loads(good.read_text())) + ".json"
    r = cli("incident", "import", "--state-dir", str(here), "--pubkey", f"{key}.pub", str(report))
    assert r.exit_code == 0 and f"already imported {report}" in r.stdout and "0 imported, 1 already there" in r.stdout
    assert len(list((here / "incidents").iterdir())) == 1

    r = cli("incident", "list", "--state-dir", str(here))
    assert r.exit_code == 0 and stored.stem[:12] in r.stdout and "credential file read T1552.004 ×2" in r.stdout
    (row,) = [json.loads(x) for x in cli("incident", "list", "--state-dir", str(here), "--json").stdout.splitlines()]
    assert row["extension"] == "md-preview" and row["signer"] == kid and row["violations"] == 5
    assert row["destinations"] == ["93.184.216.34:443"]
    r = cli("incident", "list", "--state-dir", str(here), "--extension", "other")
    assert r.exit_code == 0 and r.stdout == "no incident summaries imported of other\n"

    r = cli("provenance", "--state-dir", str(here), "md-preview", "--json")
    assert r.exit_code == 0, r.output
    (rec,) = json.loads(r.stdout)["received"]
    assert rec["matches"] == {"version": "1.4.2", "sha256": SHA, "by": "policy sha256"}
    assert rec["local_incidents"] == 6 and rec["sha256"] == stored.stem
    r = cli("provenance", "--state-dir", str(here), "md-preview")
    assert "received incident summaries (1; `incident list` shows them all):" in r.stdout
    assert f"{stored.stem[:12]} version 1.4.2 (= local 1.4.2 by policy sha256, 6 incidents here), signed by {kid}" \
        in r.stdout and "    2  credential file read (T1552.004)" in r.stdout
    # a summary of an extension this log never saw is still shown (exit 0: there is something to show)
    r = cli("provenance", "--state-dir", str(tmp_path / "empty"), "md-preview")
    assert r.exit_code == 2 and "no state folder at" in r.stderr  # a mistyped --state-dir is not an empty log
    cli("incident", "import", "--state-dir", str(tmp_path / "empty"), "--pubkey", f"{key}.pub", str(good))
    r = cli("provenance", "--state-dir", str(tmp_path / "empty"), "md-preview")
    assert r.exit_code == 0 and "a version not seen here" in r.stdout


def test_import_refuses_each_bad_summary_and_keeps_the_others(tmp_path: Path) -> None:
    state = story(tmp_path / "state")
    key, other = tmp_path / "share.key", tmp_path / "other.key"
    inc.keygen(key)
    inc.keygen(other)
    good = tmp_path / "good.json"
    good.write_text(inc.share(state, extension="md-preview", key=inc.load_key(key), host=HOST))
    untrusted = tmp_path / "untrusted.json"
    untrusted.write_text(inc.share(state, extension="md-preview", key=inc.load_key(other), host=HOST))
    unsigned = tmp_path / "unsigned.json"
    unsigned.write_text(inc.share(state, extension="md-preview", host=HOST))
    tampered = tmp_path / "tampered.json"
    tampered.write_text(good.read_text().replace('"93.184.216.34"', '"93.184.216.35"'))
    notjson = tmp_path / "notjson.json"
    notjson.write_text("{not json")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"format": "ebpfguard-signature/1"}))
    bad_schema = tmp_path / "schema.json"
    bad_schema.write_text(json.dumps({**json.loads(good.read_text()), "extension": {"name": 3}}))
    missing = tmp_path / "missing.json"
    r = cli("incident", "import", "--state-dir", str(tmp_path / "here"), "--pubkey", f"{key}.pub", str(untrusted),
            str(unsigned), str(tampered), str(notjson), str(wrong), str(bad_schema), str(missing), str(good))
    assert r.exit_code == 1
    assert "1 imported, 0 already there, 7 refused" in r.stdout and f"imported {good}" in r.stdout
    for line in (f"refused {untrusted}: untrusted: signed by key ", f"refused {unsigned}: unsigned: ",
                 f"refused {tampered}: tampered: bad signature", f"refused {notjson} is not an incident summary "
                 "(not JSON: ", f"refused {wrong} is not an incident summary: format is 'ebpfguard-signature/1'",
                 f"refused {bad_schema}: invalid: not an incident summary as docs/incident-schema.json describes it: "
                 "at extension: 'versions' is a required property", f"refused {missing}: no such file"):
        assert line in r.stderr, (line, r.stderr)
    assert len(list((tmp_path / "here" / "incidents").iterdir())) == 1
    r = cli("incident", "import", "--state-dir", str(tmp_path / "none"), "--keys", str(tmp_path / "nokeys"),
            str(good))
    assert r.exit_code == 2 and "does not exist" in r.output
    (tmp_path / "nokeys").mkdir()
    r = cli("incident", "import", "--state-dir", str(tmp_path / "none"), "--keys", str(tmp_path / "nokeys"),
            str(good))
    assert r.exit_code == 1 and f"no key to verify summaries with: put the PEM public keys you trust in " \
        f"{tmp_path / 'nokeys'}" in r.stderr
    assert not (tmp_path / "none").exists()


# ---- bad input ------------------------------------------------------------------------------------------------

def test_bad_input_gives_a_precise_error_and_no_traceback(tmp_path: Path) -> None:
    state = story(tmp_path / "state")
    s = str(state)
    other = tmp_path / "other.json"
    other.write_text('{"seq": 1}')
    cases = [
        (("incident", "share", "--state-dir", s), 2, "give --extension NAME or --seq N"),
        (("incident", "share", "--state-dir", s, "-e", "md-preview", "--seq", "3"), 2, "not both"),
        (("incident", "share", "--state-dir", s, "-e", "md-preview", "--since", "yesterday"), 2,
         "--since: 'yesterday' is neither a time"),
        (("incident", "share", "--state-dir", s, "--seq", "999"), 1, "the forensic log has no record 999"),
        (("incident", "share", "--state-dir", s, "-e", "nothing-such"), 1, "the forensic log has no record of "
         "nothing-such"),
        (("incident", "share", "--state-dir", s, "-e", "md-preview", "--key", str(tmp_path / "nokey")), 2,
         "--key: " + str(tmp_path / "nokey") + ": no such key file"),
        (("incident", "share", "--state-dir", s, "-e", "md-preview", "--key", str(state / "policies" / SHA)), 2,
         "is not an unencrypted PEM private key"),
        (("incident", "share", "--state-dir", s, "-e", "md-preview", "--format", "pdf"), 2, "'pdf' is not one of"),
        (("incident", "verify", str(tmp_path / "nothing.json")), 2, "does not exist"),
        (("incident", "verify", str(state / "policies" / SHA)), 1, "invalid: " + str(state / "policies" / SHA)
         + " is not an incident summary (neither JSON nor a report with its JSON block)"),
        (("incident", "verify", str(other)), 1, "format is None, not 'ebpfguard-incident/1'"),
        (("incident", "verify", str(other), "--pubkey", str(state / "policies" / SHA)),
         2, "--pubkey: " + str(state / "policies" / SHA) + " is not a PEM public key"),
        (("incident", "import", "--state-dir", s, "--keys", str(tmp_path)), 2, "Missing argument"),
        (("incident", "keygen"), 2, "Missing option '-o'"),
        (("incident", "keygen", "-o", str(tmp_path / "no" / "such" / "k")), 1, "cannot create"),
    ]
    for args, code, says in cases:
        r = cli(*args)
        assert r.exit_code == code and says in r.stdout + r.stderr, (args, r.exit_code, r.stdout + r.stderr)
    # a log that fails verification is refused with the reason
    text = (state / "forensics" / "records.jsonl").read_text().replace("id_ed25519", "id_rsa", 1)
    (state / "forensics" / "records.jsonl").write_text(text)
    r = cli("incident", "share", "--state-dir", s, "-e", "md-preview")
    assert r.exit_code == 1 and f"the forensic log in {s} fails verification: records.jsonl:" in r.stderr, r.stderr
    assert "modified" in r.stderr and r.stdout == ""

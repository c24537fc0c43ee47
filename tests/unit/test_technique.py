"""The technique vocabulary: what a violation record was an attempt at, and its ATT&CK ID where one fits."""

from __future__ import annotations

import pytest

from ebpfguard.forensics.technique import address_class, classify, credential_class


def rec(kind: str, actions: tuple[str, ...] = (), **detail: object) -> dict[str, object]:
    return {"kind": kind, "verdict": "denied", "actions": list(actions), "detail": detail}


@pytest.mark.parametrize(("record", "name", "attack"), [
    (rec("file", path="/home/ann/.ssh/id_ed25519", access="read"), "credential file read", "T1552.004"),
    (rec("file", path="/home/ann/.ssh/id_ed25519.pub", access="read"), "read outside the read trees", None),
    (rec("file", path="/home/ann/.netrc", blockers=["fs.read_file"]), "credential file read", "T1552.001"),
    (rec("file", path="/home/ann/.mozilla/firefox/x.default/logins.json", access="read"), "credential file read",
     "T1555.003"),
    (rec("file", path="/etc/shadow", access="read"), "credential file read", "T1003.008"),
    (rec("file", path="/etc/cron.d/job", blockers=["fs.make_reg"]), "scheduled task write", "T1053.003"),
    (rec("file", path="/home/ann/.config/systemd/user/x.timer", access="write"), "scheduled task write",
     "T1053.006"),
    (rec("file", path="/home/ann/.config/autostart/x.desktop", actions=("erofs:mountns",)),
     "session autostart entry write", "T1547.013"),
    (rec("file", path="/home/ann/.bashrc", access="write"), "shell start-up file write", "T1546.004"),
    (rec("file", path="/home/ann/.ssh/authorized_keys", access="write"), "ssh authorized keys write", "T1098.004"),
    (rec("file", path="/srv/data/out.txt", access="write"), "write outside the write trees", None),
    (rec("exec", path="/usr/bin/bash"), "exec of an unlisted program", "T1059.004"),
    (rec("exec", path="/usr/bin/python3.11"), "exec of an unlisted program", "T1059.006"),
    (rec("exec", path="/usr/bin/curl"), "exec of an unlisted program", "T1105"),
    (rec("file", path="/opt/tool", blockers=["fs.execute"]), "exec of an unlisted program", None),
    (rec("network", op="connect", address="93.184.216.34", port=443), "connect to an unlisted destination", "T1071"),
    (rec("network", op="connect", address="127.0.0.1", port=80), "connect to an unlisted loopback address", None),
    (rec("network", op="connect", address="10.1.2.3", port=80), "connect to an unlisted private address", None),
    (rec("network", op="connect", address="fe80::1", port=80), "connect to an unlisted link-local address", None),
    (rec("network", op="bind", address="0.0.0.0", port=4444), "listening on an unlisted port", "T1571"),
    (rec("network", op="connect", path="/run/docker.sock", socket="unix"), "container runtime socket connect",
     "T1611"),
    (rec("ipc", destination="org.freedesktop.systemd1", member="StartTransientUnit"),
     "D-Bus call to a service manager", "T1543.002"),
    (rec("ipc", destination="org.freedesktop.secrets", member="GetSecrets"), "D-Bus call to a secret store", "T1555"),
    (rec("ipc", destination="org.example.Thing", member="Do"), "D-Bus call to an unlisted service", None),
    (rec("privilege", syscall="ptrace"), "process injection attempt", "T1055.008"),
    (rec("syscall", syscall="ptrace"), "process injection attempt", "T1055.008"),
    (rec("privilege", syscall="unshare"), "namespace or mount escape attempt", "T1611"),
    (rec("privilege", syscall="setuid"), "privilege attempt", "T1548"),
    (rec("syscall", syscall="finit_module"), "kernel module load attempt", "T1547.006"),
    (rec("syscall", syscall="memfd_create"), "fileless execution attempt", "T1620"),
    (rec("syscall", syscall="io_uring_setup"), "dangerous syscall", None),
    (rec("resource", resource="pids", event="fork_refused"), "process flood", "T1499"),
    (rec("resource", resource="memory", event="oom_kill"), "memory exhaustion", "T1499"),
    (rec("correlation", rule="credential-read-then-dbus"), "correlated sequence (credential-read-then-dbus)", None),
])
def test_each_record_has_its_technique(record: dict[str, object], name: str, attack: str | None) -> None:
    t = classify(record)
    assert (t.name, t.attack) == (name, attack)
    assert (t.attack_name is None) == (attack is None)


def test_credential_classes_and_address_classes() -> None:
    assert credential_class("/root/.git-credentials") == (".git-credentials", "T1552.001", "Credentials In Files")
    assert credential_class("/home/ann/notes.txt") is None
    assert [address_class(a) for a in ("8.8.8.8", "127.0.0.2", "::1", "192.168.1.1", "169.254.0.1", "fd00::1",
                                       "::ffff:10.0.0.1", "224.0.0.1", "nonsense")] == [
        "public", "loopback", "loopback", "private", "link-local", "private", "private", "multicast", "unparsed"]

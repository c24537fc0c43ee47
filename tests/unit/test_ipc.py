"""spec.ipc: validation, the kernel entries it compiles to, the mount plan and the proxy's log."""

from __future__ import annotations

from pathlib import Path

import pytest

from ebpfguard.errors import ManifestError
from ebpfguard.manifest.compile import BUILTIN_UNIX, compile
from ebpfguard.manifest.ipc import DBusRules, check_bus_name, check_rule
from ebpfguard.manifest.load import parse
from ebpfguard.sandbox import mountns
from ebpfguard.sandbox.dbusproxy import parse_log

HEAD = """apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {name: t, version: "1"}
spec:
  user: nobody
  filesystem: {write: [/srv/ext/], read: [/tmp/data/]}
"""


def manifest(ipc: str) -> str:
    return HEAD + "  ipc:\n" + "".join(f"    {line}\n" for line in ipc.strip().splitlines())


@pytest.mark.parametrize(("ipc", "message"), [
    ('unix: [""]', "spec.ipc.unix[0]: must not be empty"),
    ("unix: [relative.sock]", "is not an absolute path"),
    ("unix: [/srv/ext/s.sock]", "inside the write tree '/srv/ext/'"),
    (f"unix: [/{'a' * 120}]", "longer than 107 bytes"),
    ("unix: [/a/../b]", "is not normalised"),
    ("dbus: {session: {talk: [org]}}", "spec.ipc.dbus.session.talk[0]: 'org': is not a bus name"),
    ('dbus: {session: {own: [":1.4"]}}', "unique names"),
    ("dbus: {system: {call: [org.a.B]}}", "expected NAME=[METHOD][@PATH]"),
    ('dbus: {session: {call: ["org.a.B=bad@/x"]}}', "'bad' is not '*', INTERFACE.* or INTERFACE.MEMBER"),
    ('dbus: {session: {call: ["org.a.B=*@x"]}}', "is not an object path"),
    ("dbus: {session: {shout: [org.a.B]}}", "spec.ipc.dbus.session.shout: unknown key"),
])
def test_bad_ipc_entries_get_precise_errors(ipc: str, message: str) -> None:
    with pytest.raises(ManifestError) as err:
        parse(manifest(ipc).encode(), "m.yaml")
    assert message in str(err.value)
    assert "m.yaml:" in str(err.value)


def test_good_rules_and_runtime_expansion() -> None:
    m = parse(manifest("""unix: ["${XDG_RUNTIME_DIR}/pipewire-0", /tmp/.X11-unix/]
dbus: {session: {talk: [org.freedesktop.Notifications, org.mpris.MediaPlayer2.*],
                 call: ["org.a.B=org.a.B.Open@/org/a/*", "org.a.B=*"]}}""").encode(), "m.yaml")
    assert m.ipc.unix == (f"{m.runtime_dir}/pipewire-0", "/tmp/.X11-unix/")
    assert m.ipc.unix_allows("/tmp/.X11-unix/X0") and not m.ipc.unix_allows("/tmp/x")
    assert m.ipc.dbus["session"].proxy_args() == [
        "--filter", "--talk=org.freedesktop.Notifications", "--talk=org.mpris.MediaPlayer2.*",
        "--call=org.a.B=org.a.B.Open@/org/a/*", "--call=org.a.B=*"]


def test_compiled_unix_entries() -> None:
    m = parse(manifest("""unix: [/run/a.sock, /tmp/.X11-unix/]
dbus: {session: {talk: [org.a.B]}}""").encode(), "m.yaml")
    cp = compile(m, 3)
    assert cp.allows_path("/run/a.sock", "unix") and not cp.allows_path("/run/a.sockx", "unix")
    assert cp.allows_path("/tmp/.X11-unix/X1", "unix") and not cp.allows_path("/tmp/.X11-unix", "unix")
    for builtin in BUILTIN_UNIX:
        assert cp.allows_path(builtin.rstrip("/") + ("/x" if builtin.endswith("/") else ""), "unix")
    # the proxy's path is granted only inside the namespace (scope unix_ns), never as a plain grant
    assert cp.allows_path(f"{m.runtime_dir}/bus", "unix_ns") and not cp.allows_path(f"{m.runtime_dir}/bus", "unix")


def test_check_helpers() -> None:
    assert check_bus_name("org.a.B.*") == "org.a.B.*"
    assert check_rule("org.a.B=@/x") == "org.a.B=@/x"
    assert DBusRules().proxy_args() == ["--filter"]


def test_mount_plan_masks_and_carries() -> None:
    m = parse(manifest("unix: [/tmp/.X11-unix/X0]").encode(), "m.yaml")
    existing = {"/tmp", "/var/tmp", "/srv/ext", "/tmp/data", "/tmp/.X11-unix", "/tmp/.X11-unix/X0", "/run/user",
                "/run/dbus"}
    p = mountns.plan(m, None, 65534, 65534, {f"{m.runtime_dir}/bus": "/run/ebpfguard/dbus/i/session"},
                     exists=lambda path: path in existing)
    assert p.readonly
    assert [mk.folder for mk in p.masks] == ["/tmp", "/var/tmp", "/run/user", "/run/dbus"]
    carried = {(c.source, c.target, c.writable) for c in p.carry}
    assert ("/tmp/data", "/tmp/data", False) in carried
    assert ("/tmp/.X11-unix/X0", "/tmp/.X11-unix/X0", False) in carried
    assert ("/run/ebpfguard/dbus/i/session", f"{m.runtime_dir}/.ebpfguard-dbus-session", False) in carried
    assert p.links == [(f"{m.runtime_dir}/bus", ".ebpfguard-dbus-session/bus")]
    assert p.writable == ["/srv/ext"]
    summary = p.summary()
    assert summary["writable"] == ["/srv/ext", "/tmp", "/var/tmp"]
    assert "/tmp/data" in summary["readonly_within"] and "/tmp/.X11-unix/X0" in summary["readonly_within"]


def test_no_private_tmp_when_a_grant_names_it_and_no_readonly_for_alert() -> None:
    text = HEAD.replace("read: [/tmp/data/]", "read: [/tmp/]") + "  response: {file: alert}\n"
    p = mountns.plan(parse(text.encode(), "m.yaml"), None, 1, 1, exists=lambda path: True)
    assert "/tmp" not in [mk.folder for mk in p.masks] and not p.readonly


def test_proxy_log_verdicts() -> None:
    """Each call or signal the extension sent, with the proxy's verdict: a header with no verdict line after it
    went through; the bus's own messages, replies and the proxy's notes are not the extension's calls."""
    lines = ["C1: -> org.freedesktop.DBus call org.freedesktop.DBus.Hello at /org/freedesktop/DBus",
             "B1: <- org.freedesktop.DBus return from C1",
             "C2: -> org.ebpfguard.Forbidden call org.ebpfguard.Forbidden.Ping at /t",
             "*HIDDEN* (ping)",
             "Filtering message due to arg0 :1.7, policy: 0 (required 1)",
             "C3: -> org.freedesktop.systemd1 call org.freedesktop.systemd1.Manager.StartTransientUnit at "
             "/org/freedesktop/systemd1",
             "*DENIED* (ping)",
             "C4: -> :1.3 return from B2",
             "C5: -> all signal org.ebpfguard.Ext.Changed at /e",
             "C6: -> org.ebpfguard.Allowed call org.ebpfguard.Allowed.Ping at /t"]
    assert parse_log(lines) == [
        {"op": "call", "destination": "org.freedesktop.DBus", "interface": "org.freedesktop.DBus",
         "member": "Hello", "path": "/org/freedesktop/DBus", "proxy": "passed"},
        {"op": "call", "destination": "org.ebpfguard.Forbidden", "interface": "org.ebpfguard.Forbidden",
         "member": "Ping", "path": "/t", "proxy": "hidden"},
        {"op": "call", "destination": "org.freedesktop.systemd1", "interface": "org.freedesktop.systemd1.Manager",
         "member": "StartTransientUnit", "path": "/org/freedesktop/systemd1", "proxy": "denied"},
        {"op": "signal", "destination": "all", "interface": "org.ebpfguard.Ext", "member": "Changed", "path": "/e",
         "proxy": "passed"},
        {"op": "call", "destination": "org.ebpfguard.Allowed", "interface": "org.ebpfguard.Allowed",
         "member": "Ping", "path": "/t", "proxy": "passed"}]


def test_bound_sockets_are_covered_unless_granted_or_in_a_write_tree(tmp_path: Path) -> None:
    import socket as sk

    live, gone = tmp_path / "live.sock", tmp_path / "gone.sock"
    s = sk.socket(sk.AF_UNIX, sk.SOCK_STREAM)
    s.bind(str(live))
    try:
        table = tmp_path / "unix"
        table.write_text("Num       RefCount Protocol Flags    Type St Inode Path\n"
                         f"0000000000000000: 00000002 00000000 00010000 0001 01 11 {live}\n"
                         f"0000000000000000: 00000002 00000000 00010000 0001 01 12 {gone}\n"
                         "0000000000000000: 00000002 00000000 00010000 0001 01 13 @abstract\n"
                         "0000000000000000: 00000003 00000000 00000000 0001 03 14\n")
        assert mountns.bound_sockets(str(table)) == [str(live)]  # a path that is no socket now is left alone
    finally:
        s.close()
    m = parse(manifest("unix: [/home/u/.ssh/agent-ok]").encode(), "m.yaml")
    p = mountns.plan(m, None, 1, 1, exists=lambda path: True,
                     sockets=["/home/u/.ssh/agent-ok", "/home/u/.ssh/agent", "/srv/ext/own.sock", "/run/x.sock"])
    assert p.sockets == ["/home/u/.ssh/agent", "/run/x.sock"] and "mountns-sockets:2" in p.describe()

"""The pure parts of the launcher's layers: the seccomp program and the Landlock plan."""

from __future__ import annotations

import struct

from ebpfguard.manifest import parse
from ebpfguard.manifest.syscall_table import SYSCALLS_X86_64
from ebpfguard.sandbox import landlock, seccomp

M = """apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {name: t}
spec:
  mode: enforce
  filesystem: {read: [/usr/, /etc/hosts], write: [/tmp/t/], exec: [/usr/bin/python3]}
  network: {connect: ["127.0.0.1/32:8080/tcp"]}
  syscalls: {deny: [kcmp]}
  response: {file: block, exec: kill, network: block, syscall: block, privilege: kill}
"""


def run_filter(prog: bytes, nr: int, arch: int = seccomp.AUDIT_ARCH_X86_64, arg0: int = 0) -> int:
    """A tiny classic-BPF interpreter for the instructions build() emits."""
    insns = [struct.unpack_from("<HBBI", prog, i) for i in range(0, len(prog), 8)]
    acc, pc = 0, 0
    data = {seccomp.OFF_NR: nr, seccomp.OFF_ARCH: arch, seccomp.OFF_ARG0: arg0 & 0xFFFFFFFF}
    while True:
        code, jt, jf, k = insns[pc]
        if code == seccomp.LD_W_ABS:
            acc = data[k]
        elif code == seccomp.JEQ_K:
            pc += jt if acc == k else jf
        elif code == seccomp.JGE_K:
            pc += jt if acc >= k else jf
        elif code == seccomp.JSET_K:
            pc += jt if acc & k else jf
        elif code == seccomp.RET_K:
            return k
        pc += 1


def test_seccomp_denies_new_namespaces_through_clone_when_unshare_is_denied() -> None:
    prog = seccomp.build({"unshare": "errno", "ptrace": "errno"})
    clone, clone3 = SYSCALLS_X86_64["clone"], SYSCALLS_X86_64["clone3"]
    CLONE_NEWUSER, SIGCHLD, CLONE_THREAD_FLAGS = 0x10000000, 17, 0x3D0F00
    assert run_filter(prog, clone, arg0=CLONE_NEWUSER | SIGCHLD) == seccomp.RET_ERRNO | 1
    assert run_filter(prog, clone, arg0=0x20000000 | SIGCHLD) == seccomp.RET_ERRNO | 1  # CLONE_NEWPID
    assert run_filter(prog, clone, arg0=SIGCHLD) == seccomp.RET_ALLOW  # fork
    assert run_filter(prog, clone, arg0=CLONE_THREAD_FLAGS) == seccomp.RET_ALLOW  # pthread_create
    assert run_filter(prog, clone3) == seccomp.RET_ERRNO | 38  # ENOSYS: libc falls back to clone
    assert run_filter(prog, SYSCALLS_X86_64["ptrace"]) == seccomp.RET_ERRNO | 1  # the list still follows
    assert run_filter(prog, SYSCALLS_X86_64["read"]) == seccomp.RET_ALLOW
    no_ns = seccomp.build({"ptrace": "errno"})
    assert run_filter(no_ns, clone, arg0=CLONE_NEWUSER) == seccomp.RET_ALLOW
    assert run_filter(no_ns, clone3) == seccomp.RET_ALLOW


def test_seccomp_program_decisions() -> None:
    prog = seccomp.build({"ptrace": "errno", "bpf": "kill", "kcmp": "errno"})
    assert run_filter(prog, SYSCALLS_X86_64["ptrace"]) == seccomp.RET_ERRNO | 1
    assert run_filter(prog, SYSCALLS_X86_64["kcmp"]) == seccomp.RET_ERRNO | 1
    # a kill carries the syscall number, which the eBPF side reads back from the SIGSYS
    assert run_filter(prog, SYSCALLS_X86_64["bpf"]) == seccomp.RET_KILL_PROCESS | SYSCALLS_X86_64["bpf"]
    assert run_filter(prog, SYSCALLS_X86_64["read"]) == seccomp.RET_ALLOW
    assert run_filter(prog, 0x40000000 | 1) & 0xFFFF0000 == seccomp.RET_KILL_PROCESS  # x32 ABI
    assert run_filter(prog, 1, arch=0x40000003) & 0xFFFF0000 == seccomp.RET_KILL_PROCESS  # i386


def test_landlock_plan_rights_and_downgrade() -> None:
    m = parse(M.encode(), "t.yaml", home="/h")
    p = landlock.plan(m, 7)
    rights = dict(p.paths)
    fs = landlock.FS
    assert rights["/usr/"] == landlock.READ & p.handled_fs
    assert rights["/etc/hosts"] == fs["read_file"]  # a file gets file rights only
    assert rights["/tmp/t/"] & fs["write_file"] and rights["/tmp/t/"] & fs["make_reg"]
    assert rights["/usr/bin/python3"] == fs["execute"] | fs["read_file"]
    assert p.scoped == landlock.SCOPE_SIGNAL | landlock.SCOPE_ABSTRACT_UNIX and p.handled_net == 0
    assert "fs" in p.enforced and "signal-scope" in p.enforced
    old = landlock.plan(m, 1)
    assert not old.handled_fs & (fs["refer"] | fs["truncate"]) and old.scoped == 0
    assert any("ABI 6" in g for g in old.not_enforced) and any("truncate" in g for g in old.not_enforced)
    assert landlock.plan(m, 0).not_enforced == ["landlock: not available in this kernel"]
    dev = parse(M.replace('write: [', 'write: [/dev/null, ').encode(), "t.yaml", home="/h")
    assert dict(landlock.plan(dev, 7).paths)["/dev/null"] & fs["ioctl_dev"]  # isatty() on a granted device
    assert not rights["/tmp/t/"] & fs["ioctl_dev"]


def test_landlock_plan_follows_mode_and_alert_responses() -> None:
    m = parse(M.encode(), "t.yaml", home="/h")
    assert landlock.plan(m, 7, "audit").enforced == []
    alert = parse(M.replace("file: block, exec: kill", "file: alert, exec: alert").encode(), "t.yaml", home="/h")
    assert landlock.plan(alert, 7).handled_fs == 0


def test_root_needs_both_the_manifest_and_the_agent() -> None:
    import pytest

    from ebpfguard.sandbox import Sandbox, SandboxError

    root = parse(M.replace("  mode: enforce", "  mode: enforce\n  user: root").encode(), "t.yaml", home="/root")
    with pytest.raises(SandboxError, match="refusing to run an extension as root"):
        Sandbox.prepare(root, landlock_abi=0)
    sb = Sandbox.prepare(root, allow_root=True, landlock_abi=0)
    assert sb.uid == 0 and sb.user == "root"
    nobody = parse(M.encode(), "t.yaml", home="/h")
    assert Sandbox.prepare(nobody, allow_root=True, landlock_abi=0).user != "root"  # the agent alone is not enough


def test_under_systemd_the_agent_keeps_to_its_delegated_subtree(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The unit's main process moves into <own>/agent, instances go in <own>/instances/, controllers are
    enabled from <own> down, and nothing outside <own> is written (the root's subtree_control included)."""
    import os

    from ebpfguard.kernel.cgroups import CgroupManager

    root = tmp_path / "cg"
    own = root / "system.slice" / "ebpfguard.service"
    own.mkdir(parents=True)
    for d in (root, root / "system.slice", own):
        (d / "cgroup.controllers").write_text("cpu memory pids")
        (d / "cgroup.subtree_control").write_text("")
        (d / "cgroup.procs").write_text("")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/system.slice/ebpfguard.service\n")
    monkeypatch.setenv("INVOCATION_ID", "0123abcd")
    monkeypatch.setattr(os, "getppid", lambda: 1)
    before = {p: p.read_text() for p in root.rglob("*") if p.is_file()}
    m = CgroupManager.for_service(root, proc_cgroup=str(proc))
    assert (own / "agent" / "cgroup.procs").read_text() == "0"  # the writer itself moves
    assert m.slice_v2 == own / "instances"
    m._ensure_slice()
    assert (own / "instances").is_dir()
    written = {p for p in root.rglob("*") if p.is_file() and before.get(p) != p.read_text()}
    assert all(own in p.parents for p in written), written
    assert (root / "cgroup.subtree_control").read_text() == "" and "ebpfguard.slice" not in os.listdir(root)
    monkeypatch.setattr(os, "getppid", lambda: 4242)  # inherited INVOCATION_ID, not systemd's child
    assert CgroupManager.for_service(root, proc_cgroup=str(proc)).delegated is None


# ---- the private /tmp and /var/tmp ---------------------------------------------------------------------
PRIVATE = M.replace("read: [/usr/, /etc/hosts]", "read: [/usr/, /etc/hosts, /tmp/data/, /var/tmp/notes.txt]")


def test_the_private_tmp_is_granted_inside_the_namespace_only_and_not_what_is_carried_into_it() -> None:
    from ebpfguard.manifest.compile import compile, private_tmp

    m = parse(PRIVATE.encode(), "t.yaml", home="/h")
    assert private_tmp(m) == ["/tmp", "/var/tmp"]
    cp = compile(m, 3)
    for path in ("/tmp/x", "/tmp/a/b", "/tmp", "/var/tmp/jupyter-1/k.json"):
        assert cp.allows_path(path, "private"), path
        assert not cp.allows_path(path, "write"), path  # never a plain grant: adopted processes see the host's
    # read grants carried in read-only: taken back out, so that a write there is still a violation
    for path in ("/tmp/data", "/tmp/data/f.txt", "/var/tmp/notes.txt"):
        assert not cp.allows_path(path, "private"), path
    assert cp.allows_path("/tmp/datax", "private") and cp.allows_path("/var/tmp/notes.txt.1", "private")
    assert cp.allows_path("/tmp/t/f", "write")  # a write grant under /tmp is carried writable, as before
    values = {k: v for k, v in cp.path_items()}
    assert sorted(set(values.values())) == [b"\0", b"\1"]
    # audit mode has no namespace; a grant naming the folder itself (or one above it) exposes the host's
    assert private_tmp(m, "audit") == [] and not compile(m, 3, "audit").allows_path("/tmp/x", "private")
    host = parse(PRIVATE.replace("write: [/tmp/t/]", "write: [/tmp/]").encode(), "t.yaml", home="/h")
    assert private_tmp(host) == ["/var/tmp"] and not compile(host, 3).allows_path("/tmp/x", "private")
    everything = parse(PRIVATE.replace("read: [/usr/,", "read: [/,").encode(), "t.yaml", home="/h")
    assert private_tmp(everything) == []


def test_landlock_grants_the_private_tmp_and_is_built_once_it_is_mounted() -> None:
    from ebpfguard.sandbox import Sandbox

    m = parse(PRIVATE.encode(), "t.yaml", home="/h")
    p = landlock.plan(m, 7)
    rights = dict(p.paths)
    assert rights["/tmp/"] == landlock.WRITE & p.handled_fs and rights["/var/tmp/"] == landlock.WRITE & p.handled_fs
    assert p.private == ["/tmp/", "/var/tmp/"]
    assert landlock.plan(m, 7, "audit").paths == []
    sb = Sandbox.prepare(m, landlock_abi=landlock.abi())
    try:
        assert [mk.folder for mk in sb.mounts.masks if mk.writable] == ["/tmp", "/var/tmp"]  # type: ignore[union-attr]
        if landlock.abi() > 0:  # the host's /tmp inode would not cover the tmpfs: the child builds the ruleset
            assert sb.ruleset_fd is None and sb.landlock_later is not None
    finally:
        sb.close()


def test_a_rollback_tree_under_a_private_tmp_is_an_overlay_carried_in() -> None:
    from ebpfguard.sandbox import mountns

    text = M.replace("write: [/tmp/t/]", "write: [/var/tmp/tree/]")
    m = parse(text.encode(), "t.yaml", home="/h")
    p = mountns.plan(m, None, 1, 1, exists=lambda path: True, sockets=[],
                     overlays={"/var/tmp/tree": ("/st/rb/0/upper", "/st/rb/0/work")})
    assert p.overlays == [("/var/tmp/tree", "/st/rb/0/upper", "/st/rb/0/work")] and p.skipped == []
    assert mountns.Carry("/var/tmp/tree", "/var/tmp/tree", True) in p.carry
    assert "/var/tmp/tree" in p.summary()["writable"] and p.summary()["rollback"] == ["/var/tmp/tree"]  # type: ignore[operator]


def test_the_bus_at_its_real_path_is_the_proxy_not_a_covered_socket() -> None:
    """A session bus at /run/user/UID/bus is a bound socket; in the namespace that path is the link to the
    instance's proxy, which /dev/null must not cover. Sockets a mask hides need no cover; one in a folder
    carried into a mask does."""
    from ebpfguard.sandbox import mountns

    text = M.replace("read: [/usr/, /etc/hosts]", "read: [/usr/, /etc/hosts, /tmp/shared/]") + \
        "  ipc: {dbus: {session: {talk: [org.a.B]}}}\n"
    m = parse(text.encode(), "t.yaml", home="/h")
    bus = f"{m.runtime_dir}/bus"
    p = mountns.plan(m, None, 1, 1, {bus: "/run/ebpfguard/dbus/i/session"}, exists=lambda path: True,
                     sockets=[bus, f"{m.runtime_dir}/other.sock", "/tmp/.X11-unix/X0", "/tmp/shared/s.sock",
                              "/home/u/.ssh/agent"])
    assert p.links == [(bus, ".ebpfguard-dbus-session/bus")]
    assert p.sockets == ["/tmp/shared/s.sock", "/home/u/.ssh/agent"]


def test_a_check_before_the_proxies_start_does_not_ask_for_them() -> None:
    import pytest

    from ebpfguard.sandbox import Sandbox, SandboxError

    m = parse((M + "  ipc: {dbus: {session: {talk: [org.a.B]}}}\n").encode(), "t.yaml", home="/h")
    with pytest.raises(SandboxError, match="no proxy was started"):
        Sandbox.prepare(m, landlock_abi=0)
    sb = Sandbox.prepare(m, landlock_abi=0, check_proxies=False)
    sb.close()
    assert "dbus-proxy:session" in sb.layers


def test_a_users_environment_keeps_the_display_only_where_its_socket_is_granted() -> None:
    import pwd  # noqa: PLC0415

    from ebpfguard.runtime.launch import caller_environ  # noqa: PLC0415

    pw = pwd.getpwuid(65534)
    env = {"DISPLAY": ":0", "XAUTHORITY": "/home/u/.Xauthority", "WAYLAND_DISPLAY": "wayland-0", "LANG": "C.UTF-8",
           "HOME": "/root", "USER": "root", "SHELL": "/bin/zsh", "A=B": "x", "": "empty"}
    plain = caller_environ(parse(M.encode(), "t.yaml", as_user=pw.pw_name), env, pw)
    assert plain == {"LANG": "C.UTF-8", "HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name,
                     "SHELL": pw.pw_shell}
    granted = M.replace("  syscalls:", "  ipc: {unix: [/tmp/.X11-unix/X0, \"${XDG_RUNTIME_DIR}/wayland-0\"]}\n"
                                       "  syscalls:")
    m = parse(granted.encode(), "t.yaml", as_user=pw.pw_name)
    both = caller_environ(m, env, pw)
    assert (both["DISPLAY"], both["XAUTHORITY"], both["WAYLAND_DISPLAY"]) == (":0", "/home/u/.Xauthority", "wayland-0")
    other = caller_environ(m, {**env, "DISPLAY": ":1", "WAYLAND_DISPLAY": "wayland-1"}, pw)
    assert "DISPLAY" not in other and "XAUTHORITY" not in other and "WAYLAND_DISPLAY" not in other

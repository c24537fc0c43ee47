"""The command line as a user meets it without a kernel: help that ends with its examples within 80
columns, and a precise error with a non-zero exit for each bad input."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ebpfguard.cli.main import main


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            out += _commands(cmd, (*prefix, name))
        elif not cmd.hidden:
            out.append((*prefix, name))
    return out


@pytest.mark.parametrize("path", _commands(main), ids=lambda p: " ".join(p) or "ebpfguard")
def test_help_ends_with_examples_within_80_columns(path: tuple[str, ...]) -> None:
    r = CliRunner().invoke(main, [*path, "--help"])
    assert r.exit_code == 0, r.output
    lines = r.output.rstrip("\n").splitlines()
    wide = [line for line in lines if len(line) > 80]
    assert not wide, f"wider than 80 columns: {wide}"
    start = max(i for i, line in enumerate(lines) if line.strip() == "Examples:")
    assert start > max(i for i, line in enumerate(lines) if line.startswith(("Options:", "Commands:")))
    tail = lines[start + 1:]
    assert tail and all(line.startswith("    ") and "ebpfguard" in line for line in tail), tail


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args), env=env)
    return r.exit_code, r.output


def test_verify_of_a_folder_with_no_log_fails(tmp_path: Path) -> None:
    metrics = tmp_path / "v.prom"
    code, out = run("forensics", "verify", "--state-dir", str(tmp_path), "--metrics-file", str(metrics))
    assert code == 1 and "no forensic log in" in out
    assert 'ebpfguard_forensics_verify_ok{log="' in metrics.read_text() and "} 0.0" in metrics.read_text()


def test_pubkey_never_creates_a_key(tmp_path: Path) -> None:
    code, out = run("forensics", "pubkey", "--state-dir", str(tmp_path))
    assert code == 1 and "no signing key" in out and not (tmp_path / "keys").exists()


def test_pubkey_option_that_is_not_a_key(tmp_path: Path) -> None:
    bad = tmp_path / "notakey"
    bad.write_text("hello\n")
    code, out = run("forensics", "verify", "--state-dir", str(tmp_path), "--pubkey", str(bad))
    assert code == 2 and "not a PEM public key" in out and "OpenSSL" not in out and "Traceback" not in out


def test_export_into_a_missing_folder(tmp_path: Path) -> None:
    code, out = run("forensics", "export", "--state-dir", str(tmp_path), "-o", str(tmp_path / "nope" / "b.tar.gz"))
    assert code == 2 and f"no folder {tmp_path / 'nope'}" in out


def test_show_of_an_unknown_kind(tmp_path: Path) -> None:
    code, out = run("forensics", "show", "--state-dir", str(tmp_path), "--kind", "nosuchkind")
    assert code == 2 and "nosuchkind" in out and "network" in out


def test_trace_with_no_agent_and_no_log_does_not_wait(tmp_path: Path) -> None:
    code, out = run("trace", "--state-dir", str(tmp_path))
    assert code == 1 and "no agent on" in out


def test_agent_with_a_mistyped_policy_dir(tmp_path: Path) -> None:
    code, out = run("agent", "--state-dir", str(tmp_path), "--policy-dir", str(tmp_path / "polcies"))
    assert code == 2 and "polcies" in out and "does not exist" in out


@pytest.mark.skipif(os.geteuid() != 0, reason="makes a folder only root may read, then reads it as nobody")
def test_a_root_only_state_dir_says_run_as_root(tmp_path: Path) -> None:
    import subprocess
    import sys

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    tmp_path.chmod(tmp_path.stat().st_mode | stat.S_IXOTH)
    for args in (["forensics", "show"], ["forensics", "verify"], ["forensics", "pubkey"]):
        r = subprocess.run([sys.executable, "-m", "ebpfguard.cli.main", *args, "--state-dir", str(state)], user=65534,
                           capture_output=True, text=True, cwd="/")
        assert r.returncode == 1 and "run this as root" in r.stderr, (args, r.stderr)


def test_a_closed_state_dir_is_said_for_a_person(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ebpfguard.common.statedir import unreadable

    assert unreadable(str(tmp_path), str(tmp_path / "absent")) is None
    monkeypatch.setattr(os, "access", lambda *_: False)  # as a user other than the owner sees a 0700 folder
    assert unreadable(str(tmp_path / "absent"), str(tmp_path)) == (
        f"{tmp_path} is readable by its owner only ({pwd.getpwuid(os.getuid()).pw_name}): run this as root (sudo)")


MANIFEST = """apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {name: cli-test, version: "1"}
spec:
  mode: enforce
  filesystem: {read: [/usr/], exec: [/usr/bin/cat]}
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a standalone run needs root before it looks at the command")
@pytest.mark.parametrize(("argv", "code", "says"), [
    (["/nonexistent/tool"], 127, "/nonexistent/tool: no such file"),
    (["no-such-command-here"], 127, "command not found"),
    (["{plain}"], 126, "not an executable file"),
    (["/usr/bin/true"], 126, "is not under spec.filesystem.exec of 'cli-test'"),
])
def test_run_refuses_a_command_it_cannot_start(tmp_path: Path, argv: list[str], code: int, says: str) -> None:
    m = tmp_path / "m.yaml"
    m.write_text(MANIFEST)
    plain = tmp_path / "notes.txt"
    plain.write_text("not a program\n")
    plain.chmod(0o644)
    argv = [a.replace("{plain}", str(plain)) for a in argv]
    rc, out = run("run", "-m", str(m), "--state-dir", str(tmp_path / "st"), "--", *argv)
    assert rc == code and says in out, out
    assert not (tmp_path / "st" / "forensics").exists()  # refused before anything was loaded or recorded


def test_readiness_reaches_systemds_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from ebpfguard.service.sdnotify import notify

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False  # not started by systemd: nothing to tell
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify("READY=1", "STATUS=enforcing 4 policies")
        assert s.recv(256) == b"READY=1\nSTATUS=enforcing 4 policies"


def test_agent_log_lines_carry_their_syslog_priority_under_journald(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from ebpfguard.service.journal import log_handler

    out = tmp_path / "stdout"
    with open(out, "w") as fh:
        st = os.fstat(fh.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        h = log_handler(fh)
        for level, msg in ((logging.ERROR, "bad"), (logging.WARNING, "look"), (logging.INFO, "fine")):
            h.handle(logging.LogRecord("ebpfguard", level, __file__, 1, msg, None, None))
    assert out.read_text().splitlines() == ["<3>bad", "<4>look", "<6>fine"]
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # another stream: a terminal or a file gets time and level
    with open(out, "w") as fh:
        log_handler(fh).handle(logging.LogRecord("ebpfguard", logging.ERROR, __file__, 1, "bad", None, None))
    assert " ERROR bad" in out.read_text() and not out.read_text().startswith("<")


def test_what_an_operator_acts_on_is_logged_from_the_records() -> None:
    import logging

    from ebpfguard.service.journal import record_line

    base = {"instance": "md-preview-1a2b", "extension": "md-preview", "pid": 42, "mode": "enforce"}
    start = {**base, "kind": "lifecycle", "detail": {"event": "start"}, "actions": []}
    frozen = {**base, "kind": "file", "verdict": "denied", "seq": 9, "actions": ["eacces:landlock", "cgroup.freeze"],
              "detail": {"path": "/home/u/.ssh/id_rsa", "access": "read"}}
    plain = {**base, "kind": "network", "verdict": "denied", "seq": 10, "actions": ["eperm:kernel"],
             "detail": {"address": "10.0.0.1", "port": 443}}
    over = {**base, "kind": "lifecycle", "detail": {"event": "over-share", "records": 120}, "actions": []}
    assert record_line(start) == (logging.INFO, "md-preview-1a2b: start (pid 42, enforce mode)")
    assert record_line(frozen) == (logging.WARNING, "md-preview-1a2b: file denied /home/u/.ssh/id_rsa "
                                                    "[eacces:landlock,cgroup.freeze] seq 9")
    assert record_line(plain) is None  # in the forensic log and the metrics, not the agent's log
    assert record_line(over) is not None and record_line(over)[0] == logging.WARNING


def test_journald_message_names_the_object_and_a_missing_socket_is_said() -> None:
    from ebpfguard.forensics import Forwarder

    fwd = Forwarder("journald:/nonexistent/journal.socket")
    assert "no socket at /nonexistent/journal.socket" in fwd.missing
    rec = {"seq": 7, "extension": "x", "kind": "network", "verdict": "denied",
           "detail": {"address": "127.0.0.1", "port": 9}}
    msg = next(line for line in fwd.encode(rec).split(b"\n") if line.startswith(b"MESSAGE="))
    assert msg == b"MESSAGE=x network denied 127.0.0.1:9 seq=7"

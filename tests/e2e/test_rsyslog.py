"""The fleet's own log pipeline, with Debian's daemons: a real agent forwards its records to journald, a host
rsyslogd reads them back with imjournal and sends them to a central rsyslogd, over RELP and over plain TCP, which
keeps them as journalctl-style JSON lines, one file per host. Both rsyslogd load configurations generated from
the shipped contrib/rsyslog files (ports and paths substituted), so what ships is what is tested. Every record of
the test's extension, and every checkpoint, arrives intact; the central file then verifies the host's log as
anchors, whole and, once a local root has cut its tail and signed head.json again, not: from the state folder and
from an evidence bundle."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from ebpfguard.forensics.chain import canonical, digest
from ebpfguard.forensics.keys import key_id, load_or_create_key

from .test_agent import MANIFEST, SLOW, TOP, Agent, eg

pytestmark = pytest.mark.e2e
CONTRIB = TOP / "contrib" / "rsyslog"
JOURNALD = Path("/lib/systemd/systemd-journald")
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
TRANSPORTS = ("relp", "tcp")


def within(what: Callable[[], str], cond: Callable[[], bool], seconds: float) -> None:
    """Wait for ``cond``; past the deadline, fail with what ``what`` says is missing then."""
    deadline = time.monotonic() + seconds * SLOW
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(what())
        time.sleep(0.1)


def replaced(text: str, old: str, new: str) -> str:
    """``text`` with its one ``old`` replaced: a shipped file that no longer has it fails here, not later."""
    assert text.count(old) == 1, f"expected {old!r} once in the shipped configuration"
    return text.replace(old, new)


def journald_answers() -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(b"", str(JOURNAL_SOCKET))  # an empty datagram: journald ignores it
            return True
        except OSError:  # no socket, or one nobody reads (a journald gone)
            return False


@contextmanager
def journal(tmp: Path) -> Iterator[None]:
    """The host's journald if one answers; otherwise one started here (no systemd as PID 1: it opens its own
    sockets in /run/systemd/journal and keeps the journal in /run/log/journal), stopped after, and what it made
    removed (the folders that were not there before it)."""
    if journald_answers():
        yield
        return
    machine = Path("/etc/machine-id").read_text().strip()
    made = [p for p in (Path("/run/systemd/journal"), Path("/run/log/journal"), Path(f"/run/log/journal/{machine}"),
                        Path(f"/var/log/journal/{machine}")) if not p.exists()]
    with open(tmp / "journald.log", "w") as out:
        proc = subprocess.Popen([str(JOURNALD)], stdout=out, stderr=subprocess.STDOUT)
    try:
        within(lambda: f"journald did not answer on {JOURNAL_SOCKET}: {(tmp / 'journald.log').read_text()}",
               lambda: proc.poll() is None and journald_answers(), 10)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        for p in made:
            shutil.rmtree(p, ignore_errors=True)


class Rsyslogd:
    """One rsyslogd, its configuration, pid file, work directory and output in ``tmp/name``."""

    def __init__(self, tmp: Path, name: str, conf: str):
        self.dir = tmp / name
        self.dir.mkdir()
        self.conf = self.dir / "rsyslog.conf"
        self.conf.write_text(f'global(workDirectory="{self.dir}")\n{conf}')
        self.log = self.dir / "rsyslogd.log"
        check = subprocess.run(["rsyslogd", "-N1", "-f", str(self.conf)], capture_output=True, text=True)
        assert check.returncode == 0, f"{name}: rsyslogd -N1 refused the configuration:\n{check.stderr}"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(["rsyslogd", "-n", "-f", str(self.conf), "-i", str(self.dir / "pid")],
                                         stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)


def central_conf(files: Path, relp: int, tcp: int) -> str:
    text = (CONTRIB / "ebpfguard-central.conf").read_text()
    text = replaced(text, 'input(type="imrelp" name="ebpfguard_relp" port="2514"',
                    f'input(type="imrelp" name="ebpfguard_relp" address="127.0.0.1" port="{relp}"')
    text = replaced(text, 'input(type="imtcp" name="ebpfguard_tcp" port="10514"',
                    f'input(type="imtcp" name="ebpfguard_tcp" address="127.0.0.1" port="{tcp}"')
    return replaced(text, 'constant(value="/var/log/ebpfguard/")', f'constant(value="{files}/")')


def host_conf(hostname: str, transport: str, port: int, agent_pid: int, extension: str) -> str:
    """The shipped host side, sending to 127.0.0.1 as ``hostname``; only this test's agent's records of its
    extension, and its checkpoints, are sent (the journal may hold other agents' records)."""
    text = (CONTRIB / "ebpfguard-forward.conf").read_text()
    text = replaced(text, 'target="central.example.org" port="2514"', f'target="127.0.0.1" port="{port}"')
    if transport == "tcp":  # the alternative the file's comment describes
        text = replaced(text, 'action(type="omrelp"', 'action(type="omfwd" protocol="tcp"')
    text = replaced(text, 'if $!SYSLOG_IDENTIFIER == "ebpfguard" then {',
                    f'if $!SYSLOG_IDENTIFIER == "ebpfguard" and $!_PID == "{agent_pid}" and '
                    f'($!EBPFGUARD_EXTENSION == "{extension}" or $!EBPFGUARD_KIND == "checkpoint") then {{')
    return f'global(localHostname="{hostname}")\n{text}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """A socket listens on 127.0.0.1:port (read from /proc/net/tcp: a probing connection would be logged by
    imrelp as a broken session)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(f[1] == f"0100007F:{port:04X}" and f[3] == "0A" for f in (line.split() for line in lines))


def central_records(path: Path) -> dict[int, dict[str, Any]]:
    """The records in a central file, by seq; each line must be a JSON object as journalctl -o json writes."""
    out: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict) and isinstance(entry.get("EBPFGUARD_RECORD"), str), line
        assert entry["_HOSTNAME"] == path.stem and entry["SYSLOG_IDENTIFIER"] == "ebpfguard", line
        rec = json.loads(entry["EBPFGUARD_RECORD"])
        assert entry["EBPFGUARD_SEQ"] == str(rec["seq"]) and entry["EBPFGUARD_KIND"] == rec["kind"], line
        out[rec["seq"]] = rec
    return out


def on_disk(state: Path) -> list[tuple[bytes, dict[str, Any]]]:
    return [(line, json.loads(line)) for line in (state / "forensics" / "records.jsonl").read_bytes().splitlines(True)]


def cut_tail(state: Path, keep: int) -> dict[str, Any]:
    """What a local root can do once the agent is stopped: cut the log after seq ``keep`` and sign a new head.json
    for it with the host's own key, as the log writes it (ForensicLog._write_head)."""
    lines = on_disk(state)
    kept = [(raw, rec) for raw, rec in lines if rec["seq"] <= keep]
    (state / "forensics" / "records.jsonl").write_bytes(b"".join(raw for raw, _ in kept))
    last = kept[-1][1]
    key = load_or_create_key(state)  # it exists: the agent made it
    head: dict[str, Any] = {"seq": last["seq"], "digest": digest(last), "time": last["time"],
                            "key_id": key_id(key.public_key()), "signature": None}
    head["signature"] = base64.b64encode(key.sign(canonical(head))).decode()
    (state / "forensics" / "head.json").write_text(json.dumps(head))
    return last


def need_daemons() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the e2e tier needs root, and CI runs it as root")
        pytest.skip("the e2e tier needs root")
    if shutil.which("rsyslogd") is None or not list(Path("/usr/lib").glob("*/rsyslog/omrelp.so")) \
            or not JOURNALD.exists():
        pytest.fail("rsyslog, rsyslog-relp or systemd-journald is missing: make setup installs them")


@pytest.mark.parametrize("name", ["ebpfguard-forward.conf", "ebpfguard-central.conf"])
def test_the_shipped_configurations_validate_as_they_are(name: str) -> None:
    need_daemons()
    r = subprocess.run(["rsyslogd", "-N1", "-f", str(CONTRIB / name)], capture_output=True, text=True)
    assert r.returncode == 0 and "error" not in r.stderr.lower(), r.stderr


def test_records_reach_the_central_host_and_its_checkpoints_catch_a_cut_tail(tmp_path: Path) -> None:
    need_daemons()
    tag = uuid.uuid4().hex[:8]
    ext = f"fleet-{tag}"
    files = tmp_path / "central-files"
    hosts = {t: f"eg-{t}-{tag}" for t in TRANSPORTS}  # one host rsyslogd per transport, each its own name
    state = tmp_path / "state"
    # arguments the start record carries: one JSON must escape on every hop, and one that makes the record
    # larger than rsyslog's default 8 KiB message
    odd, large = 'notes "quoted" \\ é\ttab\nline', "y" * 12000
    with ExitStack() as stack:
        stack.enter_context(journal(tmp_path))
        relp, tcp = free_port(), free_port()
        central = Rsyslogd(tmp_path, "central", central_conf(files, relp, tcp))
        stack.callback(central.stop)
        within(lambda: f"the central rsyslogd does not listen: {central.output()}",
               lambda: listening(relp) and listening(tcp), 10)
        agent = Agent(tmp_path, "--log-forward", "journald")
        stack.callback(agent.stop)
        pem = eg("forensics", "pubkey", state=state)  # what the fleet keeps of the host, before any incident
        assert pem.returncode == 0, pem.stderr
        (tmp_path / "host.pem").write_text(pem.stdout)
        daemons = [central]
        for t in TRANSPORTS:
            daemons.append(Rsyslogd(tmp_path, f"host-{t}", host_conf(hosts[t], t, relp if t == "relp" else tcp,
                                                                     agent.proc.pid, ext)))
            stack.callback(daemons[-1].stop)
        m = tmp_path / "m.yaml"
        m.write_text(MANIFEST.format(name=ext, file="block"))
        r = eg("run", "-m", str(m), "--", "sh", "-c", 'cat /etc/hostname', "sh", odd, large, state=state)
        assert r.returncode == 1 and "Permission denied" in r.stderr, r.stderr
        assert agent.stop() == 0, agent.output()  # its last checkpoint is written, and forwarded, as it stops
        wanted = {rec["seq"]: rec for _, rec in on_disk(state) if rec.get("extension") == ext
                  or rec["kind"] == "checkpoint"}
        start = [rec for rec in wanted.values() if rec["detail"].get("argv", [])[-2:] == [odd, large]]
        assert start and len(json.dumps(start[0])) > 8192, wanted
        assert any(rec.get("verdict") == "denied" for rec in wanted.values()), wanted
        assert any(rec["kind"] == "checkpoint" for rec in wanted.values()), wanted

        def missing() -> dict[str, list[int]]:
            return {t: sorted(set(wanted) - set(central_records(files / f"{hosts[t]}.jsonl"))) for t in TRANSPORTS}

        within(lambda: f"records (by seq) that did not reach the central host, by transport: {missing()}"
                       + "".join(f"\n{d.dir.name}: {d.output()}" for d in daemons),
               lambda: not any(missing().values()), 20)
    for t in TRANSPORTS:  # every hop kept the record as the agent signed it
        got = central_records(files / f"{hosts[t]}.jsonl")
        assert all(got[s] == rec for s, rec in wanted.items()), t

    pem_file, central_file = str(tmp_path / "host.pem"), str(files / f"{hosts['relp']}.jsonl")
    checkpoints = sorted(s for s, rec in wanted.items() if rec["kind"] == "checkpoint")
    for t in TRANSPORTS:
        whole = eg("forensics", "verify", "--pubkey", pem_file, "--anchors", str(files / f"{hosts[t]}.jsonl"),
                   state=state)
        assert whole.returncode == 0, whole.stdout + whole.stderr
        assert f"anchors: {len(checkpoints)} forwarded checkpoints, each in the log" in whole.stdout, whole.stdout
    before = tmp_path / "before.tar.gz"
    assert eg("forensics", "export", "-o", str(before), state=state).returncode == 0
    r = eg("forensics", "verify", "--pubkey", pem_file, "--anchors", central_file, str(before), state=state)
    assert r.returncode == 0 and f"{before}: anchors: {len(checkpoints)} forwarded" in r.stdout, r.stdout + r.stderr

    # a local root hides the extension's records: it cuts the log back to the last signed record before the first
    first = min(s for s, rec in wanted.items() if rec.get("extension") == ext)
    keep = max((rec["seq"] for _, rec in on_disk(state) if rec["seq"] < first and rec["signature"] is not None),
               default=0)
    assert 0 < keep < checkpoints[-1], (keep, checkpoints)  # the policy's signed record stays; a checkpoint goes
    cut_tail(state, keep)
    plain = eg("forensics", "verify", "--pubkey", pem_file, state=state)
    assert plain.returncode == 0 and f"ok: {keep} records" in plain.stdout, plain.stdout + plain.stderr
    gone = min(s for s in checkpoints if s > keep)
    truncated = f"tail truncated: the log ends at seq {keep}, but checkpoint seq {gone} was forwarded"
    r = eg("forensics", "verify", "--pubkey", pem_file, "--anchors", central_file, state=state)
    assert r.returncode == 1 and truncated in r.stderr, r.stdout + r.stderr
    after = tmp_path / "after.tar.gz"
    assert eg("forensics", "export", "-o", str(after), state=state).returncode == 0
    r = eg("forensics", "verify", "--pubkey", pem_file, str(after), state=state)
    assert r.returncode == 0, r.stdout + r.stderr
    r = eg("forensics", "verify", "--pubkey", pem_file, "--anchors", central_file, str(after), state=state)
    assert r.returncode == 1 and f"{after}: anchors: {truncated}" in r.stderr, r.stdout + r.stderr

"""`ebpfguard fleet report` as an administrator runs it, on a generated fleet: 40 hosts, six extension versions, every
kind of incident, signed checkpoints, and the ways a host's log goes wrong in transit or at its source (rewound,
a checkpoint rewritten, a bad signature, a record changed, records lost, records delivered twice). The central
collector's files, one host's plain records gzipped, a `journalctl -o json` export of four more hosts; the counts the
report gives are those the generator counted as it wrote, and its peak memory on a million records is that on a
hundred thousand."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import json
import random
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ebpfguard.forensics.chain import GENESIS, canonical
from ebpfguard.forensics.keys import key_id

pytestmark = pytest.mark.e2e
EG = [sys.executable, "-m", "ebpfguard.cli.main"]

HOSTS = [f"ws{i:02d}" for i in range(1, 41)]
CENTRAL = HOSTS[:35]        # the collector's HOST.jsonl
PLAIN = "ws36"              # plain records, gzipped
JOURNAL = HOSTS[36:]        # one `journalctl -o json` export
ROTATED = "ws04"            # its older half in ws04.jsonl.1.gz
GARBAGE = "ws02"            # three lines no parser takes
REWOUND, REWRITTEN, BAD_SIGNATURE, CHANGED, LOSSY, TWICE = "ws03", "ws05", "ws07", "ws11", "ws09", "ws13"
KEYS_GIVEN = ["ws01", BAD_SIGNATURE, "ws12", "ws37"]  # in --pubkeys DIR; PLAIN's with --pubkey HOST=PEM
CHECKPOINT_EVERY = 100
DROPPED = [*range(1001, 1011), 2345]
START = int(dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp())


def sha(name: str, version: str) -> str:
    return hashlib.sha256(f"{name} {version}".encode()).hexdigest()


# (extension, version, hosts, policy record on): tab-sync's version is never named; md-preview 1.5.0 only by ws25's
VERSIONS = [("md-preview", "1.4.2", HOSTS[:24], HOSTS[:24]), ("md-preview", "1.5.0", HOSTS[24:], ["ws25"]),
            ("git-lens", "2.0.1", HOSTS[::2], HOSTS[::2]), ("pdf-thumb", "0.9.0", HOSTS[2::3], HOSTS[2::3]),
            ("color-picker", "3.1.0", HOSTS[4::5], HOSTS[4::5]), ("tab-sync", "0.3.0", HOSTS[37:], [])]
QUIET = {("color-picker", h) for h in HOSTS[4::10]}  # runs, never refused anything

# What an extension did, and what the report must call it: (kind, detail, verdict, actions, technique, ATT&CK ID)
INCIDENTS: list[tuple[str, dict[str, Any], str, list[str], str, str | None]] = [
    ("file", {"access": "read", "path": "/home/alice/.ssh/id_ed25519", "syscall": "openat"}, "denied",
     ["eacces:landlock"], "credential file read", "T1552.004"),
    ("network", {"op": "connect", "address": "93.184.216.34", "port": 443, "proto": "tcp"}, "denied",
     ["eperm:kernel"], "connect to an unlisted destination", "T1071"),
    ("exec", {"path": "/usr/bin/sh"}, "killed", ["sigkill:agent"], "exec of an unlisted program", "T1059.004"),
    ("ipc", {"bus": "session", "destination": "org.freedesktop.systemd1", "member": "StartTransientUnit"},
     "denied", ["accessdenied:xdg-dbus-proxy"], "D-Bus call to a service manager", "T1543.002"),
    ("syscall", {"syscall": "ptrace", "nr": 101, "seccomp": True}, "denied", ["eperm:seccomp"],
     "process injection attempt", "T1055.008"),
    ("file", {"access": "write", "path": "/home/alice/.config/autostart/updater.desktop"}, "denied",
     ["eacces:landlock", "cgroup.freeze:escalation(3 in 60s)"], "session autostart entry write", "T1547.013"),
    ("file", {"access": "read", "path": "/etc/hostname"}, "detected", [], "read outside the read trees", None),
    ("network", {"op": "connect", "address": "10.1.2.3", "port": 22, "proto": "tcp"}, "denied",
     ["eperm:kernel", "quarantine"], "connect to an unlisted private address", None),
    ("network", {"op": "connect", "address": "1.1.1.1", "port": 53, "proto": "udp"}, "killed",
     ["eperm:kernel", "cgroup.kill:escalation(4 in 60s)"], "connect to an unlisted destination", "T1071"),
    ("resource", {"resource": "pids", "event": "fork_refused", "count": 64, "limit": 64}, "denied",
     ["eagain:pids.max"], "process flood", "T1499"),
]
# the agent's own account: (kind, detail, actions, ladder step or None, a rollback discarded)
OTHERS: list[tuple[str, dict[str, Any], list[str], str | None, bool]] = [
    ("lifecycle", {"event": "processes", "procs": [{"pid": 4711, "ppid": 4700, "exe": "/usr/bin/python3",
                                                    "exec_ns": 1796338843289488340}]}, [], None, False),
    ("lifecycle", {"event": "start", "argv": ["/usr/bin/python3", "-m", "ext"]}, [], None, False),
    ("lifecycle", {"event": "stop", "exit_status": 0, "violations": 0}, ["cgroup.kill"], None, False),
    ("lifecycle", {"event": "freeze", "by": "operator"}, ["freeze"], "freeze", False),
    ("lifecycle", {"event": "kill", "by": "agent", "why": "the connection that launched it closed"}, ["kill"],
     "kill", False),
    ("lifecycle", {"event": "quarantine", "by": "operator"}, ["quarantine"], "quarantine", False),
    ("lifecycle", {"event": "escalation", "repeats": 5}, ["cgroup.freeze:escalation(5 in 60s)"], "freeze", False),
    ("rollback", {"event": "discarded", "count": 3, "trees": ["/home/alice/.config"]}, [], None, True),
    ("rollback", {"event": "committed", "count": 1, "trees": ["/home/alice/.config"]}, [], None, False),
]
SHADOW = ("file", {"access": "read", "path": "/etc/passwd"}, "shadow", [])
# how often each comes: incidents, then the agent's own account, then shadow refusals
WEIGHTS = [8, 6, 2, 3, 2, 2, 8, 3, 1, 2] + [30, 4, 4, 0.4, 0.3, 0.3, 0.5, 0.6, 1] + [2]

_SLOT = re.compile(r'\\"@@([SGR])@@\\"|"@@([SGR])@@"|@@([sTP])@@')


class Template:
    """A text with slots: seq (S as a JSON number, s inside a string), time (T), prev_sha256 (P), records (R) and
    the signature (G: null or a JSON string; Ge escaped inside another JSON string)."""

    def __init__(self, text: str):
        def slot(m: re.Match[str]) -> str:
            esc = m.group(1)
            return "%%(%s)s" % (("Ge" if esc == "G" else esc) if esc else m.group(2) or m.group(3))

        self.fmt = _SLOT.sub(slot, text.replace("%", "%%"))

    def fill(self, v: dict[str, str]) -> str:
        return self.fmt % v


@dataclass
class Form:
    """One record shape on one host: its canonical JSON, and its line in the host's file."""

    canon: Template
    line: Template
    version: tuple[str, str] | None  # (extension, version)
    incident: tuple[str, str | None] | None = None  # (technique, ATT&CK ID)
    responses: frozenset[str] = frozenset()
    ladder: tuple[str, ...] = ()
    discarded: bool = False
    shadow: bool = False


@dataclass
class Tally:
    records: int = 0
    incidents: int = 0
    shadow: int = 0
    hosts: set[str] = field(default_factory=set)
    affected: set[str] = field(default_factory=set)
    techniques: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    responses: Counter[str] = field(default_factory=Counter)
    ladder: Counter[str] = field(default_factory=Counter)
    discarded: int = 0
    first: str = ""
    last: str = ""


def when(sec: int, ns: int, _days: dict[int, str] = {}) -> str:  # noqa: B006 (a cache)
    day, rest = divmod(sec, 86400)
    d = _days.get(day)
    if d is None:
        d = _days[day] = dt.datetime.fromtimestamp(day * 86400, dt.UTC).strftime("%Y-%m-%d")
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{d}T{h:02d}:{m:02d}:{s:02d}.{ns:09d}Z"


class Fleet:
    """Writes the corpus under ``root`` (per_host records a host, give or take its scenario) and counts, as it
    writes, what the report must say."""

    def __init__(self, root: Path, per_host: int):
        assert per_host % CHECKPOINT_EVERY == 0 and per_host >= 2500
        self.root, self.n = root, per_host
        self.keys = {h: Ed25519PrivateKey.generate() for h in HOSTS}
        self.kids = {h: key_id(k.public_key()) for h, k in self.keys.items()}
        self.forger = Ed25519PrivateKey.generate()
        self.versions: dict[tuple[str, str], Tally] = {}
        self.hosts: dict[str, Counter[str]] = {h: Counter() for h in HOSTS}
        self.files = 0
        self.other_entries = 0
        self.garbage_first = 0

    # -- the record shapes of a host
    def forms(self, host: str) -> tuple[list[tuple[Form, float]], Form, list[Form]]:
        """(the mix to draw from, its checkpoint, its policy records)."""
        fmt = "journal" if host in JOURNAL else "plain" if host == PLAIN else "central"
        mine = [(n, v) for n, v, hosts, _ in VERSIONS if host in hosts]
        mix: list[tuple[Form, float]] = []
        policies = []
        for ext, ver in mine:
            s = sha(ext, ver)
            inst = {"extension": ext, "instance": f"{ext}-{host}", "policy_sha256": s}
            quiet = (ext, host) in QUIET
            for (kind, detail, verdict, actions, tech, attack), w in zip(INCIDENTS, WEIGHTS, strict=False):
                if not quiet:
                    ladder = tuple(LADDER_OF[a.split(":")[0]] for a in actions if a.split(":")[0] in LADDER_OF)
                    mix.append((self.form(host, fmt, dict(inst, kind=kind, detail=detail, verdict=verdict,
                                                          actions=actions), (ext, ver), incident=(tech, attack),
                                          responses=frozenset(a.split(":")[0] for a in actions) or
                                          frozenset({"none"}), ladder=ladder), w))
            for (kind, detail, actions, step, discarded), w in zip(OTHERS, WEIGHTS[len(INCIDENTS):], strict=False):
                mix.append((self.form(host, fmt, dict(inst, kind=kind, detail=detail, verdict=None, actions=actions),
                                      (ext, ver), ladder=(step,) if step else (), discarded=discarded), w))
            if not quiet:
                kind, detail, verdict, actions = SHADOW
                mix.append((self.form(host, fmt, dict(inst, kind=kind, detail=detail, verdict=verdict,
                                                      actions=actions), (ext, ver), shadow=True), WEIGHTS[-1]))
            if host in next(on for n, v, _, on in VERSIONS if (n, v) == (ext, ver)):
                policies.append(self.form(host, fmt, dict(inst, kind="policy", verdict=None, actions=[], detail={
                    "event": "loaded", "name": ext, "version": ver, "file": f"/etc/ebpfguard/policies/{ext}.yaml"}),
                    (ext, ver)))
        ckpt = self.form(host, fmt, {"kind": "checkpoint", "detail": {"records": "@@R@@"}}, None)
        return mix, ckpt, policies

    def form(self, host: str, fmt: str, body: dict[str, Any], version: tuple[str, str] | None, **kw: Any) -> Form:
        rec: dict[str, Any] = {"seq": "@@S@@", "time": "@@T@@", "extension": None, "instance": None,
                               "cgroup_id": None, "pid": None, "tgid": None, "uid": None, "comm": None,
                               "kind": None, "detail": None, "verdict": None, "actions": None, "mode": None,
                               "policy_sha256": None, "prev_sha256": "@@P@@", "key_id": self.kids[host],
                               "signature": "@@G@@"}
        if body.get("extension"):
            rec.update(cgroup_id=81234, pid=4711, tgid=4711, uid=1000, comm="python3", mode="enforce")
        rec.update(body)
        canon = canonical(rec).decode()
        disk = canon[:-1] + ',"signature":"@@G@@"}'
        fwd = json.dumps(rec, separators=(",", ":"), ensure_ascii=False)  # as the agent's forwarder sends it
        if fmt == "plain":
            line = disk
        elif fmt == "journal":
            line = json.dumps({"__CURSOR": "s=6c1e;i=@@s@@", "__REALTIME_TIMESTAMP": "1796338843289488",
                               "_HOSTNAME": host, "SYSLOG_IDENTIFIER": "ebpfguard", "PRIORITY": "4",
                               "MESSAGE": f"{rec['extension'] or '-'} {rec['kind']} seq=@@s@@",
                               "EBPFGUARD_SEQ": "@@s@@", "EBPFGUARD_RECORD": fwd}, separators=(",", ":"))
        else:
            line = json.dumps({"_HOSTNAME": host, "SYSLOG_TIMESTAMP": "@@T@@", "SYSLOG_IDENTIFIER": "ebpfguard",
                               "PRIORITY": "4", "MESSAGE": f"{rec['extension'] or '-'} {rec['kind']} seq=@@s@@",
                               "_PID": "812", "EBPFGUARD_SEQ": "@@s@@", "EBPFGUARD_KIND": rec["kind"],
                               "EBPFGUARD_EXTENSION": rec["extension"] or "", "EBPFGUARD_VERDICT": rec["verdict"] or "",
                               "EBPFGUARD_RECORD": fwd}, separators=(",", ":"))
        return Form(Template(canon), Template(line), version, **kw)

    # -- one host's stream
    def stream(self, host: str) -> Iterator[str]:
        mix, ckpt, policies = self.forms(host)
        forms = [f for f, _ in mix]
        n = self.n
        plan = random.Random(host).choices(range(len(forms)), [w for _, w in mix], k=n + 1)
        hi = HOSTS.index(host)
        counts = self.hosts[host]

        def run(first: int, last: int, prev: str, shift: int = 0) -> Iterator[tuple[str, str]]:
            """Records first..last after ``prev``: (line, digest); ``shift`` seconds moves their times (another
            content)."""
            for seq in range(first, last + 1):
                if seq % CHECKPOINT_EVERY == 0:
                    f = ckpt
                elif seq <= len(policies):
                    f = policies[seq - 1]
                else:
                    f = forms[plan[seq]]
                t = when(START + hi * 7 + seq * 10 + shift, (seq * 7919 + hi) % 1_000_000_000)
                v = {"S": str(seq), "s": str(seq), "T": t, "P": prev, "R": str(seq - 1), "G": "null", "Ge": "null"}
                canon = f.canon.fill(v)
                prev = hashlib.sha256(canon.encode()).hexdigest()
                if host == LOSSY and seq in DROPPED:
                    continue
                if f is ckpt:
                    key = self.forger if host == BAD_SIGNATURE and seq == 300 else self.keys[host]
                    sig = base64.b64encode(key.sign(canon.encode())).decode()
                    v["G"], v["Ge"] = f'"{sig}"', f'\\"{sig}\\"'
                    counts["checkpoints"] += 1
                if host == CHANGED and seq == 777:  # changed on its way: its successor's prev_sha256 says so
                    v["T"] = when(START + hi * 7 + seq * 10 + 1, 0)
                self.count(host, f, v["T"])
                yield f.line.fill(v), prev

        def lines(first: int, last: int, prev: str, shift: int = 0) -> Iterator[str]:
            for line, d in run(first, last, prev, shift):
                digests[0] = d
                yield line

        digests = [GENESIS]  # the digest of the last record written
        if host == REWOUND:  # its tail cut after the last checkpoint, then the log went on
            top = n - 40
            yield from lines(1, top - 50, GENESIS)
            cut = digests[0]
            yield from lines(top - 49, top, cut)
            yield from lines(top - 49, n, cut, shift=3600)
            counts["again"] += 50
        elif host == REWRITTEN:  # seqs 181..230, checkpoint 200 among them, came again, made up
            yield from lines(1, 180, GENESIS)
            at180 = digests[0]
            yield from lines(181, n - 60, at180)
            top = digests[0]
            yield from lines(181, 230, at180, shift=1)
            yield from lines(n - 59, n, top)
            counts["again"] += 50
        elif host == TWICE:  # 400..460 delivered twice: nothing different
            yield from lines(1, 399, GENESIS)
            at399 = digests[0]
            yield from lines(400, 460, at399)
            top = digests[0]
            yield from lines(400, 460, at399)
            yield from lines(461, n, top)
            counts["again"] += 61
        else:
            yield from lines(1, n, GENESIS)

    def count(self, host: str, f: Form, t: str) -> None:
        self.hosts[host]["records"] += 1
        if f.version is None:
            return
        v = self.versions.get(f.version)
        if v is None:
            v = self.versions[f.version] = Tally()
        v.records += 1
        v.hosts.add(host)
        v.first = min(v.first or t, t)
        v.last = max(v.last, t)
        if f.incident:
            v.incidents += 1
            v.affected.add(host)
            v.techniques[f.incident] += 1
            v.responses.update(f.responses)
        v.shadow += f.shadow
        v.ladder.update(f.ladder)
        v.discarded += f.discarded

    # -- the files
    def write(self) -> Path:
        out = self.root / "collected"
        (out / "central").mkdir(parents=True)
        for host in CENTRAL:
            lines = self.stream(host)
            if host == ROTATED:
                with gzip.open(out / "central" / f"{host}.jsonl.1.gz", "wt", compresslevel=1) as fh:
                    fh.writelines(line + "\n" for line in islice(lines, self.n // 2))
                self.files += 1
            with open(out / "central" / f"{host}.jsonl", "w") as fh:
                if host == GARBAGE:
                    self.garbage(fh, lines)
                else:
                    fh.writelines(line + "\n" for line in lines)
            self.files += 1
        with gzip.open(out / f"{PLAIN}.jsonl.gz", "wt", compresslevel=1) as fh:
            fh.writelines(line + "\n" for line in self.stream(PLAIN))
        with open(out / "journal-export.json", "w") as fh:
            streams = [self.stream(h) for h in JOURNAL]
            i = 0
            while streams:
                for s in list(streams):
                    chunk = list(islice(s, 37))
                    if not chunk:
                        streams.remove(s)
                        continue
                    fh.writelines(line + "\n" for line in chunk)
                    i += 1
                    if i % 3 == 0:  # another program's entry
                        fh.write(json.dumps({"__CURSOR": f"s=6c1e;i={i}", "_HOSTNAME": JOURNAL[i % 4],
                                             "SYSLOG_IDENTIFIER": "sshd", "MESSAGE": "Accepted publickey"}) + "\n")
                        self.other_entries += 1
        self.files += 2
        return out

    def garbage(self, fh: TextIO, lines: Iterator[str]) -> None:
        for n, line in enumerate(lines, 1):
            if n in (101, 202, 303):  # a line cut short, a line of something else, an entry whose record is cut
                fh.write({101: '{"_HOSTNAME":"ws02","EBPFGUARD_REC\n', 202: "-- Reboot --\n",
                          303: '{"_HOSTNAME":"ws02","EBPFGUARD_RECORD":"{\\"seq\\":3"}\n'}[n])
                self.garbage_first = self.garbage_first or 101
            fh.write(line + "\n")

    def pubkeys(self) -> tuple[Path, Path]:
        d = self.root / "keys"
        d.mkdir()
        for h in [*KEYS_GIVEN, PLAIN]:
            pem = self.keys[h].public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo)
            (d / f"{h}.pem" if h != PLAIN else self.root / f"{h}.pem").write_bytes(pem)
        return d, self.root / f"{PLAIN}.pem"


LADDER_OF = {"cgroup.freeze": "freeze", "cgroup.kill": "kill", "quarantine": "quarantine"}


# The CLI, and at its exit its own peak RSS (VmHWM: the high-water mark of this program's memory since its exec). Not
# ru_maxrss: a child spawned with vfork() takes the parent's high-water mark with it through exec.
PEAK = """import atexit, runpy, sys
path = sys.argv.pop(1)
def peak():
    with open(path, "w") as out:
        out.write(next(x for x in open("/proc/self/status") if x.startswith("VmHWM:")).split()[1])
atexit.register(peak)
sys.argv[0] = "ebpfguard"
runpy.run_module("ebpfguard.cli.main", run_name="__main__")
"""


def report(fleet: Fleet, *extra: str) -> tuple[subprocess.CompletedProcess[str], float, int]:
    """The report as a subprocess: (its outcome, seconds, its peak RSS in KiB)."""
    keys, plain = fleet.pubkeys() if not (fleet.root / "keys").exists() else (fleet.root / "keys",
                                                                              fleet.root / f"{PLAIN}.pem")
    peak = fleet.root / "peak"
    t0 = time.monotonic()
    got = subprocess.run([sys.executable, "-c", PEAK, str(peak), "fleet", "report", "--json", "--pubkeys", str(keys),
                          "--pubkey", f"{PLAIN}={plain}", *extra, str(fleet.root / "collected")],
                         capture_output=True, text=True, timeout=300)
    return got, time.monotonic() - t0, int(peak.read_text())


def check(fleet: Fleet, got: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert got.returncode == 1, got.stderr
    assert "Traceback" not in got.stderr
    r = json.loads(got.stdout)
    hosts = {h["host"]: h for h in r["host_integrity"]}
    assert r["records"] == sum(c["records"] for c in fleet.hosts.values())
    assert sorted(hosts) == HOSTS and r["files"] == fleet.files
    assert r["skipped"] == fleet.other_entries
    for h, c in fleet.hosts.items():
        assert (hosts[h]["records"], hosts[h]["received_again"]) == (c["records"], c["again"]), h
        assert hosts[h]["missing"] == (len(DROPPED) if h == LOSSY else 0), h
        assert hosts[h]["checkpoints"] == c["checkpoints"], h
    assert hosts[LOSSY]["gaps"] == 2 and hosts[LOSSY]["ok"]
    assert hosts[TWICE]["ok"] and hosts[TWICE]["notes"] == []
    # the failed hosts, named, and why
    assert r["integrity_failed"] == sorted([REWOUND, REWRITTEN, BAD_SIGNATURE, CHANGED])
    assert any(p.startswith(f"rewound: the log went back from seq {fleet.n - 40} to seq {fleet.n - 89}")
               for p in hosts[REWOUND]["problems"]), hosts[REWOUND]
    assert hosts[REWRITTEN]["problems"] == ["rewritten: checkpoint seq 200 came again with a different digest"]
    assert hosts[BAD_SIGNATURE]["problems"] == ["bad signature: checkpoint seq 300"]
    assert hosts[CHANGED]["problems"] == ["chain broken at seq 778: its prev_sha256 is not the digest of seq 777"]
    for h in [*KEYS_GIVEN, PLAIN]:
        want = fleet.hosts[h]["checkpoints"] - (h == BAD_SIGNATURE)
        assert hosts[h]["signatures_verified"] == want, h
    assert hosts["ws02"]["signatures_verified"] is None
    bad = {f["path"].rsplit("/", 1)[-1]: f for f in r["file_problems"]}
    assert list(bad) == [f"{GARBAGE}.jsonl"]
    assert (bad[f"{GARBAGE}.jsonl"]["unparseable"], bad[f"{GARBAGE}.jsonl"]["first_unparseable_line"]) == (3, 101)
    # per extension version, exactly what was written
    got_versions = {(v["extension"], v["version"]): v for v in r["versions"]}
    assert len(got_versions) == len(fleet.versions) == len(VERSIONS)
    for (ext, ver), t in fleet.versions.items():
        v = got_versions[ext, ver if ext != "tab-sync" else sha(ext, ver)[:12]]  # no policy record named it
        assert v["sha256"] == sha(ext, ver)
        assert (v["records"], v["incidents"], v["shadow_refusals"]) == (t.records, t.incidents, t.shadow), ext
        assert (v["hosts"], v["hosts_affected"]) == (sorted(t.hosts), sorted(t.affected)), ext
        assert {(x["technique"], x["attack_id"]): x["incidents"] for x in v["by_technique"]} == dict(t.techniques)
        assert v["by_response"] == dict(t.responses) and v["ladder"] == dict(t.ladder), ext
        assert v["rollbacks_discarded"] == t.discarded, ext
        assert (v["first_seen"], v["last_seen"]) == (t.first, t.last), ext
    order = [(len(v["hosts_affected"]), v["incidents"]) for v in r["versions"]]
    assert order == sorted(order, reverse=True)
    return r


def test_a_fleet_report_counts_exactly_names_the_failed_hosts_and_stays_small(tmp_path: Path) -> None:
    small = Fleet(tmp_path / "small", 2_500)
    t0 = time.monotonic()
    small.write()
    gen_small = time.monotonic() - t0
    got, secs_small, rss_small = report(small)
    check(small, got)

    big = Fleet(tmp_path / "big", 25_000)
    t0 = time.monotonic()
    big.write()
    gen_big = time.monotonic() - t0
    got, secs_big, rss_big = report(big)
    r = check(big, got)
    records = r["records"]
    small_records = sum(c["records"] for c in small.hosts.values())
    print(f"\nfleet report: {records} records in {secs_big:.1f} s, peak RSS {rss_big / 1024:.1f} MiB; "
          f"{small_records} records in {secs_small:.1f} s, peak RSS {rss_small / 1024:.1f} MiB; "
          f"written in {gen_big:.1f} s and {gen_small:.1f} s")
    assert records > 1_000_000
    assert rss_big - rss_small < 6 * 1024 and rss_big < 120 * 1024, (rss_small, rss_big)

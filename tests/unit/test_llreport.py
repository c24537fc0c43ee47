"""Landlock's audit reports: parsing the kernel's text, and which refusals are this layer's to record."""

from __future__ import annotations

from ebpfguard.kernel.laudit import AUDIT_LANDLOCK_ACCESS, AUDIT_LANDLOCK_DOMAIN, decode, parse
from ebpfguard.pipeline.llreport import (
    HOLD_REPORTS,
    REPEAT_WINDOW_NS,
    DomainMap,
    Repeats,
    blockers_of,
    detail_of,
    errno_of,
    kind_of,
    ours,
)


def test_an_access_report_is_parsed_with_its_quoted_and_hex_fields() -> None:
    raw = (b'audit(1732550000.123:456): domain=1a2b3c4d5 blockers=fs.read_file path="/home/u/.ssh/id_rsa" '
           b'dev="vda1" ino=1234\0')
    rec = parse(AUDIT_LANDLOCK_ACCESS, raw)
    assert rec is not None and rec.serial == 456 and rec.ts_ns == 1732550000_123_000_000
    assert rec.fields == {"domain": "1a2b3c4d5", "blockers": "fs.read_file", "path": "/home/u/.ssh/id_rsa",
                          "dev": "vda1", "ino": "1234"}
    # audit writes an untrusted string with a space (or any unusual byte) in hex
    spaced = parse(AUDIT_LANDLOCK_ACCESS, b"audit(1.000:1): domain=1 blockers=fs.make_dir path=2F746D702F6120622F63")
    assert spaced is not None and spaced.fields["path"] == "/tmp/a b/c"
    assert decode("ino", b"2F") == "2F"  # only string fields are hex-decoded


def test_a_domain_record_and_a_non_audit_text() -> None:
    rec = parse(AUDIT_LANDLOCK_DOMAIN, b'audit(2.5:9): domain=ab status=allocated mode=enforcing pid=4242 '
                                       b'uid=1000 exe="/usr/bin/egact" comm="egact"')
    assert rec is not None and rec.fields["pid"] == "4242" and rec.fields["status"] == "allocated"
    assert parse(AUDIT_LANDLOCK_DOMAIN, b"not an audit record") is None


def test_kinds_and_errnos_follow_what_landlock_refused() -> None:
    assert kind_of(["fs.read_file"]) == "file" and errno_of(["fs.read_file"]) == "eacces"
    assert kind_of(["fs.execute"]) == "exec"
    assert kind_of(["net.connect_tcp"]) == "network" and errno_of(["net.connect_tcp"]) == "eacces"
    assert kind_of(["scope.signal"]) == "ipc" and errno_of(["scope.signal"]) == "eperm"
    assert kind_of(["ptrace"]) == "privilege"
    assert blockers_of({"blockers": "fs.write_file,fs.truncate"}) == ["fs.write_file", "fs.truncate"]


def test_each_refusal_is_recorded_by_one_layer() -> None:
    # reads and execs: Landlock's, while the file programs leave them to it (not under a kill response)
    assert ours(["fs.read_file"], reads_left_to_landlock=True)
    assert not ours(["fs.read_file"], reads_left_to_landlock=False)
    assert ours(["fs.execute"], reads_left_to_landlock=True)
    # writes are the tracepoints' (they record them, mostly as EROFS on the read-only mount)
    assert not ours(["fs.write_file"], reads_left_to_landlock=True)
    assert not ours(["fs.read_file", "fs.write_file"], reads_left_to_landlock=True)
    # what no tracepoint watches is always Landlock's
    assert ours(["fs.make_sock"], reads_left_to_landlock=False)
    assert not ours(["fs.make_dir"], reads_left_to_landlock=True)  # the mkdir tracepoint records it
    assert ours(["scope.signal"], reads_left_to_landlock=False)
    assert not ours([], reads_left_to_landlock=True)


def test_details_carry_the_resolved_object() -> None:
    d = detail_of({"domain": "ab", "path": "/etc/shadow", "ino": "12", "dev": "vda1"}, ["fs.read_file"])
    assert d == {"blockers": ["fs.read_file"], "domain": "ab", "path": "/etc/shadow", "dev": "vda1", "ino": 12}
    sig = detail_of({"domain": "ab", "opid": "77", "ocomm": "sleep"}, ["scope.signal"])
    assert sig["target_pid"] == 77 and sig["target_comm"] == "sleep"


def test_reports_before_their_domain_is_known_wait_and_are_bounded() -> None:
    dm = DomainMap()
    dm.hold({"domain": "ab", "blockers": "fs.read_file"})
    assert dm.learn("ab", 42) == [{"domain": "ab", "blockers": "fs.read_file"}] and dm.known == {"ab": 42}
    dm.hold({"domain": "cd"})
    assert dm.learn("cd", None) == [] and dm.foreign == 1 and dm.dropped == 0 and "cd" not in dm.known
    for _ in range(HOLD_REPORTS + 5):
        dm.hold({"domain": "ef"})
    assert len(dm.held["ef"]) == HOLD_REPORTS and dm.dropped == 5
    dm.forget(42)
    assert dm.known == {}


def test_identical_reports_within_a_second_are_counted_not_recorded() -> None:
    r = Repeats()
    k = (1, ("fs.read_file",), "/etc/shadow")
    assert r.seen(k, 10) == 0
    assert r.seen(k, 20) is None and r.seen(k, 30) is None
    assert r.seen((1, ("fs.read_file",), "/etc/passwd"), 40) == 0  # another object is another violation
    assert r.seen(k, 10 + REPEAT_WINDOW_NS) == 2  # the next record carries the two it stands for

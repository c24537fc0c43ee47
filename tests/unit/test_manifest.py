"""Manifest v1: precise errors for bad input, expansion, and the shipped examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ebpfguard.cli.main import main
from ebpfguard.errors import ManifestError
from ebpfguard.manifest import load, parse, parse_netrule
from ebpfguard.manifest.load import Escalation

ROOT = Path(__file__).resolve().parents[2]
GOOD = """apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {name: md-preview, version: "1.4.2", publisher: example.org}
spec:
  mode: enforce
  filesystem:
    read: [/usr/, ~/.config/md-preview/]
    write: [/tmp/md-preview/]
    exec: [/usr/bin/python3]
  network:
    connect: ["127.0.0.1/32:8080/tcp", "0.0.0.0/0:443/tcp"]
    bind: []
  syscalls: {deny: [ptrace, mount]}
  resources: {memory: 256Mi, cpu: 0.5, pids: 32}
  response: {file: block, network: block, exec: kill, escalation: {window: 60s, freeze_after: 5, kill_after: 20}}
"""


def sub(old: str, new: str) -> bytes:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1).encode()


# (name, manifest bytes, expected error text: "LINE: FIELD: MESSAGE" prefix or substring)
BAD: list[tuple[str, bytes, str]] = [
    ("bad CIDR", sub('"127.0.0.1/32:8080/tcp", ', '"127.0.0.1/32:8080/tcp", "10.0.0.0/33:80", '),
     ":11: spec.network.connect[1]: '10.0.0.0/33:80' is not CIDR:port[-port][/proto]"),
    ("host bits", sub('"0.0.0.0/0:443/tcp"', '"10.0.0.1/8:443"'),
     ":11: spec.network.connect[1]: '10.0.0.1/8:443' is not CIDR:port[-port][/proto] (host bits set"),
    ("port out of range", sub('"0.0.0.0/0:443/tcp"', '"0.0.0.0/0:70000"'), "ports are 0-65535"),
    ("reversed range", sub('"0.0.0.0/0:443/tcp"', '"0.0.0.0/0:90-80"'), "port range 90-80 is reversed"),
    ("bad proto", sub('"0.0.0.0/0:443/tcp"', '"0.0.0.0/0:443/sctp"'), "spec.network.connect[1]"),
    ("not an address", sub('"0.0.0.0/0:443/tcp"', '"example.com:443"'), "'example.com' is not an IP address"),
    ("relative path", sub("write: [/tmp/md-preview/]", "write: [tmp/md-preview/]"),
     ":8: spec.filesystem.write[0]: 'tmp/md-preview/' is not an absolute path"),
    ("dotdot path", sub("exec: [/usr/bin/python3]", "exec: [/usr/bin/../bin/sh]"), "is not normalised"),
    ("~user", sub("~/.config/md-preview/", "~bob/.config/"), "only ~ and ${HOME} are expanded"),
    ("other variable", sub("/tmp/md-preview/", "'${XDG_CACHE_HOME}/x/'"), "spec.filesystem.write[0]"),
    ("empty name", sub("name: md-preview", 'name: ""'), ":3: metadata.name: '' is not a valid name"),
    ("upper-case name", sub("name: md-preview", "name: MD"), "metadata.name: 'MD' is not a valid name"),
    ("missing name", sub("name: md-preview, ", ""), "metadata.name: required key is missing"),
    ("unknown top key", GOOD.encode() + b"extra: 1\n", ":16: extra: unknown key"),
    ("unknown spec key", sub("  mode: enforce", "  mode: enforce\n  sandbox: true"), ":6: spec.sandbox: unknown key"),
    ("wrong type", sub("pids: 32", "pids: many"), ":14: spec.resources.pids: 'many' is not of type 'integer'"),
    ("wrong list type", sub("bind: []", "bind: 8080"), ":12: spec.network.bind: 8080 is not of type 'array'"),
    ("bad mode", sub("mode: enforce", "mode: paranoid"), ":5: spec.mode: 'paranoid' is not one of"),
    ("bad response", sub("exec: kill", "exec: nuke"), "spec.response.exec: 'nuke' is not one of"),
    ("unknown syscall", sub("deny: [ptrace, mount]", "deny: [ptrace, frobnicate]"),
     ":13: spec.syscalls.deny[1]: unknown syscall 'frobnicate'"),
    ("duplicate syscall", sub("deny: [ptrace, mount]", "deny: [ptrace, ptrace]"),
     "spec.syscalls.deny[1]: duplicate entry 'ptrace' (same as [0])"),
    ("duplicate path", sub("write: [/tmp/md-preview/]", "write: [/tmp/md-preview/, /tmp/md-preview/]"),
     "spec.filesystem.write[1]: duplicate entry"),
    ("duplicate rule", sub('"0.0.0.0/0:443/tcp"', '"127.0.0.1:8080/tcp"'), "spec.network.connect[1]: duplicate entry"),
    ("duplicate key", sub("  mode: enforce", "  mode: enforce\n  mode: audit"), ":6: spec.mode: duplicate key (first at line 5)"),
    ("wrong apiVersion", sub("ebpfguard.io/v1", "ebpfguard.io/v2"), ":1: apiVersion: 'ebpfguard.io/v2' must be"),
    ("not a mapping", b"- just\n- a list\n", "a manifest is a mapping"),
    ("broken YAML", b"spec: [unclosed\n", "not valid YAML/JSON"),
    ("binary garbage", bytes(range(256)) * 4, "contains NUL bytes"),
    ("not UTF-8", b"metadata: {name: \xff\xfe}\n", "not UTF-8 text (byte 0xff"),
    ("1 MB file", b"# " + b"x" * (1 << 20) + b"\n", "a manifest may be at most 262144 bytes"),
    ("empty file", b"   \n", "empty manifest"),
    ("kill before freeze", sub("freeze_after: 5, kill_after: 20", "freeze_after: 5, kill_after: 2"),
     "spec.response.escalation.kill_after: must not be smaller than freeze_after"),
    ("bad memory", sub("memory: 256Mi", "memory: lots"), "spec.resources.memory"),
    ("negative cpu", sub("cpu: 0.5", "cpu: -1"), "spec.resources.cpu"),
]


def test_the_table_is_big_enough() -> None:
    assert len(BAD) >= 20


@pytest.mark.parametrize("name,raw,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_manifest_precise_error(name: str, raw: bytes, expected: str, tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_bytes(raw)
    with pytest.raises(ManifestError) as exc:
        load(f, home="/home/u")
    text = str(exc.value)
    assert text.startswith(str(f)), text
    assert expected in text, text
    result = CliRunner().invoke(main, ["policy", "validate", str(f)])
    assert result.exit_code == 2
    assert expected in result.output


def test_good_manifest_and_expansion() -> None:
    m = parse(GOOD.encode(), "m.yaml", home="/home/u")
    assert m.read == ["/usr/", "/home/u/.config/md-preview/"]
    assert m.response["exec"] == "kill" and m.response["privilege"] == "kill"  # default kept
    assert m.escalation == Escalation(window=60.0, freeze_after=5, kill_after=20)
    assert m.resources.memory == 256 << 20 and m.resources.pids == 32
    h = parse(GOOD.replace("/tmp/md-preview/", "'${HOME}/.cache/md/'").encode(), "m.yaml", home="/home/u")
    assert h.write == ["/home/u/.cache/md/"]


def test_json_manifest_is_accepted() -> None:
    import yaml

    data = yaml.safe_load(GOOD)
    m = parse(json.dumps(data, indent=1).encode(), "m.json", home="/h")
    assert m.name == "md-preview" and len(m.connect) == 2


def test_json_errors_have_lines() -> None:
    import yaml

    data = yaml.safe_load(GOOD)
    data["spec"]["network"]["connect"][1] = "1.2.3.4/40:1"
    with pytest.raises(ManifestError) as exc:
        parse(json.dumps(data, indent=1).encode(), "m.json", home="/h")
    assert "m.json:" in str(exc.value) and "spec.network.connect[1]" in str(exc.value)


def test_every_problem_is_reported_not_just_the_first() -> None:
    raw = sub("write: [/tmp/md-preview/]", "write: [rel/, rel2/]")
    with pytest.raises(ManifestError) as exc:
        parse(raw, "m.yaml", home="/h")
    assert len(exc.value.problems) == 2


@pytest.mark.parametrize("text,net,lo,hi,proto", [
    ("127.0.0.1/32:8080/tcp", "127.0.0.1/32", 8080, 8080, "tcp"),
    ("0.0.0.0/0:1000-2000", "0.0.0.0/0", 1000, 2000, "any"),
    ("::1/128:53/udp", "::1/128", 53, 53, "udp"),
    ("[::1]:443", "::1/128", 443, 443, "any"),
    ("10.1.2.3:22", "10.1.2.3/32", 22, 22, "any"),
    ("fd00::/8:80/tcp", "fd00::/8", 80, 80, "tcp"),
])
def test_netrule_forms(text: str, net: str, lo: int, hi: int, proto: str) -> None:
    r = parse_netrule(text)
    assert (str(r.network), r.port_lo, r.port_hi, r.proto) == (net, lo, hi, proto)


def test_shipped_policies_validate() -> None:
    files = sorted(str(p) for p in (ROOT / "policies").glob("*.yaml"))
    assert len(files) >= 4
    result = CliRunner().invoke(main, ["policy", "validate", *files])
    assert result.exit_code == 0, result.output


def test_validate_mixed_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Extension\n")
    good = ROOT / "policies" / "md-preview.yaml"
    result = CliRunner().invoke(main, ["policy", "validate", str(good), str(bad)])
    assert result.exit_code == 2
    assert "bad.yaml:1: apiVersion: required key is missing" in result.output
    assert "1 of 2 manifest(s) invalid" in result.output

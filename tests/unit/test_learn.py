"""learn's generalizing: exact files where few, a tree only past the threshold, never a credential location or
home as a tree; evidence comments; merge; the output validates."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ebpfguard.errors import ManifestError
from ebpfguard.governance import learn as learning
from ebpfguard.governance.learn import (
    Evidence,
    evidence_file,
    extension_name,
    generalize,
    learn_into,
    may_be_tree,
    render,
    write_manifest,
)
from ebpfguard.manifest.load import load, parse

HOME = "/home/ann"


def rec(kind: str, t: str = "2026-11-25T10:00:00.000000000Z", **detail: object) -> dict[str, object]:
    return {"kind": kind, "time": t, "verdict": "allowed", "detail": detail}


def test_trees_only_past_the_threshold_and_never_over_secrets() -> None:
    ev = Evidence(HOME)
    for i in range(5):
        ev.add_record(rec("file", path=f"/usr/share/tool/theme{i}.css", access="read"))
    for i in range(3):
        ev.add_record(rec("file", path=f"/etc/tool/{i}.conf", access="read"))
    for name in ("id_ed25519", "id_rsa", "known_hosts", "config", "authorized_keys"):
        ev.add_record(rec("file", path=f"{HOME}/.ssh/{name}", access="read"))
    for name in ("a", "b", "c", "d"):
        ev.add_record(rec("file", path=f"{HOME}/{name}.txt", access="read"))
    rules = {r.rule: r for r in generalize(ev.files["read"], HOME)}
    assert "/usr/share/tool/" in rules and rules["/usr/share/tool/"].files == 5
    assert {"/etc/tool/0.conf", "/etc/tool/1.conf", "/etc/tool/2.conf"} <= set(rules)  # 3 < 4: exact
    assert f"{HOME}/.ssh/id_rsa" in rules and f"{HOME}/.ssh/" not in rules  # never a credential tree
    assert f"{HOME}/a.txt" in rules and f"{HOME}/" not in rules  # never home
    assert not may_be_tree("/usr", HOME) and not may_be_tree("/", HOME) and not may_be_tree("/home", HOME)
    assert not may_be_tree(f"{HOME}/.config", HOME)  # it holds browser profiles
    assert not may_be_tree(f"{HOME}/.local/share/keyrings/x", HOME)
    assert may_be_tree(f"{HOME}/.config/tool", HOME)


def test_trees_roll_up_a_package_of_packages() -> None:
    ev = Evidence(HOME)
    for pkg in ("json", "email", "http", "xml"):
        for i in range(4):
            ev.add_record(rec("file", path=f"/usr/lib/python3.11/{pkg}/m{i}.py", access="read"))
    rules = [r.rule for r in generalize(ev.files["read"], HOME)]
    assert rules == ["/usr/lib/python3.11/"]


def test_render_has_evidence_and_validates(tmp_path: Path) -> None:
    ev = Evidence(HOME)
    ev.add_record(rec("exec", path="/usr/bin/python3", access="exec"))
    ev.add_record(rec("file", path="/usr/bin/python3", access="read"))  # covered by the exec grant
    ev.add_record(rec("file", path="/srv/out/result.txt", access="write", repeats_suppressed=2))
    ev.add_record(rec("file", path="/srv/out/result.txt", access="read"))  # covered by the write grant
    ev.add_record(rec("network", op="connect", address="127.0.0.1", port=8080, proto="tcp"))
    ev.add_record(rec("network", op="send", address="::1", port=53, proto="udp"))
    ev.add_record(rec("network", socket="unix", op="connect", path="/run/app/sock", type="stream"))
    ev.add_record(rec("network", socket="unix", op="connect", path="/run/nscd/socket", type="stream"))
    ev.add_record(rec("privilege", syscall="setuid", nr=105))
    ev.runs.append({"command": "python3 x.py", "started": "2026-11-25T10:00:00Z", "seconds": 1.5, "ending": "exit 0"})
    text = render(ev, "x")
    m = parse(text.encode(), "x.yaml", home=HOME)
    assert m.exec == ["/usr/bin/python3"] and m.read == [] and m.write == ["/srv/out/result.txt"]
    assert '"127.0.0.1/32:8080/tcp"  # 1 connect,' in text and '"::1/128:53/udp"  # 1 connect,' in text
    assert len(m.connect) == 2 and list(m.ipc.unix) == ["/run/app/sock"]
    assert '"/srv/out/result.txt"  # 3 opens for writing, first 2026-11-25T10:00:00Z' in text
    assert "#   privilege setuid: 1 time," in text


def test_merge_adds_a_second_runs_evidence(tmp_path: Path) -> None:
    a, b = Evidence(HOME), Evidence(HOME)
    a.add_record(rec("file", path="/srv/data/1.csv", access="read"))
    b.add_record(rec("file", path="/srv/data/1.csv", access="read", t="2026-11-25T09:00:00.0Z"))
    b.add_record(rec("file", path="/srv/data/2.csv", access="read"))
    a.runs.append({"command": "a", "started": "2026-11-25T10:00:00Z", "seconds": 1.0, "ending": "exit 0"})
    b.runs.append({"command": "b", "started": "2026-11-25T09:00:00Z", "seconds": 1.0, "ending": "exit 0"})
    path = tmp_path / "ev.json"
    path.write_text(json.dumps(b.as_dict()))
    a.merge(Evidence.load(path))
    assert a.files["read"]["/srv/data/1.csv"].count == 2 and a.files["read"]["/srv/data/1.csv"].runs == 2
    assert a.files["read"]["/srv/data/1.csv"].first.startswith("2026-11-25T09")
    assert set(a.files["read"]) == {"/srv/data/1.csv", "/srv/data/2.csv"} and len(a.runs) == 2
    assert "in 2 runs" in render(a, "x")


def test_the_learned_name_comes_from_the_program_or_the_option() -> None:
    assert extension_name("/usr/bin/My_Tool") == "my-tool"
    assert extension_name("./plugin.py") == "plugin.py"
    assert extension_name("tool", "Acme Viewer!") == "Acme-Viewer"  # --name is kept as given, made a name
    assert extension_name("tool", "a_b") == "a_b"
    assert extension_name("/usr/bin/+++") == "learned"


def used(ev: Evidence) -> Evidence:
    ev.add_record(rec("file", path="/srv/data/1.csv", access="read"))
    ev.add_record(rec("network", op="connect", address="127.0.0.1", port=8080, proto="tcp"))
    ev.add_record(rec("network", socket="unix", op="connect", path="/run/app/sock", type="stream"))
    ev.runs.append({"command": "x", "started": "2026-11-25T10:00:00Z", "seconds": 1.0, "ending": "exit 0"})
    return ev


def test_uses_count_distinct_rules_with_or_without_unix_sockets() -> None:
    ev = used(Evidence(HOME))
    ev.add_record(rec("file", path="/srv/data/1.csv", access="read"))  # the same use again
    assert ev.uses() == 3 and ev.uses(unix=False) == 2


def test_the_manifest_is_written_validated_with_its_evidence_beside_it(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "plugin.yaml"
    ev = used(Evidence(HOME))
    write_manifest(out, ev, "plugin")
    assert load(out).name == "plugin" and load(out).read == ["/srv/data/1.csv"]
    assert evidence_file(out) == tmp_path / "plugin.yaml.evidence.json"
    assert json.loads(evidence_file(out).read_text()) == ev.as_dict()
    before = out.read_text()
    monkeypatch.setattr(learning, "render", lambda *_: "apiVersion: nonsense\n")
    with pytest.raises(ManifestError):
        write_manifest(out, ev, "plugin")
    assert out.read_text() == before  # what does not validate replaces nothing


def test_learn_into_records_in_a_scratch_folder_and_merges_the_evidence_beside(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    scratch: list[str] = []

    def fake_learn(argv: list[str], name: str, duration: float | None, state_dir: str,
                   home: str) -> tuple[Evidence, int]:
        scratch.append(state_dir)
        assert os.path.isdir(state_dir) and (argv, name, duration, home) == (["./tool"], "tool", 5.0, HOME)
        ev = Evidence(home)
        ev.add_record(rec("file", path=f"/srv/data/{len(scratch)}.csv", access="read"))
        ev.runs.append({"command": "./tool", "started": "", "seconds": 0.1, "ending": "exit 3"})
        return ev, 3

    monkeypatch.setattr(learning, "learn", fake_learn)
    out = tmp_path / "tool.yaml"
    ev, status = learn_into(out, ["./tool"], "tool", 5.0, HOME)
    assert status == 3 and load(out).read == ["/srv/data/1.csv"] and not os.path.exists(scratch[0])
    assert not scratch[0].startswith(str(tmp_path)) and os.path.basename(scratch[0]).startswith("ebpfguard-learn-")
    ev, _ = learn_into(out, ["./tool"], "tool", 5.0, HOME, merge=True)
    assert len(ev.runs) == 2 and load(out).read == ["/srv/data/1.csv", "/srv/data/2.csv"]
    assert len(json.loads(evidence_file(out).read_text())["runs"]) == 2

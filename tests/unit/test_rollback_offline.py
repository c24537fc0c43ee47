"""Rollback areas no agent holds (runtime/rollback.py): listed, shown, committed and discarded from disk, each
commit and discard a signed record; an instance that still runs is refused. On a hand-made area (the upper
layer as overlayfs leaves it) and a fixture cgroup tree: no root, no mount."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ebpfguard.errors import EbpfguardError
from ebpfguard.forensics import BadLine, read, verify
from ebpfguard.kernel.cgroups import SLICE, CgroupManager
from ebpfguard.runtime.rollback import offline

INSTANCE = "notes-1a2b3c4d"


def an_area(tmp_path: Path) -> tuple[Path, Path]:
    """STATE/rollback/INSTANCE over the real tree docs/: the extension wrote docs/new.txt."""
    state, real = tmp_path / "state", tmp_path / "docs"
    real.mkdir()
    (real / "old.txt").write_text("the user's\n")
    area = state / "rollback" / INSTANCE
    upper, work = area / "0" / "upper", area / "0" / "work"
    upper.mkdir(parents=True)
    work.mkdir()
    (upper / "new.txt").write_text("the extension's\n")
    meta = {"instance": INSTANCE, "extension": "notes", "started_ns": 1,
            "trees": [{"target": str(real), "upper": str(upper), "work": str(work)}]}
    (area / "meta.json").write_text(json.dumps(meta))
    return state, real


def records(state: Path) -> list[dict]:  # type: ignore[type-arg]
    return [r for r in read(state) if not isinstance(r, BadLine) and r["kind"] == "rollback"]


def test_list_and_show_read_the_areas_on_disk(tmp_path: Path) -> None:
    state, real = an_area(tmp_path)
    listed = offline(state, "list", None, by="alice")
    assert listed["running"] == [] and [a["instance"] for a in listed["pending"]] == [INSTANCE]
    shown = offline(state, "show", INSTANCE, by="alice")
    assert shown["extension"] == "notes" and shown["trees"] == [str(real)] and shown["count"] == 1
    assert shown["changes"][0]["op"] == "write" and shown["changes"][0]["path"] == str(real / "new.txt")
    assert not (state / "forensics").exists()  # looking writes nothing
    with pytest.raises(EbpfguardError, match="no rollback area for an instance 'other-1'"):
        offline(state, "show", "other-1", by="alice")
    with pytest.raises(ValueError, match="not one of list, show, commit, discard"):
        offline(state, "undo", INSTANCE, by="alice")


def test_commit_applies_the_changes_and_records_who(tmp_path: Path, cgroot: Path) -> None:
    state, real = an_area(tmp_path)
    ans = offline(state, "commit", INSTANCE, by="alice", cgroups=CgroupManager(cgroot))
    assert ans == {"instance": INSTANCE, "stopped": False, "event": "committed", "count": 1, "conflicts": []}
    assert (real / "new.txt").read_text() == "the extension's\n" and (real / "old.txt").exists()
    assert not (state / "rollback" / INSTANCE).exists()
    (rec,) = records(state)
    assert rec["instance"] == INSTANCE and rec["extension"] == "notes"
    assert rec["detail"]["event"] == "committed" and rec["detail"]["by"] == "alice"
    assert verify(state).ok


def test_discard_leaves_the_real_tree_as_it_was(tmp_path: Path, cgroot: Path) -> None:
    state, real = an_area(tmp_path)
    ans = offline(state, "discard", INSTANCE, by="root", cgroups=CgroupManager(cgroot))
    assert ans["event"] == "discarded" and ans["count"] == 1
    assert sorted(p.name for p in real.iterdir()) == ["old.txt"]
    assert [r["detail"]["event"] for r in records(state)] == ["discarded"]
    assert offline(state, "list", None, by="root")["pending"] == []


def test_an_instance_that_still_runs_is_refused(tmp_path: Path, cgroot: Path) -> None:
    state, real = an_area(tmp_path)
    cg = cgroot / "unified" / SLICE / INSTANCE
    cg.mkdir(parents=True)
    (cg / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    with pytest.raises(EbpfguardError, match=f"{INSTANCE} still runs .its agent is gone.: start the agent"):
        offline(state, "commit", INSTANCE, by="root", cgroups=CgroupManager(cgroot))
    assert (state / "rollback" / INSTANCE).is_dir() and not (real / "new.txt").exists()
    (cg / "cgroup.events").write_text("populated 0\nfrozen 0\n")  # its processes are gone: the cgroup is left
    assert offline(state, "discard", INSTANCE, by="root", cgroups=CgroupManager(cgroot))["event"] == "discarded"

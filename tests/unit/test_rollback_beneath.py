"""What may go from a rollback's upper layer to the real tree (refusal, link_stays_inside) and how a commit
resolves the real tree (openat2 beneath, no link followed): pure functions, and commits of hand-made areas (the
upper layer as overlayfs leaves it), no mount and no root."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest

from ebpfguard.sandbox.rollback import Layer, link_stays_inside, openat2, refusal, unresolved

ME = os.getuid()


@pytest.mark.parametrize("rel,target,inside", [
    ("link", "a.txt", True),
    ("d/link", "../a.txt", True),
    ("d/link", "../../x", False),
    ("link", "..", False),
    ("link", "/srv/docs/a.txt", True),
    ("link", "/srv/docs", True),
    ("link", "/srv/docs2/x", False),
    ("link", "/etc/shadow", False),
    ("link", "/srv/docs/../etc", False),
    ("link", "", False),
])
def test_a_symlink_goes_in_only_when_it_points_inside_the_tree(rel: str, target: str, inside: bool) -> None:
    assert link_stays_inside(rel, target, "/srv/docs") is inside


def test_what_the_upper_layer_may_hold() -> None:
    reg, fifo = stat.S_IFREG | 0o644, stat.S_IFIFO | 0o644
    assert refusal(reg, 1000, 1000) is None
    assert refusal(reg, 0, 1000) == ("a file of uid 0, not the instance user's (1000): a hard link to another's "
                                     "file is never read nor handed on")
    assert refusal(stat.S_IFDIR | 0o755, 0, 1000) is None  # a folder is made as the user, whoever owns it above
    assert refusal(stat.S_IFLNK | 0o777, 1000, 1000, rel="l", target="a", tree="/t") is None
    assert refusal(stat.S_IFLNK | 0o777, 1000, 1000, rel="l", target="/etc", tree="/t") == \
        "a symlink out of the write tree (to '/etc'): not recreated"
    assert refusal(fifo, 1000, 1000) == "a FIFO: never opened nor made in the real tree"
    assert refusal(stat.S_IFSOCK | 0o644, 1000, 1000) == "a socket: never opened nor made in the real tree"
    assert refusal(stat.S_IFCHR | 0o644, 1000, 1000, rdev=os.makedev(1, 3)).startswith("a device node")
    assert refusal(stat.S_IFBLK | 0o644, 1000, 1000, rdev=os.makedev(8, 0)).startswith("a device node")
    assert refusal(stat.S_IFCHR, 1000, 1000, rdev=0) is None  # a whiteout: a deletion


def test_openat2_never_follows_a_link_nor_leaves_the_folder(tmp_path: Path) -> None:
    (tmp_path / "t" / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "t" / "link").symlink_to(tmp_path / "outside")
    root = os.open(tmp_path / "t", os.O_PATH | os.O_DIRECTORY)
    try:
        os.close(openat2(root, "sub", os.O_PATH | os.O_DIRECTORY))
        for path, err in (("link", errno.ELOOP), ("link/x", errno.ELOOP), ("../outside", errno.EXDEV),
                          (str(tmp_path / "outside"), errno.EXDEV), ("/proc/self/root", errno.EXDEV)):
            with pytest.raises(OSError) as exc:
                openat2(root, path, os.O_PATH)
            assert exc.value.errno == err, path
        assert unresolved(OSError(errno.ELOOP, "")) == "one of its folders is now a symlink: not followed"
        assert unresolved(OSError(errno.EXDEV, "")) == "it crosses a mount point or leaves the write tree"
    finally:
        os.close(root)


def an_area(tmp_path: Path, started_ns: int = 1) -> tuple[Layer, Path, Path]:
    """An area over the real tree docs/ (with the folder sub/), the upper layer as the extension left it."""
    real, upper, work = tmp_path / "docs", tmp_path / "area" / "0" / "upper", tmp_path / "area" / "0" / "work"
    (real / "sub").mkdir(parents=True)
    upper.mkdir(parents=True)
    work.mkdir()
    meta = {"instance": "x-1", "extension": "x", "started_ns": started_ns,
            "trees": [{"target": str(real), "upper": str(upper), "work": str(work)}]}
    (tmp_path / "area" / "meta.json").write_text(json.dumps(meta))
    return Layer.open(tmp_path / "area"), real, upper


def test_a_folder_swapped_for_a_symlink_is_a_conflict_and_nothing_goes_through(tmp_path: Path) -> None:
    layer, real, upper = an_area(tmp_path)
    (upper / "sub").mkdir()
    (upper / "sub" / "NAME").write_text("planted\n")
    (upper / "ok.txt").write_text("ok\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (real / "sub").rmdir()
    (real / "sub").symlink_to(elsewhere)  # the user, after the start
    d = layer.commit(tmp_path / "kept")
    assert list(elsewhere.iterdir()) == []
    assert (real / "ok.txt").read_text() == "ok\n" and (real / "sub").is_symlink()
    assert [(c["path"], c.get("user"), c["why"]) for c in d["conflicts"]] == [
        (f"{real}/sub", "changed", "the user changed it while the instance ran"),
        (f"{real}/sub/NAME", "changed", "its folder is a conflict")]
    assert Path(d["conflicts"][1]["extension_version"]).read_text() == "planted\n"
    assert d["count"] == 1 and d["user"] == {"uid": ME, "gid": os.getgid()}


def test_hostile_entries_of_the_upper_layer_are_conflicts_and_never_opened(tmp_path: Path) -> None:
    layer, real, upper = an_area(tmp_path)
    os.mkfifo(upper / "pipe")  # opened for reading, it would block the commit forever
    (upper / "out").symlink_to("/etc")
    (upper / "in").symlink_to("sub")
    (upper / "f").write_text("f\n")
    started = time.monotonic()
    d = layer.commit(tmp_path / "kept")
    assert time.monotonic() - started < 30
    assert sorted(os.listdir(real)) == ["f", "in", "sub"] and os.readlink(real / "in") == "sub"
    got = {c["path"].removeprefix(f"{real}/"): c for c in d["conflicts"]}
    assert sorted(got) == ["out", "pipe"]
    assert got["pipe"]["op"] == "special" and "extension_version" not in got["pipe"]
    assert os.readlink(got["out"]["extension_version"]) == "/etc"  # kept aside as a symlink, not followed
    assert d["counts"] == {"symlink": 1, "write": 1}
    assert not (tmp_path / "area").exists()


def test_a_discard_lists_everything_it_threw_away(tmp_path: Path) -> None:
    layer, real, upper = an_area(tmp_path)
    os.mkfifo(upper / "pipe")
    (upper / "f").write_text("f\n")
    d = layer.discard()
    assert d["event"] == "discarded" and d["counts"] == {"special": 1, "write": 1} and "errors" not in d
    assert sorted(os.listdir(real)) == ["sub"]


def test_a_write_tree_that_is_no_longer_the_folder_it_was_is_not_touched(tmp_path: Path) -> None:
    layer, real, upper = an_area(tmp_path)
    (upper / "f").write_text("f\n")
    st = os.stat(real)
    layer.meta["trees"][0].update(dev=st.st_dev, ino=st.st_ino)
    real.rename(tmp_path / "docs.old")
    (tmp_path / "docs").mkdir()  # another folder under the same name
    d = layer.commit(tmp_path / "kept")
    assert os.listdir(real) == [] and d["count"] == 0
    assert [c["why"] for c in d["conflicts"]] == ["the write tree is no longer the folder the instance started with"]


@pytest.mark.skipif(os.geteuid() != 0, reason="taking another user's rights needs root")
def test_root_commits_with_the_instance_users_rights() -> None:
    """As root, a commit for nobody makes nobody's files, and cannot write where nobody may not (a folder of
    root's inside the tree): an error, not a write; root's rights are back afterwards."""
    nobody = 65534
    tmp_path = Path(tempfile.mkdtemp(prefix="ebpfguard-rb-"))  # nobody reaches it (pytest's folder is root's only)
    os.chmod(tmp_path, 0o755)
    try:
        _commit_as_nobody(tmp_path, nobody)
    finally:
        shutil.rmtree(tmp_path)


def _commit_as_nobody(tmp_path: Path, nobody: int) -> None:
    layer, real, upper = an_area(tmp_path)
    for p in (real, real / "sub", upper):
        os.chown(p, nobody, nobody)
    (real / "roots").mkdir(mode=0o755)  # root's, inside the tree
    (upper / "roots").mkdir()
    for p in (upper / "new.txt", upper / "roots" / "x"):
        p.write_text("n\n")
        os.chown(p, nobody, nobody)
    (upper / "d").mkdir()
    d = layer.commit(tmp_path / "kept", (nobody, nobody))
    assert (real / "new.txt").stat().st_uid == nobody and (real / "d").stat().st_uid == nobody
    assert not (real / "roots" / "x").exists() and os.listdir(real / "roots") == []
    assert len(d["errors"]) == 1 and d["errors"][0].startswith(f"write {real}/roots/x: Permission denied")
    assert d["user"] == {"uid": nobody, "gid": nobody}
    (tmp_path / "root-again").write_text("x")  # this thread has root's file rights back
    assert (tmp_path / "root-again").stat().st_uid == 0

"""Rollback overlays (spec.filesystem.rollback): an extension writes, renames and deletes in its write tree.
Killed by the ladder, the real tree is byte for byte as before and the record lists what was discarded; after a
clean exit, the tree holds exactly its changes; a file the user changed meanwhile keeps the user's version, and
the extension's is kept aside. Judged by the real tree's bytes, not by what the agent says."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ebpfguard.lab.simulate import execute
from ebpfguard.manifest.load import parse
from ebpfguard.runtime.engine import Engine

from .harness import World
from .test_containment import NOBODY

pytestmark = pytest.mark.kernel

SCRIPT = ("cd {w} && echo new > new.txt && echo changed > a.txt && mv b.txt b2.txt && rm c.txt && mkdir d && "
          "echo x > d/f && rm -r old && ln -s a.txt link")


@pytest.fixture
def tree(world: World, engine: Engine) -> Iterator[Path]:
    """A write tree owned by the extension's user, and a rollback area, on a filesystem that can hold an
    overlay's upper layer and gives file handles (tmpfs under /run: the VM guest's root is itself an overlay)."""
    area = Path(tempfile.mkdtemp(prefix="ebpfguard-rb-", dir="/run"))
    os.chmod(area, 0o755)
    w = area / "docs"
    w.mkdir()
    (w / "a.txt").write_text("original a\n")
    (w / "b.txt").write_text("original b\n")
    (w / "c.txt").write_text("original c\n")
    (w / "old").mkdir()
    (w / "old" / "keep.txt").write_text("in old\n")
    for p in [w, *w.rglob("*")]:
        os.chown(p, NOBODY, NOBODY)
    old_root, engine.rollback_root = engine.rollback_root, area / "rollback"
    yield w
    engine.rollback_root = old_root
    shutil.rmtree(area, ignore_errors=True)
    shutil.rmtree(w, ignore_errors=True)
    shutil.rmtree(engine.state.rollback_kept, ignore_errors=True)


def snapshot(w: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in sorted(w.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(w))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir", st.st_mode)
        else:
            out[rel] = ("file", p.read_bytes(), st.st_mode, st.st_mtime_ns, st.st_uid)
    return out


def manifest(world: World, w: Path, kill_after: int | None = None) -> str:
    # /proc/ is readable: Debian's mv, mkdir and ln link libselinux, whose constructor reads /proc/filesystems
    # and /proc/PID/mounts; denied, those reads are violations that kill_after: 1 would act on before the
    # secret's read (on a slow machine, before the script's last changes)
    esc = f", escalation: {{window: 60s, kill_after: {kill_after}}}" if kill_after else ""
    return f"""
apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {{name: egtest, version: "1"}}
spec:
  mode: enforce
  filesystem:
    read: ["/usr/", "/lib/", "/lib64/", "/etc/", "/proc/", "{world.allowed}/"]
    write: ["{w}/"]
    exec: ["/usr/bin/"]
    rollback: true
  response: {{file: block, exec: block, network: block, syscall: block, privilege: block{esc}}}
"""


def run(engine: Engine, world: World, w: Path, script: str, kill_after: int | None = None,
        on_instance: Any = None) -> tuple[int, list[dict[str, Any]], str]:
    m = parse(manifest(world, w, kill_after).encode(), "egtest.yaml", home=str(world.base))
    argv = ["/bin/sh", "-c", script]

    def hook(inst: Any) -> list[str]:
        assert inst.rollback is not None and [t.target for t in inst.rollback.trees] == [str(w)]
        if on_instance is not None:
            on_instance(inst)
        return argv

    status, _, records, state = execute(engine, m, argv, sandbox=True, on_instance=hook)
    return status, records, state


def rollback_record(records: list[dict[str, Any]]) -> dict[str, Any]:
    (rec,) = [r for r in records if r["kind"] == "rollback"]
    return rec


def test_killed_by_the_ladder_the_real_tree_is_as_before(engine: Engine, world: World, tree: Path) -> None:
    before = snapshot(tree)
    status, records, state = run(engine, world, tree, SCRIPT.format(w=tree) + f" && cat {world.secret}/s.txt; "
                                 "sleep 10", kill_after=1)
    assert state == "killed" or status == 128 + 9, (status, state, records)
    assert snapshot(tree) == before  # byte for byte, modes and times: nothing reached the real tree
    rec = rollback_record(records)
    d = rec["detail"]
    assert d["event"] == "discarded" and d["trees"] == [str(tree)]
    got = {(c["op"], c["path"].removeprefix(f"{tree}/")) for c in d["changes"]}
    script = {("write", "new.txt"), ("write", "a.txt"), ("write", "b2.txt"), ("delete", "b.txt"),
              ("delete", "c.txt"), ("mkdir", "d"), ("write", "d/f"), ("delete", "old"), ("symlink", "link")}
    # what the extension did that a layer judged (a checkpoint, signed now and then by the log, is no violation)
    violations = [r for r in records if r["kind"] not in ("lifecycle", "rollback", "checkpoint")]
    assert got == script, (got, [(r["kind"], r["verdict"], r["detail"]) for r in violations])
    assert not (engine.rollback_root / rec["instance"]).exists()  # nothing left in the area
    # the secret's read is the one violation, and it comes before the discard
    got_v = [(r["kind"], r["verdict"], r["detail"].get("path"), r["detail"]) for r in violations]
    assert [v[2] for v in got_v] == [f"{world.secret}/s.txt"], got_v
    assert violations[0]["verdict"] == "denied" and records.index(violations[0]) < records.index(rec)


def test_a_clean_exit_commits_exactly_its_changes(engine: Engine, world: World, tree: Path) -> None:
    status, records, _ = run(engine, world, tree, SCRIPT.format(w=tree))
    assert status == 0, records
    after = snapshot(tree)
    assert sorted(after) == ["a.txt", "b2.txt", "d", "d/f", "link", "new.txt"], sorted(after)
    assert (tree / "new.txt").read_text() == "new\n" and (tree / "a.txt").read_text() == "changed\n"
    assert (tree / "b2.txt").read_text() == "original b\n" and (tree / "d" / "f").read_text() == "x\n"
    assert os.readlink(tree / "link") == "a.txt"
    assert (tree / "new.txt").stat().st_uid == NOBODY  # the extension's user owns what it made
    d = rollback_record(records)["detail"]
    assert d["event"] == "committed" and d["conflicts"] == [] and d["errors"] == []
    import hashlib  # noqa: PLC0415

    new = [c for c in d["changes"] if c["path"] == f"{tree}/new.txt"]
    assert new == [{"op": "write", "path": f"{tree}/new.txt", "sha256": hashlib.sha256(b"new\n").hexdigest(),
                    "size": 4}]


def test_a_file_the_user_changed_meanwhile_keeps_the_users_version(engine: Engine, world: World,
                                                                    tree: Path) -> None:
    done = threading.Event()

    def user_edits(inst: Any) -> None:
        upper = Path(inst.rollback.trees[0].upper)

        def edit() -> None:  # as soon as the extension has written its a.txt (in its upper layer)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if (upper / "a.txt").exists() and (upper / "a.txt").read_bytes() == b"ext\n" and \
                        (upper / "old" / "more.txt").exists() and (upper / "b.txt").exists():
                    (tree / "a.txt").write_text("user edit\n")
                    (tree / "b.txt").unlink()  # the user deletes a file the extension changed,
                    shutil.rmtree(tree / "old")  # and a folder it wrote in
                    break
                time.sleep(0.01)
            done.set()

        threading.Thread(target=edit, daemon=True).start()

    status, records, _ = run(engine, world, tree, f"cd {tree} && echo ext > a.txt && echo ext >> b.txt && "
                             "echo more > old/more.txt && echo more > n.txt && sleep 2", on_instance=user_edits)
    assert done.wait(5) and status == 0, records
    assert (tree / "a.txt").read_text() == "user edit\n"  # the user's change was not lost
    assert not (tree / "b.txt").exists() and not (tree / "old").exists()  # nor the user's deletions
    assert (tree / "n.txt").read_text() == "more\n"  # the rest was committed
    assert (tree / "c.txt").read_text() == "original c\n"
    d = rollback_record(records)["detail"]
    got = {c["path"].removeprefix(f"{tree}/"): c for c in d["conflicts"]}
    assert sorted(got) == ["a.txt", "b.txt", "old", "old/more.txt"], d["conflicts"]
    assert {k: (c["kept"], c["user"]) for k, c in got.items()} == {
        "a.txt": ("user", "changed"), "b.txt": ("user", "deleted"), "old": ("user", "deleted"),
        "old/more.txt": ("user", "deleted")}
    assert Path(got["a.txt"]["extension_version"]).read_text() == "ext\n"  # kept aside, not lost
    assert Path(got["b.txt"]["extension_version"]).read_text() == "original b\next\n"
    assert Path(got["old/more.txt"]["extension_version"]).read_text() == "more\n"
    assert [c["path"] for c in d["changes"]] == [f"{tree}/n.txt"]


def test_an_instance_running_when_the_agent_stops_leaves_its_changes_for_an_operator(engine: Engine, world: World,
                                                                                   tree: Path) -> None:
    from ebpfguard.sandbox import Sandbox, landlock_confines
    from ebpfguard.sandbox.launcher import spawn

    m = parse(manifest(world, tree).encode(), "egtest.yaml", home=str(world.base))
    records: list[dict[str, Any]] = []
    engine.subscribers.append(records.append)
    try:
        inst = engine.prepare(m, landlocked=landlock_confines(m))
        sb = Sandbox.prepare(m, proxies=inst.proxy_folders(), overlays=inst.rollback.overlays())
        argv = ["/bin/sh", "-c", f"echo draft > {tree}/draft.txt && rm {tree}/c.txt && sleep 30"]
        try:
            proc = spawn(argv, inst.cgroup.procs_files(), sandbox=sb)
        finally:
            sb.close()
        engine.started(inst, proc.pid, argv, sb.describe())
        upper = Path(inst.rollback.trees[0].upper)
        deadline = time.monotonic() + 15
        while not (upper / "c.txt").exists() and time.monotonic() < deadline:  # its whiteout: both are done
            engine.poll(10)
        engine.release(inst, kill=True)  # the agent stops while the instance runs
        proc.wait(timeout=10)
        kept = rollback_record(records)["detail"]
        assert kept["event"] == "kept" and kept["count"] == 2, kept
        assert not (tree / "draft.txt").exists() and (tree / "c.txt").exists()  # nothing applied yet
        (layer,) = [x for x in engine.pending_rollbacks() if x.instance == inst.id]  # offered after a restart
        assert {(c["op"], c["path"]) for c in layer.show()["changes"]} == {("write", f"{tree}/draft.txt"),
                                                                           ("delete", f"{tree}/c.txt")}
        detail = engine.finish_rollback(layer, "commit", by="test")
        assert detail["event"] == "committed" and detail["by"] == "test"
        assert (tree / "draft.txt").read_text() == "draft\n" and not (tree / "c.txt").exists()
        assert not [x for x in engine.pending_rollbacks() if x.instance == inst.id]
    finally:
        engine.subscribers.remove(records.append)


def test_an_area_overlayfs_refuses_is_a_precise_error_before_the_launch(tree: Path) -> None:
    """The rollback area on overlayfs (as on a live or container root): refused by a trial mount, naming both
    filesystems, before any extension runs; and nothing stays mounted."""
    from ebpfguard.sandbox.rollback import Layer, RollbackError

    base = Path(tempfile.mkdtemp(prefix="ebpfguard-rb-ovl-", dir="/run"))
    for d in ("l", "u", "w", "m"):
        (base / d).mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={base}/l,upperdir={base}/u,workdir={base}/w", str(base / "m")], check=True)
    try:
        before = Path("/proc/self/mountinfo").read_text()
        with pytest.raises(RollbackError, match=r"\((tmpfs|ext4) below, overlay above\).*ext4, xfs, btrfs, tmpfs"):
            Layer.create(base / "m" / "rollback" / "x", "x", "egtest", [str(tree)], time.time_ns())
        assert Path("/proc/self/mountinfo").read_text() == before  # the trial mount is gone
        assert not (base / "m" / "rollback" / "x" / "0" / "probe").exists()
    finally:
        subprocess.run(["umount", str(base / "m")], check=True)
        shutil.rmtree(base)


# ---- write trees under the private /tmp and /var/tmp ----------------------------------------------------
@pytest.fixture(params=["/var/tmp", "/tmp"])
def tmp_tree(request: pytest.FixtureRequest, world: World, engine: Engine) -> Iterator[Path]:
    """The same tree in the host's /var/tmp or /tmp, which the instance sees as a private tmpfs: its write tree
    is carried into it, and must be the rollback overlay there, not the real folder."""
    area = Path(tempfile.mkdtemp(prefix="ebpfguard-rb-", dir="/run"))
    os.chmod(area, 0o755)
    w = Path(tempfile.mkdtemp(prefix="ebpfguard-rb-tree-", dir=request.param))
    os.chmod(w, 0o755)
    (w / "a.txt").write_text("original a\n")
    (w / "b.txt").write_text("original b\n")
    (w / "c.txt").write_text("original c\n")
    (w / "old").mkdir()
    (w / "old" / "keep.txt").write_text("in old\n")
    for p in [w, *w.rglob("*")]:
        os.chown(p, NOBODY, NOBODY)
    old_root, engine.rollback_root = engine.rollback_root, area / "rollback"
    yield w
    engine.rollback_root = old_root
    shutil.rmtree(area, ignore_errors=True)
    shutil.rmtree(w, ignore_errors=True)
    shutil.rmtree(engine.state.rollback_kept, ignore_errors=True)


@pytest.mark.guest  # the overlay carried into a tmpfs, on that kernel
def test_killed_by_the_ladder_a_tree_in_the_private_tmp_is_as_before(engine: Engine, world: World,
                                                                     tmp_tree: Path) -> None:
    before = snapshot(tmp_tree)
    status, records, state = run(engine, world, tmp_tree, f"cd {tmp_tree} && echo changed > a.txt && "
                                 f"echo new > new.txt && rm c.txt && cat {world.secret}/s.txt; sleep 10", kill_after=1)
    assert state == "killed" or status == 128 + 9, (status, state, records)
    assert snapshot(tmp_tree) == before  # the real tree: nothing reached it
    d = rollback_record(records)["detail"]
    assert d["event"] == "discarded" and d["trees"] == [str(tmp_tree)], d
    got = {(c["op"], c["path"].removeprefix(f"{tmp_tree}/")) for c in d["changes"]}
    assert got == {("write", "a.txt"), ("write", "new.txt"), ("delete", "c.txt")} and d["count"] == 3, d


def test_a_clean_exit_commits_a_tree_in_the_private_tmp(engine: Engine, world: World, tmp_tree: Path) -> None:
    status, records, _ = run(engine, world, tmp_tree, f"cd {tmp_tree} && echo changed > a.txt && echo new > new.txt "
                             "&& rm c.txt")
    assert status == 0, records
    assert sorted(snapshot(tmp_tree)) == ["a.txt", "b.txt", "new.txt", "old", "old/keep.txt"]
    assert (tmp_tree / "a.txt").read_text() == "changed\n" and (tmp_tree / "new.txt").read_text() == "new\n"
    d = rollback_record(records)["detail"]
    assert d["event"] == "committed" and d["count"] == 3 and d["errors"] == [], d


# ---- root never acts for the user unsafely: the real tree resolved beneath, the upper layer read as hostile ----
def a_root_folder(tree: Path) -> Path:
    """A folder of root's beside the write tree (a stand-in for /etc), with one file."""
    rootdir = tree.parent / "rootdir"
    rootdir.mkdir(mode=0o755)
    (rootdir / "conf").write_text("root's\n")
    return rootdir


def listing(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    return {p.name: (p.lstat().st_uid, p.lstat().st_mode, p.read_bytes() if p.is_file() else b"")
            for p in folder.iterdir()}


def when_upper_has(inst: Any, names: list[str], then: Any, done: threading.Event) -> None:
    """Once the extension has written ``names`` (in its upper layer), ``then(upper)``, on a thread."""
    upper = Path(inst.rollback.trees[0].upper)

    def wait() -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if all(os.path.lexists(upper / n) for n in names):
                then(upper)
                done.set()
                return
            time.sleep(0.01)

    threading.Thread(target=wait, daemon=True).start()


def test_a_folder_swapped_for_a_symlink_meanwhile_is_not_written_through(engine: Engine, world: World,
                                                                          tree: Path) -> None:
    """The extension writes sub/NAME; meanwhile the user replaces the folder sub with a symlink to root's folder.
    The commit writes nothing there: root's folder is as it was, and the record names both paths as conflicts."""
    rootdir = a_root_folder(tree)
    (tree / "sub").mkdir()
    os.chown(tree / "sub", NOBODY, NOBODY)
    before = listing(rootdir)
    done = threading.Event()

    def swap(upper: Path) -> None:
        (tree / "sub").rename(tree / "sub.old")
        (tree / "sub").symlink_to(rootdir)

    status, records, _ = run(engine, world, tree, f"cd {tree} && echo planted > sub/NAME && echo ok > fine.txt && "
                             "sleep 2", on_instance=lambda i: when_upper_has(i, ["sub/NAME", "fine.txt"], swap, done))
    assert done.wait(5) and status == 0, records
    assert listing(rootdir) == before  # nothing written through the symlink
    assert os.readlink(tree / "sub") == str(rootdir) and sorted(p.name for p in (tree / "sub.old").iterdir()) == []
    assert (tree / "fine.txt").read_text() == "ok\n" and (tree / "fine.txt").stat().st_uid == NOBODY
    d = rollback_record(records)["detail"]
    got = {c["path"].removeprefix(f"{tree}/"): c for c in d["conflicts"]}
    assert sorted(got) == ["sub", "sub/NAME"], d["conflicts"]
    assert got["sub"]["user"] == "changed" and got["sub/NAME"]["why"] == "its folder is a conflict"
    assert Path(got["sub/NAME"]["extension_version"]).read_text() == "planted\n"  # kept aside, in root's area
    assert [c["path"] for c in d["changes"]] == [f"{tree}/fine.txt"] and d["count"] == 1
    assert d["user"] == {"uid": NOBODY, "gid": NOBODY} and d["errors"] == []


def test_a_symlink_out_of_the_tree_and_a_hard_link_to_roots_file_in_the_upper_layer_are_refused(
        engine: Engine, world: World, tree: Path) -> None:
    """The extension makes a symlink to root's folder (a symlink inside the tree goes in); a hard link to a file
    of root's appears in its upper layer. Neither reaches the real tree, root's file is neither read into it nor
    kept aside, and the record says why."""
    rootdir = a_root_folder(tree)
    secret = tree.parent / "root-secret"
    secret.write_text("ROOT-ONLY\n")
    secret.chmod(0o600)
    before = (listing(rootdir), secret.stat().st_uid, secret.stat().st_mode)
    done = threading.Event()
    status, records, _ = run(engine, world, tree, f"cd {tree} && ln -s {rootdir} out && ln -s a.txt in && "
                             "ln -s ../../.. up && echo mine > mine.txt && sleep 2",
                             on_instance=lambda i: when_upper_has(i, ["mine.txt"], lambda u: os.link(secret, u / "hl"),
                                                                  done))
    assert done.wait(5) and status == 0, records
    assert not os.path.lexists(tree / "out") and not os.path.lexists(tree / "up") and not (tree / "hl").exists()
    assert os.readlink(tree / "in") == "a.txt" and (tree / "mine.txt").read_text() == "mine\n"
    assert (listing(rootdir), secret.stat().st_uid, secret.stat().st_mode) == before
    d = rollback_record(records)["detail"]
    got = {c["path"].removeprefix(f"{tree}/"): c for c in d["conflicts"]}
    assert sorted(got) == ["hl", "out", "up"], d["conflicts"]
    assert "symlink out of the write tree" in got["out"]["why"] and "symlink out" in got["up"]["why"]
    assert got["hl"]["why"].startswith("a file of uid 0, not the instance user's")
    assert "extension_version" not in got["hl"] and "sha256" not in got["hl"]  # never read, never kept
    kept = engine.state.rollback_kept
    assert not any(p.is_file() and not p.is_symlink() and p.read_bytes() == b"ROOT-ONLY\n" for p in kept.rglob("*"))
    assert sorted(c["path"].removeprefix(f"{tree}/") for c in d["changes"]) == ["in", "mine.txt"]


def test_a_fifo_and_a_device_node_in_the_upper_layer_are_never_opened(engine: Engine, world: World,
                                                                      tree: Path) -> None:
    """A FIFO the extension made and a device node in its upper layer: the commit neither blocks on the FIFO nor
    makes either in the real tree; both are conflicts in the record."""
    done = threading.Event()

    def node(upper: Path) -> None:
        os.mknod(upper / "dev", stat.S_IFCHR | 0o666, os.makedev(1, 3))

    t0 = time.monotonic()
    status, records, _ = run(engine, world, tree, f"cd {tree} && mkfifo pipe && echo x > x.txt && sleep 2",
                             on_instance=lambda i: when_upper_has(i, ["pipe", "x.txt"], node, done))
    assert done.wait(5) and status == 0, records
    assert time.monotonic() - t0 < 60
    assert not os.path.lexists(tree / "pipe") and not os.path.lexists(tree / "dev")
    assert (tree / "x.txt").read_text() == "x\n"
    d = rollback_record(records)["detail"]
    got = {c["path"].removeprefix(f"{tree}/"): (c["op"], c["why"]) for c in d["conflicts"]}
    assert got == {"pipe": ("special", "a FIFO: never opened nor made in the real tree"),
                   "dev": ("special", "a device node: never opened nor made in the real tree")}, d["conflicts"]
    assert d["counts"] == {"write": 1}

"""``ebpfguard bench``: ebpfguard's overhead measured side by side with auditd and bpftrace, in one run,
on the same workloads; the agent's CPU and memory; detection-to-containment latency for freeze and
kill; and a flood of violations.

Each round runs every workload under every monitor, back to back, in the same order:

  none        no program attached anywhere (the base)
  ebpfguard   programs attached, the workload outside any extension (every host process pays this)
  layers      programs detached, the workload inside the extension as launched: the kernel's own layers
              alone (user, no_new_privs, Landlock, seccomp, mount namespace)
  ebpfguard   programs attached, the workload inside an extension whose manifest allows it
  auditd      ebpfguard detached; audit rules on the same syscalls and folder (peers.py)
  bpftrace    ebpfguard detached; bpftrace on the same tracepoints (peers.py)

A ratio compares a round's run with that round's base in the same place (inside runs compare with the
unloaded inside run, so the cost of being in a cgroup is shown apart); "over layers" compares the inside
run with the layers run of the same round: what the programs add to what the kernel's layers cost
anyway. The table gives the median over the rounds and the spread (min-max): machine noise shows as
spread, not as a number.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from ebpfguard.common.resources import data_root
from ebpfguard.common.statedir import StateDir
from ebpfguard.errors import EbpfguardError
from ebpfguard.instance.lineage import exits
from ebpfguard.kernel.loader import Sensor
from ebpfguard.lab.peers import Auditd, Bpftrace, Peer
from ebpfguard.manifest.load import parse
from ebpfguard.sandbox import Sandbox, landlock_confines, landlock_reports
from ebpfguard.sandbox.launcher import spawn

WORKLOADS = {"open/close": 300_000, "stat walk": 20, "connect": 20_000, "unix connect": 20_000, "fork+exec": 3_000,
             "untar+sha256": 4}
TARGETS = {"outside": 1.03, "inside": 1.10, "vs_auditd": 0.10, "freeze_p99_ms": 10.0, "unix_over_layers": 1.03}
UNIX_SOCKET = "ipc/bench.sock"  # under the bench folder; the listener runs outside the extension

MANIFEST = """apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {{name: bench, version: "1"}}
spec:
  mode: enforce
  filesystem:
    read: ["{dir}/", "/usr/", "/lib/", "/lib64/", "/etc/", "/bin/", "/proc/", "/dev/"]
    write: ["{dir}/work/", "/dev/null"]
    exec: ["{bin}", "/usr/bin/", "/bin/"]
  network:
    connect: ["127.0.0.1/32:1-65535/tcp"]
    bind: ["127.0.0.1/32:0-65535/tcp"]
  ipc:
    unix: ["{dir}/ipc/bench.sock"]
"""


def _build(tmp: Path, name: str, source: Path) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise EbpfguardError("the benchmark builds its workloads with gcc; install gcc (make setup does)")
    out = tmp / name
    subprocess.run([gcc, "-O2", "-static", "-pthread", "-o", str(out), str(source)], check=True, capture_output=True)
    return out


def _source_tree(tmp: Path) -> tuple[Path, Path]:
    """A source tree to walk and a tarball of it to unpack: a copy of /usr/include/linux (~1000 headers,
    linux-libc-dev)."""
    src = tmp / "src"
    shutil.copytree("/usr/include/linux", src, symlinks=True)
    tarball = tmp / "src.tar.gz"
    with tarfile.open(tarball, "w:gz", compresslevel=1) as tar:
        tar.add(src, arcname="src")
    return src, tarball


def _argv(workload: str, n: int, binary: Path, tmp: Path, keep: bool = False) -> list[str]:
    """``keep``: untar+sha256 leaves its tree (for a rollback commit to apply) instead of removing it."""
    if workload == "open/close":
        return [str(binary), "open", str(n), str(tmp / "file.txt")]
    if workload == "stat walk":
        return [str(binary), "stat", str(n), str(tmp / "src")]
    if workload == "connect":
        return [str(binary), "connect", str(n)]
    if workload == "unix connect":
        return [str(binary), "uconnect", str(n), str(tmp / UNIX_SOCKET)]
    if workload == "fork+exec":
        return [str(binary), "forkexec", str(n), str(binary)]
    job = tmp / "work" / "job"
    cmd = (f"PATH=/usr/bin:/bin; cd {tmp} && mkdir -p {job} && tar xzf {tmp}/src.tar.gz -C {job} && "
           f"find {job} -type f -exec sha256sum {{}} + >/dev/null" + ("" if keep else f" && rm -rf {job}"))
    return [str(binary), "sh", str(n), cmd]


def _run(argv: list[str], procs_files: list[str] | None, eng: Any = None, sandbox: Any = None) -> int:
    """Run one workload, in the given cgroup and sandbox if any, the engine handling its events as the
    agent would meanwhile; returns the workload's own loop time in ns."""
    with tempfile.TemporaryFile() as out:
        proc = spawn(argv, procs_files or [], stdout=out, sandbox=sandbox)
        while proc.poll() is None:
            if eng is not None:
                eng.poll(5)
            else:
                time.sleep(0.005)
        if proc.returncode != 0:
            raise EbpfguardError(f"workload {' '.join(argv[1:3])} failed with status {proc.returncode}")
        out.seek(0)
        return int(out.read())


class UnixListener:
    """The unix connect loop's listener, outside the extension (a socket the extension may connect to is
    never one it may create), stopped by its pid."""

    def __init__(self, binary: Path, path: Path) -> None:
        self.binary, self.path = binary, path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.path.parent.mkdir(mode=0o755, exist_ok=True)
        self.proc = subprocess.Popen([str(self.binary), "userve", str(self.path)], stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"ready":  # it prints "ready" once listening, or exits
            self.stop()
            raise EbpfguardError(f"the unix listener at {self.path} did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        self.path.unlink(missing_ok=True)


class PeerUsage:
    """CPU and RSS of a peer's own process over the rounds that measured it, read through psutil (the
    kernel's share, e.g. kauditd or the BPF programs, shows in the workloads' times instead)."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.wall = 0.0
        self.rss = 0

    @contextmanager
    def measuring(self, pid: int) -> Iterator[None]:
        proc = psutil.Process(pid) if pid else None
        c0 = sum(proc.cpu_times()[:2]) if proc else 0.0
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.wall += time.monotonic() - t0
            if proc is not None:
                try:
                    self.cpu += sum(proc.cpu_times()[:2]) - c0
                    self.rss = max(self.rss, proc.memory_info().rss)
                except psutil.Error:
                    pass

    def summary(self) -> dict[str, float]:
        return {"cpu_while_measured": self.cpu / self.wall if self.wall else 0.0, "rss_bytes": self.rss}


def _self_usage() -> tuple[float, int]:
    """This process's CPU seconds (it hosts the engine: it is the agent here) and peak RSS in bytes."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024


def run_bench(rounds: int = 7, scale: float = 1.0, echo: Callable[[str], None] = print, peers: bool = True,
              latency_runs: int = 50, flood_seconds: float = 10.0) -> dict[str, Any]:
    from ebpfguard.runtime.engine import Engine  # noqa: PLC0415

    started = time.monotonic()
    seen: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ebpfguard-bench-", dir="/var/tmp") as tmpdir:
        tmp = Path(tmpdir)
        tmp.chmod(0o755)
        binary = _build(tmp, "egload", data_root() / "bench" / "egload.c")
        (tmp / "file.txt").write_text("x")
        (tmp / "work").mkdir(mode=0o777)
        (tmp / "work").chmod(0o777)
        _source_tree(tmp)
        watched = tmp / "secret"
        watched.mkdir()
        monitors: list[Peer] = []
        unavailable: dict[str, str] = {}
        if peers:
            candidates: list[Peer] = [Auditd(watched), Bpftrace(watched)]
            for peer in candidates:
                why = peer.available()
                if why:
                    unavailable[peer.name] = why
                    echo(f"{peer.name}: not measured: {why}")
                else:
                    monitors.append(peer)
        eng = Engine(str(tmp / "state"))
        sensor = eng.sensor
        assert isinstance(sensor, Sensor)  # the real programs: their tracepoints are detached for the baselines
        conds = ["base_outside", "base_inside", "layers", "idle", "outside", "inside", *[p.name for p in monitors]]
        times: dict[str, dict[str, list[int]]] = {w: {c: [] for c in conds} for w in WORKLOADS}
        rollback: dict[str, list[int]] = {"overlay": [], "commit": [], "inside": []}  # untar+sha256, ns
        agent_cpu = 0.0
        peer_usage: dict[str, PeerUsage] = {}
        agent_wall = 0.0
        listener = UnixListener(binary, tmp / UNIX_SOCKET)
        try:
            listener.start()
            m = parse(MANIFEST.format(dir=tmp, bin=binary).encode(), "bench.yaml")
            # "inside" runs are sandboxed
            inst = eng.prepare(m, landlocked=landlock_confines(m), landlock_reports=landlock_reports(m))
            procs = inst.cgroup.procs_files()
            sb = Sandbox.prepare(m)  # inside runs are launched as `ebpfguard run` launches: every layer
            eng.started(inst, 0, [str(binary)], sb.describe())
            eng.subscribers.append(seen.append)
            violations_before = inst.violations

            fdir = tmp / "state" / "forensics"
            per_exec = {"execs": 0, "bytes": 0, "records": 0, "cpu_s": 0.0}

            def log_bytes() -> int:
                return sum(f.stat().st_size for f in fdir.glob("*.jsonl")) if fdir.is_dir() else 0

            def each(cond: str, procs_files: list[str] | None, sandbox: Any = None) -> None:
                for w, n in WORKLOADS.items():
                    argv = _argv(w, max(1, int(n * scale)), binary, tmp)
                    lifecycle = cond == "inside" and w == "fork+exec"
                    if lifecycle:  # what a benign exec inside costs the log and the agent
                        b0, r0, c0 = log_bytes(), eng.log.written, _self_usage()[0]
                    times[w][cond].append(_run(argv, procs_files, eng, sandbox))
                    if lifecycle:
                        eng.poll(0)
                        with eng.log.batch():  # what the lineage gathered, written now rather than when due
                            eng.recorder.lineage(inst)
                        per_exec["execs"] += max(1, int(n * scale))
                        per_exec["bytes"] += log_bytes() - b0
                        per_exec["records"] += eng.log.written - r0
                        per_exec["cpu_s"] += _self_usage()[0] - c0

            for r in range(rounds):
                tps = sensor.detach_tracepoints()
                eng.sensor.detach_cgroup(inst.cgroup.v2)
                each("base_outside", None)
                each("base_inside", procs)
                each("layers", procs, sb)
                for peer in monitors:
                    peer.start()
                    try:
                        with peer_usage.setdefault(peer.name, PeerUsage()).measuring(peer.pid()):
                            each(peer.name, None)
                    finally:
                        peer.stop()
                # what a process pays while the agent runs and no extension does: the syscall
                # tracepoints are gone then (Sensor.idle_check), the others stay
                sensor.attach_tracepoints([tp for tp in tps if not tp.startswith("syscalls:")])
                each("idle", None)
                sensor.attach_tracepoints([tp for tp in tps if tp.startswith("syscalls:")])
                eng.sensor.attach_cgroup(inst.cgroup.v2)
                cpu0, t0 = _self_usage()[0], time.monotonic()
                each("outside", None)
                each("inside", procs, sb)
                eng.poll(0)
                rollback["inside"].append(times["untar+sha256"]["inside"][-1])
                overlay_ns, commit_ns = _rollback_run(eng, m, tmp, binary, procs, scale, r)
                rollback["overlay"].append(overlay_ns)
                rollback["commit"].append(commit_ns)
                agent_cpu += _self_usage()[0] - cpu0
                agent_wall += time.monotonic() - t0
                echo(f"round {r + 1}/{rounds} done ({time.monotonic() - started:.0f} s)")
            eng.poll(0)
            violations = inst.violations - violations_before
            eng.subscribers.remove(seen.append)
            sb.close()
            eng.release(inst, kill=True)
            echo("latency: freeze and kill")
            latency = run_latency(eng, tmp, latency_runs)
            echo(f"flood: {flood_seconds:g} s")
            flood = run_flood(eng, tmp, flood_seconds)
        finally:
            for peer in monitors:
                peer.stop()
            eng.close()
            listener.stop()
    cpu, rss = _self_usage()
    result: dict[str, Any] = {"rounds": rounds, "scale": scale, "workloads": {}, "targets": TARGETS,
                              "violations_inside": violations,
                              "violation_samples": [r.get("detail") for r in seen
                                                    if r.get("kind") not in ("lifecycle", "checkpoint")][:5],
                              "monitors": [p.name for p in monitors],
                              "unavailable": unavailable, "latency": latency, "flood": flood,
                              "rollback": _rollback_summary(rollback),
                              "agent": {"cpu_while_measured": agent_cpu / agent_wall if agent_wall else 0.0,
                                        "peak_rss_bytes": rss},
                              "peers": {name: u.summary() for name, u in peer_usage.items()},
                              "per_exec": {"execs": per_exec["execs"],
                                           "records": per_exec["records"] / max(1, per_exec["execs"]),
                                           "bytes": per_exec["bytes"] / max(1, per_exec["execs"]),
                                           "agent_cpu_us": per_exec["cpu_s"] * 1e6 / max(1, per_exec["execs"])}}
    for w, t in times.items():
        n = max(1, int(WORKLOADS[w] * scale))
        row: dict[str, Any] = {"iterations": n, "base_ns_per_op": statistics.median(t["base_outside"]) / n,
                               "cgroup_only": statistics.median(
                                   [i / o for i, o in zip(t["base_inside"], t["base_outside"], strict=True)])}
        for cond in ("idle", "outside", "inside", "layers", "over_layers", *[p.name for p in monitors]):
            if cond == "over_layers":
                ratios = [x / b for x, b in zip(t["inside"], t["layers"], strict=True)]
            else:
                base = t["base_inside"] if cond in ("inside", "layers") else t["base_outside"]
                ratios = [x / b for x, b in zip(t[cond], base, strict=True)]
            row[cond] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
        result["workloads"][w] = row
    return result


def _rollback_run(eng: Any, m: Any, tmp: Path, binary: Path, procs: list[str], scale: float,
                  r: int) -> tuple[int, int]:
    """untar+sha256 inside with the write tree as a rollback overlay (a fresh upper layer), then the commit of
    what it left to the real tree: (the workload's ns, the commit's ns). The workload without rollback removes
    its tree at its end; this one leaves it, so the overlay run does a little less and the commit does real work."""
    from ebpfguard.common.clock import now_ns  # noqa: PLC0415
    from ebpfguard.sandbox.rollback import Layer  # noqa: PLC0415

    layer = Layer.create(tmp / "rollback" / f"r{r}", f"bench-rb-{r}", "bench", [str(tmp / "work")], now_ns())
    sb = Sandbox.prepare(m, overlays=layer.overlays())
    try:
        ns = _run(_argv("untar+sha256", max(1, int(WORKLOADS["untar+sha256"] * scale)), binary, tmp, keep=True),
                  procs, eng, sb)
    finally:
        sb.close()
    t0 = time.perf_counter_ns()
    detail = layer.commit(tmp / "rollback-kept", (sb.uid, sb.gid))  # ~1000 new files into the real tree, as the user
    shutil.rmtree(tmp / "work" / "job", ignore_errors=True)
    if detail["errors"] or detail["conflicts"]:
        raise EbpfguardError(f"rollback commit in the bench: {detail['errors'][:3] or detail['conflicts'][:3]}")
    return ns, time.perf_counter_ns() - t0


def _rollback_summary(t: dict[str, list[int]]) -> dict[str, Any]:
    """Ratios to the same round's untar+sha256 inside without rollback: the overlay alone, and with the commit."""
    if not t["inside"]:
        return {}
    out: dict[str, Any] = {}
    for name, ratios in (("overlay", [o / i for o, i in zip(t["overlay"], t["inside"], strict=True)]),
                         ("with_commit", [(o + c) / i for o, c, i in zip(t["overlay"], t["commit"], t["inside"],
                                                                       strict=True)])):
        out[name] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    out["commit_ms"] = statistics.median(t["commit"]) / 1e6
    return out


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


LATENCY_MANIFEST = """apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {{name: bench-{step}, version: "1"}}
spec:
  mode: enforce
  filesystem: {{read: ["{dir}/ok/"], write: ["{dir}/markers/"], exec: ["{bin}"]}}
  response: {{file: {step}}}
"""


def run_latency(eng: Any, tmp: Path, runs: int) -> dict[str, Any]:
    """p50/p99 from the kernel's timestamp of a violation to containment: for freeze, the cgroup frozen
    by the agent (user space); for kill, the offender's exit as the kernel reports it (SIGKILL sent by
    the program that saw the violation). A killed offender must not have run one more instruction:
    the helper writes a marker right after the forbidden open, and no marker may exist."""
    from ebpfguard.runtime.launch import LaunchOptions, launch  # noqa: PLC0415

    helper = _build(tmp, "egact", data_root() / "sim" / "egact.c")
    for d in ("ok", "markers", "secret"):
        (tmp / d).mkdir(exist_ok=True)
        (tmp / d).chmod(0o777)
    (tmp / "secret" / "s.txt").write_text("SECRET\n")
    out: dict[str, Any] = {"runs": runs}
    for step in ("freeze", "kill"):
        m = parse(LATENCY_MANIFEST.format(step=step, dir=tmp, bin=helper).encode(), f"bench-{step}.yaml")
        lat: list[float] = []
        after_kill = 0
        for i in range(runs):
            marker = tmp / "markers" / f"{step}-{i}"
            argv = [str(helper), str(marker), "read", str(tmp / "secret" / "s.txt")]
            records = launch(eng, m, argv, LaunchOptions(sandbox=False, stop_when_frozen=True, timeout=10,
                                                         poll_ms=5)).records
            v = [r for r in records if r.get("kind") == "file"]
            if step == "freeze":
                if v and "response_ns" in v[0]:
                    lat.append(v[0]["response_ns"] / 1e6)
            else:
                if marker.exists():
                    after_kill += 1
                ends = [ns for _, ns in exits(records)]
                if v and ends:
                    from ebpfguard.forensics import record_ns  # noqa: PLC0415

                    lat.append((max(ends) - (record_ns(v[0]) or 0)) / 1e6)
        out[step] = {"measured": len(lat), "p50_ms": _percentile(lat, 50) if lat else None,
                     "p99_ms": _percentile(lat, 99) if lat else None, "max_ms": max(lat) if lat else None}
        if step == "kill":
            out[step]["ran_after_kill"] = after_kill
    return out


FLOOD_MANIFEST = """apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {{name: bench-flood, version: "1"}}
spec:
  mode: enforce
  filesystem: {{read: ["{dir}/ok/"], write: ["{dir}/markers/"], exec: ["{bin}"]}}
  response: {{file: block}}
"""


def run_flood(eng: Any, tmp: Path, seconds: float) -> dict[str, Any]:
    """An extension opens forbidden files as fast as it can for ``seconds``: once repeating one
    violation (the kernel suppresses identical repeats), once with a different path every time (every
    one is a record: the agent's throughput, and the ring buffer's limit). Every attempt must be an
    event, a counted drop or a counted suppressed repeat."""
    return {"same": _flood_once(eng, tmp, seconds, "floodfor", str(tmp / "secret" / "s.txt")),
            "distinct": _flood_once(eng, tmp, seconds, "floodfor-distinct", str(tmp / "secret"))}


def _flood_once(eng: Any, tmp: Path, seconds: float, action: str, target: str) -> dict[str, Any]:
    """One flood. With distinct violations, a second instance of the same extension makes QUIET_N
    different violations 2 ms apart while the first floods: each must be recorded (the flooder is held
    to its cgroup's share of the ring buffer)."""
    from ebpfguard.sandbox.launcher import exit_status  # noqa: PLC0415

    helper = tmp / "egact"
    m = parse(FLOOD_MANIFEST.format(dir=tmp, bin=helper).encode(), "bench-flood.yaml")
    inst = eng.prepare(m, sandboxed=False)  # the flooders run without the launcher's layers
    quiet = eng.prepare(m, sandboxed=False) if action == "floodfor-distinct" else None
    quiet_paths: set[str] = set()

    def quiet_hook(rec: dict[str, Any]) -> None:
        if quiet is not None and rec.get("instance") == quiet.id and rec.get("kind") == "file":
            quiet_paths.add(str((rec.get("detail") or {}).get("path")))

    eng.subscribers.append(quiet_hook)
    marker = tmp / "markers" / action
    before = eng.sensor.counters()
    written0 = eng.log.written
    cpu0 = _self_usage()[0]
    t0 = time.monotonic()
    qproc = None
    try:
        proc = spawn([str(helper), str(marker), action, str(seconds), target], inst.cgroup.procs_files())
        eng.started(inst, proc.pid, [str(helper)])
        while proc.poll() is None or (qproc is not None and qproc.poll() is None):
            eng.poll(10)
            if quiet is not None and qproc is None and time.monotonic() - t0 >= min(1.0, seconds / 3):
                qproc = spawn([str(helper), str(tmp / "markers" / "quiet"), "flood-distinct", str(QUIET_N),
                               str(tmp / "secret" / "quiet"), "2"], quiet.cgroup.procs_files())
                eng.started(quiet, qproc.pid, [str(helper)])
        eng.leader_exited(inst, exit_status(proc.returncode))
        idle_since = time.monotonic()
        last = eng.log.written
        while time.monotonic() - idle_since < 0.5:  # drain what the ring buffer still holds
            eng.poll(10)
            if eng.log.written != last:
                last, idle_since = eng.log.written, time.monotonic()
        wall = time.monotonic() - t0
        cpu = _self_usage()[0] - cpu0
    finally:
        eng.release(inst, kill=True)
        if quiet is not None:
            eng.release(quiet, kill=True)
        eng.subscribers.remove(quiet_hook)
    after = eng.sensor.counters()
    attempts = int(marker.read_text().split()[0]) if marker.exists() else 0
    d = {k: after[k] - before[k] for k in ("events", "drops", "suppressed", "over_share")}
    records = eng.log.written - written0
    out = {"seconds": seconds, "attempts": attempts, "kernel_events": d["events"], "ringbuf_drops": d["drops"],
           "over_share": d["over_share"], "suppressed": d["suppressed"], "records_written": records,
           "records_per_second": records / wall, "attempts_per_second": attempts / wall, "agent_cpu": cpu / wall,
           "accounted": d["events"] + d["drops"] + d["suppressed"] + d["over_share"] >= attempts}
    if quiet is not None:
        out["quiet"] = {"sent": QUIET_N if qproc is not None and qproc.returncode == 0 else 0,
                        "recorded": len(quiet_paths)}
    return out


QUIET_N = 300


def format_table(res: dict[str, Any]) -> str:
    mons = [*(["idle"] if "idle" in next(iter(res["workloads"].values()), {}) else []),
            "outside", "inside", "layers", "over_layers", *res["monitors"]]
    head = {"idle": "outside, no extension", "outside": "ebpfguard outside", "inside": "ebpfguard inside",
            "layers": "layers alone", "over_layers": "inside over layers"}
    lines = [f"ebpfguard bench: {res['rounds']} interleaved rounds; ratio to no monitor in the same place, "
             "median [min-max]",
             f"{'workload':<13} {'base/op':>9} " + " ".join(f"{head.get(m, m):>21}" for m in mons)]
    for w, row in res["workloads"].items():
        cells = [f"{row[m]['median']:.3f} [{row[m]['min']:.2f}-{row[m]['max']:.2f}]" for m in mons]
        base = row["base_ns_per_op"]
        base_s = f"{base / 1000:.2f}us" if base < 1e6 else f"{base / 1e6:.1f}ms"
        lines.append(f"{w:<13} {base_s:>9} " + " ".join(f"{c:>21}" for c in cells))
    if "auditd" in res["monitors"]:
        parts = []
        for w, row in res["workloads"].items():
            a = row["auditd"]["median"] - 1
            e = row["outside"]["median"] - 1
            parts.append(f"{w} {e / a:.2f}" if a > 0.005 else f"{w} -")
        lines.append("ebpfguard overhead / auditd overhead (outside; target <= 0.10): " + ", ".join(parts))
    for name, why in res["unavailable"].items():
        lines.append(f"{name}: not measured: {why}")
    rb = res.get("rollback")
    if rb:
        ov, wc = rb["overlay"], rb["with_commit"]
        lines.append(f"untar+sha256 inside with rollback, over without: overlay {ov['median']:.3f} "
                     f"[{ov['min']:.2f}-{ov['max']:.2f}], with the commit at its stop {wc['median']:.3f} "
                     f"[{wc['min']:.2f}-{wc['max']:.2f}] (commit median {rb['commit_ms']:.0f} ms)")
    ag = res["agent"]
    pe = res.get("per_exec")
    if pe and pe["execs"]:
        lines.append(f"benign exec inside (fork+exec loop, {pe['execs']} execs): {pe['records']:.3f} records, "
                     f"{pe['bytes']:.0f} bytes of log and {pe['agent_cpu_us']:.0f} us of agent CPU per exec")
    lines.append(f"agent: {ag['cpu_while_measured'] * 100:.1f}% of a core while the ebpfguard rounds ran, "
                 f"peak RSS {ag['peak_rss_bytes'] / 2**20:.0f} MiB; violations recorded by the workloads: "
                 f"{res['violations_inside']} (expected 0)")
    for name, u in res.get("peers", {}).items():
        lines.append(f"{name}: {u['cpu_while_measured'] * 100:.1f}% of a core while its rounds ran, "
                     f"RSS {u['rss_bytes'] / 2**20:.0f} MiB")
    lat = res["latency"]
    for step, how in (("freeze", "user space: agent freezes the cgroup"), ("kill", "in the kernel: SIGKILL")):
        x = lat[step]
        if x["p50_ms"] is None:
            lines.append(f"{step}: not measured")
            continue
        extra = f"; ran on after the kill: {x['ran_after_kill']} of {lat['runs']}" if step == "kill" else ""
        lines.append(f"{step} latency ({how}): p50 {x['p50_ms']:.3f} ms, p99 {x['p99_ms']:.3f} ms, "
                     f"max {x['max_ms']:.3f} ms over {x['measured']}{extra}")
    for label, f in res["flood"].items():
        lines.append(f"flood ({label} violation) {f['seconds']:g} s: {f['attempts']} attempts "
                     f"({f['attempts_per_second']:.0f}/s) = {f['kernel_events']} events + {f['suppressed']} "
                     f"suppressed repeats + {f.get('over_share', 0)} over its share + {f['ringbuf_drops']} "
                     f"ring-buffer drops; {f['records_written']} records written ({f['records_per_second']:.0f}/s), "
                     f"agent CPU {f['agent_cpu'] * 100:.0f}% of a core; all accounted for: "
                     f"{'yes' if f['accounted'] else 'NO'}")
        if "quiet" in f:
            q = f["quiet"]
            lines.append(f"  meanwhile a second instance: {q['recorded']} of its {q['sent']} different violations "
                         "recorded")
    lines.append(f"targets: outside <= {TARGETS['outside']}, inside <= {TARGETS['inside']}, "
                 f"overhead <= {TARGETS['vs_auditd']} x auditd's, freeze p99 <= {TARGETS['freeze_p99_ms']} ms, "
                 f"unix connect inside over layers <= {TARGETS['unix_over_layers']}")
    return "\n".join(lines)


SAMPLE_RECORD = {"time": "2026-11-24T18:00:00.123456789Z", "extension": "md-preview", "instance": "md-preview-4711",
                 "cgroup_id": 12345, "pid": 4711, "tgid": 4711, "uid": 1000, "comm": "python3", "kind": "file",
                 "detail": {"path": "/home/user/.ssh/id_ed25519", "access": "read", "flags": 0},
                 "verdict": "denied", "actions": ["block"], "mode": "enforce", "policy_sha256": "ab" * 32}
CHAIN_FIELDS = ("seq", "prev_sha256", "key_id", "signature")


def run_log_bench(seconds: float = 5.0) -> dict[str, Any]:
    """The forensic log alone: records per second appended with signing, chaining and fsync, the CPU
    it takes, and the bytes each record carries for seq, chain and signature."""
    import json

    from ebpfguard.forensics import ForensicLog  # noqa: PLC0415

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ebpfguard-logbench-", dir="/var/tmp") as tmpdir:
        for label, fsync, group in (("signed+fsync", True, 1), ("group of 50", True, 50),
                                    ("signed, no fsync", False, 1)):
            state = Path(tmpdir) / label.replace(" ", "").replace(",", "").replace("+", "")
            log = ForensicLog(state, fsync=fsync)
            log.append(dict(SAMPLE_RECORD))  # key creation is not part of the rate
            c0, t0, n = time.process_time(), time.monotonic(), 0
            while time.monotonic() - t0 < seconds:
                for _ in range(50 // group):
                    with log.batch():  # one fsync per `group` records, as the agent commits one poll
                        for _ in range(group):
                            log.append(dict(SAMPLE_RECORD))
                n += 50
            wall, cpu = time.monotonic() - t0, time.process_time() - c0
            out[label] = {"records": n, "per_second": n / wall, "cpu_per_second": cpu / wall,
                          "cpu_us_per_record": cpu / n * 1e6}
        grouped = StateDir(Path(tmpdir) / "groupof50").records
        lines = [json.loads(x) for x in grouped.read_text().splitlines()]
        plain = [r for r in lines if r.get("kind") != "checkpoint"]
        out["bytes_per_record"] = grouped.stat().st_size / len(lines)
        def size(r: dict[str, Any]) -> int:
            return len(json.dumps(r, separators=(",", ":")))

        out["overhead_bytes"] = sum(size(r) - size({k: v for k, v in r.items() if k not in CHAIN_FIELDS})
                                    for r in plain) / len(plain)
        out["checkpoint_every"] = 100
    out["device"] = "/var/tmp"
    return out


def format_log_table(res: dict[str, Any]) -> str:
    lines = ["ebpfguard bench --log: the forensic log alone (SHA-256 chain, one Ed25519 signature per group "
             f"commit, one append per record, on {res['device']})",
             f"{'mode':<18} {'records/s':>10} {'CPU (cores)':>12} {'CPU/record':>11}"]
    for label in ("signed+fsync", "group of 50", "signed, no fsync"):
        r = res[label]
        lines.append(f"{label:<18} {r['per_second']:>10.0f} {r['cpu_per_second']:>12.2f} "
                     f"{r['cpu_us_per_record']:>9.1f}us")
    lines.append(f"record in groups of 50: {res['bytes_per_record']:.0f} bytes on average, of which "
                 f"{res['overhead_bytes']:.0f} are seq, prev_sha256, key_id and the group's signature; plus one "
                 f"checkpoint record every {res['checkpoint_every']}")
    return "\n".join(lines)


STARTUP_MANIFEST = """apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {name: bench-startup, version: "1"}
spec:
  mode: enforce
  filesystem:
    read: [/usr/, /lib/, /lib64/, /etc/ld.so.cache]
    exec: [/usr/bin/true, /bin/true]
"""


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def run_startup(rounds: int = 5, cold_rounds: int = 2, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Start-up as whole processes, in one interleaved run: a standalone `ebpfguard run -- /bin/true` (wall time
    and peak RSS) and an agent from its start to answering `status` (it answers once it enforces), each from the
    programs kept in bpffs (warm) and from a fresh compile (cold: EBPFGUARD_KEEP=0); and a restart: SIGTERM to
    the agent, then a new agent answering."""
    import signal  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from ebpfguard.errors import ControlError  # noqa: PLC0415
    from ebpfguard.service.control import Client  # noqa: PLC0415

    eg = [sys.executable, "-m", "ebpfguard.cli.main"]
    res: dict[str, list[float]] = {k: [] for k in ("run_warm_s", "run_warm_mb", "run_cold_s", "run_cold_mb",
                                                    "agent_warm_s", "agent_cold_s", "restart_s")}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ebpfguard-startup-", dir="/var/tmp") as tmpdir:
        tmp = Path(tmpdir)
        tmp.chmod(0o755)
        manifest = tmp / "bench-startup.yaml"
        manifest.write_text(STARTUP_MANIFEST)
        policies = tmp / "policies"
        policies.mkdir()
        (policies / "bench-startup.yaml").write_text(STARTUP_MANIFEST)

        def env(cold: bool) -> dict[str, str]:
            return {**os.environ, "EBPFGUARD_KEEP": "0"} if cold else {k: v for k, v in os.environ.items()
                                                                       if k != "EBPFGUARD_KEEP"}

        def run_once(cold: bool) -> tuple[float, float]:
            t0 = time.monotonic()
            p = subprocess.Popen([*eg, "run", "--state-dir", str(tmp / "run-state"), "-m", str(manifest), "--",
                                  "/usr/bin/true"], env=env(cold), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
            _pid, status, usage = os.wait4(p.pid, 0)
            wall = time.monotonic() - t0
            p.returncode = os.waitstatus_to_exitcode(status)
            err = p.stderr.read().decode(errors="replace") if p.stderr else ""
            if p.returncode != 0:
                raise EbpfguardError(f"ebpfguard run -- /usr/bin/true failed ({p.returncode}): {err.strip()[-400:]}")
            return wall, usage.ru_maxrss / 1024

        def agent(cold: bool) -> tuple[subprocess.Popen[bytes], float]:
            state = tmp / "agent-state"
            t0 = time.monotonic()
            p = subprocess.Popen([*eg, "agent", "--state-dir", str(state), "--policy-dir", str(policies)],
                                 env=env(cold), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while True:
                if p.poll() is not None:
                    raise EbpfguardError(f"the agent exited ({p.returncode}) before it answered")
                try:
                    with Client(state, timeout=60) as c:
                        c.request("status")
                    return p, time.monotonic() - t0
                except ControlError:
                    time.sleep(0.01)
                if time.monotonic() - t0 > 900:
                    p.kill()
                    raise EbpfguardError("the agent did not answer within 900 s")

        def stop(p: subprocess.Popen[bytes]) -> None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

        run_once(False)  # the first start of this version compiles: the kept set exists from here on
        for r in range(rounds):
            w, mb = run_once(False)
            res["run_warm_s"].append(w)
            res["run_warm_mb"].append(mb)
            p, took = agent(False)
            res["agent_warm_s"].append(took)
            t0 = time.monotonic()
            stop(p)
            p, _took = agent(False)
            res["restart_s"].append(time.monotonic() - t0)
            stop(p)
            if r < cold_rounds:
                w, mb = run_once(True)
                res["run_cold_s"].append(w)
                res["run_cold_mb"].append(mb)
                p, took = agent(True)
                res["agent_cold_s"].append(took)
                stop(p)
            echo(f"round {r + 1}/{rounds} done ({time.monotonic() - started:.0f} s)")
    return {k: _spread(v) for k, v in res.items() if v}


def format_startup(res: dict[str, Any]) -> str:
    rows = [("standalone run -- /bin/true, kept programs", "run_warm_s", "run_warm_mb"),
            ("standalone run -- /bin/true, compiled", "run_cold_s", "run_cold_mb"),
            ("agent to enforcing, kept programs", "agent_warm_s", None),
            ("agent to enforcing, compiled", "agent_cold_s", None),
            ("restart: SIGTERM to the new agent enforcing", "restart_s", None)]
    lines = ["ebpfguard bench --startup: whole processes, interleaved rounds (median [min-max])",
             f"{'':<46} {'seconds':>22} {'peak RSS MB':>22}"]
    for label, t, m in rows:
        if t not in res:
            continue
        a = res[t]
        mem = "" if m is None else f"{res[m]['median']:.0f} [{res[m]['min']:.0f}-{res[m]['max']:.0f}]"
        lines.append(f"{label:<46} {a['median']:>8.2f} [{a['min']:.2f}-{a['max']:.2f}] {mem:>22}")
    return "\n".join(lines)

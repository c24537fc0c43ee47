"""``ebpfguard bench``: the overhead of the loaded programs, measured in one run.

Each round runs every workload four ways, back to back: with every program detached (tracepoints and
cgroup programs), outside any extension and inside an extension cgroup whose manifest allows everything
the workload does; then the same two with the programs attached. A ratio compares loaded with unloaded
in the same place, so "inside" measures ebpfguard, not the cost of being in a cgroup (shown apart).
The table gives the median over the rounds and the spread (min-max), so machine noise shows as spread.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import EbpfguardError
from .launcher import spawn
from .manifest.load import parse
from .resources import data_root

WORKLOADS = {"open/close": 300_000, "connect": 20_000, "fork+exec": 3_000}
TARGETS = {"outside": 1.03, "inside": 1.10}

MANIFEST = """apiVersion: ebpfguard.io/v1
kind: Extension
metadata: {{name: bench, version: "1"}}
spec:
  mode: enforce
  filesystem: {{read: ["{dir}/"], exec: ["{bin}"]}}
  network:
    connect: ["127.0.0.1/32:1-65535/tcp"]
    bind: ["127.0.0.1/32:0-65535/tcp"]
"""


def _build(tmp: Path) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise EbpfguardError("the benchmark builds its workload with gcc; install gcc (make setup does)")
    out = tmp / "egload"
    subprocess.run([gcc, "-O2", "-static", "-o", str(out), str(data_root() / "bench" / "egload.c")], check=True)
    return out


def _args(workload: str, n: int, binary: Path, target: Path) -> list[str]:
    if workload == "open/close":
        return [str(binary), "open", str(n), str(target)]
    if workload == "connect":
        return [str(binary), "connect", str(n)]
    return [str(binary), "forkexec", str(n), str(binary)]


def _run(argv: list[str], procs_files: list[str] | None) -> int:
    """Run one workload, in the given cgroup if any; its own loop time in ns."""
    with tempfile.TemporaryFile() as out:
        proc = spawn(argv, procs_files or [], stdout=out)
        if proc.wait() != 0:
            raise EbpfguardError(f"workload {' '.join(argv[1:3])} failed with status {proc.returncode}")
        out.seek(0)
        return int(out.read())


def run_bench(rounds: int = 7, scale: float = 1.0, echo: Callable[[str], None] = print) -> dict[str, Any]:
    from .engine import Engine  # noqa: PLC0415

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ebpfguard-bench-") as tmpdir:
        tmp = Path(tmpdir)
        binary = _build(tmp)
        target = tmp / "file.txt"
        target.write_text("x")
        eng = Engine(str(tmp / "state"))
        try:
            inst = eng.prepare(parse(MANIFEST.format(dir=tmp, bin=binary).encode(), "bench.yaml"))
            procs = inst.cgroup.procs_files()
            conds = ("base_outside", "base_inside", "outside", "inside")
            times: dict[str, dict[str, list[int]]] = {w: {c: [] for c in conds} for w in WORKLOADS}
            violations_before = inst.violations
            for r in range(rounds):
                # unloaded: no tracepoint and no cgroup program attached anywhere
                tps = eng.sensor.detach_tracepoints()
                eng.sensor.detach_cgroup(inst.cgroup.v2)
                for w, n in WORKLOADS.items():
                    argv = _args(w, max(1, int(n * scale)), binary, target)
                    times[w]["base_outside"].append(_run(argv, None))
                    times[w]["base_inside"].append(_run(argv, procs))
                eng.sensor.attach_tracepoints(tps)
                eng.sensor.attach_cgroup(inst.cgroup.v2)
                for w, n in WORKLOADS.items():
                    argv = _args(w, max(1, int(n * scale)), binary, target)
                    times[w]["outside"].append(_run(argv, None))
                    times[w]["inside"].append(_run(argv, procs))
                eng.poll(0)
                echo(f"round {r + 1}/{rounds} done ({time.monotonic() - started:.0f} s)")
            eng.poll(0)
            violations = inst.violations - violations_before
        finally:
            eng.close()
    result: dict[str, Any] = {"rounds": rounds, "scale": scale, "workloads": {}, "targets": TARGETS,
                              "violations_inside": violations}
    for w, t in times.items():
        n = max(1, int(WORKLOADS[w] * scale))
        row: dict[str, Any] = {"iterations": n, "base_ns_per_op": statistics.median(t["base_outside"]) / n,
                               "cgroup_only": statistics.median(
                                   [i / o for i, o in zip(t["base_inside"], t["base_outside"], strict=True)])}
        for cond in ("outside", "inside"):
            ratios = [x / b for x, b in zip(t[cond], t["base_" + cond], strict=True)]
            row[cond] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
        result["workloads"][w] = row
    return result


def format_table(res: dict[str, Any]) -> str:
    lines = [f"ebpfguard bench: {res['rounds']} interleaved rounds; loaded/unloaded in the same place, "
             "median [min-max]",
             f"{'workload':<12} {'iters':>8} {'base/op':>10} {'outside':>22} {'inside':>22} {'cgroup':>7}"]
    for w, row in res["workloads"].items():
        cells = []
        for cond in ("outside", "inside"):
            r = row[cond]
            cells.append(f"{r['median']:.3f} [{r['min']:.3f}-{r['max']:.3f}]")
        base_us = row["base_ns_per_op"] / 1000
        lines.append(f"{w:<12} {row['iterations']:>8} {base_us:>8.2f}us {cells[0]:>22} {cells[1]:>22} "
                     f"{row['cgroup_only']:>7.3f}")
    lines.append("cgroup: unloaded inside / unloaded outside, the cost of cgroup membership alone (not ebpfguard's)")
    lines.append(f"targets: outside <= {res['targets']['outside']}, inside <= {res['targets']['inside']}; "
                 f"violations recorded inside: {res['violations_inside']} (expected 0)")
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

    from .forensics import ForensicLog  # noqa: PLC0415

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ebpfguard-logbench-", dir="/var/tmp") as tmpdir:
        for label, fsync in (("signed+fsync", True), ("signed, no fsync", False)):
            state = Path(tmpdir) / label.replace(" ", "").replace(",", "").replace("+", "")
            log = ForensicLog(state, fsync=fsync)
            log.append(dict(SAMPLE_RECORD))  # key creation is not part of the rate
            c0, t0, n = time.process_time(), time.monotonic(), 0
            while time.monotonic() - t0 < seconds:
                for _ in range(50):
                    log.append(dict(SAMPLE_RECORD))
                n += 50
            wall, cpu = time.monotonic() - t0, time.process_time() - c0
            out[label] = {"records": n, "per_second": n / wall, "cpu_per_second": cpu / wall,
                          "cpu_us_per_record": cpu / n * 1e6}
        last = json.loads((Path(tmpdir) / "signedfsync" / "forensics" / "records.jsonl").read_text()
                          .splitlines()[-2])
        full = len(json.dumps(last, separators=(",", ":"), ensure_ascii=False)) + 1
        bare = len(json.dumps({k: v for k, v in last.items() if k not in CHAIN_FIELDS}, separators=(",", ":"),
                              ensure_ascii=False)) + 1
        out["bytes_per_record"] = full
        out["overhead_bytes"] = full - bare
        out["checkpoint_every"] = 100
    out["device"] = "/var/tmp"
    return out


def format_log_table(res: dict[str, Any]) -> str:
    lines = ["ebpfguard bench --log: the forensic log alone (Ed25519 signature, SHA-256 chain, one append per "
             f"record, on {res['device']})",
             f"{'mode':<18} {'records/s':>10} {'CPU (cores)':>12} {'CPU/record':>11}"]
    for label in ("signed+fsync", "signed, no fsync"):
        r = res[label]
        lines.append(f"{label:<18} {r['per_second']:>10.0f} {r['cpu_per_second']:>12.2f} "
                     f"{r['cpu_us_per_record']:>9.1f}us")
    lines.append(f"record: {res['bytes_per_record']} bytes, of which {res['overhead_bytes']} are seq, prev_sha256, "
                 f"key_id and signature; plus one checkpoint record every {res['checkpoint_every']}")
    return "\n".join(lines)

"""Baselines: what an extension normally does, per extension and version, and the anomalies past it.

A baseline is learn's evidence (``learn -o X.yaml`` writes ``X.yaml.evidence.json``), or the same built from the
forensic log's audit-mode history (``ebpfguard baseline from-log``). The agent looks for
``POLICY_DIR/baselines/NAME@VERSION.json``, then ``NAME.json``. For an instance with a baseline, the programs report
its allowed execs, opens for writing, connects, sends and binds (EG_POL_BASELINE); one that the baseline never saw
(a new destination, a new executable, a new folder written to) is one ``anomaly`` record per instance and value,
with verdict ``allowed`` (it was), acted on by ``--anomaly-response`` (alert by default).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ebpfguard.errors import EbpfguardError
from ebpfguard.governance.learn import Evidence, LearnError


class BaselineError(EbpfguardError):
    pass


@dataclass
class Baseline:
    extension: str
    version: str | None
    source: str
    runs: int
    destinations: set[str] = field(default_factory=set)  # "address/bits:port/proto" as learn keys them, by op
    executables: set[str] = field(default_factory=set)
    folders: set[str] = field(default_factory=set)  # folders written to

    @classmethod
    def from_evidence(cls, ev: Evidence, extension: str, version: str | None, source: str) -> Baseline:
        b = cls(extension, version, source, len(ev.runs))
        for op, table in ev.net.items():
            b.destinations |= {f"{op} {k}" for k in table}
        b.executables = set(ev.files["exec"])
        b.folders = {os.path.dirname(p) for p in ev.files["write"]}
        return b

    @classmethod
    def load(cls, path: Path, extension: str, version: str | None) -> Baseline:
        try:
            ev = Evidence.load(path)
        except LearnError as err:
            raise BaselineError(str(err).replace("--merge: ", "baseline: ")) from err
        return cls.from_evidence(ev, extension, version, str(path))

    def unseen(self, kind: str, d: dict[str, Any]) -> tuple[str, str] | None:
        """(what, value) when the action is new to the baseline, else None."""
        if kind == "exec":
            path = str(d.get("path") or "")
            return None if path in self.executables else ("executable", path)
        if kind == "file" and d.get("access") == "write":
            folder = os.path.dirname(str(d.get("path") or ""))
            return None if folder in self.folders else ("folder", folder)
        if kind == "network" and d.get("address"):
            op = "bind" if d.get("op") == "bind" else "connect"
            addr = str(d["address"])
            key = f"{op} {addr}/{128 if ':' in addr else 32}:{d.get('port')}/{d.get('proto')}"
            return None if key in self.destinations else ("destination", key.split(" ", 1)[1])
        return None

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "version": self.version, "runs": self.runs,
                "destinations": len(self.destinations), "executables": len(self.executables),
                "folders": len(self.folders)}


def find(policy_dir: str | None, name: str, version: str) -> Baseline | None:
    """POLICY_DIR/baselines/NAME@VERSION.json, else NAME.json, else None."""
    if not policy_dir:
        return None
    base = Path(policy_dir) / "baselines"
    for f, v in ((base / f"{name}@{version}.json", version), (base / f"{name}.json", None)):
        if f.is_file():
            return Baseline.load(f, name, v)
    return None


def from_log(state_dir: str, name: str) -> Evidence:
    """Evidence from the forensic log: what audit-mode instances of NAME were recorded doing."""
    from ebpfguard.forensics import BadLine, read  # noqa: PLC0415
    from ebpfguard.manifest.load import default_home  # noqa: PLC0415

    ev = Evidence(default_home(None))
    instances: set[str] = set()
    for rec in read(state_dir):
        if isinstance(rec, BadLine) or rec.get("extension") != name or rec.get("mode") != "audit":
            continue
        if rec.get("kind") in ("file", "exec", "network") and rec.get("verdict") == "allowed":
            ev.add_record(rec)
            instances.add(str(rec.get("instance")))
    if not instances:
        raise BaselineError(f"the forensic log in {state_dir} has no audit-mode activity of {name}: run it with "
                            "--mode audit first, or use `learn`")
    ev.runs = [{"command": f"audit-mode instance {i}", "started": "", "seconds": 0.0, "ending": "from the log"}
               for i in sorted(instances)]
    return ev

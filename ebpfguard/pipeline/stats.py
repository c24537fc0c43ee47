"""What the engine counts as records become durable (a log.durable hook): violations by extension,
kind and verdict, actions, and the response-time histogram. The agent's scrape thread reads
snapshots under the lock (metrics.py)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from typing import Any

from ebpfguard.pipeline.decide import step_of

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Stats:
    """What the engine counts as it goes; the agent's scrape thread reads snapshots under the lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.violations: Counter[tuple[str, str, str]] = Counter()
        self.actions: Counter[str] = Counter()
        self.response_buckets = [0] * (len(BUCKETS) + 1)
        self.response_sum = 0.0
        self.landlock_reports_lost = 0  # the audit reader's socket overflowed (ENOBUFS): reports lost
        self.over_share: Counter[str] = Counter()  # extension -> records over its cgroups' ring-buffer share
        self.shadow: Counter[tuple[str, str]] = Counter()  # (extension, kind) -> what a shadow version would refuse
        self.refused: Counter[tuple[str, str]] = Counter()  # (extension, event) -> policies rejected, launches refused
        self.anomalies: Counter[tuple[str, str]] = Counter()  # (extension, what) -> allowed, new to the baseline
        self.rollbacks: Counter[tuple[str, str]] = Counter()  # (extension, committed|discarded|kept)

    def violation(self, extension: str, kind: str, verdict: str, actions: Iterable[str]) -> None:
        with self.lock:
            self.violations[(extension, kind, verdict)] += 1
            for a in actions:
                # "cgroup.kill:escalation(3 in 60s)" -> "cgroup.kill": bounded label values
                self.actions[step_of(a)] += 1

    def observe(self, rec: dict[str, Any]) -> None:
        """A durable record (a log.durable hook): violations and actions by their record, the
        response time where the agent acted."""
        if rec.get("kind") in ("lifecycle", "checkpoint", "policy"):
            detail = rec.get("detail") or {}
            if detail.get("event") == "over-share":
                with self.lock:
                    self.over_share[rec.get("extension") or "?"] += int(detail.get("records") or 0)
            elif rec.get("kind") == "policy" and detail.get("event") in ("rejected", "launch-refused"):
                with self.lock:
                    self.refused[(rec.get("extension") or "?", str(detail["event"]))] += 1
            return
        if rec.get("kind") == "rollback":  # an instance's changes committed or discarded: not a violation
            with self.lock:
                self.rollbacks[(rec.get("extension") or "?", str((rec.get("detail") or {}).get("event")))] += 1
            return
        if rec.get("kind") == "anomaly":  # allowed, new to the baseline: not a violation
            with self.lock:
                self.anomalies[(rec.get("extension") or "?", str((rec.get("detail") or {}).get("what")))] += 1
            return
        if rec.get("verdict") == "shadow":  # nothing was refused: not a violation
            with self.lock:
                self.shadow[(rec.get("extension") or "?", str(rec.get("kind")))] += 1
            return
        self.violation(rec.get("extension") or "?", str(rec.get("kind")), rec.get("verdict") or "?",
                       rec.get("actions") or [])
        if isinstance(rec.get("response_ns"), int):
            self.response(rec["response_ns"] / 1e9)

    def response(self, seconds: float) -> None:
        with self.lock:
            i = next((i for i, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))
            self.response_buckets[i] += 1
            self.response_sum += seconds

    def snapshot(self) -> tuple[dict[tuple[str, str, str], int], dict[str, int], list[int], float]:
        with self.lock:
            return dict(self.violations), dict(self.actions), list(self.response_buckets), self.response_sum

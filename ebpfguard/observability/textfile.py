"""The outcome of `ebpfguard forensics verify` for node_exporter's textfile collector: a run that is not a
service has no /metrics to scrape, so it leaves a file (Prometheus text format, replaced atomically) that
the node's exporter serves, and an alert fires on a log that stopped verifying (contrib/prometheus)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from ebpfguard.forensics.check import LogCheck


def verify_registry(checks: Iterable[LogCheck], now: Callable[[], float] = time.time) -> CollectorRegistry:
    """A fresh registry with one sample per log (label ``log``: the target as given) of each gauge:
    ebpfguard_forensics_verify_ok, _verified_records and _verify_timestamp_seconds."""
    reg = CollectorRegistry()
    ok = Gauge("ebpfguard_forensics_verify_ok", "1 if the forensic log verified intact, 0 if not.", ["log"],
               registry=reg)
    n = Gauge("ebpfguard_forensics_verified_records", "Records checked by the last verification.", ["log"],
              registry=reg)
    ts = Gauge("ebpfguard_forensics_verify_timestamp_seconds", "When the last verification ran.", ["log"],
               registry=reg)
    for c in checks:
        ok.labels(c.target).set(1 if c.ok else 0)
        n.labels(c.target).set(c.records)
        ts.labels(c.target).set(now())
    return reg


def write_verify_metrics(path: str | os.PathLike[str], checks: Iterable[LogCheck],
                         now: Callable[[], float] = time.time) -> None:
    """Replace ``path`` with the gauges of ``checks`` (an OSError says why it could not)."""
    write_to_textfile(str(path), verify_registry(checks, now))

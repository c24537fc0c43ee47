"""Prometheus metrics: a Collector that reads the kernel's counters and the engine's statistics at
scrape time, so nothing is double-counted and a scrape costs only what it reads.

Names follow the Prometheus conventions: ebpfguard_ prefix, _total for counters, base units (seconds),
low-cardinality labels (extension, kind, verdict, action, state).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ebpfguard.pipeline.stats import BUCKETS

if TYPE_CHECKING:
    from ebpfguard.manifest.load import Manifest
    from ebpfguard.runtime.engine import Engine

STATES = ("running", "throttled", "frozen", "quarantined")


class EngineCollector(Collector):
    def __init__(self, engine: Engine, policies: Callable[[], dict[str, Manifest]] = dict):
        self.engine = engine
        self.policies = policies

    def collect(self) -> Iterable[Metric]:
        eng = self.engine
        ctr = eng.sensor.counters()
        yield CounterMetricFamily("ebpfguard_kernel_events", "Records the kernel programs reserved in the ring "
                                  "buffer (violations and lifecycle events).", value=ctr["events"])
        yield CounterMetricFamily("ebpfguard_ringbuf_dropped_records", "Records the kernel could not reserve "
                                  "because the ring buffer was full (counted, never silent).", value=ctr["drops"])
        yield CounterMetricFamily("ebpfguard_kernel_repeats_suppressed", "Identical repeats of a violation by the "
                                  "same thread within a second, discarded in the kernel (the next record of it "
                                  "carries the count).", value=ctr["suppressed"])
        yield CounterMetricFamily("ebpfguard_kernel_kills", "SIGKILLs sent by the kernel programs.",
                                  value=ctr["kills"])
        yield CounterMetricFamily("ebpfguard_kernel_denials", "Network actions the cgroup programs denied.",
                                  value=ctr["denials"])
        violations, actions, buckets, total = eng.stats.snapshot()
        v = CounterMetricFamily("ebpfguard_violations", "Violations recorded, by extension, kind and verdict.",
                                labels=["extension", "kind", "verdict"])
        for (ext, kind, verdict), n in sorted(violations.items()):
            v.add_metric([ext, kind, verdict], n)
        yield v
        with eng.stats.lock:
            counted = [(dict(eng.stats.anomalies), "ebpfguard_anomalies", "Allowed actions an extension's baseline "
                        "never saw (a new destination, executable or folder), by extension and what.", "what"),
                       (dict(eng.stats.shadow), "ebpfguard_shadow_refusals", "What an extension's shadow version (a "
                        "staged rollout) would have refused and the enforced one allowed, by extension and kind.",
                        "kind"),
                       (dict(eng.stats.refused), "ebpfguard_policy_refusals", "Manifests rejected (no trusted "
                        "signature where one is required) and launches refused (files not as signed), by extension "
                        "and event.", "event"),
                       (dict(eng.stats.rollbacks), "ebpfguard_rollbacks", "Rollback overlays finished, by extension "
                        "and event: committed on a clean stop, discarded when the agent killed the instance, kept "
                        "for an operator.", "event")]
        for counts, name, text, label in counted:
            fam = CounterMetricFamily(name, text, labels=["extension", label])
            for (ext, value), n in sorted(counts.items()):
                fam.add_metric([ext, value], n)
            yield fam
        a = CounterMetricFamily("ebpfguard_actions", "Actions taken, by action.", labels=["action"])
        for action, n in sorted(actions.items()):
            a.add_metric([action], n)
        yield a
        yield CounterMetricFamily("ebpfguard_records_written", "Forensic records written and fsync'd.",
                                  value=eng.log.written)
        yield CounterMetricFamily("ebpfguard_records_failed", "Forensic records that could not be written.",
                                  value=eng.log.failed + eng.record_errors)
        yield CounterMetricFamily("ebpfguard_landlock_reports_lost", "Landlock denial reports lost before they "
                                  "became records: the audit reader's socket overflowed, or a report's domain "
                                  "was never tied to an instance.",
                                  value=eng.stats.landlock_reports_lost + eng.audit.domains.dropped)
        over = CounterMetricFamily("ebpfguard_records_over_share", "Records an extension's instance could not "
                                   "reserve because it already held its share of the kernel's ring buffer (its own "
                                   "flood; other extensions' records are not affected). Each is also in an "
                                   "over-share record.", labels=["extension"])
        with eng.stats.lock:
            for ext, n in sorted(eng.stats.over_share.items()):
                over.add_metric([ext], n)
        yield over
        yield CounterMetricFamily("ebpfguard_kernel_over_share", "Records the kernel programs did not reserve "
                                  "because the cgroup held its share of the ring buffer, all extensions.",
                                  value=ctr["over_share"])
        cumulative, acc = [], 0
        for bound, n in zip([*map(str, BUCKETS), "+Inf"], buckets, strict=True):
            acc += n
            cumulative.append((bound, acc))
        yield HistogramMetricFamily("ebpfguard_response_seconds", "Detection (kernel timestamp) to action done.",
                                    buckets=cumulative, sum_value=total)
        states: Counter[str] = Counter()
        for inst in list(eng.instances.values()):
            states[inst.state] += 1
            if inst.quarantined:
                states["quarantined"] += 1
        g = GaugeMetricFamily("ebpfguard_extensions", "Running extension instances, by state.", labels=["state"])
        for state in STATES:
            g.add_metric([state], states.get(state, 0))
        yield g
        run_s = CounterMetricFamily("ebpfguard_bpf_program_run_seconds", "Time the kernel spent running each "
                                    "BPF program (kernel BPF statistics; counted only while "
                                    "kernel.bpf_stats_enabled or agent --bpf-stats).", labels=["program"])
        runs = CounterMetricFamily("ebpfguard_bpf_program_runs", "Times the kernel ran each BPF program (kernel "
                                   "BPF statistics).", labels=["program"])
        for prog, (ns, cnt) in sorted(eng.sensor.program_stats().items()):
            run_s.add_metric([prog], ns / 1e9)
            runs.add_metric([prog], cnt)
        yield run_s
        yield runs
        fwd = eng.log.forward
        yield CounterMetricFamily("ebpfguard_records_forward_failed", "Records journald or syslog did not take "
                                  "(they are in the file regardless).", value=fwd.failed if fwd else 0)
        info = GaugeMetricFamily("ebpfguard_policy_info", "Policies loaded (1), with their name, version and "
                                 "the sha256 of their exact bytes.", labels=["name", "version", "sha256"])
        seen: dict[str, Any] = {m.sha256: m for m in self.policies().values()}
        for slot in eng.slots:
            seen.setdefault(slot.manifest.sha256, slot.manifest)
        for sha, m in sorted(seen.items()):
            info.add_metric([m.name, m.version, sha], 1)
        yield info


class BuildCollector(Collector):
    """ebpfguard_build_info: the version running, with the Python and bcc it runs on (value 1)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        import platform
        from importlib.metadata import PackageNotFoundError, version

        try:
            ours = version("ebpfguard")
        except PackageNotFoundError:
            ours = "unknown"
        try:
            import bcc  # noqa: PLC0415

            bcc_version = str(getattr(bcc, "__version__", "unknown"))
        except ImportError:
            bcc_version = "none"
        g = GaugeMetricFamily("ebpfguard_build_info", "The ebpfguard version running (1), with its Python, bcc "
                              "and kernel.", labels=["version", "python", "bcc", "kernel"])
        g.add_metric([ours, platform.python_version(), bcc_version, platform.release()], 1)
        yield g


def registry_for(engine: Engine, policies: Callable[[], dict[str, Manifest]] = dict) -> Any:
    """The agent's own registry: its collector, build info, and the process_* metrics of the agent."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine, policies))
    registry.register(BuildCollector())
    ProcessCollector(registry=registry)
    return registry


def serve(engine: Engine, address: str, policies: Callable[[], dict[str, Manifest]] = dict) -> int:
    """Serve /metrics on ``address`` ("host:port") in a daemon thread; returns the port."""
    from prometheus_client import start_http_server

    host, _, port = address.rpartition(":")
    registry = registry_for(engine, policies)
    result = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
    server = result[0] if isinstance(result, tuple) else None
    return int(server.server_port) if server is not None else int(port)

"""The dashboard and the alert rules use only metrics ebpfguard exports, under their exported names."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import yaml
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ebpfguard.cli.main import main
from ebpfguard.kernel.cgroups import CgroupManager
from ebpfguard.observability.metrics import EngineCollector
from ebpfguard.runtime.engine import Engine
from ebpfguard.testing import FakeSensor

ROOT = Path(__file__).resolve().parents[2]
PROMQL_WORDS = {"sum", "by", "rate", "increase", "histogram_quantile", "max", "min", "time", "le", "instance",
                "label_values", "without", "humanize", "on", "ignoring"}


def exported(tmp_path: Path) -> set[str]:
    """Every sample name the agent's collector and `verify --metrics-file` produce."""
    cg = tmp_path / "cg"
    for d in ("unified", "memory", "cpu", "pids", "freezer"):
        (cg / d).mkdir(parents=True)
        (cg / d / "cgroup.procs").write_text("")
    sensor = FakeSensor()
    sensor.prog_stats = {"syscalls__sys_enter_openat": (100, 1)}
    engine = Engine(tmp_path, sensor=sensor, cgroups=CgroupManager(cg))
    engine.stats.violation("x", "file", "denied", ["cgroup.freeze"])
    engine.stats.response(0.002)
    engine.stats.observe({"extension": "x", "kind": "file", "verdict": "shadow", "actions": []})
    engine.stats.observe({"extension": "x", "kind": "policy", "detail": {"event": "rejected"}})
    engine.stats.observe({"extension": "x", "kind": "anomaly", "verdict": "allowed", "detail": {"what": "folder"}})
    reg = CollectorRegistry(auto_describe=False)
    policy = SimpleNamespace(name="x", version="1", sha256="ab" * 32)
    reg.register(EngineCollector(engine, lambda: {"x": policy}))  # type: ignore[dict-item, return-value]
    names = {s.name for f in text_string_to_metric_families(generate_latest(reg).decode()) for s in f.samples}
    prom = tmp_path / "v.prom"
    CliRunner().invoke(main, ["forensics", "verify", "--state-dir", str(tmp_path), "--metrics-file", str(prom)])
    names |= {s.name for f in text_string_to_metric_families(prom.read_text()) for s in f.samples}
    return names


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', "", expr)       # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)     # matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)    # ranges
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)
            if w not in PROMQL_WORDS and not w.startswith("$") and "ebpfguard" in w}


def test_dashboard_uses_only_exported_metrics(tmp_path: Path) -> None:
    names = exported(tmp_path)
    dash = json.loads((ROOT / "contrib/grafana/ebpfguard-dashboard.json").read_text())
    used = set()
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    assert "Fleet: every host this Prometheus scrapes" in rows
    for p in dash["panels"]:
        if p["type"] == "row":  # a heading: no query of its own
            continue
        assert p["targets"], p["title"]
        for t in p["targets"]:
            used |= metric_names(t["expr"])
    assert used and used <= names, used - names
    assert {"ebpfguard_ringbuf_dropped_records_total", "ebpfguard_extensions", "ebpfguard_forensics_verify_ok",
            "ebpfguard_bpf_program_run_seconds_total"} <= used
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_alert_rules_cover_drops_frozen_and_failed_verification(tmp_path: Path) -> None:
    names = exported(tmp_path)
    rules = yaml.safe_load((ROOT / "contrib/prometheus/ebpfguard-alerts.yml").read_text())
    by_name = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    for r in by_name.values():
        assert metric_names(r["expr"]) <= names, (r["alert"], metric_names(r["expr"]) - names)
        assert r["labels"]["severity"] in ("info", "warning", "critical") and r["annotations"]["summary"]
    assert "ebpfguard_ringbuf_dropped_records_total" in by_name["EbpfguardRingBufferDrops"]["expr"]
    assert 'state="frozen"' in by_name["EbpfguardExtensionFrozen"]["expr"]
    assert "ebpfguard_forensics_verify_ok == 0" in by_name["EbpfguardForensicLogVerifyFailed"]["expr"]


def test_the_agents_registry_has_build_info_and_process_metrics(tmp_path: Path) -> None:
    from ebpfguard.observability.metrics import registry_for

    cg = tmp_path / "cg"
    (cg / "unified").mkdir(parents=True)
    (cg / "unified" / "cgroup.procs").write_text("")
    engine = Engine(tmp_path, sensor=FakeSensor(), cgroups=CgroupManager(cg))
    text = generate_latest(registry_for(engine)).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    info = fams["ebpfguard_build_info"].samples[0]
    assert info.value == 1 and info.labels["version"] and info.labels["python"] and info.labels["kernel"]
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"} <= {
        s.name for f in fams.values() for s in f.samples}


def test_promtool_checks_the_rules_and_their_unit_tests_pass() -> None:
    """Every alert fires on the series it must, and the absent-series cases (no verification result for a
    host, no agent target at all) too: contrib/prometheus/ebpfguard-alerts.test.yml, run by promtool."""
    import os
    import shutil
    import subprocess

    import pytest

    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: make setup installs Debian's prometheus package")
        pytest.skip("promtool is missing (Debian's prometheus package)")
    d = ROOT / "contrib" / "prometheus"
    check = subprocess.run([promtool, "check", "rules", "ebpfguard-alerts.yml"], cwd=d, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([promtool, "test", "rules", "ebpfguard-alerts.test.yml"], cwd=d, capture_output=True,
                          text=True)
    assert test.returncode == 0 and "SUCCESS" in test.stdout + test.stderr, test.stdout + test.stderr
    rules = yaml.safe_load((d / "ebpfguard-alerts.yml").read_text())
    tests = yaml.safe_load((d / "ebpfguard-alerts.test.yml").read_text())
    tested = {a["alertname"] for t in tests["tests"] for a in t["alert_rule_test"] if a["exp_alerts"]}
    assert tested == {r["alert"] for g in rules["groups"] for r in g["rules"]}, "an alert no test makes fire"


def test_dashboard_panels_do_not_overlap_and_a_host_selects_its_agent_and_its_node_exporter() -> None:
    dash = json.loads((ROOT / "contrib/grafana/ebpfguard-dashboard.json").read_text())
    cells: dict[tuple[int, int], str] = {}
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]
    var = next(v for v in dash["templating"]["list"] if v["name"] == "host")
    extract = re.compile(var["regex"].strip("/"))
    assert extract.fullmatch("ws1.example:9464").group(1) == "ws1.example"  # type: ignore[union-attr]
    verify = next(p for p in dash["panels"] if p["title"] == "Forensic log verified")
    for t in verify["targets"]:
        sel = re.search(r'instance=~"([^"]*)"', t["expr"]).group(1)  # type: ignore[union-attr]
        pattern = sel.replace("$host", "ws1\\.example")
        # the agent's scrape target and node_exporter's, where the verification result comes from
        assert re.fullmatch(pattern, "ws1.example:9464") and re.fullmatch(pattern, "ws1.example:9100")
        assert not re.fullmatch(pattern, "ws2.example:9100")


def test_shadow_refusals_and_policy_refusals_are_counted_apart_from_violations(tmp_path: Path) -> None:
    cg = tmp_path / "cg"
    (cg / "unified").mkdir(parents=True)
    (cg / "unified" / "cgroup.procs").write_text("")
    engine = Engine(tmp_path, sensor=FakeSensor(), cgroups=CgroupManager(cg))
    engine.stats.observe({"extension": "x", "kind": "network", "verdict": "shadow", "actions": []})
    engine.stats.observe({"extension": "x", "kind": "file", "verdict": "denied", "actions": ["eacces:landlock"]})
    engine.stats.observe({"extension": "x", "kind": "policy", "verdict": "denied",
                          "detail": {"event": "launch-refused"}, "actions": ["refuse:launch"]})
    engine.stats.observe({"extension": "x", "kind": "policy", "verdict": None, "detail": {"event": "loaded"}})
    reg = CollectorRegistry(auto_describe=False)
    reg.register(EngineCollector(engine, dict))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(generate_latest(reg).decode()) for s in f.samples}
    assert samples[("ebpfguard_shadow_refusals_total", (("extension", "x"), ("kind", "network")))] == 1
    assert samples[("ebpfguard_policy_refusals_total", (("event", "launch-refused"), ("extension", "x")))] == 1
    violations = {k: v for k, v in samples.items() if k[0] == "ebpfguard_violations_total"}
    assert violations == {("ebpfguard_violations_total", (("extension", "x"), ("kind", "file"),
                                                          ("verdict", "denied"))): 1}

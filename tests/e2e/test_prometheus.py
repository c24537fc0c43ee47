"""A real Prometheus (Debian's) scrapes a real agent on loopback; every query of the shipped dashboard
runs against it and answers, the key panels with data. And an agent whose metrics port is taken still
enforces, and says why its metrics are missing."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlencode
from urllib.request import urlopen

import pytest

from .test_agent import MANIFEST, Agent, eg

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def query(prom: int, expr: str) -> dict:  # type: ignore[type-arg]
    with urlopen(f"http://127.0.0.1:{prom}/api/v1/query?{urlencode({'query': expr})}", timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def test_every_dashboard_query_answers_from_a_real_prometheus(tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: make setup installs Debian's prometheus package")
    metrics, prom = free_port(), free_port()
    agent = Agent(tmp_path, "--metrics-address", f"127.0.0.1:{metrics}")
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n"
                   f"scrape_configs:\n  - job_name: ebpfguard\n"
                   f"    static_configs: [{{targets: ['127.0.0.1:{metrics}']}}]\n")
    server = subprocess.Popen([binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{prom}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        m = tmp_path / "metered.yaml"
        m.write_text(MANIFEST.format(name="metered", file="block"))
        deadline = time.monotonic() + 60
        while True:  # scraped, with the violation of a run counted
            assert server.poll() is None, "prometheus exited"
            if time.monotonic() > deadline:
                pytest.fail("prometheus never scraped the agent's violation")
            eg("run", "-m", str(m), "--", "cat", "/etc/shadow", state=agent.state)
            try:
                got = query(prom, 'ebpfguard_violations_total{extension="metered"}')
                if got["data"]["result"]:
                    break
            except OSError:
                pass
            time.sleep(1)
        time.sleep(3)  # a few samples more, for rate()
        dash = json.loads((ROOT / "contrib/grafana/ebpfguard-dashboard.json").read_text())
        empty = []
        for p in dash["panels"]:
            for t in p.get("targets", []):  # a row has none
                expr = t["expr"].replace("$host", "127.0.0.1").replace("$__rate_interval", "10s")
                ans = query(prom, expr)
                assert ans["status"] == "success", (p["title"], expr, ans)
                if not ans["data"]["result"]:
                    empty.append(p["title"])
        # panels whose series exist once an agent runs and has seen a violation (the verification result
        # comes from node_exporter's textfile, not scraped here; bpf statistics need --bpf-stats)
        for title in ("Extensions by state", "Violations by extension and kind", "Violations by verdict",
                      "Kernel events, denials and kills", "Forensic records written", "Policies in force"):
            assert title not in empty, (title, empty)
    finally:
        server.terminate()
        server.wait(timeout=20)
        agent.stop()


def test_a_taken_metrics_port_is_said_and_the_agent_enforces(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        agent = Agent(tmp_path, "--metrics-address", f"127.0.0.1:{port}")
        try:
            st = agent.status()
            assert st["agent"]["state"] == "enforcing"
            assert f"not served on 127.0.0.1:{port}" in (st["agent"]["metrics"]["error"] or "")
            text = eg("status", state=agent.state).stdout
            assert "metrics: not served on" in text
            assert "metrics not served on" in agent.output()
        finally:
            agent.stop()


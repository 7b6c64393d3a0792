"""The Grafana dashboard in deploy/grafana/ queries only metrics the router and
miner export, in PromQL that Prometheus accepts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from netutil import Network, free_port
from test_network import chat, wait_until

DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana" / "inferswarm.json"
METRIC = re.compile(r"\binferswarm_[a-z0-9_]+")


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        found += [target["expr"] for target in panel.get("targets", [])]
    return found


def exposed_names(text: str) -> set[str]:
    """Every name a query may use: families (also empty ones) and their series."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def test_dashboard_is_valid_json_with_queries() -> None:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "inferswarm"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert len(expressions()) > 30


def test_every_queried_metric_is_exported(net: Network) -> None:
    net.start_router()
    metrics_port = free_port()
    net.start_miner("m1", "--metrics-port", str(metrics_port))
    net.wait_miners(1)
    chat(net, max_tokens=5)
    bad = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
    httpx.post(net.base_url + "/v1/chat/completions", json=bad, timeout=5)
    wait_until(
        lambda: "inferswarm_miner_cpu_percent{" in httpx.get(net.base_url + "/metrics").text,
        what="a heartbeat",
    )
    exposed = exposed_names(httpx.get(net.base_url + "/metrics", timeout=5).text)
    exposed |= exposed_names(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text)
    queried = {name for expr in expressions() for name in METRIC.findall(expr)}
    assert queried - exposed == set()


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is missing (make install-dev)"
)
def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool checks PromQL in rule files; each query becomes a recording rule.
    # JSON is YAML, so no YAML library is needed to write the file.
    rules = [
        {
            "record": f"inferswarm:query_{i}",
            "expr": expr.replace("$__rate_interval", "1m").replace("$model", ".*"),
        }
        for i, expr in enumerate(expressions())
    ]
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is missing (make install-dev)"
)
def test_example_prometheus_config_is_valid() -> None:
    config = DASHBOARD.parent.parent / "prometheus" / "prometheus.yml"
    checked = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

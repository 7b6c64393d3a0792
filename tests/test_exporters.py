"""Both Prometheus exporters, scraped from live processes, pass ``promtool
check metrics`` (Debian's prometheus package; ``make install-dev`` installs it)."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from netutil import Network, free_port
from test_network import chat, wait_until

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is missing: `make install-dev` installs Debian's prometheus package "
    "when run as root with apt-get",
)


def promtool_check(exposition: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def values(exposition: str) -> dict[str, float]:
    return {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def miner_values(port: int) -> dict[str, float]:
    return values(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)


@needs_promtool
def test_router_and_miner_exporters_pass_promtool_under_traffic(net: Network) -> None:
    net.start_router()
    metrics_port = free_port()
    net.start_miner("m1", "--slots", "2", "--metrics-port", str(metrics_port))
    net.wait_miners(1)
    for _ in range(3):
        chat(net, max_tokens=5)
    # The router's view of the miner fills in with its first heartbeat after the traffic.
    wait_until(
        lambda: "inferswarm_miner_cpu_percent" in httpx.get(net.base_url + "/metrics").text,
        what="a heartbeat with utilisation",
    )
    router_text = httpx.get(net.base_url + "/metrics", timeout=5).text
    miner_text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    for name, text in (("router", router_text), ("miner", miner_text)):
        checked = promtool_check(text)
        assert checked.returncode == 0, f"{name}: {checked.stdout}{checked.stderr}"
        assert checked.stdout.strip() == "" and checked.stderr.strip() == "", checked.stderr

    miner = miner_values(metrics_port)
    assert miner["inferswarm_engine_tasks_total[('model', 'fake-model'), ('outcome', 'ok')]"] == 3
    assert miner["inferswarm_engine_generation_tokens_total[('model', 'fake-model')]"] == 15
    assert miner["inferswarm_engine_slots[]"] == 2
    assert miner["inferswarm_engine_slots_busy[]"] == 0
    assert miner["inferswarm_engine_router_connected[]"] == 1
    assert 0 < miner["inferswarm_host_memory_percent[]"] <= 100
    assert miner["inferswarm_host_memory_used_bytes[]"] > 0


def test_heartbeats_carry_utilisation_to_the_router(net: Network) -> None:
    net.start_router()
    net.start_miner("m1")
    net.wait_miners(1)
    chat(net, max_tokens=5)

    def reported() -> dict[str, object]:
        network = httpx.get(net.base_url + "/v1/network", timeout=5).json()
        utilisation: dict[str, object] = network["miners"][0]["utilisation"]
        return utilisation

    wait_until(lambda: reported()["ram_used_bytes"] is not None, what="a heartbeat")
    usage = reported()
    assert 0 < float(str(usage["ram_percent"])) <= 100
    assert usage["gpus"] == []  # this machine has no GPU; the field stays out of the frame


@needs_promtool
def test_promtool_does_reject_a_badly_named_counter() -> None:
    """The check above can fail: promtool lints names, not just syntax."""
    checked = promtool_check("# HELP foo Foo.\n# TYPE foo counter\nfoo 1\n")
    assert checked.returncode != 0
    assert "_total" in checked.stdout + checked.stderr

"""The router's Prometheus exposition parses, and moves with real traffic."""

from __future__ import annotations

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from netutil import Network
from test_network import MODEL, chat


def scrape(net: Network) -> dict[str, float]:
    text = httpx.get(net.base_url + "/metrics", timeout=5).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + "".join(f",{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[key] = sample.value
    return samples


def test_metrics_count_requests_tokens_and_latency_and_show_miners(net: Network) -> None:
    net.start_router()
    net.start_miner("m1", "--fake-speed", "200", "--slots", "2")
    net.wait_miners(1)
    for _ in range(3):
        chat(net, max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        chat(net, max_tokens=100000)
    samples = scrape(net)
    assert samples[f"inferswarm_requests_total,model={MODEL},outcome=ok"] == 3
    assert samples[f"inferswarm_generation_tokens_total,model={MODEL}"] == 12
    assert samples[f"inferswarm_time_to_first_token_seconds_count,model={MODEL}"] == 3
    assert samples[f"inferswarm_e2e_request_latency_seconds_count,model={MODEL}"] == 3
    assert samples["inferswarm_requests_running"] == 0
    assert samples["inferswarm_miners"] == 1
    slots = [
        v for k, v in samples.items() if k.startswith("inferswarm_miner_slots,") and "name=m1" in k
    ]
    assert slots == [2]

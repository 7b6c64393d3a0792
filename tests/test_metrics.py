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


def total(samples: dict[str, float], name: str, *labels: str) -> float:
    """Sum of ``name``'s samples whose labels include all of ``labels`` (k=v)."""
    return sum(
        value
        for key, value in samples.items()
        if key.split(",")[0] == name and all(f",{label}" in key for label in labels)
    )


def test_metrics_count_requests_tokens_and_latency_and_show_miners(net: Network) -> None:
    net.start_router()
    net.start_miner("m1", "--fake-speed", "200", "--slots", "2")
    net.wait_miners(1)
    for _ in range(3):
        chat(net, max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        chat(net, max_tokens=100000)
    samples = scrape(net)
    model = f"model={MODEL}"
    # ``tier`` is the serving miner's tier at the time, which moves as its
    # speed is measured: sum over tiers.
    assert total(samples, "inferswarm_requests_total", model, "outcome=ok") == 3
    assert total(samples, "inferswarm_generation_tokens_total", model) == 12
    assert total(samples, "inferswarm_time_to_first_token_seconds_count", model) == 3
    assert total(samples, "inferswarm_e2e_request_latency_seconds_count", model) == 3
    assert total(samples, "inferswarm_request_queue_time_seconds_count", model) == 3
    # Four tokens each: the first is the TTFT, the three gaps after it are inter-token latency.
    assert total(samples, "inferswarm_inter_token_latency_seconds_count", model) == 9
    assert total(samples, "inferswarm_requests_total", "tier=none") == 0
    assert samples[f"inferswarm_requests_running,{model}"] == 0
    assert samples["inferswarm_requests_waiting"] == 0
    assert samples["inferswarm_miners"] == 1
    assert total(samples, "inferswarm_miner_slots", "name=m1") == 2
    assert total(samples, "inferswarm_miner_state", "name=m1", "state=live") == 1
    assert samples["inferswarm_miner_joins_total"] == 1
    assert samples["inferswarm_failovers_total"] == 0


def test_rejections_before_dispatch_are_counted_by_reason(net: Network) -> None:
    net.start_router()
    net.start_miner("m1")
    net.wait_miners(1)
    url = net.base_url + "/v1/chat/completions"
    assert httpx.post(url, content=b"{not json", timeout=5).status_code == 400
    assert httpx.post(url, json={"model": MODEL}, timeout=5).status_code == 400
    missing = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(url, json=missing, timeout=5).status_code == 404
    with pytest.raises(openai.BadRequestError):
        chat(net, max_tokens=100000)
    samples = scrape(net)
    assert samples["inferswarm_rejections_total,reason=invalid_request,status=400"] == 2
    assert samples["inferswarm_rejections_total,reason=model_not_found,status=404"] == 1
    assert samples["inferswarm_rejections_total,reason=context_length_exceeded,status=400"] == 1
    # None of them reached a miner.
    assert total(samples, "inferswarm_requests_total") == 0

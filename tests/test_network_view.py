"""``GET /v1/network`` and its stream, on a real router with real miner processes."""

from __future__ import annotations

import json
from typing import Any

import httpx

from netutil import Network
from test_network import MODEL, chat


def network(net: Network, **params: Any) -> dict[str, Any]:
    response = httpx.get(
        net.base_url + "/v1/network", params=params, headers=net.headers(), timeout=5
    )
    response.raise_for_status()
    state: dict[str, Any] = response.json()
    return state


def kinds(state: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["kind"], e["miner_name"]) for e in state["events"]]


def test_network_shows_miners_throughput_latency_and_events(net: Network) -> None:
    net.start_router()
    net.start_miner("m1", "--slots", "2")
    m2 = net.start_miner("m2")
    net.wait_miners(2)
    for _ in range(4):
        reply = chat(net, max_tokens=6)
        assert reply.choices[0].message.content
    state = network(net)
    miners = {m["name"]: m for m in state["miners"]}
    assert set(miners) == {"m1", "m2"}
    m1 = miners["m1"]
    assert m1["models"] == [MODEL] and m1["slots"] == 2 and m1["busy"] == 0
    assert m1["hardware"]["cpu_cores"] >= 1 and m1["hardware_summary"]
    assert 1 <= m1["tier"] <= 5
    assert 0 < m1["reputation"] <= 1 and m1["state"] == "live"  # from the verification book
    assert state["models"] == [
        {
            "id": MODEL,
            "miners": 2,
            "slots": 3,
            "busy_slots": 0,
            "tokens_per_s": state["models"][0]["tokens_per_s"],
            "loadable_on": 0,
        }
    ]
    assert state["queue"]["depth"] == 0 and state["in_flight"] == 0
    minute = state["last_minute"]
    assert minute["generation_tokens_per_s"] == 4 * 6 / 60
    assert minute["requests_per_s"] == 4 / 60
    assert minute["ttft_p50"] is not None and minute["e2e_p95"] is not None
    assert len(state["series"]) == 300
    assert sum(p["generation_tokens"] for p in state["series"]) == 24
    assert ("join", "m1") in kinds(state) and ("join", "m2") in kinds(state)
    assert state["totals"]["join"] == 2

    m2.stop()
    net.wait_miners(1)
    state = network(net, series_s=5)
    assert [m["name"] for m in state["miners"]] == ["m1"]
    assert kinds(state)[0][1] == "m2" and kinds(state)[0][0] in ("leave", "draining")
    assert ("leave", "m2") in kinds(state)
    assert len(state["series"]) == 5


def test_stream_sends_a_snapshot_then_ticks_with_new_events(net: Network) -> None:
    net.start_router()
    net.start_miner("m1")
    net.wait_miners(1)
    messages: list[dict[str, Any]] = []
    url = net.base_url + "/v1/network/stream"
    with httpx.stream("GET", url, params={"interval_s": 0.2}, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            messages.append(json.loads(line.removeprefix("data: ")))
            if len(messages) == 2:
                net.start_miner("m2")
            if any(("join", "m2") in kinds(m) for m in messages[1:]):
                break
    assert messages[0]["type"] == "snapshot" and len(messages[0]["series"]) == 300
    assert ("join", "m1") in kinds(messages[0])
    ticks = messages[1:]
    assert all(m["type"] == "tick" and len(m["series"]) == 2 for m in ticks)
    # Each event is sent once: the join of m1 was in the snapshot, not in a tick.
    assert not any(("join", "m1") in kinds(m) for m in ticks)
    assert sum(("join", "m2") in kinds(m) for m in ticks) == 1


def test_network_needs_a_key_when_auth_is_on_but_the_dashboard_page_does_not(
    net: Network,
) -> None:
    net.api_key = "sk-test"
    net.start_router()
    assert httpx.get(net.base_url + "/v1/network", timeout=5).status_code == 401
    assert httpx.get(net.base_url + "/v1/network/stream", timeout=5).status_code == 401
    assert network(net)["object"] == "network"
    page = httpx.get(net.base_url + "/dashboard", timeout=5)
    assert page.status_code == 200 and "<canvas" in page.text
    assert httpx.get(net.base_url + "/dashboard/static/dashboard.js", timeout=5).status_code == 200

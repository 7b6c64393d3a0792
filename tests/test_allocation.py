"""Allocation by measured capability and live load, with real router and fake
miner processes: capability and tiers, observed speed beating claims, the
wait queue and its limits, and per-request policy overrides."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from netutil import Network, network
from test_network import MODEL, by_name, chat, client, wait_until


def test_miners_report_capability_and_land_in_tiers(net: Network) -> None:
    net.start_router()
    net.start_miner("board", "--fake-speed", "10", "--slots", "1")
    net.start_miner("gpu", "--fake-speed", "250", "--slots", "8")
    net.wait_miners(2)
    miners = by_name(net)
    assert miners["board"]["capability"]["batched_generation_tokens_per_s"] == 10
    assert miners["gpu"]["capability"]["batched_generation_tokens_per_s"] == 2000
    assert (miners["board"]["tier"], miners["gpu"]["tier"]) == (1, 5)


def test_observed_speed_wins_over_a_false_claim(net: Network) -> None:
    net.start_router()
    net.start_miner("liar", "--fake-speed", "40", "--fake-claim-speed", "1000")
    net.wait_miners(1)
    assert by_name(net)["liar"]["tokens_per_s"] == pytest.approx(1000)
    chat(net, max_tokens=20)
    observed = by_name(net)["liar"]["tokens_per_s"]
    assert 20 < observed < 60, observed  # scheduled as the ~40 tok/s it delivers


def test_capacity_aware_sends_work_to_the_faster_miner(net: Network) -> None:
    net.start_router()  # capacity_aware is the default
    net.start_miner("slow", "--fake-speed", "10", "--slots", "4")
    net.start_miner("fast", "--fake-speed", "200", "--slots", "4")
    net.wait_miners(2)
    for _ in range(6):
        chat(net, max_tokens=10)
    done = {name: m["completed"] for name, m in by_name(net).items()}
    assert done == {"slow": 0, "fast": 6}


def test_when_every_slot_is_busy_requests_wait_and_all_complete(net: Network) -> None:
    net.start_router()
    net.start_miner("only", "--fake-speed", "50", "--slots", "1")
    net.wait_miners(1)
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(chat(net, max_tokens=10))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [r.choices[0].finish_reason for r in results] == ["length"] * 4


def occupy(net: Network, count: int, max_tokens: int = 20) -> list[threading.Thread]:
    """Start ``count`` slow requests in the background."""
    threads = [
        threading.Thread(target=chat, args=(net,), kwargs={"max_tokens": max_tokens})
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    return threads


ON_ONE_SLOT_MINER = 3  # one running and two queued on the miner itself


def test_a_full_queue_answers_429_with_retry_after(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        net.start_router("--max-queue", "1")
        net.start_miner("only", "--fake-speed", "10", "--slots", "1")
        net.wait_miners(1)
        threads = occupy(net, ON_ONE_SLOT_MINER)
        wait_until(
            lambda: by_name(net)["only"]["busy"] == ON_ONE_SLOT_MINER, what="the miner to fill"
        )
        threads += occupy(net, 1, max_tokens=1)  # takes the one place in the router's queue
        time.sleep(0.3)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
        refused = httpx.post(net.base_url + "/v1/chat/completions", json=body, timeout=10)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"]
        assert refused.json()["error"]["code"] == "queue_full"
        for thread in threads:
            thread.join(30)


def test_waiting_longer_than_the_queue_timeout_answers_429(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        net.start_router("--queue-timeout", "0.5")
        net.start_miner("only", "--fake-speed", "10", "--slots", "1")
        net.wait_miners(1)
        threads = occupy(net, ON_ONE_SLOT_MINER)
        wait_until(
            lambda: by_name(net)["only"]["busy"] == ON_ONE_SLOT_MINER, what="the miner to fill"
        )
        with pytest.raises(openai.RateLimitError) as late:
            chat(net, max_tokens=1)
        assert late.value.code == "queue_timeout"
        for thread in threads:
            thread.join(30)


def test_only_admins_may_override_the_policy(tmp_path: Path) -> None:
    with network(tmp_path, api_key="user-key") as net:
        net.start_router("--admin-key", "admin-key")
        net.start_miner("m1")
        net.wait_miners(1)
        override = {"inferswarm": {"policy": "round_robin"}}
        with pytest.raises(openai.PermissionDeniedError) as denied:
            chat(net, max_tokens=1, extra_body=override)
        assert denied.value.code == "admin_only"
        net.api_key = "admin-key"
        assert chat(net, max_tokens=1, extra_body=override).choices[0].message.content == " w0"
        with pytest.raises(openai.BadRequestError) as unknown:
            chat(net, max_tokens=1, extra_body={"inferswarm": {"policy": "telepathy"}})
        assert "capacity_aware" in unknown.value.message


def test_sessions_stick_to_their_miner(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        net.start_router("--policy", "session_affinity")
        for name in ("m1", "m2", "m3"):
            net.start_miner(name, "--fake-speed", "100")
        net.wait_miners(3)
        with client(net) as api:
            for _ in range(5):
                api.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": "x"}],
                    max_tokens=2,
                    user="alice",
                )
        done = sorted(m["completed"] for m in net.miners())
        assert done == [0, 0, 5]

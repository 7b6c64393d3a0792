"""Overload: at twice the capacity the router sheds with 429 and stays healthy;
a client that reads its stream slowly holds up nobody else."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil

from netutil import Network
from test_network import MODEL, chat


def post_chat(net: Network, max_tokens: int) -> tuple[int, float, str | None]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": max_tokens,
    }
    started = time.perf_counter()
    response = httpx.post(net.base_url + "/v1/chat/completions", json=body, timeout=60)
    return response.status_code, time.perf_counter() - started, response.headers.get("Retry-After")


def test_twice_the_capacity_is_shed_with_429_and_admitted_work_stays_bounded(net: Network) -> None:
    router = net.start_router("--max-queue", "4", "--queue-timeout", "5")
    net.start_miner("m1", "--fake-speed", "50", "--slots", "2", "--fake-output-tokens", "1000")
    net.wait_miners(1)
    rss_before = psutil.Process(router.popen.pid).memory_info().rss
    # 2 slots x 50 tok/s = 100 tok/s; 40 requests x 20 tokens at once is ~8 s of work: 2x a 4 s window.
    with ThreadPoolExecutor(40) as pool:
        results = list(pool.map(lambda _: post_chat(net, 20), range(40)))
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) > 0 and statuses.count(200) >= 10
    assert all(retry for status, _, retry in results if status == 429)
    admitted = sorted(latency for status, latency, _ in results if status == 200)
    assert admitted[-1] < 10  # queue timeout (5 s) + the task itself, never unbounded
    growth = psutil.Process(router.popen.pid).memory_info().rss - rss_before
    assert growth < 50 * 2**20, f"router memory grew by {growth / 2**20:.0f} MiB"
    assert chat(net, max_tokens=2).choices[0].message.content == " w0 w1"


def test_a_slow_stream_reader_does_not_hold_up_other_requests(net: Network) -> None:
    net.start_router()
    net.start_miner("m1", "--fake-speed", "500", "--slots", "4", "--fake-output-tokens", "1000")
    net.wait_miners(1)
    body = {"model": MODEL, "prompt": "x", "max_tokens": 400, "stream": True}
    with httpx.stream("POST", net.base_url + "/v1/completions", json=body, timeout=60) as slow:
        lines = slow.iter_lines()
        next(lines)
        time.sleep(0.5)  # the slow client reads nothing for a while
        started = time.perf_counter()
        for _ in range(10):
            assert chat(net, max_tokens=5).choices[0].message.content == " w0 w1 w2 w3 w4"
        assert time.perf_counter() - started < 5
        rest = "".join(lines)
    assert '"text":" w399"' in rest and rest.endswith("[DONE]")

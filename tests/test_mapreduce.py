"""Map-reduce over long text: the pure chunking and grouping, and jobs on a
real router with fake-engine miners, including a router killed mid-job."""

from __future__ import annotations

import itertools
import signal
import sqlite3
import time
from typing import Any

import httpx
import pytest

from inferswarm.router.segment.mapreduce import (
    Sizes,
    estimate_tokens,
    group_partials,
    halves,
    reduce_prompt,
    split_text,
)
from netutil import Network

MODEL = "fake-model"
TEXT = " ".join(f"word{i}" for i in range(3000))


def test_chunks_cover_the_text_in_order_with_overlap() -> None:
    chunks = split_text(TEXT, chunk_tokens=100, overlap_tokens=20)
    assert all(estimate_tokens(c) <= 100 for c in chunks)
    words = [c.split() for c in chunks]
    # Every word is in some chunk, in order, and consecutive chunks share a tail.
    seen = [w for chunk in words for w in chunk]
    assert sorted(set(seen), key=lambda w: int(w[4:])) == TEXT.split()
    for before, after in itertools.pairwise(words):
        shared = after[0]
        assert shared in before, "each chunk starts inside the previous one"
        assert 0 < len(before) - before.index(shared) <= 10  # ~20 tokens of 3-token words


def test_a_word_longer_than_a_chunk_still_makes_progress() -> None:
    chunks = split_text("short " + "x" * 900 + " tail", chunk_tokens=50, overlap_tokens=10)
    assert chunks[0] == "short"
    assert chunks[-1].endswith("tail")
    with pytest.raises(ValueError):
        split_text(TEXT, chunk_tokens=10, overlap_tokens=10)


def test_halves_cut_at_a_word_and_keep_everything() -> None:
    left, right = halves("a b c d e")
    assert (left, right) == ("a b", "c d e")
    assert halves("single") == ["single"]


def test_partials_group_to_fit_the_reduce_context() -> None:
    partials = ["p" * 30] * 10  # 10 tokens each, +4 for the label
    groups = group_partials(partials, input_tokens=50)
    assert [len(g) for g in groups] == [3, 3, 3, 1]
    assert [p for group in groups for p in group] == partials
    assert group_partials(["x" * 600], input_tokens=50) == [["x" * 600]]
    assert reduce_prompt("Combine.", ["a", "b"]) == "Combine.\n\nPart 1: a\n\nPart 2: b"


def test_sizes_leave_room_for_the_answer_and_the_prompt() -> None:
    sizes = Sizes(
        context_length=2048, map_max_tokens=128, reduce_max_tokens=256, instruction_tokens=20
    )
    assert sizes.chunk_tokens() == 2048 - 128 - 20 - 48
    assert sizes.reduce_input_tokens() == 2048 - 256 - 20 - 48


def start_job(net: Network, **body: Any) -> dict[str, Any]:
    response = httpx.post(
        net.base_url + "/v1/jobs",
        json={"type": "map_reduce", "model": MODEL, **body},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def wait_job(net: Network, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = httpx.get(f"{net.base_url}/v1/jobs/{job_id}", timeout=10).json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} did not finish")


@pytest.fixture
def small_context_net(net: Network) -> Network:
    net.start_router()
    for name in ("m1", "m2", "m3"):
        net.start_miner(name, "--ctx", "512", "--fake-echo", "--fake-speed", "400")
    net.wait_miners(3)
    return net


def test_a_map_reduce_job_spreads_chunks_and_reduces_in_levels(
    small_context_net: Network,
) -> None:
    net = small_context_net
    job = start_job(net, input=TEXT, map_max_tokens=16, reduce_max_tokens=64)
    assert job["status"] in ("queued", "running")
    total_maps = job["progress"]["map"]["total"]
    assert total_maps >= 10, "3,000 words cannot fit a 512-token context in few chunks"
    early = httpx.get(f"{net.base_url}/v1/jobs/{job['id']}/result", timeout=10)
    assert early.status_code in (200, 409)

    done = wait_job(net, job["id"])
    assert done["status"] == "completed", done
    assert done["progress"]["map"] == {"total": total_maps, "done": total_maps}
    assert done["progress"]["reduce"]["levels"] >= 2, "many partials need a reduce tree"
    result = httpx.get(f"{net.base_url}/v1/jobs/{job['id']}/result", timeout=10).json()
    assert result["text"].startswith("[")  # the fake's echo tag: a miner really answered
    usage = result["usage"]
    assert usage["tasks"] == total_maps + done["progress"]["reduce"]["total"]
    assert usage["completion_tokens"] > 0


def test_map_reduce_errors_are_clear(small_context_net: Network) -> None:
    url = small_context_net.base_url + "/v1/jobs"
    cases = [
        ({"type": "map_reduce", "model": MODEL}, "exactly one of input"),
        ({"type": "map_reduce", "model": "nope", "input": "x"}, "not served"),
        ({"type": "map_reduce", "model": MODEL, "input": "   "}, "empty"),
        ({"type": "map_reduce", "model": MODEL, "input": "x", "chunk_tokens": 5000}, "at most"),
        ({"type": "map_reduce", "model": MODEL, "input": "x", "map_max_tokens": 500}, "Lower"),
        ({"type": "summarise", "model": MODEL, "input": "x"}, "type"),
    ]
    for body, fragment in cases:
        response = httpx.post(url, json=body, timeout=10)
        assert 400 <= response.status_code < 500, (body, response.text)
        assert fragment in response.json()["error"]["message"], (body, response.text)
    missing = httpx.get(url + "/job_nope", timeout=10)
    assert missing.status_code == 404


def test_a_router_killed_mid_job_resumes_it(net: Network) -> None:
    net.start_router()
    for name in ("m1", "m2"):
        net.start_miner(name, "--ctx", "512", "--slots", "1", "--fake-speed", "40")
    net.wait_miners(2)
    job = start_job(net, input=TEXT, map_max_tokens=16, reduce_max_tokens=32)
    db = net.workdir / "router" / "router.db"

    def finished_maps() -> dict[str, str]:
        with sqlite3.connect(db) as conn:
            rows = conn.execute(
                "SELECT key, output FROM job_tasks WHERE job_id = ? AND state = 'done'",
                (job["id"],),
            ).fetchall()
        return dict(rows)

    deadline = time.monotonic() + 60
    while len(finished_maps()) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert net.router is not None
    net.router.stop(signal.SIGKILL)
    before = finished_maps()
    assert before

    net.start_router()
    net.wait_miners(2)
    done = wait_job(net, job["id"])
    assert done["status"] == "completed", done
    after = finished_maps()
    assert {key: after[key] for key in before} == before, "finished tasks were kept, not redone"
    assert done["progress"]["map"]["done"] == done["progress"]["map"]["total"]

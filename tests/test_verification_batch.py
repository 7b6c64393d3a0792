"""Verification of work nobody watches stream: batch lines and map-reduce tasks
are spot-checked at the router's rate, a checked task waits for its verdict,
and one that fails it is answered by the majority that outvoted it. With a
corrupting miner among honest ones, no output line and no job result carries
its text; a line that asks for redundancy runs with consensus, as a request."""

from __future__ import annotations

import json
import sqlite3
import time

import httpx

from netutil import Network
from test_batch import api, jsonl, lines_of, request_line, wait_batch
from test_mapreduce import start_job, wait_job
from test_verification_network import HONEST, states


def honest_and_cheat(net: Network, *miner_args: str) -> str:
    net.start_router("--spot-check-rate", "1.0")
    for name in ("honest1", "honest2", "honest3"):
        net.start_miner(name, *miner_args)
    net.start_miner("cheat", "--fault", "corrupt", *miner_args)
    net.wait_miners(4)
    return str(states(net)["cheat"]["id"])


def assert_rejected(net: Network, miner_id: str, timeout: float = 10) -> None:
    """The ledger (written in the background, in order) marks a result of the miner rejected."""
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(net.workdir / "router" / "router.db") as db:
            rows = db.execute("SELECT verdict FROM results WHERE miner_id = ?", (miner_id,))
            verdicts = {verdict for (verdict,) in rows}
        if "rejected" in verdicts:
            return
        assert time.monotonic() < deadline, verdicts
        time.sleep(0.1)


def ledger_counts(net: Network, timeout: float = 10) -> dict[str, int]:
    """Results by purpose, once the ledger (written in the background) has
    what /v1/network counts."""
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(net.workdir / "router" / "router.db") as db:
            rows = db.execute("SELECT purpose, COUNT(*) FROM results GROUP BY purpose")
            stored = {purpose: count for purpose, count in rows}
        shown = httpx.get(f"{net.base_url}/v1/network", timeout=10).json()["verification"]
        counted = {p: n for p, n in shown["results_by_purpose"].items() if n}
        if counted == stored:
            return stored
        assert time.monotonic() < deadline, (counted, stored)
        time.sleep(0.1)


def test_batch_lines_that_fail_their_check_get_the_verified_answer(net: Network) -> None:
    cheat_id = honest_and_cheat(net)
    greedy = {"max_tokens": 5, "temperature": 0}
    lines = [request_line(f"c{i}", f"question {i}", **greedy) for i in range(16)]
    lines += [
        request_line(f"r{i}", f"again {i}", inferswarm={"redundancy": 3}, **greedy)
        for i in range(2)
    ]
    with api(net) as client:
        upload = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = wait_batch(client, batch.id)
        assert batch.status == "completed"
        out = lines_of(client, batch.output_file_id)
        assert lines_of(client, batch.error_file_id) == []
    assert len(out) == len(lines)
    for line in out:
        body = line["response"]["body"]
        assert body["choices"][0]["message"]["content"] == HONEST, line
        if line["custom_id"].startswith("r"):  # the report a live request gets
            (report,) = body["inferswarm"]["verification"]
            assert report["redundancy"] == 3 and report["consensus"] == "exact"
            assert report["verdict"] in ("agreed", "majority") and len(report["agreed"]) >= 2
            assert set(report["similarity"]) == {*report["agreed"], *report["disagreed"]}
        else:
            assert "inferswarm" not in body
    # The cheat's results are in the ledger, signed and judged: it lost its checks.
    assert_rejected(net, cheat_id)
    # Every stored result says why it ran; /v1/network counts them.
    counts = ledger_counts(net)
    assert counts["request"] >= 16 and counts["spot_check"] >= 16
    assert counts["redundant"] >= 6  # 2 lines on 3 miners
    assert counts["referee"] >= 1  # a check the cheat was in disagreed


def test_map_reduce_tasks_are_checked_and_never_keep_a_corrupt_output(net: Network) -> None:
    cheat_id = honest_and_cheat(net, "--ctx", "512")
    text = " ".join(f"word{i}" for i in range(1500))
    job = start_job(net, input=text, map_max_tokens=5, reduce_max_tokens=5)
    done = wait_job(net, job["id"])
    assert done["status"] == "completed", done
    result = httpx.get(f"{net.base_url}/v1/jobs/{job['id']}/result", timeout=10).json()
    assert result["text"] == HONEST.strip()
    with sqlite3.connect(net.workdir / "router" / "router.db") as db:
        rows = db.execute("SELECT output FROM job_tasks WHERE state = 'done'").fetchall()
    assert len(rows) >= 10
    assert {json.loads(output)["text"] for (output,) in rows} == {HONEST.strip()}
    assert_rejected(net, cheat_id)


def test_a_batch_line_no_two_miners_agree_on_ends_in_the_error_file(net: Network) -> None:
    net.start_router(
        "--spot-check-rate", "1.0", "--task-retry-delay", "0", "--task-max-attempts", "2"
    )
    for name in ("m1", "m2", "m3"):
        net.start_miner(name, "--fake-echo")  # each miner answers differently
    net.wait_miners(3)
    with api(net) as client:
        line = request_line("only", max_tokens=5, temperature=0)
        upload = client.files.create(file=("in.jsonl", jsonl([line])), purpose="batch")
        batch = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = wait_batch(client, batch.id)
        assert lines_of(client, batch.output_file_id) == []
        (failed,) = lines_of(client, batch.error_file_id)
    error = failed["response"]["body"]["error"]
    assert error["code"] == "verification_failed"
    assert "no two miners agreeing" in error["message"]

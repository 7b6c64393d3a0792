"""``inferswarm bench`` as a user runs it, against a real router and a fake-engine miner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netutil import Network, free_port, network

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("INFERSWARM_API_KEY", None)
    env.pop("OPENAI_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "inferswarm", "bench", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.fixture(scope="module")
def fake_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """One router and miner for the tests here that only read from them."""
    with network(tmp_path_factory.mktemp("bench-net")) as net:
        # A long natural answer, so every request stops at its own max_tokens; paced, so
        # tokens mostly arrive in chunks of their own (the router merges chunks that queue up).
        net.start_router()
        net.start_miner(
            "bench-target", "--fake-output-tokens", "1000", "--fake-speed", "100", "--slots", "4"
        )
        net.wait_miners(1)
        yield net


def assert_ordered(latency: dict[str, Any]) -> None:
    cuts = [latency[p] for p in ("p50", "p90", "p95", "p99")]
    assert all(c is not None and c > 0 for c in cuts)
    assert cuts == sorted(cuts)


def test_concurrency_run_reports_every_request_with_the_engines_token_counts(
    fake_network: Network, tmp_path: Path
) -> None:
    out, png = tmp_path / "run.json", tmp_path / "run.png"
    result = run_bench(
        "--base-url",
        fake_network.base_url,
        "--requests",
        "12",
        "--concurrency",
        "3",
        "--prompt-tokens",
        "uniform:4,16",
        "--output-tokens",
        "uniform:3,12",
        "--json",
        str(out),
        "--plot",
        str(png),
    )
    assert result.returncode == 0, result.stderr
    assert "time to first token" in result.stdout and "request throughput" in result.stdout
    document = json.loads(out.read_text())
    summary, records = document["summary"], document["requests"]
    assert document["settings"]["model"] == "fake-model"  # the first in /v1/models
    assert summary["requests"] == len(records) == 12
    assert summary["failed"] == 0 and summary["errors"] == {}
    assert [r["index"] for r in records] == list(range(12))
    for r in records:
        assert r["tokens_counted_from"] == "usage"
        assert r["output_tokens"] == r["max_tokens"]  # the fake stops at max_tokens
        assert r["prompt_tokens"] == r["prompt_words"] + 4  # the fake's count for one message
        assert len(r["chunk_gaps_s"]) <= r["output_tokens"] - 1  # a chunk has 1+ tokens
        assert 0 < r["ttft_s"] <= r["e2e_s"]
    assert summary["output_tokens"] == sum(r["max_tokens"] for r in records)
    assert len({r["max_tokens"] for r in records}) > 1  # the distribution was applied
    for name in ("ttft", "itl", "e2e"):
        assert_ordered(summary[name])
    assert summary["request_throughput"] > 0 and summary["client_cpu_per_request_ms"] > 0
    assert png.read_bytes().startswith(PNG_SIGNATURE)


def test_rate_run_on_completions_counts_tokens_from_chunks(
    fake_network: Network, tmp_path: Path
) -> None:
    out = tmp_path / "rate.json"
    result = run_bench(
        "--base-url",
        fake_network.base_url + "/v1",
        "--model",
        "fake-model",
        "--endpoint",
        "completions",
        "--rate",
        "40",
        "--requests",
        "8",
        "--output-tokens",
        "5",
        "--no-usage",
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(out.read_text())
    assert document["settings"]["rate"] == 40 and document["settings"]["concurrency"] is None
    records = document["requests"]
    assert len(records) == 8 and document["summary"]["failed"] == 0
    for r in records:
        # Without usage each chunk counts one token: the fake's 5, or fewer if chunks merged.
        assert r["tokens_counted_from"] == "chunks" and 1 <= r["output_tokens"] <= 5
        assert len(r["chunk_gaps_s"]) == r["output_tokens"] - 1
    assert document["summary"]["prompt_tokens"] is None


def test_failed_requests_are_counted_by_kind_with_the_servers_message(
    fake_network: Network, tmp_path: Path
) -> None:
    out = tmp_path / "fail.json"
    result = run_bench(
        "--base-url",
        fake_network.base_url,
        "--requests",
        "3",
        "--output-tokens",
        "100000",
        "--json",
        str(out),
    )
    assert result.returncode == 1  # nothing succeeded
    summary = json.loads(out.read_text())["summary"]
    assert summary["errors"] == {"http_400": 3}
    assert "max_tokens" in summary["first_errors"]["http_400"]
    assert "errors" in result.stdout and "Traceback" not in result.stderr


def test_an_unknown_model_is_named_with_what_is_served(fake_network: Network) -> None:
    result = run_bench("--base-url", fake_network.base_url, "--model", "no-such-model")
    assert result.returncode == 2
    assert "does not serve the model 'no-such-model'" in result.stderr
    assert "fake-model" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_base_url_says_so() -> None:
    result = run_bench("--base-url", f"http://127.0.0.1:{free_port()}", "--requests", "1")
    assert result.returncode == 2
    assert "cannot reach" in result.stderr and "--base-url" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--prompt-tokens", "uniform:9"), "uniform:LOW,HIGH"),
        (("--output-tokens", "normal:x,2"), "'x' in 'normal:x,2' is not a number"),
        (("--rate", "5", "--concurrency", "2"), "choose one of --concurrency"),
        (("--base-url", "127.0.0.1:8000"), "needs a scheme"),
    ],
)
def test_bad_options_are_explained_before_anything_is_sent(
    args: tuple[str, ...], says: str
) -> None:
    result = run_bench(*args)
    assert result.returncode == 2
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_a_server_that_does_not_stream_is_measured_as_one_chunk(
    net: Network, tmp_path: Path
) -> None:
    # The miner's direct endpoint: no /v1/models, and whole JSON answers to stream=True.
    direct = free_port()
    net.start_router()
    net.start_miner("direct", "--fake-output-tokens", "1000", "--http-port", str(direct))
    net.wait_miners(1)
    out = tmp_path / "direct.json"
    result = run_bench(
        "--base-url",
        f"http://127.0.0.1:{direct}",
        "--model",
        "fake-model",
        "--endpoint",
        "completions",
        "--requests",
        "4",
        "--output-tokens",
        "6",
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    records = json.loads(out.read_text())["requests"]
    assert len(records) == 4
    for r in records:
        assert r["error_kind"] is None
        assert r["output_tokens"] == 6 and r["tokens_counted_from"] == "usage"
        assert r["chunk_gaps_s"] == [] and r["ttft_s"] <= r["e2e_s"]


def test_help_lists_the_load_options() -> None:
    result = run_bench("--help")
    assert result.returncode == 0
    for option in ("--base-url", "--concurrency", "--rate", "--prompt-tokens", "--json", "--plot"):
        assert option in result.stdout

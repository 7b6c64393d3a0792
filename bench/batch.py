"""Batch jobs: how close a big batch gets to the network's capacity, and
whether interactive requests keep their latency while it runs.

Four fake-engine miners of mixed speed (2 slots each). Phases, in one run:

1. a 1,000-request batch alone: completion time against the ideal
   (total generated tokens / summed generation capacity);
2. interactive streaming requests alone (Poisson arrivals): TTFT;
3. the batch through the Batch API with the same interactive traffic beside it;
4. baseline: the same 1,000 requests sent by the client as ordinary
   concurrent requests (what a user without a Batch API does), with the same
   interactive traffic beside them.

    python bench/batch.py --requests 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from netutil import Network, network
from report import write_results

RESULTS = Path(__file__).parent / "results"
MODEL = "fake-model"
SPEEDS = (50.0, 100.0, 200.0, 400.0)
"""Generation tokens/s per sequence of each miner."""
SLOTS = 2


def batch_lines(requests: int, tokens: int) -> bytes:
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"item {i}"}],
                "max_tokens": tokens,
            },
        }
        for i in range(requests)
    ]
    return "\n".join(json.dumps(line) for line in lines).encode()


def run_batch(net: Network, requests: int, tokens: int) -> float:
    """Seconds from submitting the batch to its completion."""
    with openai.OpenAI(base_url=net.base_url + "/v1", api_key="none", max_retries=0) as api:
        upload = api.files.create(file=("in.jsonl", batch_lines(requests, tokens)), purpose="batch")
        started = time.perf_counter()
        batch = api.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        while batch.status not in ("completed", "failed", "cancelled", "expired"):
            time.sleep(0.1)
            batch = api.batches.retrieve(batch.id)
        elapsed = time.perf_counter() - started
        counts = batch.request_counts
        assert batch.status == "completed" and counts and counts.completed == requests, batch
    return elapsed


async def stream_ttft(session: aiohttp.ClientSession, url: str, tokens: int) -> float:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "interactive question"}],
        "max_tokens": tokens,
        "stream": True,
    }
    started = time.perf_counter()
    first: float | None = None
    async with session.post(url, json=body) as response:
        response.raise_for_status()
        async for raw in response.content:
            if first is None and b'"content":" ' in raw:
                first = time.perf_counter() - started
    assert first is not None
    return first


async def interactive(url: str, rate: float, duration: float, tokens: int) -> list[float]:
    """TTFTs of streamed requests arriving as a Poisson process."""
    rng = random.Random(7)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        tasks: list[asyncio.Task[float]] = []
        end = time.perf_counter() + duration
        while time.perf_counter() < end:
            tasks.append(asyncio.create_task(stream_ttft(session, url, tokens)))
            await asyncio.sleep(rng.expovariate(rate))
        return list(await asyncio.gather(*tasks))


async def plain_requests(url: str, requests: int, tokens: int, concurrency: int) -> float:
    """The batch's requests sent as ordinary ones, ``concurrency`` at a time."""
    limit = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"item {i}"}],
            "max_tokens": tokens,
        }
        async with limit, session.post(url, json=body) as response:
            response.raise_for_status()
            await response.read()

    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        await asyncio.gather(*(one(session, i) for i in range(requests)))
    return time.perf_counter() - started


async def beside(batch: Any, url: str, args: argparse.Namespace) -> tuple[float, list[float]]:
    """Run the batch work and interactive traffic at once."""
    work = asyncio.ensure_future(batch)
    await asyncio.sleep(1.0)  # let the batch fill the network first
    ttfts = await interactive(url, args.rate, args.duration, args.interactive_tokens)
    return await work, ttfts


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=20, help="generated tokens per batch line")
    parser.add_argument("--rate", type=float, default=4.0, help="interactive requests per second")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of interactive load")
    parser.add_argument("--interactive-tokens", type=int, default=10)
    parser.add_argument("--output", type=Path, default=RESULTS / "batch.json")
    args = parser.parse_args()
    capacity = SLOTS * sum(SPEEDS)
    ideal = args.requests * args.tokens / capacity
    console = Console(width=120)
    with tempfile.TemporaryDirectory() as workdir, network(Path(workdir)) as net:
        net.start_router("--log-level", "warning")
        for index, speed in enumerate(SPEEDS):
            net.start_miner(
                f"m{index + 1}",
                "--slots",
                str(SLOTS),
                "--fake-speed",
                str(speed),
                "--log-level",
                "warning",
            )
        net.wait_miners(len(SPEEDS))
        url = net.base_url + "/v1/chat/completions"
        console.print("phase 1: batch alone")
        alone = run_batch(net, args.requests, args.tokens)
        console.print("phase 2: interactive alone")
        quiet = asyncio.run(interactive(url, args.rate, args.duration, args.interactive_tokens))
        console.print("phase 3: batch API + interactive")
        with_api, ttft_api = asyncio.run(
            beside(asyncio.to_thread(run_batch, net, args.requests, args.tokens), url, args)
        )
        console.print("phase 4: plain concurrent requests + interactive (baseline)")
        with_plain, ttft_plain = asyncio.run(
            beside(
                plain_requests(url, args.requests, args.tokens, SLOTS * len(SPEEDS) * 2),
                url,
                args,
            )
        )
    rows = {
        "interactive alone": {"ttft": quiet, "batch_s": None},
        "batch API beside interactive": {"ttft": ttft_api, "batch_s": with_api},
        "plain requests beside interactive": {"ttft": ttft_plain, "batch_s": with_plain},
    }
    table = Table(title=f"{args.requests}-request batch on {len(SPEEDS)} mixed fake miners")
    for column in ("run", "batch s", "x ideal", "interactive n", "TTFT p50 s", "TTFT p99 s"):
        table.add_column(column, justify="right")
    table.add_row("batch alone", f"{alone:.2f}", f"{alone / ideal:.3f}", "-", "-", "-")
    results: dict[str, Any] = {
        "ideal_s": ideal,
        "batch_alone_s": alone,
        "batch_alone_over_ideal": alone / ideal,
    }
    for name, row in rows.items():
        ttfts, batch_s = row["ttft"], row["batch_s"]
        p50, p99 = statistics.median(ttfts), percentile(ttfts, 0.99)
        results[name] = {
            "batch_s": batch_s,
            "batch_over_ideal": batch_s / ideal if batch_s else None,
            "interactive_requests": len(ttfts),
            "ttft_p50_s": p50,
            "ttft_p99_s": p99,
        }
        table.add_row(
            name,
            f"{batch_s:.2f}" if batch_s else "-",
            f"{batch_s / ideal:.3f}" if batch_s else "-",
            str(len(ttfts)),
            f"{p50:.3f}",
            f"{p99:.3f}",
        )
    console.print(table)
    console.print(
        f"ideal: {ideal:.2f} s ({args.requests} x {args.tokens} tokens / {capacity:g} tokens/s)"
    )
    write_results(args.output, "batch", vars(args), results)


if __name__ == "__main__":
    main()

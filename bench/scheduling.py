"""Scheduling policies side by side on the same arrival trace.

A real router and three fake-engine miner processes whose speeds are 1x, 4x
and 16x a base speed (4 slots each). Poisson arrivals at several shares of the
miners' summed capacity, with log-normal prompt and output lengths; every
policy replays the same trace (per-request admin override), one after the
other. Reported per policy and load: achieved generation tokens/s as a share
of the summed capacity, TTFT and end-to-end p50/p99, each miner's utilisation,
and how many requests were refused.

    python bench/scheduling.py --base-speed 5 --loads 0.5,0.8,1.2 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from netutil import network
from report import write_results

RESULTS = Path(__file__).parent / "results"
POLICIES = ("round_robin", "least_loaded", "power_of_two", "capacity_aware")
MULTIPLIERS = (1, 4, 16)
SLOTS = 4
WARMUP_SHARE = 0.25
PROMPT_SPEED_FACTOR = 200
"""Prompt tokens/s over generation tokens/s of each fake miner (llama.cpp on
CPUs measures 2-20x, GPUs far more); prompt time is slot time that generates
nothing, so it lowers the reachable share of generation capacity."""


@dataclass(frozen=True)
class Arrival:
    at: float
    prompt: str
    max_tokens: int


@dataclass
class Outcome:
    ttft: float | None = None
    e2e: float | None = None
    tokens: int = 0
    finished_at: float = 0.0
    refused: bool = False
    failed: str | None = None
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    """(time, tokens) of every chunk received, for throughput within a window."""


@dataclass
class Row:
    policy: str
    load: float
    requests: int
    achieved_share: float
    tokens_per_s: float
    ttft_p50: float
    ttft_p99: float
    e2e_p50: float
    e2e_p99: float
    refused: int
    failed: int
    utilisation: dict[str, float] = field(default_factory=dict)


def lognormal_int(rng: random.Random, mean: float, sigma: float, low: int, high: int) -> int:
    mu = math.log(mean) - sigma**2 / 2
    return max(low, min(high, round(rng.lognormvariate(mu, sigma))))


def make_trace(rate: float, duration: float, seed: int) -> list[Arrival]:
    rng = random.Random(seed)
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "while",
        "miners",
        "serve",
        "tokens",
    ]
    trace, now = [], 0.0
    while True:
        now += rng.expovariate(rate)
        if now >= duration:
            return trace
        prompt_words = lognormal_int(rng, 60, 0.8, 5, 600)
        prompt = " ".join(rng.choice(words) for _ in range(prompt_words))
        trace.append(Arrival(now, prompt, lognormal_int(rng, 60, 0.6, 8, 240)))


async def one_request(
    session: aiohttp.ClientSession, url: str, arrival: Arrival, policy: str
) -> Outcome:
    body = {
        "model": "fake-model",
        "prompt": arrival.prompt,
        "max_tokens": arrival.max_tokens,
        "stream": True,
        "inferswarm": {"policy": policy},
    }
    outcome = Outcome()
    started = time.perf_counter()
    try:
        async with session.post(url, json=body) as response:
            if response.status == 429:
                outcome.refused = True
                return outcome
            if response.status != 200:
                outcome.failed = f"HTTP {response.status}"
                return outcome
            async for raw in response.content:
                line = raw.decode().strip()
                if not line.startswith("data: {"):
                    continue
                payload = json.loads(line[6:])
                if "error" in payload:
                    outcome.failed = payload["error"]["message"]
                    return outcome
                if payload["choices"] and payload["choices"][0]["text"]:
                    now = time.perf_counter()
                    if outcome.ttft is None:
                        outcome.ttft = now - started
                    tokens = payload["choices"][0]["text"].count(" w")
                    outcome.tokens += tokens
                    outcome.arrivals.append((now, tokens))
    except aiohttp.ClientError as exc:
        outcome.failed = str(exc)
        return outcome
    outcome.e2e = time.perf_counter() - started
    outcome.finished_at = time.perf_counter()
    return outcome


async def replay(
    url: str, trace: list[Arrival], policy: str, progress: Progress, bar: Any
) -> tuple[list[Outcome], float, float]:
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
    ) as session:
        start = time.perf_counter()
        tasks = []
        for arrival in trace:
            delay = start + arrival.at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one_request(session, url, arrival, policy))
            task.add_done_callback(lambda _: progress.advance(bar))
            tasks.append(task)
        outcomes = await asyncio.gather(*tasks)
        return list(outcomes), start, time.perf_counter()


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def miner_tokens(base_url: str) -> dict[str, int]:
    miners = httpx.get(base_url + "/v1/miners", timeout=10).json()["data"]
    return {m["name"]: m["generated_tokens"] for m in miners}


def summarise(
    policy: str,
    load: float,
    outcomes: list[Outcome],
    start: float,
    end: float,
    duration: float,
    capacity: float,
    tokens_before: dict[str, int],
    tokens_after: dict[str, int],
    per_miner_capacity: dict[str, float],
) -> Row:
    """Throughput counts the tokens delivered while arrivals were coming in,
    after a warm-up (the drain afterwards is not a policy's throughput);
    utilisation and latencies cover the whole run."""
    done = [o for o in outcomes if o.e2e is not None]
    # Steady state: skip the warm-up quarter, while queues are still forming.
    opens, closes = start + duration * WARMUP_SHARE, start + duration
    in_window = sum(tokens for o in outcomes for at, tokens in o.arrivals if opens <= at <= closes)
    measured = closes - opens
    window = end - start
    return Row(
        policy=policy,
        load=load,
        requests=len(outcomes),
        achieved_share=in_window / measured / capacity,
        tokens_per_s=in_window / measured,
        ttft_p50=percentile([o.ttft for o in done if o.ttft is not None], 0.5),
        ttft_p99=percentile([o.ttft for o in done if o.ttft is not None], 0.99),
        e2e_p50=percentile([o.e2e for o in done if o.e2e is not None], 0.5),
        e2e_p99=percentile([o.e2e for o in done if o.e2e is not None], 0.99),
        refused=sum(o.refused for o in outcomes),
        failed=sum(o.failed is not None for o in outcomes),
        utilisation={
            m: (tokens_after[m] - tokens_before[m]) / window / per_miner_capacity[m]
            for m in tokens_after
        },
    )


def report(rows: list[Row], capacity: float) -> Table:
    table = Table(
        title=f"Scheduling policies on one trace per load; summed capacity {capacity:.0f} tok/s"
    )
    for column in (
        "load",
        "policy",
        "req",
        "tok/s",
        "of capacity",
        "TTFT p50",
        "TTFT p99",
        "e2e p50",
        "e2e p99",
        "util 1x/4x/16x (run)",
        "refused",
        "failed",
    ):
        table.add_column(column, justify="right")
    for r in rows:
        util = "/".join(f"{r.utilisation[f'x{m}']:.0%}" for m in MULTIPLIERS)
        table.add_row(
            f"{r.load:.0%}",
            r.policy,
            str(r.requests),
            f"{r.tokens_per_s:.0f}",
            f"{r.achieved_share:.1%}",
            f"{r.ttft_p50:.2f}",
            f"{r.ttft_p99:.2f}",
            f"{r.e2e_p50:.2f}",
            f"{r.e2e_p99:.2f}",
            util,
            str(r.refused),
            str(r.failed),
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--base-speed", type=float, default=5.0, help="tokens/s per sequence of the 1x miner"
    )
    parser.add_argument(
        "--loads", default="0.5,0.8,1.2", help="arrival rates as shares of summed capacity"
    )
    parser.add_argument(
        "--duration", type=float, default=30.0, help="seconds of arrivals per policy and load"
    )
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", type=Path, default=RESULTS / "scheduling.json")
    args = parser.parse_args()
    loads = [float(x) for x in args.loads.split(",")]
    policies = args.policies.split(",")
    per_miner = {f"x{m}": args.base_speed * m * SLOTS for m in MULTIPLIERS}
    capacity = sum(per_miner.values())
    mean_output = 60.0
    rows: list[Row] = []
    console = Console(width=160)
    with tempfile.TemporaryDirectory() as workdir, network(Path(workdir)) as net:
        net.start_router("--log-level", "warning", "--max-queue", "2000", "--queue-timeout", "120")
        for m in MULTIPLIERS:
            net.start_miner(
                f"x{m}",
                "--fake-speed",
                str(args.base_speed * m),
                "--slots",
                str(SLOTS),
                "--fake-prompt-speed",
                str(args.base_speed * m * PROMPT_SPEED_FACTOR),
                "--fake-output-tokens",
                "100000",
                "--log-level",
                "warning",
            )
        net.wait_miners(len(MULTIPLIERS))
        url = net.base_url + "/v1/completions"
        traces = {
            load: make_trace(load * capacity / mean_output, args.duration, args.seed + i)
            for i, load in enumerate(loads)
        }
        with Progress(console=console) as progress:
            bar = progress.add_task(
                "requests", total=sum(len(t) for t in traces.values()) * len(policies)
            )
            for load, trace in traces.items():
                for policy in policies:
                    before = miner_tokens(net.base_url)
                    outcomes, start, end = asyncio.run(replay(url, trace, policy, progress, bar))
                    after = miner_tokens(net.base_url)
                    rows.append(
                        summarise(
                            policy,
                            load,
                            outcomes,
                            start,
                            end,
                            args.duration,
                            capacity,
                            before,
                            after,
                            per_miner,
                        )
                    )
    console.print(report(rows, capacity))
    settings = {
        "base_speed": args.base_speed,
        "multipliers": MULTIPLIERS,
        "slots": SLOTS,
        "loads": loads,
        "duration_s": args.duration,
        "seed": args.seed,
        "capacity_tokens_per_s": capacity,
    }
    write_results(args.output, "scheduling", settings, [asdict(r) for r in rows])
    console.print(f"JSON written to {args.output}")


if __name__ == "__main__":
    main()

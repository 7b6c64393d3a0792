"""Autoscaling against fixed pools on the same load profile.

A real router and fake-engine miner processes (one slot each, a set speed).
One open-loop arrival trace (Poisson, fixed seed) with steps and a spike is
replayed three times: with ``--autoscale local`` (the router starts and stops
its miners), with a fixed small pool and with a fixed large pool. Reported per
run: p50/p95 TTFT, SLO attainment (share of requests whose TTFT is within the
SLO), failures, and miner-seconds (miner processes alive, integrated over the
run). A PNG plots offered load, miners and rolling p95 TTFT over time.

    python bench/autoscale.py                      # ~4-5 minutes
    python bench/autoscale.py --record tests/fixtures/scale/load_step.json
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from netutil import Network, network
from report import write_results

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "autoscale.json"
PLOT = ROOT / "docs" / "autoscale.png"
PROFILE = ((15, 1.0), (25, 4.0), (8, 9.0), (37, 1.0))
"""(seconds, requests per second): low, a step up, a spike, back to low."""
ROLLING_S = 5


@dataclass(frozen=True)
class Setup:
    name: str
    autoscale: bool
    miners: int
    """Fixed pools: how many; autoscaling: the maximum."""


@dataclass
class Outcome:
    sent_at: float
    ttft: float | None = None
    failed: str | None = None


@dataclass
class Run:
    setup: Setup
    outcomes: list[Outcome] = field(default_factory=list)
    miners: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since the start, miner processes alive)."""
    decisions: list[dict[str, Any]] = field(default_factory=list)


def arrivals(seed: int) -> list[float]:
    rng = random.Random(seed)
    times, start = [], 0.0
    for seconds, rate in PROFILE:
        t = start
        while True:
            t += rng.expovariate(rate)
            if t >= start + seconds:
                break
            times.append(t)
        start += seconds
    return times


def offered(t: float) -> float:
    start = 0.0
    for seconds, rate in PROFILE:
        if t < start + seconds:
            return rate
        start += seconds
    return 0.0


async def one_request(
    session: aiohttp.ClientSession, url: str, sent_at: float, max_tokens: int
) -> Outcome:
    outcome = Outcome(sent_at)
    body = {"model": "fake-model", "prompt": "a b c", "max_tokens": max_tokens, "stream": True}
    started = time.perf_counter()
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                outcome.failed = f"HTTP {response.status}: {(await response.text())[:200]}"
                return outcome
            async for raw in response.content:
                line = raw.decode().strip()
                if not line.startswith("data: {"):
                    continue
                payload = json.loads(line[6:])
                if "error" in payload:
                    outcome.failed = payload["error"]["message"]
                    return outcome
                if outcome.ttft is None and payload["choices"] and payload["choices"][0]["text"]:
                    outcome.ttft = time.perf_counter() - started
    except aiohttp.ClientError as exc:
        outcome.failed = str(exc)
    return outcome


def miner_processes(net: Network, setup: Setup) -> int:
    if not setup.autoscale:
        return sum(p.popen.poll() is None for p in net.procs if p is not net.router)
    assert net.router is not None
    return len(psutil.Process(net.router.popen.pid).children())


async def sample_miners(net: Network, setup: Setup, run: Run, t0: float) -> None:
    while True:
        run.miners.append((time.perf_counter() - t0, miner_processes(net, setup)))
        await asyncio.sleep(0.5)


async def replay(net: Network, setup: Setup, trace: list[float], max_tokens: int) -> Run:
    run = Run(setup)
    url = net.base_url + "/v1/completions"
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
    ) as session:
        t0 = time.perf_counter()
        sampler = asyncio.create_task(sample_miners(net, setup, run, t0))
        pending = []
        for at in trace:
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
            pending.append(asyncio.create_task(one_request(session, url, at, max_tokens)))
        run.outcomes = list(await asyncio.gather(*pending))
        sampler.cancel()
    return run


def start(net: Network, setup: Setup, args: argparse.Namespace) -> None:
    miner_args = f"--engine fake --fake-speed {args.speed:g} --slots 1"
    if setup.autoscale:
        net.start_router(
            *("--autoscale", "local", "--min-miners", "1", "--max-miners", str(setup.miners)),
            *("--scale-interval", str(args.interval), "--scale-down-delay", str(args.down_delay)),
            *("--ttft-slo", str(args.slo), "--scale-miner-args", miner_args),
            *("--scale-miner-cpus", "0.1", "--max-queue", "1000"),
        )
        net.wait_miners(1)
        return
    net.start_router("--max-queue", "1000")
    for i in range(setup.miners):
        net.start_miner(f"fixed-{i}", *miner_args.split()[2:])
    net.wait_miners(setup.miners)


def measure(setup: Setup, trace: list[float], args: argparse.Namespace) -> Run:
    with tempfile.TemporaryDirectory() as workdir, network(Path(workdir)) as net:
        start(net, setup, args)
        run = asyncio.run(replay(net, setup, trace, args.max_tokens))
        if setup.autoscale:
            state = httpx.get(net.base_url + "/v1/autoscale", params={"limit": 100}).json()
            run.decisions = state["decisions"]
        return run


def p(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def summary(run: Run, slo: float, duration: float) -> dict[str, Any]:
    ttfts = [o.ttft for o in run.outcomes if o.ttft is not None]
    ok = len(ttfts)
    within = sum(t <= slo for t in ttfts)
    seconds = [t for t, _ in run.miners if t <= duration]
    counts = [n for t, n in run.miners if t <= duration]
    miner_s = sum(n * 0.5 for n in counts) if seconds else 0.0
    return {
        "pool": run.setup.name,
        "requests": len(run.outcomes),
        "failed": len(run.outcomes) - ok,
        "ttft_p50_s": p(ttfts, 0.5),
        "ttft_p95_s": p(ttfts, 0.95),
        "slo_attainment": within / len(run.outcomes) if run.outcomes else None,
        "miner_seconds": miner_s,
        "max_miners": max(counts, default=0),
    }


def rolling_p95(run: Run, duration: float) -> list[tuple[float, float | None]]:
    points = []
    for second in range(int(duration) + 1):
        window = [
            o.ttft
            for o in run.outcomes
            if o.ttft is not None and second - ROLLING_S < o.sent_at <= second
        ]
        points.append((float(second), p(window, 0.95)))
    return points


def plot(runs: list[Run], slo: float, duration: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (load, miners, latency) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    xs = [x / 2 for x in range(int(duration * 2) + 1)]
    load.step(xs, [offered(x) for x in xs], where="post", color="black")
    load.set_ylabel("offered load\n(requests/s)")
    load.set_title("Autoscaling vs fixed pools on one load profile")
    for run in runs:
        times, counts = zip(*[(t, n) for t, n in run.miners if t <= duration], strict=True)
        miners.step(times, counts, where="post", label=run.setup.name)
        series = rolling_p95(run, duration)
        latency.plot(
            [t for t, v in series if v is not None],
            [v for _, v in series if v is not None],
            label=run.setup.name,
        )
    miners.set_ylabel("miner processes")
    miners.legend(loc="upper left")
    latency.axhline(slo, color="grey", linestyle="--", label=f"SLO {slo:g} s")
    latency.set_yscale("log")
    latency.set_ylabel(f"p95 TTFT (s)\nrolling {ROLLING_S} s")
    latency.set_xlabel("seconds")
    latency.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def record(run: Run, path: Path) -> None:
    """The autoscaler's signals per evaluation, for tests/test_scale_policy.py."""
    first = run.decisions[0]["at"]
    rows = [{"at": round(d["at"] - first, 3), "signals": d["signals"]} for d in run.decisions]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speed", type=float, default=50, help="fake miner tokens/s")
    parser.add_argument("--max-tokens", type=int, default=30)
    parser.add_argument("--slo", type=float, default=1.0, help="TTFT SLO, seconds")
    parser.add_argument("--interval", type=float, default=2.0, help="autoscaler period")
    parser.add_argument("--down-delay", type=float, default=10.0)
    parser.add_argument("--small", type=int, default=2)
    parser.add_argument("--large", type=int, default=6)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--record", type=Path, help="write the autoscaler's signals here")
    args = parser.parse_args()
    console = Console()
    trace = arrivals(args.seed)
    duration = sum(seconds for seconds, _ in PROFILE)
    setups = (
        Setup("autoscale", True, args.large),
        Setup(f"fixed {args.small}", False, args.small),
        Setup(f"fixed {args.large}", False, args.large),
    )
    runs = []
    for setup in setups:
        console.print(f"[bold]{setup.name}[/]: {len(trace)} requests over {duration} s")
        runs.append(measure(setup, trace, args))
    rows = [summary(run, args.slo, duration) for run in runs]
    table = Table(title=f"Autoscaling vs fixed pools (TTFT SLO {args.slo:g} s)")
    for column in (
        "pool",
        "requests",
        "failed",
        "p50 TTFT s",
        "p95 TTFT s",
        "SLO met",
        "miner-s",
        "max miners",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["pool"],
            str(row["requests"]),
            str(row["failed"]),
            f"{row['ttft_p50_s']:.3f}",
            f"{row['ttft_p95_s']:.3f}",
            f"{row['slo_attainment']:.1%}",
            f"{row['miner_seconds']:.0f}",
            str(row["max_miners"]),
        )
    console.print(table)
    plot(runs, args.slo, duration, PLOT)
    settings = {**vars(args), "record": str(args.record), "profile": PROFILE}
    # The changes the autoscaler made; every evaluation, with its signals, is in --record.
    changes = [d for d in runs[0].decisions if d["direction"] != "hold"]
    write_results(RESULTS, "autoscale", settings, rows, autoscaler_changes=changes)
    if args.record:
        record(runs[0], args.record)
    failures = [o.failed for run in runs for o in run.outcomes if o.failed]
    if failures:
        console.print(f"[red]{len(failures)} failed[/], e.g. {failures[:3]}")
    console.print(f"plot: {PLOT}\nresults: {RESULTS}")


if __name__ == "__main__":
    main()

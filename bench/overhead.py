"""What the router adds: the same requests sent straight to a miner's engine
and through the router, side by side in one run.

Starts a router and one fake-engine miner (zero delay) that also serves its
engine directly over HTTP (``--http-port``). For each concurrency level it
sends N requests to each path, alternating in rounds so machine noise hits
both alike, and reports latency p50/p99, requests/s and the router-added
latency. Client, router and miner share this machine's cores.

    python bench/overhead.py --requests 2000 --concurrency 1,16
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from netutil import free_port, network
from report import write_results

RESULTS = Path(__file__).parent / "results"
BODY = {"model": "fake-model", "prompt": "The quick brown fox", "max_tokens": 16, "temperature": 0}


@dataclass
class PathResult:
    path: str
    concurrency: int
    requests: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    requests_per_s: float
    errors: int


async def fire(
    session: aiohttp.ClientSession, url: str, count: int, concurrency: int
) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)

    async def worker() -> None:
        nonlocal errors
        while not queue.empty():
            queue.get_nowait()
            started = time.perf_counter()
            async with session.post(url, json=BODY) as response:
                payload = await response.json()
                if response.status != 200 or "choices" not in payload:
                    errors += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started, errors


def summarise(
    path: str, concurrency: int, latencies: list[float], elapsed: float, errors: int
) -> PathResult:
    ordered = sorted(latencies)
    return PathResult(
        path=path,
        concurrency=concurrency,
        requests=len(ordered),
        p50_ms=1000 * ordered[len(ordered) // 2],
        p99_ms=1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        mean_ms=1000 * statistics.fmean(ordered),
        requests_per_s=len(ordered) / elapsed,
        errors=errors,
    )


async def measure(
    direct_url: str, router_url: str, requests: int, levels: list[int], rounds: int
) -> list[PathResult]:
    results: list[PathResult] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await fire(session, direct_url, 50, 4)  # warm up both paths
        await fire(session, router_url, 50, 4)
        with Progress() as progress:
            bar = progress.add_task("requests", total=2 * requests * len(levels))
            for concurrency in levels:
                samples: dict[str, tuple[list[float], float, int]] = {
                    "direct": ([], 0.0, 0),
                    "router": ([], 0.0, 0),
                }
                for _ in range(rounds):
                    for path, url in (("direct", direct_url), ("router", router_url)):
                        lat, elapsed, errors = await fire(
                            session, url, requests // rounds, concurrency
                        )
                        old = samples[path]
                        samples[path] = (old[0] + lat, old[1] + elapsed, old[2] + errors)
                        progress.advance(bar, len(lat))
                for path, (lat, elapsed, errors) in samples.items():
                    results.append(summarise(path, concurrency, lat, elapsed, errors))
    return results


def report(results: list[PathResult]) -> Table:
    table = Table(title="Router overhead: fake engine, zero delay, 16 tokens per request")
    for column in (
        "concurrency",
        "path",
        "p50 ms",
        "p99 ms",
        "mean ms",
        "req/s",
        "errors",
        "router adds p50",
        "router adds p99",
    ):
        table.add_column(column, justify="right")
    direct = {r.concurrency: r for r in results if r.path == "direct"}
    for r in results:
        base = direct[r.concurrency]
        added_50 = f"{r.p50_ms - base.p50_ms:+.2f} ms" if r.path == "router" else ""
        added_99 = f"{r.p99_ms - base.p99_ms:+.2f} ms" if r.path == "router" else ""
        table.add_row(
            str(r.concurrency),
            r.path,
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.mean_ms:.2f}",
            f"{r.requests_per_s:.0f}",
            str(r.errors),
            added_50,
            added_99,
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="requests per path and concurrency level"
    )
    parser.add_argument("--concurrency", default="1,16", help="comma-separated concurrency levels")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per level")
    parser.add_argument("--output", type=Path, default=RESULTS / "overhead.json")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    console = Console(width=max(120, Console().width))
    with tempfile.TemporaryDirectory() as workdir, network(Path(workdir)) as net:
        direct_port = free_port()
        net.start_router("--log-level", "warning")
        net.start_miner(
            "bench", "--slots", "64", "--http-port", str(direct_port), "--log-level", "warning"
        )
        net.wait_miners(1)
        results = asyncio.run(
            measure(
                f"http://127.0.0.1:{direct_port}/v1/completions",
                f"{net.base_url}/v1/completions",
                args.requests,
                levels,
                args.rounds,
            )
        )
    console.print(report(results))
    settings = {
        "requests": args.requests,
        "concurrency": levels,
        "rounds": args.rounds,
        "body": BODY,
    }
    write_results(args.output, "overhead", settings, [asdict(r) for r in results])
    console.print(f"JSON written to {args.output}")


if __name__ == "__main__":
    main()

"""Which HTTP client should ``inferswarm bench`` stream with? Client CPU per request.

Starts a router and one fake-engine miner, then streams the same chat requests
through aiohttp (what ``inferswarm bench`` uses) and through an httpx
``AsyncClient``, in alternating rounds, reading every SSE line the same way.
Reports the client process's CPU time per request: the lower it is, the more
load one generator process can offer before it measures itself instead of the
server.

    python bench/loadgen_client.py --requests 400 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from netutil import network
from report import write_results

RESULTS = Path(__file__).parent / "results"
MAX_TOKENS = 32


@dataclass
class ClientResult:
    client: str
    requests: int
    lines: int
    wall_s: float
    cpu_s: float

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_s / self.requests


def body(index: int) -> dict[str, Any]:
    return {
        "model": "fake-model",
        "messages": [{"role": "user", "content": f"request {index} says hello"}],
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def aiohttp_lines(url: str, count: int, concurrency: int) -> int:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(index: int) -> AsyncIterator[bytes]:
            async with session.post(url, json=body(index)) as response:
                async for line in response.content:
                    yield line

        return await _drive(one, count, concurrency)


async def httpx_lines(url: str, count: int, concurrency: int) -> int:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def one(index: int) -> AsyncIterator[bytes]:
            async with client.stream("POST", url, json=body(index)) as response:
                async for line in response.aiter_lines():
                    yield line.encode()

        return await _drive(one, count, concurrency)


async def _drive(one: Callable[[int], AsyncIterator[bytes]], count: int, concurrency: int) -> int:
    indices = iter(range(count))
    lines = 0

    async def worker() -> None:
        nonlocal lines
        for index in indices:
            async for line in one(index):
                lines += line.startswith(b"data:")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lines


CLIENTS = {"aiohttp": aiohttp_lines, "httpx": httpx_lines}


async def measure(url: str, requests: int, concurrency: int, rounds: int) -> list[ClientResult]:
    totals = {name: ClientResult(name, 0, 0, 0.0, 0.0) for name in CLIENTS}
    for warm_up in CLIENTS.values():
        await warm_up(url, 20, 4)
    for turn in range(rounds):
        order = list(CLIENTS.items()) if turn % 2 == 0 else list(reversed(CLIENTS.items()))
        for name, run in order:
            cpu, wall = time.process_time(), time.perf_counter()
            lines = await run(url, requests // rounds, concurrency)
            total = totals[name]
            total.requests += requests // rounds
            total.lines += lines
            total.cpu_s += time.process_time() - cpu
            total.wall_s += time.perf_counter() - wall
    return list(totals.values())


def report(results: list[ClientResult], concurrency: int) -> Table:
    table = Table(
        title=f"Streaming client cost: {MAX_TOKENS}-token chat streams, concurrency {concurrency}"
    )
    for column in ("client", "requests", "SSE lines", "req/s", "client CPU ms/request"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            r.client,
            str(r.requests),
            str(r.lines),
            f"{r.requests / r.wall_s:.0f}",
            f"{r.cpu_ms_per_request:.2f}",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400, help="requests per client")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--speed", type=float, default=400, help="fake engine tokens/s")
    parser.add_argument("--output", type=Path, default=RESULTS / "loadgen_client.json")
    args = parser.parse_args()
    console = Console(width=max(120, Console().width))
    with tempfile.TemporaryDirectory() as workdir, network(Path(workdir)) as net:
        net.start_router("--log-level", "warning")
        net.start_miner(
            "bench",
            "--slots",
            str(args.concurrency),
            "--fake-speed",
            str(args.speed),
            "--fake-output-tokens",
            "1000",
            "--log-level",
            "warning",
        )
        net.wait_miners(1)
        url = f"{net.base_url}/v1/chat/completions"
        results = asyncio.run(measure(url, args.requests, args.concurrency, args.rounds))
    console.print(report(results, args.concurrency))
    settings = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "max_tokens": MAX_TOKENS,
        "fake_speed": args.speed,
    }
    rows = [asdict(r) | {"cpu_ms_per_request": r.cpu_ms_per_request} for r in results]
    write_results(args.output, "loadgen_client", settings, rows)
    console.print(f"JSON written to {args.output}")


if __name__ == "__main__":
    main()

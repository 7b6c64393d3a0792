"""Miners killed with SIGKILL at random while requests run.

Four fake-engine miners; a driver kills one at random every N seconds
(jittered) and restarts it. For each kill interval — and a calm baseline —
the same mixed workload (streaming completions, non-streaming chat) runs and
every answer is checked against what the fake engine must produce. Reported:
success rate, requests lost or corrupted (must be 0), latency p50/p99 and what
failover and migration added over the calm run.

    python bench/chaos.py --requests 300 --intervals 10,5,2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from chaos import FAKE_MINER, Killer, LinkCutter, Result, run_requests, start_chaos_miners
from netns import NamespaceUnavailable, namespace
from netutil import network
from report import write_results

RESULTS = Path(__file__).parent / "results"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else float("nan")


def run_once(requests: int, concurrency: int, interval: float | None) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as workdir, network(Path(workdir)) as net:
        net.start_router("--log-level", "error")
        miner_args = start_chaos_miners(net, 4, "--log-level", "error")
        started = time.perf_counter()
        if interval is None:
            results, kills = run_requests(net, requests, concurrency), 0
        else:
            with Killer(net, miner_args, interval_s=interval, seed=11) as killer:
                results = run_requests(net, requests, concurrency)
            kills = killer.kills
        elapsed = time.perf_counter() - started
        health = httpx.get(net.base_url + "/healthz", timeout=5).json()
    return summarise(interval, results, kills, health["migrations"], elapsed)


def run_link_cuts(requests: int, concurrency: int, interval: float) -> dict[str, object]:
    """One of four miners sits in its own network namespace; its link is cut
    for 3 s at a time, so only missed heartbeats reveal it."""
    with (
        namespace() as link,
        tempfile.TemporaryDirectory() as workdir,
        network(Path(workdir)) as net,
    ):
        net.host = link.host_address
        net.start_router("--log-level", "error", "--heartbeat-timeout", "2")
        common = (*FAKE_MINER, "--log-level", "error")
        net.start_miner("remote", *common, prefix=link.exec_prefix)
        for i in range(3):
            net.start_miner(f"local-{i}", *common)
        net.wait_miners(4)
        started = time.perf_counter()
        with LinkCutter(link.cut, link.restore, interval_s=interval, down_s=3.0, seed=5) as cutter:
            results = run_requests(net, requests, concurrency)
        elapsed = time.perf_counter() - started
        health = httpx.get(net.base_url + "/healthz", timeout=5).json()
    label = f"link cut every {interval:g} s"
    return summarise(label, results, cutter.cuts, health["migrations"], elapsed)


def summarise(
    fault: float | str | None, results: list[Result], faults: int, migrations: int, elapsed: float
) -> dict[str, object]:
    latencies = [r.latency_s for r in results if r.ok]
    return {
        "kill_interval_s": fault,
        "requests": len(results),
        "ok": sum(r.ok for r in results),
        "lost_or_corrupted": sum(not r.ok for r in results),
        "success_rate": sum(r.ok for r in results) / len(results),
        "kills": faults,
        "migrations": migrations,
        "p50_s": statistics.median(latencies) if latencies else float("nan"),
        "p99_s": percentile(latencies, 0.99),
        "elapsed_s": elapsed,
        "errors": sorted({r.error[:120] for r in results if not r.ok})[:5],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--intervals", default="10,5,2", help="seconds between kills")
    parser.add_argument("--output", type=Path, default=RESULTS / "chaos.json")
    args = parser.parse_args()
    console = Console(width=130)
    rows = []
    for interval in [None, *(float(x) for x in args.intervals.split(","))]:
        console.print(
            f"running {'calm baseline' if interval is None else f'kill every {interval:g} s'} …"
        )
        rows.append(run_once(args.requests, args.concurrency, interval))
    try:
        console.print("running link cuts every 5 s (network namespace) …")
        rows.append(run_link_cuts(args.requests, args.concurrency, 5.0))
    except NamespaceUnavailable as exc:
        console.print(f"[yellow]link cuts skipped: {exc}[/yellow]")
    calm = rows[0]
    table = Table(
        title=f"Chaos: 4 fake miners, {args.requests} requests per run, concurrency {args.concurrency}"
    )
    for column in (
        "fault",
        "kills / cuts",
        "migrations",
        "success",
        "lost/corrupted",
        "p50 s",
        "p99 s",
        "added p50",
        "added p99",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        interval = row["kill_interval_s"]
        label = (
            "never"
            if interval is None
            else interval
            if isinstance(interval, str)
            else f"kill every {interval:g} s"
        )
        table.add_row(
            label,
            str(row["kills"]),
            str(row["migrations"]),
            f"{row['success_rate']:.1%}",
            str(row["lost_or_corrupted"]),
            f"{row['p50_s']:.3f}",
            f"{row['p99_s']:.3f}",
            f"{row['p50_s'] - calm['p50_s']:+.3f}",
            f"{row['p99_s'] - calm['p99_s']:+.3f}",  # type: ignore[operator]
        )
    console.print(table)
    settings = {"requests": args.requests, "concurrency": args.concurrency}
    write_results(args.output, "chaos", settings, rows)


if __name__ == "__main__":
    main()

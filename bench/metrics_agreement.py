"""Do the router's own metrics agree with what a client measures?

Starts a real router with fake-engine miners of known pace, then at each
concurrency level loads it with ``inferswarm bench`` and compares the client's
figures with the router's ``/metrics`` histograms over the same requests
(differences of ``_sum`` and ``_count`` before and after the run): sample counts
must match exactly, and means should differ only by what the router cannot
see (HTTP parsing and the loopback hop, a few ms on TTFT and end-to-end).

    python bench/metrics_agreement.py --levels 1,4,16 --requests 60
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from netutil import Network, network
from report import write_results

RESULTS = Path(__file__).resolve().parent / "results"
HISTOGRAMS = {
    "ttft": "inferswarm_time_to_first_token_seconds",
    "itl": "inferswarm_inter_token_latency_seconds",
    "e2e": "inferswarm_e2e_request_latency_seconds",
}


def histogram_totals(net: Network) -> dict[str, float]:
    """``_sum`` and ``_count`` of each histogram, summed over all label sets."""
    totals: dict[str, float] = {}
    text = httpx.get(net.base_url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def run_level(net: Network, level: int, args: argparse.Namespace, scratch: Path) -> list[dict]:
    before = histogram_totals(net)
    out = scratch / f"bench-{level}.json"
    command = [
        *(sys.executable, "-m", "inferswarm", "bench", "--base-url", net.base_url),
        *("--concurrency", str(level), "--requests", str(args.requests)),
        *("--output-tokens", str(args.max_tokens), "--prompt-tokens", "32", "--json", str(out)),
    ]
    subprocess.run(command, check=True, capture_output=True, env=dict(os.environ), timeout=600)
    after = histogram_totals(net)
    summary = json.loads(out.read_text())["summary"]
    rows = []
    for key, name in HISTOGRAMS.items():
        count = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
        total = after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)
        client = summary[key]
        rows.append(
            {
                "concurrency": level,
                "latency": key,
                "client_samples": client["count"],
                "router_samples": int(count),
                "client_mean_ms": client["mean"] * 1000,
                "router_mean_ms": total / count * 1000 if count else None,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--speed", type=float, default=50.0, help="fake tokens/s per sequence")
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as scratch, network(Path(scratch)) as net:
        net.start_router()
        for i in range(2):
            net.start_miner(
                f"m{i}",
                *("--fake-speed", str(args.speed), "--slots", "4"),
                *("--fake-latency", "0.05", "--fake-output-tokens", "1000"),
            )
        net.wait_miners(2)
        for level in levels:
            rows += run_level(net, level, args, Path(scratch))
    table = Table(title="router /metrics vs inferswarm bench, same requests")
    for column in (
        "concurrency",
        "latency",
        "samples client/router",
        "mean client",
        "router",
        "ratio",
    ):
        table.add_column(column, justify="left" if column == "latency" else "right")
    for row in rows:
        router = row["router_mean_ms"]
        table.add_row(
            str(row["concurrency"]),
            row["latency"],
            f"{row['client_samples']}/{row['router_samples']}",
            f"{row['client_mean_ms']:.1f} ms",
            "-" if router is None else f"{router:.1f} ms",
            "-" if router is None else f"{router / row['client_mean_ms']:.3f}",
        )
    Console().print(table)
    settings = {"levels": levels, "requests": args.requests, "max_tokens": args.max_tokens}
    write_results(RESULTS / "metrics_agreement.json", "metrics_agreement", settings, rows)


if __name__ == "__main__":
    main()

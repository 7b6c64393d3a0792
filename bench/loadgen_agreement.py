"""Does ``inferswarm bench`` measure what an established tool measures?

Starts a real router with one fake-engine miner whose pace is known (first
token after ``--latency`` s, then ``--speed`` tokens/s per sequence), then, at
each concurrency level, loads the same endpoint with ``inferswarm bench
--concurrency N`` and with Locust (``-u N`` users, each streaming one request
after another: ``bench/locustfile.py``) for the same time, the two tools taking
turns so machine noise hits both alike. Prints request throughput, end-to-end
p50/p95 and TTFT p50 from each tool side by side with their ratio. Locust rounds
response times above 100 ms to 10 ms, so ratios within ~1-2% are agreement.

    python bench/loadgen_agreement.py --duration 15 --levels 1,8,32
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from netutil import Network, network
from report import write_results

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


@dataclass
class ToolResult:
    tool: str
    concurrency: int
    requests: int
    errors: int
    requests_per_s: float
    e2e_p50_ms: float
    e2e_p95_ms: float
    ttft_p50_ms: float | None


@dataclass(frozen=True)
class Workload:
    duration_s: int
    max_tokens: int
    prompt_words: int


def run_inferswarm(net: Network, level: int, work: Workload, scratch: Path) -> ToolResult:
    out = scratch / f"inferswarm-{level}.json"
    command = [
        sys.executable,
        "-m",
        "inferswarm",
        "bench",
        "--base-url",
        net.base_url,
        "--concurrency",
        str(level),
        "--duration",
        str(work.duration_s),
        "--output-tokens",
        str(work.max_tokens),
        "--prompt-tokens",
        str(work.prompt_words),
        "--json",
        str(out),
    ]
    _run(command, work, dict(os.environ))
    summary = json.loads(out.read_text())["summary"]
    return ToolResult(
        tool="inferswarm bench",
        concurrency=level,
        requests=summary["requests"],
        errors=summary["failed"],
        requests_per_s=summary["request_throughput"],
        e2e_p50_ms=1000 * summary["e2e"]["p50"],
        e2e_p95_ms=1000 * summary["e2e"]["p95"],
        ttft_p50_ms=1000 * summary["ttft"]["p50"],
    )


def run_locust(net: Network, level: int, work: Workload, scratch: Path) -> ToolResult:
    out = scratch / f"locust-{level}.json"
    locust = shutil.which("locust", path=str(Path(sys.executable).parent)) or "locust"
    command = [
        locust,
        "-f",
        str(HERE / "locustfile.py"),
        "--headless",
        "--only-summary",
        "-H",
        net.base_url,
        "-u",
        str(level),
        "-r",
        "100",  # all users within the first ~0.3 s
        "-t",
        f"{work.duration_s}s",
        "--stop-timeout",
        "60",  # like inferswarm bench --duration: requests in flight finish
    ]
    env = {
        **os.environ,
        "LOADGEN_MODEL": "fake-model",
        "LOADGEN_MAX_TOKENS": str(work.max_tokens),
        "LOADGEN_PROMPT_WORDS": str(work.prompt_words),
        "LOADGEN_SUMMARY": str(out),
    }
    _run(command, work, env)
    stats = json.loads(out.read_text())
    chat, ttft = stats["chat"], stats.get("ttft")
    return ToolResult(
        tool="locust",
        concurrency=level,
        requests=chat["requests"],
        errors=chat["failures"],
        requests_per_s=chat["requests_per_s"],
        e2e_p50_ms=chat["p50_ms"],
        e2e_p95_ms=chat["p95_ms"],
        ttft_p50_ms=ttft["p50_ms"] if ttft else None,
    )


def _run(command: list[str], work: Workload, env: dict[str, str]) -> None:
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=work.duration_s + 120
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{command[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )


def report(results: list[ToolResult], engine_floor_ms: float) -> Table:
    table = Table(
        title="inferswarm bench vs Locust on the same router endpoint "
        f"(fake engine: end-to-end floor {engine_floor_ms:.0f} ms per request)"
    )
    for column in (
        "concurrency",
        "tool",
        "requests",
        "errors",
        "req/s",
        "e2e p50 ms",
        "e2e p95 ms",
        "TTFT p50 ms",
    ):
        table.add_column(column, justify="right")
    by_level: dict[int, dict[str, ToolResult]] = {}
    for r in results:
        by_level.setdefault(r.concurrency, {})[r.tool] = r
    for level, pair in by_level.items():
        for r in pair.values():
            table.add_row(
                str(level),
                r.tool,
                str(r.requests),
                str(r.errors),
                f"{r.requests_per_s:.2f}",
                f"{r.e2e_p50_ms:.0f}",
                f"{r.e2e_p95_ms:.0f}",
                f"{r.ttft_p50_ms:.0f}" if r.ttft_p50_ms is not None else "-",
            )
        ours, theirs = pair["inferswarm bench"], pair["locust"]
        table.add_row(
            str(level),
            "[bold]ratio[/]",
            "",
            "",
            _ratio(ours.requests_per_s, theirs.requests_per_s),
            _ratio(ours.e2e_p50_ms, theirs.e2e_p50_ms),
            _ratio(ours.e2e_p95_ms, theirs.e2e_p95_ms),
            _ratio(ours.ttft_p50_ms, theirs.ttft_p50_ms),
            end_section=True,
        )
    return table


def _ratio(ours: float | None, theirs: float | None) -> str:
    return f"{ours / theirs:.3f}" if ours and theirs else "-"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=15, help="seconds per tool and level")
    parser.add_argument("--levels", default="1,8,32", help="comma-separated concurrency levels")
    parser.add_argument("--max-tokens", type=int, default=32, help="output tokens per request")
    parser.add_argument("--prompt-words", type=int, default=64)
    parser.add_argument("--speed", type=float, default=50, help="fake engine tokens/s per sequence")
    parser.add_argument("--latency", type=float, default=0.1, help="fake engine s to first token")
    parser.add_argument("--output", type=Path, default=RESULTS / "loadgen_agreement.json")
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    work = Workload(args.duration, args.max_tokens, args.prompt_words)
    console = Console(width=max(120, Console().width))
    results: list[ToolResult] = []
    with tempfile.TemporaryDirectory() as workdir, network(Path(workdir)) as net:
        net.start_router("--log-level", "warning")
        net.start_miner(
            "paced",
            "--fake-speed",
            str(args.speed),
            "--fake-latency",
            str(args.latency),
            "--fake-output-tokens",
            "100000",
            "--slots",
            str(max(levels)),
            "--log-level",
            "warning",
        )
        net.wait_miners(1)
        scratch = Path(workdir)
        for turn, level in enumerate(levels):
            tools = [run_inferswarm, run_locust]
            for tool in tools if turn % 2 == 0 else reversed(tools):
                console.print(f"concurrency {level}: {tool.__name__.removeprefix('run_')}")
                results.append(tool(net, level, work, scratch))
    floor_ms = 1000 * (args.latency + args.max_tokens / args.speed)
    console.print(report(results, floor_ms))
    settings = {
        "duration_s": args.duration,
        "levels": levels,
        "max_tokens": args.max_tokens,
        "prompt_words": args.prompt_words,
        "fake_speed": args.speed,
        "fake_latency_s": args.latency,
        "endpoint": "/v1/chat/completions, stream=True",
    }
    write_results(
        args.output,
        "loadgen_agreement",
        settings,
        [asdict(r) for r in results],
        engine_floor_ms=floor_ms,
    )
    console.print(f"JSON written to {args.output}")


if __name__ == "__main__":
    main()

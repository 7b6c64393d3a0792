"""Cache-aware routing against least-loaded on real llama.cpp miners.

Requests share a few long system prompts (the shape of agent and RAG
traffic). A miner whose llama.cpp context still holds a system prompt skips
recomputing it, so time to first token drops when the router sends a request
where its prefix is warm. Both policies replay the same request sequence
(per-request admin override), alternating in rounds; TTFT is measured on
streamed responses.

    python bench/cache_affinity.py --miners 2 --prompts 2 --requests 40
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from netutil import network
from report import write_results

RESULTS = Path(__file__).parent / "results"
MODEL = "smollm2-135m-instruct:q4_1"
TOPICS = ["astronomy", "cooking", "tax law", "gardening", "railways", "chess"]
QUESTIONS = [
    "What should I read first?",
    "Give me one tip.",
    "Summarise the rules.",
    "Name a common mistake.",
]


def system_prompt(topic: str, sentences: int) -> str:
    rng = random.Random(topic)
    words = (
        f"{topic} guide expert careful answer policy detail example reference context user".split()
    )
    body = " ".join(" ".join(rng.choice(words) for _ in range(12)) + "." for _ in range(sentences))
    return f"You are a helpful assistant for {topic}. Follow these notes.\n{body}"


def ttft(api: openai.OpenAI, system: str, question: str, policy: str) -> float:
    started = time.perf_counter()
    stream = api.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        max_tokens=4,
        temperature=0,
        stream=True,
        extra_body={"inferswarm": {"policy": policy}},
    )
    first = None
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
    return first if first is not None else time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--miners", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=2, help="distinct system prompts")
    parser.add_argument(
        "--sentences", type=int, default=60, help="system prompt length (~14 tokens each)"
    )
    parser.add_argument("--requests", type=int, default=40, help="requests per policy")
    parser.add_argument("--output", type=Path, default=RESULTS / "cache_affinity.json")
    args = parser.parse_args()
    systems = [system_prompt(topic, args.sentences) for topic in TOPICS[: args.prompts]]
    rng = random.Random(1)
    sequence = [(rng.choice(systems), rng.choice(QUESTIONS)) for _ in range(args.requests)]
    policies = ("least_loaded", "cache_aware")
    timings: dict[str, list[float]] = {p: [] for p in policies}
    console = Console(width=120)
    with tempfile.TemporaryDirectory() as workdir, network(Path(workdir)) as net:
        net.start_router("--log-level", "warning")
        for index in range(args.miners):
            net.start_miner(
                f"llama-{index + 1}",
                "--threads",
                "1",
                "--slots",
                "1",
                "--ctx",
                "2048",
                "--log-level",
                "warning",
                engine="llamacpp",
            )
        net.wait_miners(args.miners, timeout=180)
        with (
            openai.OpenAI(
                base_url=net.base_url + "/v1", api_key="none", max_retries=0, timeout=300
            ) as api,
            Progress(console=console) as progress,
        ):
            bar = progress.add_task("requests", total=len(sequence) * len(policies))
            rounds = 4
            per_round = len(sequence) // rounds
            for r in range(rounds):
                for policy in policies if r % 2 == 0 else reversed(policies):
                    for system, question in sequence[r * per_round : (r + 1) * per_round]:
                        timings[policy].append(ttft(api, system, question, policy))
                        progress.advance(bar)
    rows = {
        p: {
            "mean_s": statistics.fmean(t),
            "p50_s": statistics.median(t),
            "p90_s": sorted(t)[int(len(t) * 0.9)],
            "requests": len(t),
        }
        for p, t in timings.items()
    }
    ratio = rows["cache_aware"]["mean_s"] / rows["least_loaded"]["mean_s"]
    table = Table(
        title=f"TTFT with {args.prompts} shared system prompts on {args.miners} llama.cpp miners"
    )
    for column in ("policy", "requests", "mean TTFT s", "p50 s", "p90 s"):
        table.add_column(column, justify="right")
    for policy, row in rows.items():
        table.add_row(
            policy,
            str(row["requests"]),
            f"{row['mean_s']:.3f}",
            f"{row['p50_s']:.3f}",
            f"{row['p90_s']:.3f}",
        )
    console.print(table)
    console.print(f"cache_aware mean TTFT = {ratio:.2f} x least_loaded")
    write_results(
        args.output, "cache_affinity", vars(args), rows, ttft_ratio_cache_over_least_loaded=ratio
    )


if __name__ == "__main__":
    main()

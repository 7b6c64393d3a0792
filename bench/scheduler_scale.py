"""Decision time of ``choose_miner`` with 100, 10,000 and 100,000 registered miners.

Pools are built from the recorded miner fixtures (ARM board, laptop CPU,
consumer GPU, datacenter GPU) with random loads; each policy decides for the
same stream of tasks on the same snapshot. Snapshot construction is timed
separately, since the router builds one per decision.

    python bench/scheduler_scale.py
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from inferswarm.protocol import MinerId
from inferswarm.router.schedule import Policy, Snapshot, TaskNeeds, choose_miner
from report import write_results
from test_policies_on_fixtures import FIXTURES, MODEL, load, view

RESULTS = Path(__file__).parent / "results"


def build_pool(size: int, rng: random.Random) -> list:  # type: ignore[type-arg]
    templates = [view(load(path.stem)) for path in sorted(FIXTURES.glob("*.json"))]
    pool = []
    for index in range(size):
        template = rng.choice(templates)
        pool.append(
            replace(
                template, miner_id=MinerId(f"m-{index:06}"), busy=rng.randint(0, template.slots)
            )
        )
    return pool


def time_decisions(
    snapshot: Snapshot, policy: Policy, decisions: int, rng: random.Random
) -> list[float]:
    timings = []
    for sequence in range(decisions):
        task = TaskNeeds(
            model=MODEL,
            prompt_tokens=rng.randint(10, 1500),
            max_tokens=rng.randint(16, 512),
            sequence=sequence,
            seed=rng.getrandbits(64),
            prefix_blocks=(rng.randint(0, 50),),
            session=f"user-{rng.randint(0, 1000)}",
        )
        started = time.perf_counter_ns()
        choose_miner(task, snapshot, policy)
        timings.append((time.perf_counter_ns() - started) / 1000)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100,10000,100000")
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--output", type=Path, default=RESULTS / "scheduler_scale.json")
    args = parser.parse_args()
    rng = random.Random(42)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        pool = build_pool(size, rng)
        prefixes = {block: frozenset({pool[rng.randrange(size)].miner_id}) for block in range(50)}
        sessions = {f"user-{u}": pool[rng.randrange(size)].miner_id for u in range(1000)}
        started = time.perf_counter()
        snapshot = Snapshot.of(pool, prefixes=prefixes, sessions=sessions)
        build_ms = (time.perf_counter() - started) * 1000
        for policy in Policy:
            timings = sorted(time_decisions(snapshot, policy, args.decisions, rng))
            rows.append(
                {
                    "miners": size,
                    "policy": policy.value,
                    "median_us": statistics.median(timings),
                    "p99_us": timings[int(len(timings) * 0.99)],
                    "snapshot_build_ms": build_ms,
                }
            )
    table = Table(title="choose_miner decision time (one core, CPython)")
    for column in ("miners", "policy", "median µs", "p99 µs", "snapshot build ms"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row["miners"]),
            row["policy"],
            f"{row['median_us']:.1f}",
            f"{row['p99_us']:.1f}",
            f"{row['snapshot_build_ms']:.1f}",
        )
    Console(width=120).print(table)
    write_results(args.output, "scheduler_scale", {"decisions_per_cell": args.decisions}, rows)


if __name__ == "__main__":
    main()

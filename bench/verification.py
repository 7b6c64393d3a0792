"""Verification: tasks until a cheater is quarantined, honest false positives,
and the compute spent on verification, for spot-check rates p in {0.01, 0.05,
0.2} and each strategy.

SIMULATED: this runs the router's real pure logic (``consensus.decide`` on the
outputs, ``reputation.record`` on the outcomes) over simulated miners. What is
not measured here but assumed, and stated in the table's settings:
- a checked corrupt, random or lazy output differs from the honest greedy output
  with probability 1 under exact consensus (true of the fake engine and of the
  --fault modes by construction; the tests show it end to end with fakes);
- the semantic strategy's detection of each kind and its honest false-verdict
  rate are parameters (SEMANTIC_DETECTS, SEMANTIC_FALSE_VERDICT); they were not
  measured with all-MiniLM-L6-v2 in this run;
- honest miners time out on 2 % and error on 1 % of tasks.

Strategies:
- ``spot-exact``: a share p of finished tasks is re-run on a checker; on
  disagreement a referee decides by majority (cost 1 or 2 extra runs);
- ``redundant-exact`` / ``redundant-semantic``: a share p of requests asks for
  redundancy 3 (2 extra runs each); the dissenter of a majority fails.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from inferswarm.protocol import MinerId
from inferswarm.router.verify.consensus import decide, exact_similarity
from inferswarm.router.verify.reputation import (
    Outcome,
    ReputationPolicy,
    Standing,
    record,
)
from report import write_results

RATES = (0.01, 0.05, 0.2)
CHEATERS = {
    "corrupt-100%": ("corrupt", 1.0),
    "corrupt-10%": ("corrupt", 0.1),
    "random-100%": ("random", 1.0),
    "lazy-50%": ("lazy", 0.5),
}
SEMANTIC_DETECTS = {"corrupt": 0.95, "random": 1.0, "lazy": 0.5}
SEMANTIC_FALSE_VERDICT = 0.002
HONEST_TIMEOUTS, HONEST_ERRORS = 0.02, 0.01
TASK_LIMIT = 5000
POLICY = ReputationPolicy()


@dataclass(frozen=True)
class Strategy:
    name: str
    extra_runs: float
    """Extra runs per checked task when everybody agrees."""
    semantic: bool

    def detects(self, kind: str) -> float:
        return SEMANTIC_DETECTS[kind] if self.semantic else 1.0

    def false_verdict(self) -> float:
        return SEMANTIC_FALSE_VERDICT if self.semantic else 0.0


STRATEGIES = (
    Strategy("spot-exact", 1.0, False),
    Strategy("redundant-exact", 2.0, False),
    Strategy("redundant-semantic", 2.0, True),
)


def checked_outcome(wrong: bool, rng: random.Random, strategy: Strategy) -> tuple[Outcome, int]:
    """The verdict on one checked task through ``decide`` and its extra runs."""
    miners = [MinerId("suspect"), MinerId("checker"), MinerId("referee")]
    texts = ["wrong" if wrong else "right", "right", "right"]
    if strategy.extra_runs == 1.0 and not wrong:
        texts, miners = texts[:2], miners[:2]  # the checker agreed: no referee
    verdict = decide(miners, exact_similarity(texts), 1.0)
    failed = miners[0] in verdict.disagreeing
    runs = len(miners) - 1
    if not failed and rng.random() < strategy.false_verdict():
        failed = True
    return (Outcome.FAIL if failed else Outcome.PASS), runs


def until_quarantine(
    kind: str, share: float, p: float, strategy: Strategy, rng: random.Random
) -> tuple[int | None, int, int]:
    """Tasks until quarantine (None: not within TASK_LIMIT), tasks, extra runs."""
    standing, extra = Standing(), 0
    for task in range(1, TASK_LIMIT + 1):
        now = float(task)
        cheated = rng.random() < share
        standing = record(standing, Outcome.COMPLETED, now, POLICY)
        if rng.random() < p:
            wrong = cheated and rng.random() < strategy.detects(kind)
            outcome, runs = checked_outcome(wrong, rng, strategy)
            extra += runs
            standing = record(standing, outcome, now, POLICY)
        if standing.quarantined:
            return task, task, extra
    return None, TASK_LIMIT, extra


def honest(p: float, strategy: Strategy, rng: random.Random, tasks: int) -> tuple[bool, int]:
    standing, extra = Standing(), 0
    for task in range(1, tasks + 1):
        now = float(task)
        roll = rng.random()
        if roll < HONEST_TIMEOUTS:
            standing = record(standing, Outcome.TIMEOUT, now, POLICY)
        elif roll < HONEST_TIMEOUTS + HONEST_ERRORS:
            standing = record(standing, Outcome.ERROR, now, POLICY)
        else:
            standing = record(standing, Outcome.COMPLETED, now, POLICY)
            if rng.random() < p:
                outcome, runs = checked_outcome(False, rng, strategy)
                extra += runs
                standing = record(standing, outcome, now, POLICY)
        if standing.quarantined:
            return True, extra
    return False, extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--honest-tasks", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "verification.json"
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rows = []
    for strategy in STRATEGIES:
        for p in RATES:
            row: dict[str, object] = {"strategy": strategy.name, "p": p}
            for label, (kind, share) in CHEATERS.items():
                runs = [until_quarantine(kind, share, p, strategy, rng) for _ in range(args.trials)]
                caught = [r[0] for r in runs if r[0] is not None]
                row[label] = round(statistics.mean(caught), 1) if caught else None
                row[f"{label} caught"] = len(caught) / len(runs)
            outcomes = [honest(p, strategy, rng, args.honest_tasks) for _ in range(args.trials)]
            row["honest FP"] = sum(q for q, _ in outcomes) / len(outcomes)
            extra = sum(e for _, e in outcomes)
            row["overhead"] = round(extra / (extra + args.trials * args.honest_tasks), 4)
            rows.append(row)
    table = Table(title="Verification (simulated over the real verdict + reputation logic)")
    columns = ["strategy", "p", *CHEATERS, "honest FP", "overhead"]
    for column in columns:
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for row in rows:
        cells = []
        for column in columns:
            value = row[column]
            if column in CHEATERS:
                caught = row[f"{column} caught"]
                cells.append("never" if value is None else f"{value} ({caught:.0%})")
            elif column == "overhead":
                cells.append(f"{value:.1%}")
            else:
                cells.append(str(value))
        table.add_row(*cells)
    Console(width=160).print(table)
    settings = {
        "trials": args.trials,
        "honest_tasks": args.honest_tasks,
        "task_limit": TASK_LIMIT,
        "semantic_detects": SEMANTIC_DETECTS,
        "semantic_false_verdict": SEMANTIC_FALSE_VERDICT,
        "honest_timeouts": HONEST_TIMEOUTS,
        "honest_errors": HONEST_ERRORS,
        "policy": repr(POLICY),
        "simulated": "miners and outcome rates; consensus.decide and reputation.record are the router's",
    }
    write_results(args.out, "verification", settings, rows)


if __name__ == "__main__":
    main()

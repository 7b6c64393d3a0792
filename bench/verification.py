"""Verification: tasks until a cheater is quarantined, honest false positives,
and the compute spent on verification, for spot-check rates p in {0.01, 0.05,
0.2} and each strategy.

SIMULATED: miners and tasks. The router's real pure logic runs on them
(``consensus.decide`` on the outputs, ``reputation.record`` on the outcomes).
MEASURED first (bench/verification_rates.py, real llama.cpp on the shipped
SmolLM2-135M with the miner's real --fault code, all-MiniLM-L6-v2 for semantic):
the share of each cheater kind's outputs that each strategy detects, and its
false-verdict rate on honest outputs; for the teacher-forced check
(bench/teacher_rates.py, the router's real ``teacher.judge`` on real scores)
also its cost: CPU seconds of one scoring prefill over those of generating the
same answer. ``--assume`` skips the measurements and uses the defaults below;
``--rates-from FILE`` reuses the rates a previous run measured (its JSON).
ASSUMED: honest miners time out on 2 % and error on 1 % of tasks; a
fabricate-logprobs miner's clients all ask for logprobs (otherwise it has
nothing to fabricate).

A miner with a failed check not yet outweighed (``suspicion`` above zero) is
checked at ``suspect_check_rate`` (the router raises its spot-check rate and
sends it canaries when idle); those extra checks are exact, except under
``spot-teacher`` (the router's ``--spot-check-strategy teacher`` checks a
suspect's tasks the same way). ``honest FP @1% FV`` adds a false verdict on 1 % of an honest
miner's checks (a checker's bad day, numeric differences between builds): the
policy must not quarantine it for that.

Strategies:
- ``spot-exact``: a share p of finished tasks is re-run on a checker; on
  disagreement a referee decides by majority (cost 1 or 2 extra runs);
- ``redundant-exact`` / ``redundant-semantic``: a share p of requests asks for
  redundancy 3 (2 extra runs each); the dissenter of a majority fails;
- ``spot-teacher``: a share p of finished tasks (greedy or sampled) is scored
  by one teacher-forced prefill on a trusted miner; a failure is confirmed by
  a referee's prefill (cost: 1 or 2 prefills, at the measured cost ratio).
  Its false-verdict rate is the measured share of honest greedy and sampled
  answers that failed; the referee scores the same text with the same model
  file, so it is assumed to repeat a false verdict, not to catch it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
from dataclasses import dataclass, replace
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
    check_rate,
    record,
)
from report import write_results

RATES = (0.01, 0.05, 0.2)
CHEATERS = {
    "corrupt-100%": ("corrupt", 1.0),
    "corrupt-10%": ("corrupt", 0.1),
    "random-100%": ("random", 1.0),
    "lazy-50%": ("lazy", 0.5),
    "fabricate-logprobs-100%": ("fabricate-logprobs", 1.0),
}
EXACT_DETECTS = {"corrupt": 1.0, "random": 1.0, "lazy": 1.0}
SEMANTIC_DETECTS = {"corrupt": 1.0, "random": 1.0, "lazy": 0.5}
SEMANTIC_FALSE_VERDICT = 0.0
TEACHER_DETECTS = {"corrupt": 1.0, "random": 1.0, "lazy": 1.0, "fabricate-logprobs": 1.0}
TEACHER_FALSE_VERDICT = 0.0
TEACHER_COST = 0.5
"""Assumed without measurement: one prefill costs half a generation."""
HONEST_TIMEOUTS, HONEST_ERRORS = 0.02, 0.01
INJECTED_FALSE_VERDICTS = 0.01
TASK_LIMIT = 5000
POLICY = ReputationPolicy()


@dataclass(frozen=True)
class Strategy:
    name: str
    extra_runs: float
    """Extra runs per checked task when everybody agrees."""
    detects_by_kind: dict[str, float]
    false_verdict_rate: float
    run_cost: float = 1.0
    """Cost of one extra run, in generations of the checked task."""
    teacher: bool = False

    def detects(self, kind: str) -> float:
        """Consensus over texts cannot see fabricated logprobs: the text is honest."""
        return self.detects_by_kind.get(kind, 0.0)

    def false_verdict(self) -> float:
        return self.false_verdict_rate

    def injected(self, rate: float) -> Strategy:
        """The same strategy with ``rate`` more false verdicts."""
        return replace(self, false_verdict_rate=self.false_verdict_rate + rate)


def strategies(rates: dict[str, object]) -> tuple[Strategy, ...]:
    exact = rates.get("exact_detects", EXACT_DETECTS)
    semantic = rates.get("semantic_detects", SEMANTIC_DETECTS)
    exact_fv = 1.0 - float(str(rates.get("exact_honest_equal", 1.0)))
    # Redundant runs decode greedily (router/verify/service.py), so the greedy rate applies.
    semantic_fv = float(str(rates.get("semantic_false_verdict_greedy", SEMANTIC_FALSE_VERDICT)))
    teacher = rates.get("teacher_detects", TEACHER_DETECTS)
    teacher_fv = float(str(rates.get("teacher_honest_fail", TEACHER_FALSE_VERDICT)))
    teacher_cost = float(str(rates.get("score_over_generate_cpu", TEACHER_COST)))
    assert isinstance(exact, dict) and isinstance(semantic, dict) and isinstance(teacher, dict)
    return (
        Strategy("spot-exact", 1.0, exact, exact_fv),
        Strategy("spot-teacher", 1.0, teacher, teacher_fv, teacher_cost, teacher=True),
        Strategy("redundant-exact", 2.0, exact, exact_fv),
        Strategy("redundant-semantic", 2.0, semantic, semantic_fv),
    )


def checked_outcome(wrong: bool, rng: random.Random, strategy: Strategy) -> tuple[Outcome, float]:
    """The verdict on one checked task and the cost of its extra runs."""
    if strategy.teacher:
        failed = wrong or rng.random() < strategy.false_verdict()
        prefills = 2 if failed else 1  # a failure is confirmed by a referee
        return (Outcome.FAIL if failed else Outcome.PASS), prefills * strategy.run_cost
    return _consensus_outcome(wrong, rng, strategy)


def _consensus_outcome(
    wrong: bool, rng: random.Random, strategy: Strategy
) -> tuple[Outcome, float]:
    """The verdict through the router's ``decide`` and its extra runs."""
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


def check_of(
    standing: Standing, p: float, strategy: Strategy, spot: Strategy, rng: random.Random
) -> Strategy | None:
    """The check this task gets, if any: the strategy's at rate p, an exact
    one (spot check or canary) for the rest of a suspect's higher rate."""
    rate = check_rate(standing, p, POLICY)
    if rng.random() >= rate:
        return None
    return strategy if rng.random() < p / rate else spot


def until_quarantine(
    kind: str, share: float, p: float, strategy: Strategy, spot: Strategy, rng: random.Random
) -> tuple[int | None, int, float]:
    """Tasks until quarantine (None: not within TASK_LIMIT), tasks, extra runs."""
    standing, extra = Standing(), 0.0
    for task in range(1, TASK_LIMIT + 1):
        now = float(task)
        cheated = rng.random() < share
        standing = record(standing, Outcome.COMPLETED, now, POLICY)
        check = check_of(standing, p, strategy, spot, rng)
        if check is not None:
            wrong = cheated and rng.random() < check.detects(kind)
            outcome, runs = checked_outcome(wrong, rng, check)
            extra += runs
            standing = record(standing, outcome, now, POLICY)
        if standing.quarantined:
            return task, task, extra
    return None, TASK_LIMIT, extra


def honest(
    p: float, strategy: Strategy, spot: Strategy, rng: random.Random, tasks: int
) -> tuple[bool, float]:
    standing, extra = Standing(), 0.0
    for task in range(1, tasks + 1):
        now = float(task)
        roll = rng.random()
        if roll < HONEST_TIMEOUTS:
            standing = record(standing, Outcome.TIMEOUT, now, POLICY)
        elif roll < HONEST_TIMEOUTS + HONEST_ERRORS:
            standing = record(standing, Outcome.ERROR, now, POLICY)
        else:
            standing = record(standing, Outcome.COMPLETED, now, POLICY)
            check = check_of(standing, p, strategy, spot, rng)
            if check is not None:
                outcome, runs = checked_outcome(False, rng, check)
                extra += runs
                standing = record(standing, outcome, now, POLICY)
        if standing.quarantined:
            return True, extra
    return False, extra


def _overhead(outcomes: list[tuple[bool, float]], tasks: int) -> float:
    """Extra runs for verification as a share of all runs (honest miners)."""
    extra = sum(e for _, e in outcomes)
    return round(extra / (extra + len(outcomes) * tasks), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--honest-tasks", type=int, default=1000)
    parser.add_argument(
        "--honest-trials",
        type=int,
        default=1000,
        help="honest miners simulated with injected false verdicts, per row",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--assume", action="store_true", help="skip the llama.cpp measurement; use the defaults"
    )
    parser.add_argument(
        "--rates-from",
        type=Path,
        help="reuse the rates measured by an earlier run (its JSON) instead of measuring",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "verification.json"
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rates: dict[str, object] = {}
    if args.rates_from is not None:
        rates = json.loads(args.rates_from.read_text())["settings"]["measured_rates"]
        Console().print(f"rates measured earlier ({args.rates_from}): {rates}")
    elif not args.assume:
        from teacher_rates import measure as measure_teacher
        from verification_rates import measure

        rates = asyncio.run(measure())
        Console().print(f"measured outcome rates: {rates}")
        teacher = asyncio.run(measure_teacher())
        rates.update({k: v for k, v in teacher.items() if k.startswith(("teacher", "honest"))})
        rates.update({k: v for k, v in teacher.items() if k.startswith("score_over")})
        rates["teacher_prompts"] = teacher["prompts"]
        rates["teacher_max_tokens"] = teacher["max_tokens"]
        rates["teacher_spread"] = teacher["spread"]
        Console().print(f"measured teacher-forced rates: {teacher}")
    rows = []
    chosen = strategies(rates)
    spot = chosen[0]
    for strategy in chosen:
        # The router's suspect checks go through the same spot-check strategy:
        # teacher-forced under --spot-check-strategy teacher.
        suspect_checks = strategy if strategy.teacher else spot
        for p in RATES:
            row: dict[str, object] = {"strategy": strategy.name, "p": p}
            for label, (kind, share) in CHEATERS.items():
                runs = [
                    until_quarantine(kind, share, p, strategy, suspect_checks, rng)
                    for _ in range(args.trials)
                ]
                caught = [r[0] for r in runs if r[0] is not None]
                row[label] = round(statistics.mean(caught), 1) if caught else None
                row[f"{label} caught"] = len(caught) / len(runs)
            outcomes = [
                honest(p, strategy, suspect_checks, rng, args.honest_tasks)
                for _ in range(args.trials)
            ]
            row["honest FP"] = sum(q for q, _ in outcomes) / len(outcomes)
            unlucky = [
                honest(
                    p,
                    strategy.injected(INJECTED_FALSE_VERDICTS),
                    suspect_checks.injected(INJECTED_FALSE_VERDICTS),
                    rng,
                    args.honest_tasks,
                )
                for _ in range(args.honest_trials)
            ]
            row["honest FP @1% FV"] = sum(q for q, _ in unlucky) / len(unlucky)
            row["overhead"] = _overhead(outcomes, args.honest_tasks)
            row["overhead @1% FV"] = _overhead(unlucky, args.honest_tasks)
            rows.append(row)
    table = Table(title="Verification (simulated over the real verdict + reputation logic)")
    columns = [
        "strategy",
        "p",
        *CHEATERS,
        "honest FP",
        "honest FP @1% FV",
        "overhead",
        "overhead @1% FV",
    ]
    for column in columns:
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for row in rows:
        cells = []
        for column in columns:
            value = row[column]
            if column in CHEATERS:
                caught = row[f"{column} caught"]
                cells.append("never" if value is None else f"{value} ({caught:.0%})")
            elif column.startswith("overhead"):
                cells.append(f"{value:.1%}")
            elif column.startswith("honest FP"):
                cells.append(f"{value:.2%}")
            else:
                cells.append(str(value))
        table.add_row(*cells)
    Console(width=160).print(table)
    settings = {
        "trials": args.trials,
        "honest_tasks": args.honest_tasks,
        "honest_trials_with_false_verdicts": args.honest_trials,
        "injected_false_verdict_rate": INJECTED_FALSE_VERDICTS,
        "task_limit": TASK_LIMIT,
        "measured_rates": rates or "not measured (--assume)",
        "assumed_if_not_measured": {
            "exact_detects": EXACT_DETECTS,
            "semantic_detects": SEMANTIC_DETECTS,
            "semantic_false_verdict": SEMANTIC_FALSE_VERDICT,
            "teacher_detects": TEACHER_DETECTS,
            "teacher_false_verdict": TEACHER_FALSE_VERDICT,
            "teacher_cost": TEACHER_COST,
        },
        "honest_timeouts": HONEST_TIMEOUTS,
        "honest_errors": HONEST_ERRORS,
        "policy": repr(POLICY),
        "simulated": "miners and tasks; consensus.decide and reputation.record are the router's",
    }
    write_results(args.out, "verification", settings, rows)


if __name__ == "__main__":
    main()

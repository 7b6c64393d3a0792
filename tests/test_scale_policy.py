"""The scaling policy on signal sequences: scale up fast, down slow, no flapping."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import pytest

from inferswarm.router.scale.policy import (
    Decision,
    Direction,
    ModelSignals,
    ScaleMemory,
    ScalePolicy,
    decide,
)
from inferswarm.router.scale.settings import LocalBudget

FIXTURES = Path(__file__).parent / "fixtures" / "scale"
POLICY = ScalePolicy(
    min_miners=1,
    max_miners=6,
    target_utilization=0.7,
    ttft_slo_s=1.0,
    scale_down_window_s=20,
    scale_down_cooldown_s=20,
)
IDLE = ModelSignals("m", miners=1, slots_per_miner=1, busy_slots=0, waiting=0)


def run(
    policy: ScalePolicy, sequence: list[tuple[float, ModelSignals]], follow: bool = True
) -> list[Decision]:
    """Decisions over ``sequence``; with ``follow``, each step's miner count is
    what the previous decision asked for (miners appear at once)."""
    memory = ScaleMemory()
    decisions = []
    miners = sequence[0][1].miners
    for now, signals in sequence:
        if follow:
            signals = replace(signals, miners=miners)
        decision, memory = decide(policy, signals, memory, now)
        decisions.append(decision)
        miners = decision.desired
    return decisions


def every(seconds: float, *signals: ModelSignals) -> list[tuple[float, ModelSignals]]:
    return [(i * seconds, s) for i, s in enumerate(signals)]


def test_a_queue_scales_up_at_the_next_evaluation() -> None:
    busy = replace(IDLE, busy_slots=1, waiting=3)
    decisions = run(POLICY, every(2, IDLE, IDLE, busy))
    assert [d.direction for d in decisions] == [Direction.HOLD, Direction.HOLD, Direction.UP]
    # 4 requests in flight at 0.7 per single-slot miner: 6 miners (the maximum).
    assert decisions[-1].desired == 6
    assert "waiting 3" in decisions[-1].reason


def test_the_count_stays_within_min_and_max() -> None:
    flood = replace(IDLE, busy_slots=1, waiting=500)
    assert run(POLICY, every(2, flood))[0].desired == POLICY.max_miners
    many_idle = replace(IDLE, miners=0)
    assert run(POLICY, every(2, many_idle))[0].desired == POLICY.min_miners


def test_scale_down_waits_for_the_cooldown_then_goes_one_at_a_time() -> None:
    high = replace(IDLE, miners=3, busy_slots=2, waiting=0)  # within the tolerance: hold
    sequence = every(2, high, *[replace(IDLE, miners=3)] * 30)
    decisions = run(POLICY, sequence)
    downs = [
        (t, d)
        for (t, _), d in zip(sequence, decisions, strict=True)
        if d.direction is Direction.DOWN
    ]
    assert [d.desired for _, d in downs] == [2, 1]
    # Nothing goes before the window of the last high demand and the cooldown have passed,
    # and the steps are a cooldown apart.
    assert downs[0][0] >= POLICY.scale_down_window_s
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(downs)]
    assert all(gap >= POLICY.scale_down_cooldown_s for gap in gaps)


def test_steady_load_near_the_target_does_not_flap() -> None:
    # 3 miners, demand alternating 2 and 3: within tolerance or wanting 3 or 4.
    wobble = [replace(IDLE, miners=3, busy_slots=2 + (i % 2), waiting=0) for i in range(60)]
    decisions = run(POLICY, every(2, *wobble))
    changes = [d for d in decisions if d.direction is not Direction.HOLD]
    assert len(changes) <= 2, [(d.current, d.desired, d.reason) for d in changes]


def test_a_slo_breach_with_requests_waiting_adds_a_miner() -> None:
    late = replace(IDLE, miners=2, busy_slots=1, waiting=0, ttft_p95_s=3.0)
    assert run(POLICY, every(2, late))[0].direction is Direction.HOLD  # no pressure: not our miners
    late_and_waiting = replace(late, busy_slots=2, waiting=0)
    decision = run(POLICY, every(2, late_and_waiting))[0]
    assert decision.desired == 3
    assert "SLO" in decision.reason


def test_slo_steps_are_spaced_by_their_cooldown() -> None:
    # Demand alone is within the tolerance (6 busy of 8 slots); only the SLO asks for more.
    late = replace(IDLE, miners=2, slots_per_miner=4, busy_slots=6, waiting=0, ttft_p95_s=3.0)
    decisions = run(POLICY, every(2, *[late] * 6), follow=False)
    ups = [i for i, d in enumerate(decisions) if d.direction is Direction.UP]
    assert ups == [0, 5]  # 10 s of SLO cooldown at 2 s per evaluation


def test_rising_arrivals_scale_ahead_of_the_queue() -> None:
    flat = replace(IDLE, miners=2, busy_slots=1, arrivals_per_s=2.0, previous_arrivals_per_s=2.0)
    rising = replace(flat, arrivals_per_s=4.0)
    assert run(POLICY, every(2, flat))[0].direction is Direction.HOLD
    decision = run(POLICY, every(2, rising))[0]
    assert decision.direction is Direction.UP
    assert "rising" in decision.reason


def test_bad_bounds_say_what_to_change() -> None:
    with pytest.raises(ValueError, match="min-miners"):
        ScalePolicy(min_miners=0)
    with pytest.raises(ValueError, match="max-miners"):
        ScalePolicy(min_miners=3, max_miners=2)


def _recorded(name: str) -> list[tuple[float, ModelSignals]]:
    rows = json.loads((FIXTURES / name).read_text())
    return [(row["at"], ModelSignals(**row["signals"])) for row in rows]


def test_recorded_load_profile_scales_up_at_once_and_down_after_the_cooldown() -> None:
    """Signals the router recorded (``bench/autoscale.py --record``) under steps of
    1, 4, 9 and 1 requests/s, replayed with the miner counts they had."""
    sequence = _recorded("load_step.json")
    decisions = run(POLICY, sequence, follow=False)
    per_miner = POLICY.target_utilization
    for (_, signals), decision in zip(sequence, decisions, strict=True):
        overloaded = signals.demand > signals.miners * per_miner * (1 + POLICY.tolerance)
        if overloaded and signals.miners < POLICY.max_miners:
            assert decision.direction is Direction.UP, decision
    changes = [
        (t, d)
        for (t, _), d in zip(sequence, decisions, strict=True)
        if d.direction is not Direction.HOLD
    ]
    assert any(d.direction is Direction.DOWN for _, d in changes)
    for (before, _), (at, decision) in itertools.pairwise(changes):
        if decision.direction is Direction.DOWN:
            assert at - before >= POLICY.scale_down_cooldown_s


def test_the_local_budget_fits_miners_by_cores_and_memory() -> None:
    gib = 2**30
    assert LocalBudget(cpus=2, memory_bytes=8 * gib, miner_memory_bytes=gib).miners() == 2
    assert LocalBudget(cpus=8, memory_bytes=3 * gib, miner_memory_bytes=gib).miners() == 3
    assert (
        LocalBudget(cpus=2, memory_bytes=gib, miner_cpus=0.25, miner_memory_bytes=gib // 8).miners()
        == 8
    )

"""The scaling decision, as a pure function of recorded signals.

Like Knative's KPA and KEDA/HPA: the desired count is the demand (requests
in flight, running or waiting) over what one miner should carry at the target
utilisation, raised when arrivals are rising and when the p95 time to first
token or queue wait breaks the SLO. Scale-up is immediate; scale-down takes
the highest count wanted over a stabilisation window, waits a cooldown after
any change, and at most halves the count at once. A tolerance band around the target
utilisation (hysteresis) keeps the count still under steady load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum


class Direction(StrEnum):
    UP = "up"
    DOWN = "down"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class ScalePolicy:
    min_miners: int = 1
    max_miners: int = 4
    target_utilization: float = 0.7
    """Share of slots busy that one miner should carry at steady state."""
    tolerance: float = 0.1
    """No change while demand is within this share of the target (hysteresis)."""
    ttft_slo_s: float = 2.0
    """p95 time to first token (and queue wait) above this asks for one more miner."""
    slo_step_cooldown_s: float = 10.0
    """Between two SLO-driven steps up, so a new miner can show its effect first."""
    trend_tolerance: float = 0.25
    """Arrivals must rise by more than this share before the trend counts."""
    max_trend_factor: float = 2.0
    scale_down_window_s: float = 30.0
    """Scale down to the highest count wanted over this window (KPA's stable window)."""
    scale_down_cooldown_s: float = 30.0
    """No scale-down sooner than this after any change."""
    max_scale_down_rate: float = 2.0
    """One scale-down keeps at least current / this many (KPA's default halving)."""

    def __post_init__(self) -> None:
        if self.min_miners < 1:
            raise ValueError(
                "--min-miners must be at least 1: with no miner a request has nowhere to wait"
            )
        if self.max_miners < self.min_miners:
            raise ValueError(
                f"--max-miners ({self.max_miners}) is below --min-miners ({self.min_miners})"
            )
        if not 0 < self.target_utilization <= 1:
            raise ValueError("the target utilisation must be in (0, 1]")


@dataclass(frozen=True, slots=True)
class ModelSignals:
    """What the router saw for one model at one evaluation."""

    model: str
    miners: int
    """Miners counted as capacity: live ones and those starting up."""
    slots_per_miner: float
    busy_slots: int
    waiting: int
    """Requests queued in the router for a free slot."""
    ttft_p95_s: float | None = None
    queue_wait_p95_s: float | None = None
    arrivals_per_s: float = 0.0
    """Over the recent window."""
    previous_arrivals_per_s: float = 0.0
    """Over the window before it, for the trend."""
    average_demand: float | None = None
    """Requests in flight, averaged over the last few seconds (KPA's panic
    window): steadier than one reading under bursty arrivals."""

    @property
    def demand(self) -> float:
        """What the count follows: the recent average, or the reading now."""
        now = self.busy_slots + self.waiting
        return now if self.average_demand is None else self.average_demand


@dataclass(frozen=True, slots=True)
class ScaleMemory:
    """What the policy remembers between evaluations of one model."""

    last_change_at: float | None = None
    last_slo_step_at: float | None = None
    wanted: tuple[tuple[float, int], ...] = ()
    """(time, count wanted) over the scale-down window."""


@dataclass(frozen=True, slots=True)
class Decision:
    model: str
    current: int
    desired: int
    reason: str

    @property
    def direction(self) -> Direction:
        if self.desired > self.current:
            return Direction.UP
        if self.desired < self.current:
            return Direction.DOWN
        return Direction.HOLD


def decide(
    policy: ScalePolicy, signals: ModelSignals, memory: ScaleMemory, now: float
) -> tuple[Decision, ScaleMemory]:
    """The miner count ``signals.model`` should have, why, and what to remember."""
    want, reasons = _wanted(policy, signals, memory, now)
    want = min(max(want, policy.min_miners), policy.max_miners)
    window_start = now - policy.scale_down_window_s
    wanted = (*(w for w in memory.wanted if w[0] >= window_start), (now, want))
    memory = replace(memory, wanted=wanted)
    if signals.miners < want:
        if any("SLO" in reason for reason in reasons):
            memory = replace(memory, last_slo_step_at=now)
        reason = "; ".join(reasons) or f"below the minimum of {policy.min_miners}"
        return _change(signals, want, reason, memory, now)
    if signals.miners > policy.max_miners:
        return _change(signals, policy.max_miners, "above the maximum", memory, now)
    stable = max(count for _, count in wanted)
    if stable >= signals.miners:
        return Decision(signals.model, signals.miners, signals.miners, _hold(reasons)), memory
    cooling = memory.last_change_at is not None and (
        now - memory.last_change_at < policy.scale_down_cooldown_s
    )
    if cooling:
        reason = f"would go to {stable} but in cooldown after the last change"
        return Decision(signals.model, signals.miners, signals.miners, reason), memory
    desired = max(stable, math.ceil(signals.miners / policy.max_scale_down_rate))
    reason = (
        f"demand {signals.demand:.1f} needs {stable} over the last {policy.scale_down_window_s:g} s"
    )
    return _change(signals, desired, reason, memory, now)


def _wanted(
    policy: ScalePolicy, signals: ModelSignals, memory: ScaleMemory, now: float
) -> tuple[int, list[str]]:
    per_miner = signals.slots_per_miner * policy.target_utilization
    current = signals.miners
    demand = signals.demand
    if current and abs(demand / (current * per_miner) - 1) <= policy.tolerance:
        want = current
        reasons = [f"demand {demand:.1f} within {policy.tolerance:.0%} of the target"]
    else:
        want = math.ceil(round(demand / per_miner, 6))
        reasons = [
            f"demand {demand:.1f} (now busy {signals.busy_slots}, waiting {signals.waiting})"
        ]
    trend = _trend(signals)
    if demand and trend > 1 + policy.trend_tolerance:
        factor = min(trend, policy.max_trend_factor)
        want = max(want, math.ceil(demand * factor / per_miner))
        reasons.append(f"arrivals rising x{trend:.1f}")
    late = _slo_breach(policy, signals)
    pressed = signals.waiting > 0 or signals.busy_slots >= current * per_miner
    settled = memory.last_slo_step_at is None or (
        now - memory.last_slo_step_at >= policy.slo_step_cooldown_s
    )
    if late and pressed and settled:
        want = max(want, current + 1)
        reasons.append(late)
    return want, reasons


def _trend(signals: ModelSignals) -> float:
    if signals.previous_arrivals_per_s <= 0:
        return 1.0
    return signals.arrivals_per_s / signals.previous_arrivals_per_s


def _slo_breach(policy: ScalePolicy, signals: ModelSignals) -> str:
    slo = policy.ttft_slo_s
    if signals.ttft_p95_s is not None and signals.ttft_p95_s > slo:
        return f"p95 TTFT {signals.ttft_p95_s:.2f} s over the {slo:g} s SLO"
    if signals.queue_wait_p95_s is not None and signals.queue_wait_p95_s > slo:
        return f"p95 queue wait {signals.queue_wait_p95_s:.2f} s over the {slo:g} s SLO"
    return ""


def _change(
    signals: ModelSignals, desired: int, reason: str, memory: ScaleMemory, now: float
) -> tuple[Decision, ScaleMemory]:
    decision = Decision(signals.model, signals.miners, desired, reason)
    return decision, replace(memory, last_change_at=now)


def _hold(reasons: list[str]) -> str:
    return "; ".join(reasons)

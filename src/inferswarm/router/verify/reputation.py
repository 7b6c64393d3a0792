"""Reputation: a pure function of a miner's evidence, decayed over time.

A miner's standing is two decayed sums of evidence, good and bad. Each outcome
adds its weight to one of them; both halve every ``half_life_s`` so old
behaviour fades. The score is the mean of a Beta posterior with a prior of
``prior_good`` and ``prior_bad``: a new miner starts at 0.8, every failed
verification costs as much as twenty passes.

Below ``quarantine_below`` a miner is quarantined: it gets only canary tasks
(prompts with known answers). It leaves quarantine after ``canaries_to_release``
canary passes in a row (a failed canary starts the count again), not by
waiting; it then comes back on probation at a score of ``release_at``, so one
more failure sends it back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class Outcome(StrEnum):
    PASS = "pass"
    """A verification agreed with this miner's result."""
    FAIL = "fail"
    """A verification found this miner's result wrong."""
    FORGED = "forged"
    """A result whose signature or output hash did not verify."""
    COMPLETED = "completed"
    """A result delivered and signed, not (yet) verified."""
    TIMEOUT = "timeout"
    ERROR = "error"
    DROP = "drop"
    """The connection died with tasks in flight."""


@dataclass(frozen=True)
class ReputationPolicy:
    half_life_s: float = 6 * 3600.0
    prior_good: float = 4.0
    prior_bad: float = 1.0
    quarantine_below: float = 0.5
    release_at: float = 0.7
    canaries_to_release: int = 5
    weights: tuple[tuple[Outcome, float], ...] = (
        (Outcome.PASS, 1.0),
        (Outcome.FAIL, 20.0),
        (Outcome.FORGED, 20.0),
        (Outcome.COMPLETED, 0.05),
        (Outcome.TIMEOUT, 0.5),
        (Outcome.ERROR, 0.25),
        (Outcome.DROP, 0.25),
    )

    def weight(self, outcome: Outcome) -> float:
        return dict(self.weights)[outcome]


GOOD_OUTCOMES = frozenset({Outcome.PASS, Outcome.COMPLETED})


@dataclass(frozen=True)
class Standing:
    """One miner's evidence as of ``updated_at`` (seconds, any epoch)."""

    good: float = 0.0
    bad: float = 0.0
    updated_at: float = 0.0
    quarantined: bool = False
    canary_passes: int = 0
    """Canaries passed since the miner was last quarantined."""
    passes: int = 0
    fails: int = 0

    def decayed(self, now: float, policy: ReputationPolicy) -> Standing:
        elapsed = max(0.0, now - self.updated_at)
        factor = 0.5 ** (elapsed / policy.half_life_s)
        return replace(self, good=self.good * factor, bad=self.bad * factor, updated_at=now)

    def score(self, now: float, policy: ReputationPolicy) -> float:
        current = self.decayed(now, policy)
        good = current.good + policy.prior_good
        return good / (good + current.bad + policy.prior_bad)


def record(
    standing: Standing,
    outcome: Outcome,
    now: float,
    policy: ReputationPolicy,
    *,
    canary: bool = False,
) -> Standing:
    """The standing after one more outcome, quarantined or released as it now deserves."""
    current = standing.decayed(now, policy)
    weight = policy.weight(outcome)
    if outcome in GOOD_OUTCOMES:
        current = replace(current, good=current.good + weight)
    else:
        current = replace(current, bad=current.bad + weight)
    if outcome is Outcome.PASS:
        current = replace(current, passes=current.passes + 1)
    elif outcome in (Outcome.FAIL, Outcome.FORGED):
        current = replace(current, fails=current.fails + 1)
    score = current.score(now, policy)
    if not current.quarantined:
        if score < policy.quarantine_below:
            return replace(current, quarantined=True, canary_passes=0)
        return current
    if canary:
        passes = current.canary_passes + 1 if outcome is Outcome.PASS else 0
        current = replace(current, canary_passes=passes)
    if current.canary_passes < policy.canaries_to_release:
        return current
    # Released on probation: the bad evidence is cut so the score is release_at.
    good = current.good + policy.prior_good
    bad = max(0.0, good / policy.release_at - good - policy.prior_bad)
    return replace(current, bad=min(current.bad, bad), quarantined=False, canary_passes=0)

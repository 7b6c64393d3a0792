"""Reputation: a pure function of a miner's evidence, decayed over time.

Two numbers come out of a miner's evidence, for two different questions.

**Score** (how much to trust it, for the scheduler and the displays): two
decayed sums of evidence, good and bad, each outcome adding its weight to one;
both halve every ``half_life_s``. The score is the mean of a Beta posterior
with a prior of ``prior_good`` and ``prior_bad`` (a new miner starts at 0.8).

**Suspicion** (is it cheating now, which decides quarantine): Page's CUSUM of
the log-likelihood ratio between "honest, but a check wrongly fails it at rate
``false_verdict_rate``" and "cheats on at least ``cheat_rate`` of its tasks".
A failed check adds ``log(cheat / false_verdict)``, a passed one takes away
``log((1 - false_verdict) / (1 - cheat))``, never below zero; it decays with
the same half-life. At ``quarantine_at`` failures' worth a miner is
quarantined. So one wrong verdict (a checker's bad day, a numeric difference
between builds) never quarantines an honest miner however new, a miner that
fails check after check is caught within a few checks, one that cheats on a
tenth of its tasks drifts up and is caught later, and a long honest history
buys no licence to start cheating (the sum never banks credit below zero).
While its suspicion is above zero a miner is checked at ``suspect_check_rate``
at least (``check_rate``), so a suspect is confirmed or cleared quickly.

A forged result (a signature or output hash that does not verify) is proof,
not a noisy verdict: it quarantines at once.

A quarantined miner gets only canary tasks (prompts with known answers). It
leaves quarantine after ``canaries_to_release`` canary passes in a row (a
failed canary starts the count again), not by waiting; it comes back on
probation, one failed check short of quarantine, with its score at least
``release_at``.
"""

from __future__ import annotations

import math
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
    release_at: float = 0.7
    canaries_to_release: int = 5
    false_verdict_rate: float = 0.01
    """How often a check may wrongly fail an honest miner, tolerated."""
    cheat_rate: float = 0.1
    """The smallest share of cheated tasks the suspicion test is tuned to catch."""
    quarantine_at: float = 5.5
    """Suspicion, in failed checks' worth, that quarantines."""
    suspect_check_rate: float = 1.0
    """Spot-check rate, at least, for a miner whose suspicion is above zero."""
    weights: tuple[tuple[Outcome, float], ...] = (
        (Outcome.PASS, 1.0),
        (Outcome.FAIL, 5.0),
        (Outcome.FORGED, 20.0),
        (Outcome.COMPLETED, 0.05),
        (Outcome.TIMEOUT, 0.5),
        (Outcome.ERROR, 0.25),
        (Outcome.DROP, 0.25),
    )

    def weight(self, outcome: Outcome) -> float:
        return dict(self.weights)[outcome]

    @property
    def fail_evidence(self) -> float:
        """What one failed check adds to the suspicion."""
        return math.log(self.cheat_rate / self.false_verdict_rate)

    @property
    def pass_evidence(self) -> float:
        """What one passed check takes away from the suspicion."""
        return math.log((1 - self.false_verdict_rate) / (1 - self.cheat_rate))

    @property
    def threshold(self) -> float:
        return self.quarantine_at * self.fail_evidence


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
    suspicion: float = 0.0

    def decayed(self, now: float, policy: ReputationPolicy) -> Standing:
        elapsed = max(0.0, now - self.updated_at)
        factor = 0.5 ** (elapsed / policy.half_life_s)
        return replace(
            self,
            good=self.good * factor,
            bad=self.bad * factor,
            suspicion=self.suspicion * factor,
            updated_at=now,
        )

    def score(self, now: float, policy: ReputationPolicy) -> float:
        current = self.decayed(now, policy)
        good = current.good + policy.prior_good
        return good / (good + current.bad + policy.prior_bad)


def check_rate(standing: Standing, base: float, policy: ReputationPolicy) -> float:
    """The spot-check rate for this miner's next task: suspects are checked more."""
    if standing.suspicion > 0 and base > 0:
        return max(base, policy.suspect_check_rate)
    return base


def record(
    standing: Standing,
    outcome: Outcome,
    now: float,
    policy: ReputationPolicy,
    *,
    canary: bool = False,
) -> Standing:
    """The standing after one more outcome, quarantined or released as it now deserves."""
    current = _counted(standing.decayed(now, policy), outcome, policy)
    if not current.quarantined:
        if outcome is Outcome.FORGED or current.suspicion >= policy.threshold:
            return replace(current, quarantined=True, canary_passes=0)
        return current
    if canary:
        passes = current.canary_passes + 1 if outcome is Outcome.PASS else 0
        current = replace(current, canary_passes=passes)
    if current.canary_passes < policy.canaries_to_release:
        return current
    return _released(current, policy)


def _counted(current: Standing, outcome: Outcome, policy: ReputationPolicy) -> Standing:
    weight = policy.weight(outcome)
    if outcome in GOOD_OUTCOMES:
        current = replace(current, good=current.good + weight)
    else:
        current = replace(current, bad=current.bad + weight)
    if outcome is Outcome.PASS:
        suspicion = max(0.0, current.suspicion - policy.pass_evidence)
        return replace(current, passes=current.passes + 1, suspicion=suspicion)
    if outcome in (Outcome.FAIL, Outcome.FORGED):
        suspicion = current.suspicion + policy.fail_evidence
        return replace(current, fails=current.fails + 1, suspicion=suspicion)
    return current


def _released(current: Standing, policy: ReputationPolicy) -> Standing:
    """On probation: one more failed check sends it back; the score is at least release_at."""
    good = current.good + policy.prior_good
    bad = max(0.0, good / policy.release_at - good - policy.prior_bad)
    suspicion = policy.threshold - policy.fail_evidence / 2
    return replace(
        current,
        bad=min(current.bad, bad),
        suspicion=suspicion,
        quarantined=False,
        canary_passes=0,
    )

"""Router-wide verification settings."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from inferswarm.router.verify.consensus import DEFAULT_SEMANTIC_THRESHOLD, Consensus
from inferswarm.router.verify.diversity import DEFAULT_PREFIX_V4, DEFAULT_PREFIX_V6


class SpotCheckStrategy(StrEnum):
    """How a spot-checked task is verified."""

    REDUNDANT = "redundant"
    """Re-run it on another miner, exact consensus (greedy tasks only), a referee on disagreement."""
    TEACHER = "teacher"
    """Score it on another miner with one teacher-forced prefill (any task, sampled too)."""
    MIXED = "mixed"
    """Either, at random per check (sampled tasks: teacher), so a miner cannot
    tell which check a task will get."""


@dataclass(frozen=True)
class VerifySettings:
    redundancy: int = 1
    diversity_prefix_v4: int = DEFAULT_PREFIX_V4
    diversity_prefix_v6: int = DEFAULT_PREFIX_V6
    """Redundant copies go to miners of distinct networks of these prefix lengths."""
    consensus: Consensus = Consensus.EXACT
    semantic_threshold: float = DEFAULT_SEMANTIC_THRESHOLD
    spot_check_rate: float = 0.0
    spot_check_tier_rates: tuple[tuple[int, float], ...] = ()
    """(tier, rate) pairs that replace ``spot_check_rate`` for miners of that tier."""
    spot_check_strategy: SpotCheckStrategy = SpotCheckStrategy.REDUNDANT

    def spot_check_rate_for(self, tier: int | None) -> float:
        """The spot-check rate for a miner of ``tier`` (None: unknown)."""
        return dict(self.spot_check_tier_rates).get(tier or 0, self.spot_check_rate)

    def spot_checks_on(self) -> bool:
        return self.spot_check_rate > 0 or any(r > 0 for _, r in self.spot_check_tier_rates)


def parse_tier_rates(specs: list[str]) -> tuple[tuple[int, float], ...]:
    """``["T1=0.2", "2=0.05"]`` -> ``((1, 0.2), (2, 0.05))``; ValueError says what is wrong."""
    rates: dict[int, float] = {}
    for spec in specs:
        tier_text, sep, rate_text = spec.partition("=")
        tier_text = tier_text.strip().upper().removeprefix("T")
        try:
            tier, rate = int(tier_text), float(rate_text)
        except ValueError:
            tier, rate = 0, -1.0
        if not sep or not 1 <= tier <= 5 or not 0 <= rate <= 1:
            raise ValueError(
                f"'{spec}' is not TIER=RATE with a tier T1..T5 and a rate from 0 to 1, e.g. T1=0.2"
            )
        rates[tier] = rate
    return tuple(sorted(rates.items()))

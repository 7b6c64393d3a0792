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
    spot_check_strategy: SpotCheckStrategy = SpotCheckStrategy.REDUNDANT

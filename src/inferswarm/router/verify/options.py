"""Router-wide verification settings."""

from __future__ import annotations

from dataclasses import dataclass

from inferswarm.router.verify.consensus import DEFAULT_SEMANTIC_THRESHOLD, Consensus
from inferswarm.router.verify.diversity import DEFAULT_PREFIX_V4, DEFAULT_PREFIX_V6


@dataclass(frozen=True)
class VerifySettings:
    redundancy: int = 1
    diversity_prefix_v4: int = DEFAULT_PREFIX_V4
    diversity_prefix_v6: int = DEFAULT_PREFIX_V6
    """Redundant copies go to miners of distinct networks of these prefix lengths."""
    consensus: Consensus = Consensus.EXACT
    semantic_threshold: float = DEFAULT_SEMANTIC_THRESHOLD
    spot_check_rate: float = 0.0

"""Router-wide verification settings."""

from __future__ import annotations

from dataclasses import dataclass

from inferswarm.router.verify.consensus import DEFAULT_SEMANTIC_THRESHOLD, Consensus


@dataclass(frozen=True)
class VerifySettings:
    redundancy: int = 1
    consensus: Consensus = Consensus.EXACT
    semantic_threshold: float = DEFAULT_SEMANTIC_THRESHOLD
    spot_check_rate: float = 0.0

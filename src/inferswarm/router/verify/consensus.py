"""Consensus over redundant runs of one task: pure verdict logic.

Every strategy reduces to a similarity matrix between the outputs and a
threshold: ``exact`` compares texts (1 if equal, else 0; used with greedy
decoding and a fixed seed, where honest miners on the same model file produce
the same tokens), ``semantic`` uses the cosine of sentence embeddings
(Cortensor's proof of inference). The answer is the medoid (the output most
similar to all others); outputs below the threshold from it disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from inferswarm.protocol import MinerId


class Consensus(StrEnum):
    EXACT = "exact"
    SEMANTIC = "semantic"


class Status(StrEnum):
    AGREED = "agreed"
    """Every output agrees with the answer."""
    MAJORITY = "majority"
    """More than half agree; the others are outvoted."""
    NO_CONSENSUS = "no_consensus"
    """No answer has a majority: nothing can be trusted or blamed."""


DEFAULT_SEMANTIC_THRESHOLD = 0.85


@dataclass(frozen=True)
class Verdict:
    status: Status
    answer: int | None
    """Index of the output handed to the client (None without consensus)."""
    agreeing: tuple[MinerId, ...]
    disagreeing: tuple[MinerId, ...]
    similarity: tuple[float, ...]
    """Each output's similarity to the medoid."""

    @property
    def trusted(self) -> bool:
        return self.status is not Status.NO_CONSENSUS


def exact_similarity(texts: Sequence[str]) -> list[list[float]]:
    return [[1.0 if a == b else 0.0 for b in texts] for a in texts]


def cosine_similarity(vectors: Sequence[Sequence[float]]) -> list[list[float]]:
    norms = [sum(x * x for x in v) ** 0.5 or 1.0 for v in vectors]
    return [
        [
            sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)
            for b, nb in zip(vectors, norms, strict=True)
        ]
        for a, na in zip(vectors, norms, strict=True)
    ]


def decide(
    miners: Sequence[MinerId], similarity: Sequence[Sequence[float]], threshold: float
) -> Verdict:
    """The medoid, who agrees with it (similarity >= threshold) and the verdict."""
    if not miners:
        raise ValueError("no outputs to decide between")
    totals = [sum(row) for row in similarity]
    medoid = max(range(len(miners)), key=lambda i: (totals[i], -i))
    to_medoid = tuple(float(similarity[medoid][i]) for i in range(len(miners)))
    agreeing = tuple(m for m, s in zip(miners, to_medoid, strict=True) if s >= threshold)
    disagreeing = tuple(m for m, s in zip(miners, to_medoid, strict=True) if s < threshold)
    if not disagreeing:
        status = Status.AGREED
    elif 2 * len(agreeing) > len(miners):
        status = Status.MAJORITY
    else:
        status = Status.NO_CONSENSUS
    answer = None if status is Status.NO_CONSENSUS else medoid
    return Verdict(status, answer, agreeing, disagreeing, to_medoid)

"""Which k miners run a redundant task: as independent as the pool allows.

Agreement between miners of one operator, or of one kind of machine, proves
less than agreement between strangers: one operator may run one cheat on all
its miners, and one build or device may share one numeric quirk. So the
choice prefers distinct operators first, then distinct tiers, and falls back
to repeats only when there are not enough of either.

An operator is what a miner declares (``inferswarm miner --operator NAME``).
A miner that declares none counts as its own operator: a declaration can only
group miners, never make them look more independent than they say they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from inferswarm.protocol import MinerId


@dataclass(frozen=True)
class Candidate:
    miner_id: MinerId
    operator: str
    """As declared; empty when the miner declared none."""
    tier: int

    @property
    def operator_key(self) -> str:
        return self.operator or f"miner:{self.miner_id}"


def choose_diverse(candidates: Sequence[Candidate], k: int) -> list[MinerId]:
    """Up to ``k`` miners, ``candidates`` being in order of preference: each
    pick is the most preferred one that adds a new operator and a new tier,
    else a new operator, else a new tier, else the most preferred left."""
    chosen: list[Candidate] = []
    left = list(candidates)
    while left and len(chosen) < k:
        operators = {c.operator_key for c in chosen}
        tiers = {c.tier for c in chosen}
        best = max(
            range(len(left)),
            key=lambda i: (
                left[i].operator_key not in operators,
                left[i].tier not in tiers,
                -i,
            ),
        )
        chosen.append(left.pop(best))
    return [c.miner_id for c in chosen]

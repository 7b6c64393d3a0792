"""Choosing a miner for a task: a pure function over an immutable snapshot.

``choose_miner`` applies filters (serves the model, live, not excluded, the
context window fits), then scores the survivors under a policy and picks the
best. No I/O, no clock, no globals: the same code runs in the router and in
simulations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from inferswarm.protocol import MinerId, ModelName


class Policy(StrEnum):
    LEAST_LOADED = "least_loaded"
    ROUND_ROBIN = "round_robin"


class MinerState(StrEnum):
    LIVE = "live"
    DRAINING = "draining"


@dataclass(frozen=True, slots=True)
class MinerView:
    """What the scheduler knows about one miner at one instant."""

    miner_id: MinerId
    state: MinerState
    context_lengths: dict[ModelName, int]
    slots: int
    busy: int
    tokens_per_s: float | None = None

    @property
    def load(self) -> float:
        return self.busy / self.slots


@dataclass(frozen=True, slots=True)
class Snapshot:
    miners: tuple[MinerView, ...]


@dataclass(frozen=True, slots=True)
class TaskNeeds:
    """What a task asks of a miner. ``sequence`` is the task's arrival number,
    used by round robin to rotate without hidden state."""

    model: ModelName
    max_tokens: int | None = None
    exclude: frozenset[MinerId] = field(default_factory=frozenset)
    sequence: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    miner_id: MinerId | None
    reason: str


MinerFilter = Callable[[TaskNeeds, MinerView], bool]


def serves_model(task: TaskNeeds, miner: MinerView) -> bool:
    return task.model in miner.context_lengths


def is_live(task: TaskNeeds, miner: MinerView) -> bool:
    return miner.state is MinerState.LIVE


def not_excluded(task: TaskNeeds, miner: MinerView) -> bool:
    return miner.miner_id not in task.exclude


def context_fits(task: TaskNeeds, miner: MinerView) -> bool:
    if task.max_tokens is None:
        return True
    return task.max_tokens < miner.context_lengths[task.model]


# Each filter with the explanation given when it removes the last candidate.
FILTERS: tuple[tuple[MinerFilter, str], ...] = (
    (serves_model, "no connected miner serves model {model!r}"),
    (is_live, "every miner serving {model!r} is draining"),
    (not_excluded, "every miner serving {model!r} was already tried for this request"),
    (context_fits, "no miner serving {model!r} has a context window above max_tokens"),
)


def choose_miner(task: TaskNeeds, snapshot: Snapshot, policy: Policy) -> Decision:
    candidates: Sequence[MinerView] = snapshot.miners
    for keep, why_none in FILTERS:
        candidates = [miner for miner in candidates if keep(task, miner)]
        if not candidates:
            return Decision(None, why_none.format(model=task.model))
    chosen = _PICKERS[policy](task, candidates)
    return Decision(chosen.miner_id, f"{policy.value}: load {chosen.busy}/{chosen.slots}")


def _least_loaded(task: TaskNeeds, candidates: Sequence[MinerView]) -> MinerView:
    # Equally loaded miners take turns, so idle miners share a trickle of work.
    lowest = min(m.load for m in candidates)
    tied = [m for m in candidates if m.load == lowest]
    return _round_robin(task, tied)


def _round_robin(task: TaskNeeds, candidates: Sequence[MinerView]) -> MinerView:
    ordered = sorted(candidates, key=lambda m: m.miner_id)
    return ordered[task.sequence % len(ordered)]


_PICKERS: dict[Policy, Callable[[TaskNeeds, Sequence[MinerView]], MinerView]] = {
    Policy.LEAST_LOADED: _least_loaded,
    Policy.ROUND_ROBIN: _round_robin,
}

"""Choosing a miner for a task: a pure function over an immutable snapshot.

``choose_miner`` narrows the miners serving the task's model with filters
(live, not quarantined, not already tried, the context window fits, a free
slot), then lets the policy pick among the survivors. No I/O, no clock, no
globals; randomness comes from a seed in the task, so the same input always
gives the same decision and the same code runs in the router and in
simulations.

Large pools are sampled: with more than ``SAMPLE_SIZE`` miners serving a model
the filters and scorers look at a seeded random sample, which keeps a decision
O(sample) instead of O(pool) (the power-of-d-choices result: a few dozen
random candidates find a near-best miner). Only if the sample has no eligible
miner is the whole pool scanned.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

from inferswarm.protocol import MinerId, ModelName
from inferswarm.protocol.variants import UnknownPrecision, resolve_variants, variant_on

SAMPLE_SIZE = 24
QUEUED_PER_SLOT = 2
"""Tasks a miner may hold waiting, per slot, beyond those it runs. A short
queue on each miner lets a fast miner take more work than it has slots
(shortest-expected-delay routing); beyond it, tasks wait in the router."""
DEFAULT_EXPECTED_OUTPUT_TOKENS = 256
"""Output assumed for a task with no max_tokens, when estimating its work."""
CACHE_LOAD_GUARD = 0.5
"""cache_aware follows prefix affinity only while the warm miner's load is
within this share of slots of the least-loaded candidate (SGLang's guard)."""
TIER_LIMITS = (25.0, 100.0, 400.0, 1600.0)
"""Aggregate generation tokens/s at which tiers 2, 3, 4 and 5 begin."""


class Policy(StrEnum):
    ROUND_ROBIN = "round_robin"
    LEAST_LOADED = "least_loaded"
    POWER_OF_TWO = "power_of_two"
    CAPACITY_AWARE = "capacity_aware"
    CACHE_AWARE = "cache_aware"
    SESSION_AFFINITY = "session_affinity"


class MinerState(StrEnum):
    LIVE = "live"
    DRAINING = "draining"
    QUARANTINED = "quarantined"
    """Shown, never scheduled: the registry reports it from the reputation book."""
    PARKED = "parked"
    """Standby autoscaling holds it in reserve: connected, offered no work."""


MIN_REPUTATION_WEIGHT = 0.1
TRUSTED_REPUTATION = 0.7
"""Miners at or above this score are scheduled on speed alone (new miners start at 0.8)."""


@dataclass(frozen=True, slots=True)
class Speed:
    """A miner's effective speed for one model: measured, then corrected by what
    the router observed. ``batched_generation`` is the aggregate with
    ``batched_sequences`` sequences running at once."""

    prompt: float
    generation: float
    batched_sequences: int = 1
    batched_generation: float | None = None

    def aggregate(self, sequences: int) -> float:
        """Total generation tokens/s with this many sequences running.

        Without a measured batch, sequences are assumed not to slow each other.
        With one, the total is interpolated linearly between one sequence and
        the batch, and flat beyond it (more sequences only share that speed).
        """
        if self.batched_generation is None:
            return self.generation * (sequences if sequences > 1 else 1)
        running = max(1, sequences)
        if self.batched_sequences <= 1:
            return self.generation
        share = min(running, self.batched_sequences) - 1
        span = self.batched_sequences - 1
        return self.generation + (self.batched_generation - self.generation) * share / span

    def per_sequence(self, sequences: int) -> float:
        if self.batched_generation is None:
            return self.generation  # sequences do not slow each other
        return self.aggregate(sequences) / max(1, sequences)


@dataclass(frozen=True, slots=True)
class MinerView:
    """What the scheduler knows about one miner at one instant."""

    miner_id: MinerId
    state: MinerState
    context_lengths: Mapping[ModelName, int]
    slots: int
    busy: int
    speed: Speed | None = None
    queued_tokens: int = 0
    """Expected tokens still to generate for the tasks already on this miner."""
    quarantined: bool = False
    """Excluded outright (reputation)."""
    reputation: float = 1.0
    """0..1. Below ``TRUSTED_REPUTATION`` the expected completion time is
    stretched in proportion, so a miner on probation gets work only when the
    trusted ones are much busier."""
    banned: bool = False
    """Failed recently: used only when no miner that is not banned can take the task."""

    @property
    def load(self) -> float:
        return self.busy / self.slots

    @property
    def has_free_slot(self) -> bool:
        return self.busy < self.slots

    @property
    def has_room(self) -> bool:
        """A free slot, or an acceptable queue on the miner itself."""
        return self.busy < self.slots * (1 + QUEUED_PER_SLOT)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An immutable view of the registry. ``prefixes`` maps a prompt-prefix
    block hash to the miners that recently processed it; ``sessions`` maps a
    session key to the miner that served it last."""

    miners: tuple[MinerView, ...]
    by_model: Mapping[ModelName, tuple[MinerView, ...]]
    prefixes: Mapping[int, frozenset[MinerId]] = field(default_factory=lambda: MappingProxyType({}))
    sessions: Mapping[str, MinerId] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(
        cls,
        miners: Sequence[MinerView],
        prefixes: Mapping[int, frozenset[MinerId]] | None = None,
        sessions: Mapping[str, MinerId] | None = None,
    ) -> Snapshot:
        by_model: dict[ModelName, list[MinerView]] = {}
        for miner in miners:
            for model in miner.context_lengths:
                by_model.setdefault(model, []).append(miner)
        # The prefix and session maps are read-only views, not copies: a
        # decision is synchronous, so they cannot change while it runs.
        return cls(
            miners=tuple(miners),
            by_model=MappingProxyType({m: tuple(v) for m, v in by_model.items()}),
            prefixes=MappingProxyType(prefixes) if isinstance(prefixes, dict) else prefixes or {},
            sessions=MappingProxyType(sessions) if isinstance(sessions, dict) else sessions or {},
        )


@dataclass(frozen=True, slots=True)
class TaskNeeds:
    """What a task asks of a miner.

    ``sequence`` is the task's arrival number (round robin rotates on it) and
    ``seed`` drives every random choice, so decisions are reproducible.
    ``prompt_tokens`` is a lower-bound estimate (the router has no tokenizer);
    ``prefix_blocks`` are the hashes of the prompt's leading blocks, each
    worth ``block_tokens`` tokens, for cache-aware routing.
    ``model`` is the name asked for (a family or a variant); ``choose_miner``
    fills ``variants`` with the served names that may answer it, most precise
    first, keeping only those at least as precise as ``min_precision``
    (left empty when ``model`` is served as it is and no floor is set).
    """

    model: ModelName
    prompt_tokens: int = 0
    max_tokens: int | None = None
    exclude: frozenset[MinerId] = frozenset()
    sequence: int = 0
    seed: int = 0
    prefix_blocks: tuple[int, ...] = ()
    block_tokens: int = 64
    session: str | None = None
    min_precision: str | None = None
    variants: tuple[ModelName, ...] = ()

    @property
    def needed_tokens(self) -> int:
        return self.prompt_tokens + (self.max_tokens or 1)

    @property
    def expected_output_tokens(self) -> int:
        return self.max_tokens or DEFAULT_EXPECTED_OUTPUT_TOKENS


@dataclass(frozen=True, slots=True)
class Decision:
    """The chosen miner, or None with the reason. ``saturated`` means miners
    could take the task but none has a free slot now: wait, do not fail."""

    miner_id: MinerId | None
    reason: str
    saturated: bool = False
    model: ModelName | None = None
    """The variant the chosen miner is to run."""


MinerFilter = Callable[[TaskNeeds, MinerView], bool]


def is_live(task: TaskNeeds, miner: MinerView) -> bool:
    return miner.state is MinerState.LIVE


def not_quarantined(task: TaskNeeds, miner: MinerView) -> bool:
    return not miner.quarantined


def not_excluded(task: TaskNeeds, miner: MinerView) -> bool:
    return miner.miner_id not in task.exclude


def context_fits(task: TaskNeeds, miner: MinerView) -> bool:
    return _fits(task, miner)


# Each filter with the explanation given when it removes the last candidate.
FILTERS: tuple[tuple[MinerFilter, str], ...] = (
    (is_live, "every miner serving {model!r} is draining"),
    (not_quarantined, "every miner serving {model!r} is quarantined"),
    (not_excluded, "every miner serving {model!r} was already tried for this request"),
    (
        context_fits,
        "no miner serving {model!r} has a context window for the prompt plus max_tokens",
    ),
)


def choose_miner(task: TaskNeeds, snapshot: Snapshot, policy: Policy) -> Decision:
    if task.min_precision is not None or task.model not in snapshot.by_model:
        # A family, or a floor on precision: resolve to served variants. A
        # served name asked for as it is (the hot path) keeps variants empty.
        try:
            resolution = resolve_variants(task.model, snapshot.by_model, task.min_precision)
        except UnknownPrecision as exc:
            return Decision(None, str(exc))
        if not resolution.variants:
            return Decision(None, resolution.why_none)
        task = replace(task, variants=resolution.variants)
    pool = _pool(task, snapshot)
    if not pool:
        return Decision(None, f"no connected miner serves model {task.model!r}")
    rng = random.Random(task.seed)
    if len(pool) > SAMPLE_SIZE:
        decision = _decide(task, rng.sample(pool, SAMPLE_SIZE), snapshot, policy, rng)
        if decision.miner_id is not None:
            return decision
    return _decide(task, pool, snapshot, policy, rng)


def _pool(task: TaskNeeds, snapshot: Snapshot) -> tuple[MinerView, ...]:
    """Miners serving any of the task's variants, each once."""
    if len(task.variants) <= 1:
        return snapshot.by_model.get(task.variants[0] if task.variants else task.model, ())
    seen: dict[MinerId, MinerView] = {}
    for name in task.variants:
        for miner in snapshot.by_model.get(name, ()):
            seen.setdefault(miner.miner_id, miner)
    return tuple(seen.values())


def _eligible(task: TaskNeeds, miner: MinerView) -> bool:
    """All of FILTERS in one pass (the hot path); FILTERS explain a refusal."""
    return (
        miner.state is MinerState.LIVE
        and not miner.quarantined
        and miner.miner_id not in task.exclude
        and _fits(task, miner)
    )


def _fits(task: TaskNeeds, miner: MinerView) -> bool:
    """Some variant of the task has a window on this miner for the prompt and
    max_tokens; the model as asked (the usual case) without a call."""
    if not task.variants:
        window = miner.context_lengths.get(task.model)
        return window is not None and task.prompt_tokens + (task.max_tokens or 1) <= window
    return variant_on(task.variants, miner.context_lengths, task.needed_tokens) is not None


def _decide(
    task: TaskNeeds,
    candidates: Sequence[MinerView],
    snapshot: Snapshot,
    policy: Policy,
    rng: random.Random,
) -> Decision:
    # One pass (the hot path): miners with room, trusted ones apart from those
    # banned for a recent failure, which serve only when nobody else can.
    trusted: list[MinerView] = []
    banned: list[MinerView] = []
    eligible = 0
    limit = 1 + QUEUED_PER_SLOT
    for miner in candidates:
        if _eligible(task, miner):
            eligible += 1
            if miner.busy < miner.slots * limit:
                (banned if miner.banned else trusted).append(miner)
    if not eligible:
        return Decision(None, _why_none(task, candidates))
    roomy = trusted or banned
    if not roomy:
        return Decision(None, f"all {eligible} miners serving {task.model!r} are full", True)
    chosen, why = _PICKERS[policy](task, roomy, snapshot, rng)
    model = variant_on(task.variants or (task.model,), chosen.context_lengths, task.needed_tokens)
    return Decision(chosen.miner_id, f"{policy.value}: {why}", model=model)


def _why_none(task: TaskNeeds, candidates: Sequence[MinerView]) -> str:
    for keep, why_none in FILTERS:
        candidates = [miner for miner in candidates if keep(task, miner)]
        if not candidates:
            return why_none.format(model=task.model)
    raise AssertionError("_eligible and FILTERS disagree")


Picker = Callable[[TaskNeeds, Sequence[MinerView], Snapshot, random.Random], tuple[MinerView, str]]


def _round_robin(
    task: TaskNeeds, candidates: Sequence[MinerView], snapshot: Snapshot, rng: random.Random
) -> tuple[MinerView, str]:
    ordered = sorted(candidates, key=lambda m: m.miner_id)
    return ordered[task.sequence % len(ordered)], f"turn {task.sequence}"


def _least_loaded(
    task: TaskNeeds, candidates: Sequence[MinerView], snapshot: Snapshot, rng: random.Random
) -> tuple[MinerView, str]:
    # Equally loaded miners take turns, so idle miners share a trickle of work.
    lowest = min(m.load for m in candidates)
    tied = [m for m in candidates if m.load == lowest]
    chosen, _ = _round_robin(task, tied, snapshot, rng)
    return chosen, f"load {chosen.busy}/{chosen.slots}"


def _power_of_two(
    task: TaskNeeds, candidates: Sequence[MinerView], snapshot: Snapshot, rng: random.Random
) -> tuple[MinerView, str]:
    pair = rng.sample(list(candidates), min(2, len(candidates)))
    chosen = min(pair, key=lambda m: (m.load, m.miner_id))
    return chosen, f"lighter of {len(pair)} sampled, load {chosen.busy}/{chosen.slots}"


def expected_completion_s(task: TaskNeeds, miner: MinerView, fallback: Speed | None) -> float:
    """Seconds until this task would finish on this miner: its prompt at the
    miner's prompt speed, then its output at the per-sequence speed the miner
    has with one more sequence running. Work already queued on a full miner
    is ahead of it."""
    return _completion_s(task.prompt_tokens, task.expected_output_tokens, miner, fallback)


def _completion_s(
    prompt_tokens: int, output_tokens: int, miner: MinerView, fallback: Speed | None
) -> float:
    speed = miner.speed or fallback or _UNKNOWN
    busy, slots = miner.busy, miner.slots
    if busy < slots:
        wait = 0.0
        per_sequence = speed.per_sequence(busy + 1)
    else:
        # It starts once busy - slots + 1 tasks ahead have finished: their
        # share of the queued work, done at the miner's full speed.
        full = speed.aggregate(slots)
        wait = miner.queued_tokens * (busy - slots + 1) / busy / full
        per_sequence = full / slots
    return wait + prompt_tokens / speed.prompt + output_tokens / per_sequence


_UNKNOWN = Speed(prompt=1000.0, generation=10.0)


def _fallback_speed(candidates: Sequence[MinerView]) -> Speed | None:
    """Unmeasured miners are assumed typical of the rest (median), so they get
    work and are measured, rather than being starved or flooded."""
    if all(m.speed is not None for m in candidates):
        return None  # nobody needs it: skip the sort on the hot path
    known = sorted((m.speed for m in candidates if m.speed), key=lambda s: s.generation)
    return known[len(known) // 2] if known else _UNKNOWN


def _capacity_aware(
    task: TaskNeeds, candidates: Sequence[MinerView], snapshot: Snapshot, rng: random.Random
) -> tuple[MinerView, str]:
    fallback = _fallback_speed(candidates)
    prompt, output = task.prompt_tokens, task.expected_output_tokens
    best = candidates[0]
    best_s = _completion_s(prompt, output, best, fallback) / _trust(best)
    for miner in candidates[1:]:
        cost = _completion_s(prompt, output, miner, fallback) / _trust(miner)
        if cost < best_s or (cost == best_s and miner.miner_id < best.miner_id):
            best, best_s = miner, cost
    return best, f"expected completion {best_s:.2f} s"


def _trust(miner: MinerView) -> float:
    return max(MIN_REPUTATION_WEIGHT, min(1.0, miner.reputation / TRUSTED_REPUTATION))


def cached_prefix_tokens(task: TaskNeeds, miner: MinerView, snapshot: Snapshot) -> int:
    """Tokens of the task's prompt that this miner most likely holds in its KV cache."""
    matched = 0
    for block in task.prefix_blocks:
        holders = snapshot.prefixes.get(block)
        if holders is None or miner.miner_id not in holders:
            break
        matched += 1
    return matched * task.block_tokens


def _cache_aware(
    task: TaskNeeds, candidates: Sequence[MinerView], snapshot: Snapshot, rng: random.Random
) -> tuple[MinerView, str]:
    """Capacity-aware, with the prompt work a warm cache saves credited to the
    miner that holds it, as long as that miner is not much busier than the rest."""
    fallback = _fallback_speed(candidates)
    lightest = min(m.load for m in candidates)
    best: tuple[float, MinerId, MinerView, int] | None = None
    for miner in candidates:
        cost = expected_completion_s(task, miner, fallback) / _trust(miner)
        cached = cached_prefix_tokens(task, miner, snapshot)
        if cached and miner.load - lightest <= CACHE_LOAD_GUARD:
            cost -= min(cached, task.prompt_tokens) / (miner.speed or fallback or _UNKNOWN).prompt
        else:
            cached = 0
        if best is None or (cost, miner.miner_id) < (best[0], best[1]):
            best = (cost, miner.miner_id, miner, cached)
    assert best is not None
    return best[2], f"{best[3]} prefix tokens cached, expected completion {best[0]:.2f} s"


def _session_affinity(
    task: TaskNeeds, candidates: Sequence[MinerView], snapshot: Snapshot, rng: random.Random
) -> tuple[MinerView, str]:
    previous = snapshot.sessions.get(task.session) if task.session else None
    for miner in candidates:
        if miner.miner_id == previous and miner.has_free_slot:
            return miner, f"session {task.session!r} stays on its miner"
    chosen, why = _capacity_aware(task, candidates, snapshot, rng)
    return chosen, f"new or moved session; {why}"


_PICKERS: dict[Policy, Picker] = {
    Policy.ROUND_ROBIN: _round_robin,
    Policy.LEAST_LOADED: _least_loaded,
    Policy.POWER_OF_TWO: _power_of_two,
    Policy.CAPACITY_AWARE: _capacity_aware,
    Policy.CACHE_AWARE: _cache_aware,
    Policy.SESSION_AFFINITY: _session_affinity,
}


def tier_for(tokens_per_s: float | None) -> int:
    """Capability tier 1 (slowest) to 5 from aggregate generation tokens/s."""
    if tokens_per_s is None:
        return 1
    return 1 + sum(tokens_per_s >= limit for limit in TIER_LIMITS)

"""Which standby miner loads a model nobody serves, as a pure function.

When requests wait for a model that no connected miner serves, one miner that
lists a variant of it as ``loadable`` is asked to load it. A miner keeps that
list to the files on its disk that fit its free memory now, so a miner in the
list has the memory. Standby miners come first: parked ones, then live ones
with nothing running, then the least busy; among equals the fastest. Each
model gets one miner at a time and each miner one load at a time (its
loadable variants fit one by one, not all together); once the model is served
the autoscaler's usual scaling takes over. Unloading a cold model to make
room is not tried: a miner lists only what fits now, so the router cannot
tell what would fit after an unload.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from inferswarm.protocol import ModelName
from inferswarm.protocol.variants import resolve_variants


@dataclass(frozen=True, slots=True)
class Candidate:
    """A connected miner (not draining) as placement sees it."""

    miner_id: str
    name: str
    parked: bool
    busy_slots: int
    tokens_per_s: float
    serves: tuple[str, ...]
    loading: tuple[str, ...] = ()
    loadable: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Load:
    """Ask ``miner_id`` to load ``variant`` for the requests waiting on ``model``."""

    model: str
    """As the requests name it: a family or one variant."""
    variant: str
    miner_id: str
    miner_name: str
    reason: str


@dataclass(frozen=True, slots=True)
class Unplaced:
    """Demand for ``model`` that no miner is loading or can load."""

    model: str
    reason: str


def place(
    demand: Mapping[str, float],
    candidates: Sequence[Candidate],
    avoid: Collection[tuple[str, str]] = (),
) -> tuple[list[Load], list[Unplaced]]:
    """Loads to ask for, given requests in flight per model (``demand``), and the
    models in demand that stay without a miner, with why. ``avoid`` holds
    (miner id, variant) pairs not to ask again (a recent load failed)."""
    served = {name for c in candidates for name in c.serves}
    loading = {name: c.name for c in candidates for name in c.loading}
    busy: set[str] = set()
    loads: list[Load] = []
    unplaced: list[Unplaced] = []
    for model, count in sorted(demand.items(), key=lambda item: (-item[1], item[0])):
        if count <= 0 or _resolve(model, served):
            continue  # no demand, or a miner serves it: scaling's business
        on_its_way = _resolve(model, loading)
        if on_its_way:
            miner = loading[on_its_way[0]]
            unplaced.append(Unplaced(model, f"{on_its_way[0]} is loading on {miner}"))
            continue
        load = _choose(model, count, candidates, busy, avoid)
        if load is None:
            unplaced.append(Unplaced(model, _why_not(model, candidates, busy)))
            continue
        busy.add(load.miner_id)
        loads.append(load)
    return loads, unplaced


def _choose(
    model: str,
    demand: float,
    candidates: Sequence[Candidate],
    busy: set[str],
    avoid: Collection[tuple[str, str]],
) -> Load | None:
    options = [
        (c, variant)
        for c in candidates
        if c.miner_id not in busy and not c.loading
        for variant in _resolve(model, c.loadable)[:1]  # the most precise it can load
        if (c.miner_id, variant) not in avoid
    ]
    if not options:
        return None
    miner, variant = min(
        options,
        key=lambda o: (not o[0].parked, o[0].busy_slots, -o[0].tokens_per_s, o[0].name),
    )
    standing = "parked" if miner.parked else f"{miner.busy_slots} task(s) running"
    reason = (
        f"{demand:g} request(s) in flight for {model} and no miner serves it; "
        f"{miner.name} ({standing}) can load {variant}"
    )
    return Load(model, variant, miner.miner_id, miner.name, reason)


def _why_not(model: str, candidates: Sequence[Candidate], busy: set[str]) -> str:
    able = [c.name for c in candidates if _resolve(model, c.loadable)]
    if not able:
        return (
            f"no connected miner serves {model} or can load it (none has a variant of it on "
            "disk with the memory free)"
        )
    return f"{', '.join(able)} could load {model} but are loading another model or failed to"


def _resolve(model: str, names: Collection[str]) -> tuple[ModelName, ...]:
    """The variants among ``names`` that answer ``model``, most precise first."""
    return resolve_variants(model, [ModelName(n) for n in names]).variants

"""Which miners load a model, as a pure function.

Two cases. When requests wait for a model that no connected miner serves, one
miner that lists a variant of it as ``loadable`` is asked to load it: standby
miners first (parked ones, then live ones with nothing running), then the
least busy; among equals the fastest. A model nobody serves gets one miner at
a time; once it is served the autoscaler's usual scaling takes over. When that
scaling wants more miners for a served model than its provider can give
(``more``), further miners load it, but only parked or idle ones: a busy
miner's slots already carry its own model, so it would add little.

A miner keeps its ``loadable`` list to the files on its disk that fit its free
memory now, so a miner in the list has the memory. Each miner gets one load at
a time (its loadable variants fit one by one, not all together), and a model
nobody serves is placed before extra miners for a served one. Unloading a
cold model to make room is not tried: a miner lists only what fits now, so the
router cannot tell what would fit after an unload.
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
    more: Mapping[str, int] | None = None,
) -> tuple[list[Load], list[Unplaced]]:
    """Loads to ask for, and the models left short, with why.

    ``demand``: requests in flight per model; those nobody serves get a miner.
    ``more``: per served model, how many miners the autoscaler wants beyond
    those serving it, starting or loading it. ``avoid`` holds (miner id,
    variant) pairs not to ask again (a recent load failed)."""
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
        found = _choose(_options(model, candidates, busy, avoid), 1)
        if not found:
            unplaced.append(Unplaced(model, _why_not(model, candidates, busy)))
            continue
        loads.append(_first_load(model, count, *found[0]))
        busy.add(found[0][0].miner_id)
    for model, count in sorted((more or {}).items(), key=lambda item: (-item[1], item[0])):
        count -= sum(load.model == model for load in loads)  # placed above: nobody served it
        if count <= 0:
            continue
        spare = [o for o in _options(model, candidates, busy, avoid) if _idle(o[0])]
        found = _choose(spare, count)
        loads.extend(_extra_load(model, count, *option) for option in found)
        busy.update(miner.miner_id for miner, _ in found)
        if len(found) < count:
            unplaced.append(Unplaced(model, _short(model, count, len(found))))
    return loads, unplaced


def spare_loaders(
    model: str, candidates: Sequence[Candidate], avoid: Collection[tuple[str, str]] = ()
) -> int:
    """How many parked or idle miners could load ``model`` now (what ``place``
    can give the autoscaler for a served model, at most)."""
    return sum(_idle(c) for c, _ in _options(model, candidates, set(), avoid))


def _options(
    model: str,
    candidates: Sequence[Candidate],
    busy: set[str],
    avoid: Collection[tuple[str, str]],
) -> list[tuple[Candidate, str]]:
    """Miners free to load ``model`` now, each with the variant it would load."""
    return [
        (c, variant)
        for c in candidates
        if c.miner_id not in busy and not c.loading and not _resolve(model, c.serves)
        for variant in _resolve(model, c.loadable)[:1]  # the most precise it can load
        if (c.miner_id, variant) not in avoid
    ]


def _idle(miner: Candidate) -> bool:
    return miner.parked or miner.busy_slots == 0


def _choose(options: list[tuple[Candidate, str]], count: int) -> list[tuple[Candidate, str]]:
    """Standby miners first: parked, then the least busy; among equals the fastest."""
    ranked = sorted(
        options,
        key=lambda o: (not o[0].parked, o[0].busy_slots, -o[0].tokens_per_s, o[0].name),
    )
    return ranked[:count]


def _standing(miner: Candidate) -> str:
    return "parked" if miner.parked else f"{miner.busy_slots} task(s) running"


def _first_load(model: str, demand: float, miner: Candidate, variant: str) -> Load:
    reason = (
        f"{demand:g} request(s) in flight for {model} and no miner serves it; "
        f"{miner.name} ({_standing(miner)}) can load {variant}"
    )
    return Load(model, variant, miner.miner_id, miner.name, reason)


def _extra_load(model: str, wanted: int, miner: Candidate, variant: str) -> Load:
    reason = (
        f"scaling wants {wanted} more miner(s) for {model} than serve it or are parked "
        f"with it; {miner.name} ({_standing(miner)}) can load {variant}"
    )
    return Load(model, variant, miner.miner_id, miner.name, reason)


def _short(model: str, wanted: int, found: int) -> str:
    return (
        f"scaling wants {wanted} more miner(s) for {model}; {found} parked or idle miner(s) "
        "can load it now (the others serve it, are busy, loading, or lack the file or memory)"
    )


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

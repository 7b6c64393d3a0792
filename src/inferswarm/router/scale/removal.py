"""Which miners leave a model's pool when it scales down, as a pure function.

A miner may serve several models, so the choice looks at all of them. Taking
a miner away (draining it, then stopping or parking it) also takes it from
every other model it serves; that is allowed only when each of those models
can spare it too (its own decision this round wants fewer miners). A miner
another model still needs keeps running and unloads only the cold model: the
router stops sending it tasks for that model at once, and the miner frees the
model once the tasks it has finish. Whole miners go first, since releasing
one saves a machine and unloading saves only memory; among equals the least
busy, then the newest, so long-lived miners stay.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum


class Way(StrEnum):
    DRAIN = "drain"
    """Drain the whole miner, then release it (stop or park)."""
    UNLOAD = "unload"
    """Keep the miner for its other models; unload this one."""


@dataclass(frozen=True, slots=True)
class Server:
    """A live miner the autoscaler may scale down, as the choice sees it."""

    miner_id: str
    name: str
    serves: tuple[str, ...]
    busy_slots: int
    """Tasks running on it, for any model."""
    connected_at: float


@dataclass(frozen=True, slots=True)
class Removal:
    """Take ``miner_id`` out of ``model``'s pool, the ``way`` said."""

    model: str
    miner_id: str
    miner_name: str
    way: Way
    reason: str


def plan_removals(
    excess: Mapping[str, int],
    servers: Sequence[Server],
    avoid: Collection[tuple[str, str]] = (),
) -> list[Removal]:
    """Removals for each model with live miners beyond what the policy wants
    (``excess``; a model absent or at 0 can spare none). ``avoid`` holds
    (miner id, model) pairs not to ask to unload (a recent unload failed).
    A miner is in one removal at most; a model may get fewer than its excess
    when every other miner is needed elsewhere."""
    left = {model: count for model, count in excess.items() if count > 0}
    taken: set[str] = set()
    removals: list[Removal] = []
    for model in sorted(left):
        while left[model] > 0:
            removal = _best(model, servers, left, taken, avoid)
            if removal is None:
                break
            removals.append(removal)
            taken.add(removal.miner_id)
            server = next(s for s in servers if s.miner_id == removal.miner_id)
            for other in server.serves if removal.way is Way.DRAIN else (model,):
                if other in left:
                    left[other] -= 1
    return removals


def _best(
    model: str,
    servers: Sequence[Server],
    left: Mapping[str, int],
    taken: set[str],
    avoid: Collection[tuple[str, str]],
) -> Removal | None:
    options: list[tuple[tuple[bool, int, float, str], Removal]] = []
    for server in servers:
        if model not in server.serves or server.miner_id in taken:
            continue
        others = [m for m in server.serves if m != model]
        needed = [m for m in others if left.get(m, 0) <= 0]
        if not needed:
            reason = (
                f"its other models ({', '.join(others)}) can spare it too"
                if others
                else "it serves nothing else"
            )
            way = Way.DRAIN
        elif (server.miner_id, model) not in avoid:
            reason = f"still needed for {', '.join(needed)}: unloading {model} only"
            way = Way.UNLOAD
        else:
            continue  # needed elsewhere, and its last unload of this model failed
        removal = Removal(model, server.miner_id, server.name, way, f"{server.name}: {reason}")
        rank = (way is Way.UNLOAD, server.busy_slots, -server.connected_at, server.name)
        options.append((rank, removal))
    return min(options, key=lambda option: option[0])[1] if options else None

"""``GET /v1/models``: the models live miners serve right now, with their capacity.

Each variant (``smollm2-135m-instruct:q8_0``) is listed, and each family
(``smollm2-135m-instruct``) once more with the sum over its variants: a
request may name either. Every entry says on how many more miners it could
be loaded (``loadable_on``: miners with the file and the memory for it that
do not serve it). Variants that no live miner serves but some could load are
not in ``data`` (a request for them would fail now); they are listed apart,
under ``loadable``, for the operator and the autoscaler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request

from inferswarm.protocol import ModelName, ModelOffer, split_model_name
from inferswarm.router.registry import MinerConnection

router = APIRouter()


@dataclass
class _Capacity:
    """Live capacity behind one listed name."""

    miners: set[str] = field(default_factory=set)
    slots: int = 0
    busy_slots: int = 0
    tokens_per_s: float = 0.0
    context_length: int = 0
    variants: set[str] = field(default_factory=set)
    offer: ModelOffer | None = None

    def add(self, conn: MinerConnection, offer: ModelOffer) -> None:
        if conn.miner_id not in self.miners:
            self.miners.add(conn.miner_id)
            self.slots += conn.info.slots
            self.busy_slots += len(conn.tasks)
            self.tokens_per_s += conn.tokens_per_s or 0.0
        self.context_length = max(self.context_length, offer.context_length)
        self.variants.add(offer.name)
        self.offer = offer


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    served: dict[ModelName, list[MinerConnection]] = request.app.state.registry.served_models()
    key = request.state.key
    started = int(request.app.state.started_at)
    by_name: dict[str, _Capacity] = {}
    families: dict[str, _Capacity] = {}
    for name, miners in served.items():
        family, variant = split_model_name(name)
        for conn in miners:
            offer = next(o for o in conn.info.models if o.name == name)
            by_name.setdefault(name, _Capacity()).add(conn, offer)
            if variant:
                families.setdefault(family, _Capacity()).add(conn, offer)
    data = [_variant_entry(n, c, started) for n, c in by_name.items()]
    data += [_family_entry(n, c, started) for n, c in families.items() if n not in by_name]
    by_variant = request.app.state.registry.loadable_models()
    loadable = _loadable(by_variant)
    for entry in data:
        entry["loadable_on"] = len(loadable.get(entry["id"], {}))
    idle = [_loadable_entry(n, loadable[n]) for n in by_variant if n not in served]
    if key is not None:  # a key scoped to some models sees only the names it may ask for
        data = [entry for entry in data if key.allows(entry["id"])]
        idle = [entry for entry in idle if key.allows(entry["id"])]
    return {
        "object": "list",
        "data": sorted(data, key=lambda entry: entry["id"]),
        "loadable": sorted(idle, key=lambda entry: entry["id"]),
    }


def _loadable(
    by_variant: dict[ModelName, list[MinerConnection]],
) -> dict[str, dict[str, ModelOffer]]:
    """Per variant and per family: the miners that could load it, with their offer."""
    found: dict[str, dict[str, ModelOffer]] = {}
    for name, miners in by_variant.items():
        family = split_model_name(name).family
        for conn in miners:
            offer = next(o for o in conn.info.loadable if o.name == name)
            found.setdefault(name, {})[conn.miner_id] = offer
            if family != name:
                found.setdefault(family, {}).setdefault(conn.miner_id, offer)
    return found


def _loadable_entry(name: str, offers: dict[str, ModelOffer]) -> dict[str, Any]:
    offer = next(iter(offers.values()))
    return {
        "id": name,
        "object": "model",
        "owned_by": "inferswarm",
        "miners": 0,
        "loadable_on": len(offers),
        "family": offer.family or split_model_name(name).family,
        "variant": split_model_name(name).variant or offer.quantization,
        "memory_bytes": offer.memory_bytes,
        "file_sha256": offer.file_hash,
    }


def _common(name: str, capacity: _Capacity, created: int) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "inferswarm",
        "miners": len(capacity.miners),
        "slots": capacity.slots,
        "busy_slots": capacity.busy_slots,
        "tokens_per_s": round(capacity.tokens_per_s, 1),
        "context_length": capacity.context_length,
    }


def _variant_entry(name: str, capacity: _Capacity, created: int) -> dict[str, Any]:
    offer = capacity.offer
    assert offer is not None
    family, variant = split_model_name(name)
    return _common(name, capacity, created) | {
        "family": offer.family or family,
        "variant": variant or offer.quantization,
        "quantization": offer.quantization or variant,
        "architecture": offer.architecture,
        "parameters": offer.parameters,
        "file_bytes": offer.file_bytes,
        "memory_bytes": offer.memory_bytes,
        "file_sha256": offer.file_hash,
    }


def _family_entry(name: str, capacity: _Capacity, created: int) -> dict[str, Any]:
    return _common(name, capacity, created) | {
        "family": name,
        "variants": sorted(capacity.variants),
    }

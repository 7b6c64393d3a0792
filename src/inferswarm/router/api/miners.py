"""``GET /v1/miners``: the connected miners, as ``inferswarm status`` shows them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from inferswarm.router.registry import MinerConnection, MinerRegistry

router = APIRouter()


@router.get("/v1/miners")
async def list_miners(request: Request) -> dict[str, Any]:
    registry: MinerRegistry = request.app.state.registry
    now: float = request.app.state.clock()
    return {
        "object": "list",
        "data": [describe(conn, now, registry) for conn in registry.connections()],
    }


def describe(conn: MinerConnection, now: float, registry: MinerRegistry) -> dict[str, Any]:
    info = conn.info
    heartbeat = conn.heartbeat
    book = registry.book
    standing = book.standing(conn.miner_id)
    return {
        "id": info.miner_id,
        "name": info.name,
        "operator": info.operator or None,
        "state": registry.state_of(conn).value,
        "reputation": round(book.score(conn.miner_id), 4),
        "verification": {
            "passed": standing.passes,
            "failed": standing.fails,
            "canary_passes": standing.canary_passes,
            "suspicion": round(standing.suspicion, 3),
            "suspect": book.is_suspect(conn.miner_id),
        },
        "public_key": info.public_key,
        "engine": info.engine,
        "models": [offer.name for offer in info.models],
        "model_details": [offer.model_dump() for offer in info.models],
        "loading": list(conn.loading),
        "loadable": [offer.name for offer in info.loadable],
        "slots": info.slots,
        "busy": len(conn.tasks),
        "queued": heartbeat.queued_tasks if heartbeat else 0,
        "tokens_per_s": conn.tokens_per_s,
        "claimed_tokens_per_s": info.claimed_tokens_per_s,
        "tier": conn.tier,
        "observed_tokens_per_s": conn.speed.observed_generation,
        "observed_ttft_s": conn.speed.observed_ttft_s,
        "cached_prefix_blocks": (
            len(heartbeat.prefix_blocks)
            if heartbeat and heartbeat.prefix_blocks is not None
            else None
        ),
        "capability": next((o.capability.model_dump() for o in info.models if o.capability), None),
        "effective_speed": _speed(conn),
        "hardware": info.hardware.model_dump(),
        "hardware_summary": info.hardware.summary(),
        "cpu_percent": heartbeat.cpu_percent if heartbeat else None,
        "ram_percent": heartbeat.ram_percent if heartbeat else None,
        "completed": conn.completed,
        "failed": conn.failed,
        "generated_tokens": conn.generated_tokens,
        "connected_s": round(now - conn.connected_at, 1),
        "last_seen_s": round(now - conn.last_seen, 2),
        "last_heartbeat_s": None
        if conn.last_heartbeat_at is None
        else round(now - conn.last_heartbeat_at, 2),
        "software_version": info.software_version,
    }


def _speed(conn: MinerConnection) -> dict[str, Any] | None:
    speed = conn.speed.effective()
    if speed is None:
        return None
    return {
        "prompt_tokens_per_s": round(speed.prompt, 1),
        "generation_tokens_per_s": round(speed.generation, 1),
        "aggregate_tokens_per_s": round(speed.aggregate(conn.info.slots), 1),
    }

"""``GET /v1/models``: the models some live miner serves right now."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    served = request.app.state.registry.served_models()
    key = request.state.key
    if key is not None:  # a key scoped to some models sees only those
        served = {name: miners for name, miners in served.items() if key.allows(name)}
    started: float = request.app.state.started_at
    data = [
        {
            "id": name,
            "object": "model",
            "created": int(started),
            "owned_by": "inferswarm",
            "miners": len(miners),
            "slots": sum(m.info.slots for m in miners),
            "context_length": max(
                o.context_length for m in miners for o in m.info.models if o.name == name
            ),
        }
        for name, miners in sorted(served.items())
    ]
    return {"object": "list", "data": data}

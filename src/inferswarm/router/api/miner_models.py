"""``POST /v1/admin/miners/{miner_id}/models``: load or unload a variant on a miner.

``{"load": "gemma-3-270m:q4_k_m"}`` answers once the miner serves it;
``{"unload": NAME}`` once the miner has stopped taking tasks for it (its
running tasks still finish). Admin key only; every change is audited.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from inferswarm.openai_compat.errors import (
    APIError,
    Conflict,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
)
from inferswarm.protocol import MinerId, ModelName
from inferswarm.router.access import AccessControl
from inferswarm.router.api.auth import actor_of
from inferswarm.router.api.body import parse_body, request_body_schema
from inferswarm.router.registry import MinerConnection, MinerRegistry, ModelChangeError

router = APIRouter(prefix="/v1/admin")

_ERRORS: dict[str, type[APIError]] = {
    "miner_not_found": NotFound,
    "model_not_loadable": Conflict,
    "model_not_loaded": Conflict,
    "last_model": Conflict,
    "miner_refused": Conflict,
    "miner_lost": ServiceUnavailable,
    "load_timeout": ServiceUnavailable,
}


class ModelChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    load: str | None = Field(default=None, min_length=1, max_length=200)
    unload: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _one_change(self) -> ModelChange:
        if (self.load is None) == (self.unload is None):
            raise ValueError('send either {"load": NAME} or {"unload": NAME}')
        return self


@router.post("/miners/{miner_id}/models", openapi_extra=request_body_schema(ModelChange))
async def change_models(request: Request, miner_id: str) -> dict[str, Any]:
    body = await parse_body(request, ModelChange)
    registry: MinerRegistry = request.app.state.registry
    access: AccessControl = request.app.state.access
    name = ModelName(body.load or body.unload or "")
    action = "load" if body.load else "unload"
    try:
        if body.load:
            await registry.request_load(MinerId(miner_id), name)
        else:
            await registry.request_unload(MinerId(miner_id), name)
    except ModelChangeError as exc:
        raise _ERRORS.get(exc.code, InvalidRequest)(exc.message, code=exc.code) from None
    await access.record(actor_of(request), f"miner.model.{action}", miner_id, model=name)
    conn = registry.get(MinerId(miner_id))
    return {"miner_id": miner_id, "action": action, "model": name} | (
        describe_models(conn) if conn else {}
    )


def describe_models(conn: MinerConnection) -> dict[str, Any]:
    """What a miner serves, is loading and could load."""
    return {
        "models": [offer.name for offer in conn.info.models],
        "loading": list(conn.loading),
        "loadable": [offer.name for offer in conn.info.loadable],
    }

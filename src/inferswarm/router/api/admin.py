"""``/v1/admin/…``: API keys, join tokens, miner bans and the audit log.
Every route needs an admin key; every change is audited (``AccessControl``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from inferswarm.openai_compat.errors import InvalidRequest, NotFound
from inferswarm.protocol import MinerId
from inferswarm.router.access import (
    MAX_LIMIT,
    MAX_TTL_S,
    AccessControl,
    KeySpec,
    UnknownObject,
    describe_audit,
    describe_ban,
    describe_key,
    describe_token,
)
from inferswarm.router.api.auth import actor_of
from inferswarm.router.api.body import parse_body, request_body_schema
from inferswarm.router.registry import MinerRegistry

router = APIRouter(prefix="/v1/admin")

MAX_MINER_ID = 128
"""The store's column width for miner ids."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewKey(_Body):
    name: str = Field(min_length=1, max_length=200)
    models: list[str] = Field(default=[], max_length=1000)
    rpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    tpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    quota_tokens: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    admin: bool = False


class NewToken(_Body):
    name: str = Field(min_length=1, max_length=200)
    ttl_s: float | None = Field(default=None, gt=0, le=MAX_TTL_S)


class NewBan(_Body):
    reason: str = Field(default="banned by the operator", max_length=500)


def _optional(schema: dict[str, Any]) -> dict[str, Any]:
    schema["requestBody"]["required"] = False
    return schema


def _access(request: Request) -> AccessControl:
    access: AccessControl = request.app.state.access
    return access


@router.get("/keys")
async def list_keys(request: Request) -> dict[str, Any]:
    keys = await _access(request).store.list_api_keys()
    return {"object": "list", "data": [describe_key(k) for k in keys]}


@router.post("/keys", openapi_extra=request_body_schema(NewKey))
async def create_key(request: Request) -> dict[str, Any]:
    body = await parse_body(request, NewKey)
    spec = KeySpec(body.name, tuple(body.models), body.rpm, body.tpm, body.quota_tokens, body.admin)
    key, record = await _access(request).create_key(spec, actor_of(request))
    return {**describe_key(record), "key": key}


@router.delete("/keys/{key_id}")
async def revoke_key(request: Request, key_id: str) -> dict[str, Any]:
    await _call(_access(request).revoke_key(key_id, actor_of(request)))
    return {"id": key_id, "revoked": True}


@router.get("/tokens")
async def list_tokens(request: Request) -> dict[str, Any]:
    tokens = await _access(request).store.list_join_tokens()
    return {"object": "list", "data": [describe_token(t) for t in tokens]}


@router.post("/tokens", openapi_extra=request_body_schema(NewToken))
async def create_token(request: Request) -> dict[str, Any]:
    body = await parse_body(request, NewToken)
    token, record = await _access(request).create_token(body.name, body.ttl_s, actor_of(request))
    return {**describe_token(record), "token": token}


@router.delete("/tokens/{token_id}")
async def revoke_token(request: Request, token_id: str) -> dict[str, Any]:
    await _call(_access(request).revoke_token(token_id, actor_of(request)))
    return {"id": token_id, "revoked": True}


@router.get("/bans")
async def list_bans(request: Request) -> dict[str, Any]:
    bans = await _access(request).store.list_miner_bans()
    return {"object": "list", "data": [describe_ban(b) for b in bans]}


@router.put("/bans/{miner_id}", openapi_extra=_optional(request_body_schema(NewBan)))
async def ban_miner(request: Request, miner_id: str) -> dict[str, Any]:
    if not 0 < len(miner_id) <= MAX_MINER_ID:
        raise InvalidRequest(
            f"A miner id has 1 to {MAX_MINER_ID} characters; see `inferswarm status` for ids.",
            param="miner_id",
            code="invalid_miner_id",
        )
    body = await parse_body(request, NewBan) if (await request.body()).strip() else NewBan()
    ban = await _access(request).ban_miner(miner_id, body.reason, actor_of(request))
    registry: MinerRegistry = request.app.state.registry
    conn = registry.get(MinerId(miner_id))
    if conn is not None:  # a connected miner leaves now, not at its next reconnect
        reason = f"banned by the operator: {body.reason}"
        await registry.remove(conn, reason)
        await conn.close(reason)
    return describe_ban(ban)


@router.delete("/bans/{miner_id}")
async def unban_miner(request: Request, miner_id: str) -> dict[str, Any]:
    await _call(_access(request).unban_miner(miner_id, actor_of(request)))
    return {"miner_id": miner_id, "banned": False}


@router.get("/audit")
async def audit(request: Request, limit: int = 100) -> dict[str, Any]:
    entries = await _access(request).store.audit_log(max(1, min(limit, 1000)))
    return {"object": "list", "data": [describe_audit(e) for e in entries]}


async def _call(operation: Any) -> None:
    try:
        await operation
    except UnknownObject as exc:
        raise NotFound(str(exc), code="not_found") from None

"""API-key check for the client and admin APIs.

A key is either a bootstrap key given on the command line (``--api-key``,
``--admin-key``: no limits, every model) or a key issued with ``inferswarm
keys create`` and found in the store by its keyed hash. Sets
``request.state.key`` (the ``ApiKeyRecord``; None on a router without auth),
``request.state.tenant`` (the key's id, for fair queueing and ownership) and
``request.state.is_admin``.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from inferswarm.openai_compat.errors import PermissionDenied, Unauthorized
from inferswarm.router.access import AccessControl, tenant_of
from inferswarm.router.settings import RouterSettings
from inferswarm.storage import ApiKeyRecord


async def require_api_key(request: Request) -> None:
    settings: RouterSettings = request.app.state.settings
    if not settings.auth_enabled:
        request.state.key = None
        request.state.tenant = request.client.host if request.client else "anonymous"
        request.state.is_admin = True  # a router without auth is a local one
        return
    key = await _find_key(request, settings, _bearer(request))
    request.state.key = key
    request.state.tenant = key.id
    request.state.is_admin = key.is_admin


async def require_admin(request: Request) -> None:
    await require_api_key(request)
    if not request.state.is_admin:
        raise PermissionDenied(
            "This is an admin operation and the key is not an admin key. Use a key made with "
            "`inferswarm keys create --admin` or the router's --admin-key.",
            code="admin_only",
        )


def actor_of(request: Request) -> str:
    """Who made an admin change, for the audit log (never the key itself)."""
    key: ApiKeyRecord | None = request.state.key
    if key is None:
        host = request.client.host if request.client else "unknown"
        return f"no-auth:{host}"
    return f"{key.id} ({key.name})"


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(
            "Missing API key. Send it as 'Authorization: Bearer <key>' "
            "(the openai client does this with api_key=...).",
            code="missing_api_key",
        )
    return token


async def _find_key(request: Request, settings: RouterSettings, token: str) -> ApiKeyRecord:
    for keys, is_admin in ((settings.admin_keys, True), (settings.api_keys, False)):
        if any(hmac.compare_digest(token, k) for k in keys):
            return ApiKeyRecord(
                id=tenant_of(token),
                name="admin (command line)" if is_admin else "client (command line)",
                digest="",
                prefix="",
                created_at=0,
                is_admin=is_admin,
            )
    access: AccessControl = request.app.state.access
    record = await access.find_key(token)
    if record is None:
        raise Unauthorized(
            "Invalid API key: unknown or revoked. Check the key you were given, or create one "
            "with `inferswarm keys create`.",
            code="invalid_api_key",
        )
    return record

"""API-key check for the client API (keys given at start; a store comes later).

Sets ``request.state.tenant`` (a short, non-reversible id of the key, used for
fair queueing) and ``request.state.is_admin``.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from inferswarm.openai_compat.errors import Unauthorized


def tenant_of(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


async def require_api_key(request: Request) -> None:
    settings = request.app.state.settings
    if not settings.auth_enabled:
        request.state.tenant = request.client.host if request.client else "anonymous"
        request.state.is_admin = True  # a router without auth is a local one
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(
            "Missing API key. Send it as 'Authorization: Bearer <key>' "
            "(the openai client does this with api_key=...).",
            code="missing_api_key",
        )
    is_admin = _matches(token, settings.admin_keys)
    if not is_admin and not _matches(token, settings.api_keys):
        raise Unauthorized(
            "Invalid API key. Check the key the router printed or was given.",
            code="invalid_api_key",
        )
    request.state.tenant = tenant_of(token)
    request.state.is_admin = is_admin


def _matches(token: str, keys: frozenset[str]) -> bool:
    return any(hmac.compare_digest(token, key) for key in keys)

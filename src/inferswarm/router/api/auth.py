"""API-key check for the client API (keys given at start; a store comes later)."""

from __future__ import annotations

import hmac

from fastapi import Request

from inferswarm.openai_compat.errors import Unauthorized


async def require_api_key(request: Request) -> None:
    keys: frozenset[str] = request.app.state.settings.api_keys
    if not keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(
            "Missing API key. Send it as 'Authorization: Bearer <key>' "
            "(the openai client does this with api_key=...).",
            code="missing_api_key",
        )
    if not any(hmac.compare_digest(token.strip(), key) for key in keys):
        raise Unauthorized(
            "Invalid API key. Check the key the router printed or was given.",
            code="invalid_api_key",
        )

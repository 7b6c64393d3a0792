"""While the router shuts down, new work is refused so clients go elsewhere."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

from inferswarm.openai_compat.errors import ServiceUnavailable


class RefuseWhileDraining:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        draining = scope["type"] == "http" and scope["app"].state.draining
        if draining and scope["method"] == "POST":
            error = ServiceUnavailable(
                "This router is shutting down. Retry in a moment, or use another router.",
                code="router_draining",
            )
            scope["app"].state.metrics.reject(error.status_code, error.code)
            body = json.dumps(error.body()).encode()
            headers = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

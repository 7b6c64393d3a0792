"""Running the router's app under uvicorn, with a graceful drain on SIGTERM.

Kept apart from ``router_cmd`` so that every other command starts without
importing the web and database stack."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI

from inferswarm.router.app import create_app, drain
from inferswarm.router.settings import RouterSettings


def serve(
    settings: RouterSettings,
    log_level: str,
    drain_timeout: float,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> None:
    """Serve until SIGTERM; over TLS (both the API and the miner gateway) when
    ``tls_cert`` and ``tls_key`` are given."""
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
        access_log=False,
        ws_ping_interval=10,
        ws_ping_timeout=20,
        ws_max_size=settings.ws_max_bytes,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
    )
    DrainingServer(config, app, drain_timeout).run()


class DrainingServer(uvicorn.Server):
    """On SIGTERM or Ctrl-C: refuse new requests, let those in flight finish
    (bounded), then stop. A second signal stops at once."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_timeout: float) -> None:
        super().__init__(config)
        self._app = app
        self._drain_timeout = drain_timeout
        self._draining: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining is not None or self.should_exit:
            super().handle_exit(sig, frame)
            return

        async def drain_then_exit() -> None:
            await drain(self._app, self._drain_timeout)
            super(DrainingServer, self).handle_exit(sig, frame)

        loop = asyncio.get_event_loop()
        self._draining = loop.create_task(drain_then_exit())

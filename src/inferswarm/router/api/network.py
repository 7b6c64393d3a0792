"""``GET /v1/network`` (the live state as JSON) and ``GET /v1/network/stream``
(the same, pushed each second as server-sent events, for the dashboard)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from inferswarm.router.network_view import SERIES_SECONDS, NetworkView

router = APIRouter()


@router.get("/v1/network")
async def network(
    request: Request,
    series_s: int = Query(
        SERIES_SECONDS, ge=1, le=SERIES_SECONDS, description="Seconds of per-second series."
    ),
) -> dict[str, Any]:
    """Miners (hardware, model, tier, load, speed, utilisation), models, queue,
    throughput and latency over the last minute and per second, recent events."""
    return _view(request).snapshot(series_s)


@router.get("/v1/network/stream")
async def network_stream(
    request: Request,
    interval_s: float = Query(1.0, ge=0.2, le=10, description="Seconds between updates."),
) -> StreamingResponse:
    """A ``snapshot`` event, then a ``tick`` each ``interval_s`` with the newest
    series point and the events since the previous one. Ends when the router drains."""
    view = _view(request)

    async def updates() -> AsyncIterator[str]:
        seen = view.last_event_seq
        yield _sse({"type": "snapshot", **view.snapshot()})
        while not request.app.state.draining:
            await asyncio.sleep(interval_s)
            tick = view.tick(seen)
            seen = max([seen, *(event["seq"] for event in tick["events"])])
            yield _sse({"type": "tick", **tick})

    return StreamingResponse(
        updates(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _view(request: Request) -> NetworkView:
    view: NetworkView = request.app.state.network
    return view


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"

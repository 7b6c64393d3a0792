"""The HTTP side of the miner's exporter, started only with ``--metrics-port``
(so a miner without it never imports the web stack)."""

from __future__ import annotations

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inferswarm.miner.metrics import LiveCollector, LoadSource, MinerStats
from inferswarm.miner.usage import HostMonitor


def create_metrics_app(stats: MinerStats, load: LoadSource, host: HostMonitor) -> FastAPI:
    stats.registry.register(LiveCollector(stats, load, host))
    app = FastAPI(title="inferswarm miner metrics", docs_url=None, redoc_url=None)

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus exposition, for scrapers."""
        return Response(generate_latest(stats.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"status": "ok", "connected": load.connected(), "busy": load.busy()}

    return app

"""Builds the router's ASGI app from settings and collaborators."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, Request, Response, WebSocket
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inferswarm import __version__
from inferswarm.openai_compat.schemas import InferswarmOptions
from inferswarm.protocol import MinerId, TaskChunk, TaskDone
from inferswarm.router.access import AccessControl, load_or_create_secret
from inferswarm.router.admission import WaitQueue
from inferswarm.router.api import (
    admin,
    autoscale,
    batches,
    completions,
    dashboard,
    files,
    jobs,
    miner_models,
    miners,
    models,
    network,
)
from inferswarm.router.api.auth import require_admin, require_api_key
from inferswarm.router.api.body_limit import BodySizeLimit
from inferswarm.router.api.draining import RefuseWhileDraining
from inferswarm.router.api.errors import install_error_handlers
from inferswarm.router.completion import Runner
from inferswarm.router.dispatch import Dispatcher, Job
from inferswarm.router.events import EventKind
from inferswarm.router.gateway import serve_miner
from inferswarm.router.metrics import RouterMetrics
from inferswarm.router.network_view import NetworkView
from inferswarm.router.registry import Clock, MinerRegistry
from inferswarm.router.scale.autoscaler import Autoscaler
from inferswarm.router.scale.build import JoinTokens, build_autoscaler
from inferswarm.router.segment.batch_runner import BatchRunner
from inferswarm.router.segment.mapreduce_runner import MapReduceRunner
from inferswarm.router.settings import RouterSettings
from inferswarm.router.usage_limits import UsageLimiter
from inferswarm.router.verify.consensus import Consensus, Verdict
from inferswarm.router.verify.reputation import Outcome, Standing
from inferswarm.router.verify.service import Reports, Verifier
from inferswarm.router.verify.teacher import TeacherVerdict
from inferswarm.storage import BlobDir, Store
from inferswarm.storage.sql import open_store

log = logging.getLogger(__name__)


@dataclass
class RouterDeps:
    """Collaborators a test may replace."""

    clock: Clock = field(default=time.monotonic)
    wall_clock: Clock = field(default=time.time)
    store: Store | None = None
    """Default: the SQL store at ``settings.database_url()``."""


def create_app(settings: RouterSettings, deps: RouterDeps | None = None) -> FastAPI:
    deps = deps or RouterDeps()
    registry = MinerRegistry(deps.clock, settings.heartbeat_timeout_s, deps.wall_clock)

    def measured(job: Job) -> AsyncGenerator[TaskChunk | TaskDone, None]:
        """Batch and map-reduce tasks, counted in the metrics like requests."""
        metrics: RouterMetrics = app.state.metrics
        return metrics.measured(app.state.dispatcher, job)

    def checked(job: Job) -> AsyncGenerator[TaskChunk | TaskDone, None]:
        """Batch and map-reduce tasks, spot-checked at the router's rate; a
        checked task waits for its verdict (nobody watches it stream)."""
        verifier: Verifier = app.state.verifier
        return verifier.checked(job, measured(job))

    def batch_runner_for(options: InferswarmOptions | None) -> tuple[Runner, Reports]:
        """A batch line runs as a request would: on k miners with consensus
        when it (or the router) asks for redundancy, else spot-checked."""
        verifier: Verifier = app.state.verifier
        k, consensus = verifier.options(
            options.redundancy if options else None, options.consensus if options else None
        )
        reports: Reports = {}
        return (checked if k <= 1 else verifier.redundant_runner(k, consensus, reports)), reports

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = deps.store or await open_store(settings.database_url())
        app.state.store = store
        app.state.access = AccessControl(store, load_or_create_secret(settings.data_dir))
        app.state.limiter = UsageLimiter(store, settings.max_streams_per_key)
        await _announce_access(store, settings)
        app.state.blobs = BlobDir(settings.data_dir / "files")
        runner = BatchRunner(
            store,
            app.state.blobs,
            app.state.dispatcher,
            registry,
            settings.batch_share,
            retry_delay_s=settings.task_retry_delay_s,
            max_attempts=settings.task_max_attempts,
            run=checked,
            runner_for=batch_runner_for,
        )
        app.state.batch_runner = runner
        await runner.start()
        app.state.job_runner = MapReduceRunner(store, app.state.dispatcher, registry, run=checked)
        await app.state.job_runner.start()
        await app.state.verifier.start(store)
        watchdog = asyncio.create_task(_expire_silent_miners(registry, settings, app.state.queue))
        sampler = asyncio.create_task(_sample_every_second(app.state.metrics))
        scaler: Autoscaler | None = app.state.autoscaler
        scaling = asyncio.create_task(scaler.run()) if scaler else None
        try:
            yield
        finally:
            watchdog.cancel()
            sampler.cancel()
            if scaler and scaling:
                scaling.cancel()
                await scaler.close()
            await runner.stop()
            await app.state.job_runner.stop()
            await app.state.verifier.stop()
            await store.close()
            for conn in registry.connections():
                await registry.remove(conn, "the router is shutting down")
                await conn.close("the router is shutting down")

    app = FastAPI(
        title="inferswarm router",
        version=__version__,
        description="OpenAI-compatible API in front of a network of llama.cpp miners.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.queue = WaitQueue(settings.max_queue, settings.queue_timeout_s)
    app.state.dispatcher = Dispatcher(registry, settings.policy, settings.limits, app.state.queue)
    app.state.clock = deps.clock
    app.state.started_at = time.time()
    app.state.draining = False
    app.state.metrics = RouterMetrics(registry, app.state.queue, deps.wall_clock)
    app.state.verifier = _verifier(app, settings, registry)
    app.state.network = NetworkView(
        registry,
        app.state.metrics,
        app.state.queue,
        deps.clock,
        deps.wall_clock,
        settings.policy.value,
        verification=app.state.verifier.summary,
    )
    tokens = JoinTokens(lambda: None if settings.open_join else app.state.access)
    app.state.autoscaler = build_autoscaler(
        settings, registry, app.state.metrics, deps.clock, deps.wall_clock, tokens
    )
    install_error_handlers(app)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        # Uploads have their own limit, checked as the file streams in.
        exempt=("/v1/files",),
    )
    app.add_middleware(RefuseWhileDraining)
    authed = [Depends(require_api_key)]
    apis = (completions, models, miners, files, batches, jobs, network, autoscale)
    for api in (module.router for module in apis):
        app.include_router(api, dependencies=authed)
    for api in (admin.router, miner_models.router):
        app.include_router(api, dependencies=[Depends(require_admin)])
    app.include_router(dashboard.router)
    app.mount("/dashboard/static", dashboard.static, name="dashboard-static")

    @app.get("/healthz")
    async def healthz(request: Request) -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "miners": len(registry.connections()),
            "queued": len(app.state.queue),
            "migrations": registry.migrations,
            "hedges": registry.hedges,
            "banned": sum(registry.is_banned(miner_id) for miner_id in registry.bans),
        }

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus exposition, for scrapers."""
        return Response(generate_latest(app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.websocket("/miner/ws")
    async def miner_ws(websocket: WebSocket) -> None:
        await serve_miner(websocket, registry, settings, app.state.access)

    return app


def _verifier(app: FastAPI, settings: RouterSettings, registry: MinerRegistry) -> Verifier:
    """The verifier, with its verdicts and reputation changes counted in the
    metrics and written to the network's event log."""
    verifier = Verifier(registry, app.state.dispatcher, settings.verify)
    metrics: RouterMetrics = app.state.metrics

    def verdict(purpose: str, consensus: Consensus, verdict: Verdict) -> None:
        metrics.verifications.labels(purpose, consensus.value, verdict.status.value).inc()
        if verdict.trusted:
            for miner_id in verdict.disagreeing:
                detail = (
                    f"{purpose} ({consensus.value}): its result disagreed with the verified one"
                )
                registry.note(EventKind.VERIFY_FAIL, miner_id, detail)

    def outcome(miner_id: MinerId, outcome: Outcome, before: Standing, after: Standing) -> None:
        metrics.reputation_outcomes.labels(outcome.value).inc()
        score = f"reputation {registry.book.score(miner_id):.2f}"
        if outcome is Outcome.FORGED:
            registry.note(EventKind.FORGED, miner_id, "a result failed its signature check")
        if after.quarantined and not before.quarantined:
            registry.note(EventKind.QUARANTINE, miner_id, f"after {outcome.value}; {score}")
        elif before.quarantined and not after.quarantined:
            registry.note(EventKind.RELEASE, miner_id, f"passed its canaries; {score}")

    def teacher_verdict(miner_id: MinerId, verdict: TeacherVerdict) -> None:
        status = "passed" if verdict.passed else "failed"
        metrics.verifications.labels("spot_check", "teacher", status).inc()
        if not verdict.passed:
            detail = f"spot check (teacher-forced): {verdict.reason}"
            registry.note(EventKind.VERIFY_FAIL, miner_id, detail)

    verifier.on_verdict(verdict)
    verifier.teacher.on_verdict(teacher_verdict)
    registry.book.on_outcome(outcome)
    return verifier


async def _announce_access(store: Store, settings: RouterSettings) -> None:
    if not settings.auth_enabled:
        log.warning(
            "auth is OFF (--no-auth): anyone who can reach this router may use it and its "
            "admin API. Use this only for local experiments."
        )
    elif not (settings.api_keys or settings.admin_keys or await store.list_api_keys()):
        log.warning(
            "auth is on and no API key exists yet: create one with "
            "`inferswarm keys create --name NAME --data-dir %s`",
            settings.data_dir,
        )
    if settings.open_join:
        log.warning("--open-join: any miner may join without a join token (local/test use only)")


async def _expire_silent_miners(
    registry: MinerRegistry, settings: RouterSettings, queue: WaitQueue
) -> None:
    while True:
        await asyncio.sleep(min(1.0, settings.heartbeat_timeout_s / 4))
        try:
            await registry.expire_silent()
            queue.wake(len(queue))  # bans expire with no event: let waiters look again
        except Exception:
            log.exception("expiring silent miners failed; will retry")


async def _sample_every_second(metrics: RouterMetrics) -> None:
    while True:
        metrics.sample()
        await asyncio.sleep(1.0)


async def drain(app: FastAPI, timeout_s: float) -> None:
    """Stop taking requests and wait (at most ``timeout_s``) for those in flight."""
    app.state.draining = True
    dispatcher: Dispatcher = app.state.dispatcher
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(dispatcher.idle.wait(), timeout_s)
    log.info("router drained; %d request(s) still in flight", dispatcher.in_flight)

"""The miner agent: dial a router, register, heartbeat, run tasks, reconnect.

The agent holds one WebSocket per router. Tasks run concurrently up to the
engine's slot count; the rest wait (and are reported as queued). A router
that goes away is redialled with exponential backoff; a router that refuses
the miner (incompatible version) stops it with the router's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import websockets
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection

from inferswarm import __version__
from inferswarm.miner.coalesce import StreamItem, next_batch
from inferswarm.miner.engines.base import Engine, TaskRejected, TracksCache
from inferswarm.miner.engines.teacher import ScoresOutputs
from inferswarm.miner.identity import MinerIdentity
from inferswarm.miner.loading import LoadRefused, ModelLoader
from inferswarm.miner.metrics import MinerStats
from inferswarm.miner.usage import HostMonitor
from inferswarm.protocol import (
    PROTOCOL_VERSION,
    Challenge,
    ChallengeAnswer,
    Draining,
    HardwareProfile,
    Heartbeat,
    LoadModel,
    MinerId,
    ModelName,
    ModelsChanged,
    Park,
    Refused,
    Register,
    Registered,
    RouterMessage,
    TaskAssign,
    TaskCancel,
    TaskChunk,
    TaskDone,
    TaskFailed,
    TaskId,
    UnloadModel,
    VerifyAssign,
    VerifyResult,
    encode,
    parse_router_message,
)
from inferswarm.protocol.signing import text_sha256

log = logging.getLogger(__name__)
MAX_REPORTED_PREFIX_BLOCKS = 1024
"""Heartbeats stay small whatever the cache holds."""


class MinerRefused(Exception):
    """The router will not take this miner; retrying would not help."""


@dataclass(frozen=True)
class AgentSettings:
    router_url: str
    identity: MinerIdentity
    name: str
    operator: str = ""
    """Who runs this miner, declared to the router (empty: undeclared)."""
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 15.0
    handshake_timeout_s: float = 10.0
    join_token: str | None = field(default=None, repr=False)
    """Sent as ``Authorization: Bearer`` when dialling; never logged."""
    ca_cert: Path | None = None
    """CA bundle that signed the router's certificate (``wss://``); default: the system's."""
    max_message_bytes: int = 2**24

    def dial_options(self) -> dict[str, object]:
        """Keyword arguments for ``websockets.connect``."""
        options: dict[str, object] = {}
        if self.join_token:
            options["additional_headers"] = {"Authorization": f"Bearer {self.join_token}"}
        if self.ca_cert is not None and gateway_url(self.router_url).startswith("wss:"):
            options["ssl"] = ssl.create_default_context(cafile=str(self.ca_cert))
        return options


def gateway_url(router_url: str) -> str:
    """``http://host:8000`` -> ``ws://host:8000/miner/ws`` (https -> wss)."""
    parts = urlsplit(router_url if "://" in router_url else f"http://{router_url}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    if not path.endswith("/miner/ws"):
        path += "/miner/ws"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class MinerAgent:
    def __init__(
        self,
        settings: AgentSettings,
        engine: Engine,
        hardware: HardwareProfile,
        jitter: Callable[[], float] = random.random,
        stats: MinerStats | None = None,
        host: HostMonitor | None = None,
        models: ModelLoader | None = None,
    ) -> None:
        self._settings = settings
        self._models = models
        """Loads and unloads variants when the router asks; None: a fixed model set."""
        self.stats = stats or MinerStats()
        self.host = host or HostMonitor()
        self._engine = engine
        self._hardware = hardware
        self._jitter = jitter
        self._slot_count = self._engine_slots()
        self._slots = asyncio.Semaphore(self._slot_count)
        self._running: dict[TaskId, asyncio.Task[None]] = {}
        self._busy = 0
        self._ws: ClientConnection | None = None
        self.draining = False
        self._refusals: set[asyncio.Task[None]] = set()
        self._checks: set[asyncio.Task[None]] = set()
        """Teacher-forced checks for the router, running beside tasks."""
        self._model_changes: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()
        self.parked = False
        """Standby autoscaling parked this miner: it only heartbeats, slowly."""
        self._heartbeat_interval_s = 1.0

    @property
    def miner_id(self) -> MinerId:
        return self._settings.identity.miner_id

    @property
    def busy(self) -> int:
        """Tasks running on the engine now."""
        return self._busy

    @property
    def queued(self) -> int:
        """Tasks accepted but waiting for a slot."""
        return max(0, len(self._running) - self._busy)

    def registration(self) -> Register:
        return Register(
            protocol_version=PROTOCOL_VERSION,
            miner_id=self.miner_id,
            public_key=self._settings.identity.public_key,
            name=self._settings.name,
            engine=self._engine.name,
            hardware=self._hardware,
            models=self._engine.offers(),
            slots=self._engine_slots(),
            claimed_tokens_per_s=self._engine.claimed_tokens_per_s(),
            software_version=__version__,
            operator=self._settings.operator,
            loadable=self._models.loadable() if self._models else (),
        )

    def _engine_slots(self) -> int:
        # A fault wrapper copies the slot count once; the loader's engine has the live one.
        return self._models.engine.slots if self._models else self._engine.slots

    def models_changed(self, error: str = "") -> ModelsChanged:
        """What the miner serves, loads and could load now."""
        return ModelsChanged(
            models=self._engine.offers(),
            loading=self._models.loading if self._models else (),
            loadable=self._models.loadable() if self._models else (),
            error=error,
            slots=self._engine_slots(),
        )

    async def run_forever(self) -> None:
        """Serve the router until cancelled; raises ``MinerRefused`` if refused."""
        url = gateway_url(self._settings.router_url)
        delay = self._settings.reconnect_min_s
        while True:
            try:
                async with websockets.connect(
                    url,
                    max_size=self._settings.max_message_bytes,
                    open_timeout=10,
                    **self._settings.dial_options(),  # type: ignore[arg-type]
                ) as ws:
                    await self._serve(ws)
                    delay = self._settings.reconnect_min_s
            except MinerRefused:
                raise
            except ssl.SSLCertVerificationError as exc:
                log.error(
                    "cannot verify the TLS certificate of router %s (%s); if it was signed by "
                    "a private CA, pass --ca-cert CA.pem. Retrying in %.1f s",
                    url,
                    exc.verify_message,
                    delay,
                )
            except (OSError, websockets.WebSocketException, TimeoutError) as exc:
                log.warning(
                    "router %s unreachable or lost (%s); retrying in %.1f s", url, exc, delay
                )
            finally:
                self.connected.clear()
                self._cancel_all()
            await asyncio.sleep(delay * (0.5 + self._jitter()))
            delay = min(delay * 2, self._settings.reconnect_max_s)

    async def _serve(self, ws: ClientConnection) -> None:
        await ws.send(encode(self.registration()))
        reply = await self._reply(ws)
        if isinstance(reply, Challenge):
            signature = self._settings.identity.answer_challenge(reply.nonce)
            await ws.send(encode(ChallengeAnswer(signature=signature)))
            reply = await self._reply(ws)
        if isinstance(reply, Refused):
            raise MinerRefused(reply.reason)
        if not isinstance(reply, Registered):
            raise MinerRefused(f"the router answered registration with {reply.type!r}")
        log.info("registered with %s as %s", self._settings.router_url, reply.miner_id)
        self._ws = ws
        if self.draining:
            await ws.send(encode(Draining()))
        self.connected.set()
        self._heartbeat_interval_s = reply.heartbeat_interval_s
        self.parked = False
        heartbeat = asyncio.create_task(self._heartbeat(ws))
        try:
            async for frame in ws:
                self._handle(ws, frame)
        finally:
            heartbeat.cancel()

    async def _reply(self, ws: ClientConnection) -> RouterMessage:
        return parse_router_message(
            await asyncio.wait_for(ws.recv(), self._settings.handshake_timeout_s)
        )

    def _handle(self, ws: ClientConnection, frame: str | bytes) -> None:
        try:
            message = parse_router_message(frame)
        except ValidationError as exc:
            log.warning("ignoring a malformed frame from the router: %s", exc)
            return
        if isinstance(message, TaskAssign):
            refusal = self._refusal(message)
            if refusal is not None:
                self._refusals.add(refusal_task := asyncio.create_task(_send(ws, refusal)))
                refusal_task.add_done_callback(self._refusals.discard)
                return
            task = asyncio.create_task(self._run(ws, message))
            self._running[message.task_id] = task
            task.add_done_callback(lambda _: self._running.pop(message.task_id, None))
        elif isinstance(message, VerifyAssign):
            check = asyncio.create_task(self._verify(ws, message))
            self._checks.add(check)
            check.add_done_callback(self._checks.discard)
        elif isinstance(message, Park):
            self.parked = message.parked
            self._heartbeat_interval_s = message.heartbeat_interval_s
            log.info("%s by the router", "parked" if message.parked else "activated")
        elif isinstance(message, TaskCancel):
            running = self._running.get(message.task_id)
            if running is not None:
                running.cancel()
        elif isinstance(message, LoadModel | UnloadModel):
            change = self._load if isinstance(message, LoadModel) else self._unload
            self._model_changes.add(task := asyncio.create_task(change(ws, message.name)))
            task.add_done_callback(self._model_changes.discard)

    async def _load(self, ws: ClientConnection, name: ModelName) -> None:
        """Load off the request path; the router hears of the model once it is ready."""
        if self._models is None:
            await self._tell(ws, f"this miner cannot load models on request ({name})")
            return
        try:
            loading = asyncio.create_task(self._models.load(name))
            await asyncio.sleep(0)  # let the load start, so the notice lists it as loading
            if not loading.done():
                await self._tell(ws)
            await loading
        except LoadRefused as exc:
            log.warning("cannot load %s: %s", name, exc)
            await self._tell(ws, str(exc))
            return
        self._resize_slots()
        await self._tell(ws)

    async def _unload(self, ws: ClientConnection, name: ModelName) -> None:
        """Stop offering at once; free the model when its running tasks end."""
        if self._models is None:
            await self._tell(ws, f"this miner cannot unload models on request ({name})")
            return
        try:
            self._models.withdraw(name)
        except LoadRefused as exc:
            log.warning("cannot unload %s: %s", name, exc)
            await self._tell(ws, str(exc))
            return
        self._resize_slots()
        await self._tell(ws)
        await self._models.release(name)
        await self._tell(ws)  # its memory is free: more may be loadable now

    async def _tell(self, ws: ClientConnection, error: str = "") -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(encode(self.models_changed(error)))

    def _resize_slots(self) -> None:
        """Admit as many tasks as the engines serving now can run."""
        count = self._engine_slots()
        change, self._slot_count = count - self._slot_count, count
        for _ in range(change):
            self._slots.release()
        if change < 0:  # take the permits back as running tasks hand them in
            self._model_changes.add(task := asyncio.create_task(self._hold_slots(-change)))
            task.add_done_callback(self._model_changes.discard)

    async def _hold_slots(self, count: int) -> None:
        for _ in range(count):
            await self._slots.acquire()

    def _refusal(self, task: TaskAssign) -> TaskFailed | None:
        if self.draining:  # assigned before the router heard we are leaving
            return TaskFailed(
                task_id=task.task_id,
                code="engine_error",
                message="the miner is shutting down",
                retryable=True,
            )
        if task.model_hash and task.model_hash != self._model_hash(task):
            return TaskFailed(
                task_id=task.task_id,
                code="model_not_loaded",
                message=f"this miner's file for {task.model} is not the one pinned "
                f"(sha256 {task.model_hash[:12]}…)",
                retryable=True,
            )
        return None

    def _model_hash(self, task: TaskAssign | VerifyAssign) -> str:
        return next((o.file_hash for o in self._engine.offers() if o.name == task.model), "")

    async def _run(self, ws: ClientConnection, task: TaskAssign) -> None:
        try:
            async with self._slots:
                self._busy += 1
                try:
                    await self._generate(ws, task)
                finally:
                    self._busy -= 1
        except TaskRejected as exc:
            self.stats.finished(task.model, "rejected")
            await _send(
                ws,
                TaskFailed(
                    task_id=task.task_id,
                    code=exc.code,
                    message=exc.message,
                    retryable=exc.retryable,
                ),
            )
        except asyncio.CancelledError:
            self.stats.finished(task.model, "cancelled")
            log.debug("task %s cancelled by the router", task.task_id)
        except Exception as exc:
            self.stats.finished(task.model, "failed")
            log.exception("engine failed on task %s", task.task_id)
            failure = TaskFailed(
                task_id=task.task_id,
                code="engine_error",
                message=f"{type(exc).__name__}: {exc}",
                retryable=True,
            )
            await _send(ws, failure)

    async def _generate(self, ws: ClientConnection, task: TaskAssign) -> None:
        queue: asyncio.Queue[StreamItem] = asyncio.Queue()
        producer = asyncio.create_task(self._produce(task, queue))
        sent: list[str] = []
        try:
            while True:
                for item in await next_batch(queue):
                    if isinstance(item, BaseException):
                        raise item
                    if isinstance(item, TaskChunk):
                        sent.append(item.text)
                    elif isinstance(item, TaskDone):
                        item = self._signed(task, item, "".join(sent))
                    await ws.send(encode(item))
                    if isinstance(item, TaskChunk):
                        self.stats.generated(task.model, item.tokens)
                    elif isinstance(item, TaskDone):
                        self.stats.finished(task.model, "ok", item.prompt_tokens)
                        return
        finally:
            producer.cancel()

    def _signed(self, task: TaskAssign, done: TaskDone, output: str) -> TaskDone:
        """The result with the miner's signature over task, model file and output."""
        model_hash = self._model_hash(task)
        output_sha256 = text_sha256(output)
        signature = self._settings.identity.sign_result(task.task_id, model_hash, output_sha256)
        return done.model_copy(
            update={
                "model_hash": model_hash,
                "output_sha256": output_sha256,
                "signature": signature,
            }
        )

    async def _produce(self, task: TaskAssign, queue: asyncio.Queue[StreamItem]) -> None:
        try:
            async with aclosing(self._engine.generate(task)) as events:
                async for event in events:
                    queue.put_nowait(event)
        except Exception as exc:  # handed to the sender, which reports it
            queue.put_nowait(exc)

    async def _verify(self, ws: ClientConnection, request: VerifyAssign) -> None:
        """Score another miner's output for the router; errors go back as ``error``."""
        try:
            if not isinstance(self._engine, ScoresOutputs):
                raise TaskRejected(
                    "invalid_request",
                    f"the {self._engine.name} engine cannot score",
                    retryable=True,
                )
            if request.model_hash and request.model_hash != self._model_hash(request):
                raise TaskRejected("model_not_loaded", "not the pinned model file", retryable=True)
            result = await self._engine.score(request)
        except TaskRejected as exc:
            result = VerifyResult(verify_id=request.verify_id, error=exc.message)
        except Exception as exc:
            log.exception("scoring %s failed", request.verify_id)
            result = VerifyResult(verify_id=request.verify_id, error=f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(encode(result))

    async def _heartbeat(self, ws: ClientConnection) -> None:
        while True:
            usage = self.host.sample()
            beat = Heartbeat(
                busy_slots=self._busy,
                queued_tasks=self.queued,
                cpu_percent=usage.cpu_percent,
                ram_percent=usage.ram_percent,
                ram_used_bytes=usage.ram_used_bytes,
                gpus=usage.gpus or None,
                tokens_per_s=round(self.stats.tokens_per_s(), 2),
                prefix_blocks=self._cached_prefixes(),
            )
            await ws.send(encode(beat))
            await asyncio.sleep(self._heartbeat_interval_s)

    def _cached_prefixes(self) -> tuple[int, ...] | None:
        if not isinstance(self._engine, TracksCache):
            return None
        return tuple(sorted(self._engine.cached_prefix_blocks()))[:MAX_REPORTED_PREFIX_BLOCKS]

    async def drain(self, timeout_s: float) -> None:
        """Take no new tasks, tell the router, and let running tasks finish
        (for at most ``timeout_s``)."""
        self.draining = True
        if self._ws is not None:
            with contextlib.suppress(websockets.ConnectionClosed):
                await self._ws.send(encode(Draining()))
        running = list(self._running.values())
        if running:
            await asyncio.wait(running, timeout=timeout_s)
        log.info("drained; %d task(s) left unfinished", len(self._running))

    def _cancel_all(self) -> None:
        for task in [*self._running.values(), *self._checks]:
            task.cancel()


async def _send(ws: ClientConnection, message: TaskFailed) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        await ws.send(encode(message))

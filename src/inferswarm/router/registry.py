"""Live state of the miners connected to this router.

The registry owns each miner's connection and the tasks in flight on it. The
gateway feeds it frames; the dispatcher starts tasks and reads their events;
the scheduler sees only an immutable ``Snapshot``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from inferswarm.protocol import (
    Draining,
    Heartbeat,
    LoadModel,
    MinerId,
    ModelName,
    ModelOffer,
    ModelsChanged,
    Park,
    Register,
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
)
from inferswarm.protocol.signing import result_payload, verify_signature
from inferswarm.protocol.variants import resolve_variants
from inferswarm.router.affinity import PrefixIndex, SessionMap
from inferswarm.router.capacity import SpeedTracker, claimed_speed
from inferswarm.router.events import EventKind, EventLog
from inferswarm.router.schedule import MinerState, MinerView, Snapshot, tier_for
from inferswarm.router.verify.book import ReputationBook
from inferswarm.router.verify.reputation import Outcome
from inferswarm.storage import ResultPurpose

log = logging.getLogger(__name__)

SendFrame = Callable[[str], Awaitable[None]]
CloseConnection = Callable[[str], Awaitable[None]]
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class MinerLost:
    """The miner running a task disconnected or stopped heartbeating."""

    reason: str


TaskEvent = TaskChunk | TaskDone | TaskFailed | MinerLost

BAN_BASE_S = 5.0
BAN_MAX_S = 300.0
"""A failing miner is banned for BAN_BASE_S, doubling on each repeat up to
BAN_MAX_S (Petals' rule); a success after the ban resets it."""

LOAD_TIMEOUT_S = 600.0
"""How long ``request_load`` waits for a miner to load a variant (a large file
from a slow disk, plus its first benchmark)."""

TTFT_WINDOW = 500
MIN_TTFT_SAMPLES = 20
"""TTFTs kept per tier for the hedging delay, and how many it needs."""

CapacityListener = Callable[[int], None]
ResultListener = Callable[["MinerConnection", TaskDone, ResultPurpose], None]
"""Told of every result whose signature verified (the ledger writes it)."""


class ModelChangeError(Exception):
    """A load or unload asked of a miner did not happen; the message says why
    and what to do. ``code`` is one of ``miner_not_found``, ``model_not_loadable``,
    ``model_not_loaded``, ``last_model``, ``miner_refused``, ``miner_lost`` and
    ``load_timeout``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(eq=False)
class _ModelWait:
    """A caller waiting for a miner to load (``offer``) or unload a variant."""

    name: ModelName
    load: bool
    done: asyncio.Future[ModelOffer | None]


@dataclass
class Ban:
    until: float
    duration: float


"""Told how many slots just became free (a task ended, a miner joined)."""


@dataclass(eq=False)
class TaskInFlight:
    events: asyncio.Queue[TaskEvent]
    started_at: float
    expected_tokens: int
    concurrency: int
    model_hash: str = ""
    """The file hash the miner offered for the task's model when it was assigned."""
    purpose: ResultPurpose = ResultPurpose.REQUEST
    first_token_at: float | None = None
    tokens: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    """SHA-256 of the text received so far, to check the miner's signed hash."""

    @property
    def remaining_tokens(self) -> int:
        return max(0, self.expected_tokens - self.tokens)


@dataclass(eq=False)
class MinerConnection:
    """One connected miner. Mutable, router-internal."""

    info: Register
    send: SendFrame
    close: CloseConnection
    connected_at: float
    last_seen: float
    state: MinerState = MinerState.LIVE
    address: str = ""
    """The IP address the miner connected from (its WebSocket peer); empty when
    unknown. Redundant runs treat miners of one network as one operator."""
    heartbeat: Heartbeat | None = None
    last_heartbeat_at: float | None = None
    silence_allowed_s: float | None = None
    """Overrides the heartbeat timeout, for a parked miner that beats slowly."""
    tasks: dict[TaskId, TaskInFlight] = field(default_factory=dict)
    checks: dict[TaskId, asyncio.Future[VerifyResult]] = field(default_factory=dict)
    """Teacher-forced checks sent to this miner, waiting for its ``VerifyResult``."""
    completed: int = 0
    failed: int = 0
    generated_tokens: int = 0
    speed: SpeedTracker = field(init=False)
    loading: tuple[ModelName, ...] = ()
    """Variants the miner is loading at the router's request (not offered yet)."""
    unloading: set[ModelName] = field(default_factory=set)
    """Variants the router asked it to unload: no new tasks, whatever it still says."""
    model_waits: list[_ModelWait] = field(default_factory=list)

    def __post_init__(self) -> None:
        capability = next((m.capability for m in self.info.models if m.capability), None)
        claimed = claimed_speed(capability, self.info.claimed_tokens_per_s)
        self.speed = SpeedTracker(claimed=claimed, slots=self.info.slots)

    @property
    def tokens_per_s(self) -> float | None:
        """Aggregate generation speed with all slots busy; observed wins over claimed."""
        return self.speed.aggregate_tokens_per_s()

    @property
    def tier(self) -> int:
        return tier_for(self.tokens_per_s)

    def observe(self, task: TaskInFlight, done: TaskDone, now: float) -> None:
        if task.first_token_at is None:
            return
        self.speed.observe(
            tokens=done.completion_tokens,
            generation_s=now - task.first_token_at,
            concurrency=task.concurrency,
            prompt_tokens=done.prompt_tokens,
            ttft_s=task.first_token_at - task.started_at,
        )

    @property
    def miner_id(self) -> MinerId:
        return self.info.miner_id

    def model_hash(self, model: ModelName) -> str:
        return next((o.file_hash for o in self.info.models if o.name == model), "")

    def forgery(self, task: TaskInFlight, done: TaskDone) -> str | None:
        """Why this result must not be trusted, or None when its signature holds."""
        if done.model_hash != task.model_hash:
            return f"it claims model file {done.model_hash[:12]!r}, the miner offered {task.model_hash[:12]!r}"
        if done.output_sha256 != task.digest.hexdigest():
            return "its output hash does not match the text the miner sent"
        payload = result_payload(done.task_id, done.model_hash, done.output_sha256)
        if not verify_signature(self.info.public_key, payload, done.signature):
            return "its signature does not verify under the miner's registered key"
        return None

    def view(
        self, banned: bool = False, quarantined: bool = False, reputation: float = 1.0
    ) -> MinerView:
        return MinerView(
            miner_id=self.miner_id,
            state=self.state,
            context_lengths={m.name: m.context_length for m in self.info.models},
            slots=self.info.slots,
            busy=len(self.tasks),
            speed=self.speed.effective(),
            queued_tokens=sum(t.remaining_tokens for t in self.tasks.values()),
            banned=banned,
            quarantined=quarantined,
            reputation=reputation,
        )


class MinerRegistry:
    def __init__(
        self,
        clock: Clock,
        heartbeat_timeout_s: float,
        wall_clock: Clock = time.time,
        book: ReputationBook | None = None,
    ) -> None:
        self._clock = clock
        self.book = book or ReputationBook()
        self._result_listeners: list[ResultListener] = []
        self._heartbeat_timeout_s = heartbeat_timeout_s
        self._miners: dict[MinerId, MinerConnection] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._capacity_listeners: list[CapacityListener] = []
        self.prefixes = PrefixIndex()
        self.sessions = SessionMap()
        self.bans: dict[MinerId, Ban] = {}
        self.events = EventLog(wall_clock)
        self._ttft_by_tier: dict[int, deque[float]] = {}
        self.places_models = False
        """Set when the autoscaler loads models nobody serves onto miners that can."""
        self._want_listeners: list[Callable[[str], None]] = []

    @property
    def migrations(self) -> int:
        return self.events.totals[EventKind.MIGRATION]

    @property
    def hedges(self) -> int:
        return self.events.totals[EventKind.HEDGE]

    @property
    def failovers(self) -> int:
        return self.events.totals[EventKind.FAILOVER]

    def state_of(self, conn: MinerConnection) -> MinerState:
        """The connection's state, or quarantined when the reputation book says so."""
        if self.book.is_quarantined(conn.miner_id):
            return MinerState.QUARANTINED
        return conn.state

    def note(self, kind: EventKind, miner_id: MinerId, detail: str) -> None:
        """Record something that happened to or because of a miner."""
        conn = self._miners.get(miner_id)
        self.events.record(kind, miner_id, conn.info.name if conn else miner_id, detail)

    def hedge_delay_s(self, miner_id: MinerId, default_s: float) -> float:
        """The p95 time to first token of this miner's tier, once there are enough samples."""
        conn = self._miners.get(miner_id)
        samples = self._ttft_by_tier.get(conn.tier, deque()) if conn else deque()
        if len(samples) < MIN_TTFT_SAMPLES:
            return default_s
        ordered = sorted(samples)
        return ordered[int(len(ordered) * 0.95)]

    def is_banned(self, miner_id: MinerId, now: float | None = None) -> bool:
        ban = self.bans.get(miner_id)
        return ban is not None and ban.until > (self._clock() if now is None else now)

    def penalize(self, miner_id: MinerId, reason: str, outcome: Outcome = Outcome.ERROR) -> None:
        """Ban a miner that failed a task; repeated failures double the ban."""
        self.book.record(miner_id, outcome)
        now = self._clock()
        previous = self.bans.get(miner_id)
        # Doubling is for failures in a row: long after the last ban, start short again.
        if previous is None or now - previous.until > 2 * previous.duration:
            duration = BAN_BASE_S
        else:
            duration = min(previous.duration * 2, BAN_MAX_S)
        self.bans[miner_id] = Ban(until=now + duration, duration=duration)
        log.warning("miner %s banned for %.0f s: %s", miner_id, duration, reason)
        self.note(EventKind.BAN, miner_id, f"banned for {duration:g} s: {reason}")

    def snapshot(self) -> Snapshot:
        now = self._clock()
        views = [
            conn.view(
                self.is_banned(conn.miner_id, now),
                self.book.is_quarantined(conn.miner_id),
                self.book.score(conn.miner_id),
            )
            for conn in self._miners.values()
        ]
        return Snapshot.of(views, self.prefixes.view(), self.sessions.view())

    def on_result(self, listener: ResultListener) -> None:
        self._result_listeners.append(listener)

    def on_capacity(self, listener: CapacityListener) -> None:
        self._capacity_listeners.append(listener)

    def _freed(self, slots: int) -> None:
        for listener in self._capacity_listeners:
            listener(slots)

    def connections(self) -> list[MinerConnection]:
        return list(self._miners.values())

    def get(self, miner_id: MinerId) -> MinerConnection | None:
        return self._miners.get(miner_id)

    def served_models(self) -> dict[ModelName, list[MinerConnection]]:
        served: dict[ModelName, list[MinerConnection]] = {}
        for conn in self._miners.values():
            if conn.state is MinerState.LIVE:
                for offer in conn.info.models:
                    served.setdefault(offer.name, []).append(conn)
        return served

    def offers_for(self, model: str) -> list[tuple[MinerConnection, ModelOffer]]:
        """Each live miner's offers that answer ``model`` (a family: any of its variants)."""
        served = self.served_models()
        names = set(resolve_variants(model, served).variants)
        return [
            (conn, offer)
            for name in names
            for conn in served[name]
            for offer in conn.info.models
            if offer.name == name
        ]

    def on_want(self, listener: Callable[[str], None]) -> None:
        """Be told when a request starts waiting for a model that is ``coming``."""
        self._want_listeners.append(listener)

    def want(self, model: str) -> None:
        for listener in self._want_listeners:
            listener(model)

    def coming(self, model: str, min_precision: str | None = None) -> bool:
        """Whether no live miner serves ``model`` (a family: any variant) but one
        soon may: while the autoscaler places models, a connected miner is loading
        a variant of it, can load one, or is parked serving one. A request for it
        waits instead of being refused."""
        if not self.places_models or resolve_variants(model, self.served_models()).variants:
            return False
        able = set(self.loading_models()) | {
            offer.name
            for conn in self._miners.values()
            if conn.state in (MinerState.LIVE, MinerState.PARKED)
            for offer in (*conn.info.loadable, *conn.info.models)
        }
        return bool(resolve_variants(model, able, min_precision).variants)

    async def add(
        self, info: Register, send: SendFrame, close: CloseConnection, address: str = ""
    ) -> MinerConnection:
        """Register a miner; a reconnecting miner replaces its stale connection."""
        stale = self._miners.get(info.miner_id)
        if stale is not None:
            await self.remove(stale, "the miner reconnected on a new connection")
            await stale.close("replaced by a newer connection from the same miner")
        now = self._clock()
        conn = MinerConnection(
            info=info, send=send, close=close, connected_at=now, last_seen=now, address=address
        )
        self._miners[info.miner_id] = conn
        log.info("miner %s (%s) joined with %d slots", info.miner_id, info.name, info.slots)
        models = ", ".join(offer.name for offer in info.models)
        self.note(EventKind.JOIN, info.miner_id, f"{models} with {info.slots} slot(s)")
        self._freed(info.slots)
        return conn

    async def remove(self, conn: MinerConnection, reason: str) -> None:
        """Forget a miner and fail its in-flight tasks so they can move elsewhere."""
        if self._miners.get(conn.miner_id) is conn:
            del self._miners[conn.miner_id]
            self.prefixes.forget(conn.miner_id)
            log.info("miner %s left: %s", conn.miner_id, reason)
            self.events.record(EventKind.LEAVE, conn.miner_id, conn.info.name, reason)
        lost = MinerLost(f"miner {conn.info.name} ({conn.miner_id}) was lost: {reason}")
        for task in conn.tasks.values():
            task.events.put_nowait(lost)
        conn.tasks.clear()
        for check in conn.checks.values():
            if not check.done():
                check.set_exception(ConnectionError(lost.reason))
        for wait in conn.model_waits:
            _settle(wait, ModelChangeError("miner_lost", f"{lost.reason}; ask another miner"))
        conn.model_waits.clear()

    def on_message(
        self,
        conn: MinerConnection,
        message: Heartbeat
        | Draining
        | TaskChunk
        | TaskDone
        | TaskFailed
        | ModelsChanged
        | VerifyResult,
    ) -> None:
        conn.last_seen = self._clock()
        if isinstance(message, VerifyResult):
            waiting = conn.checks.get(message.verify_id)
            if waiting is not None and not waiting.done():
                waiting.set_result(message)
            return
        if isinstance(message, ModelsChanged):
            self._models_changed(conn, message)
            return
        if isinstance(message, Heartbeat):
            conn.heartbeat = message
            conn.last_heartbeat_at = conn.last_seen
            if message.prefix_blocks is not None:  # the engine's real cache, not a guess
                self.prefixes.replace(conn.miner_id, message.prefix_blocks)
            return
        if isinstance(message, Draining):
            conn.state = MinerState.DRAINING
            log.info("miner %s is draining: no new tasks", conn.miner_id)
            self.note(EventKind.DRAINING, conn.miner_id, "shutting down; no new tasks")
            return
        task = conn.tasks.get(message.task_id)
        if task is None:
            return  # a late frame for a task already finished or cancelled
        if isinstance(message, TaskChunk):
            if task.first_token_at is None:
                task.first_token_at = conn.last_seen
            task.tokens += message.tokens
            task.digest.update(message.text.encode())
            conn.generated_tokens += message.tokens
        else:
            del conn.tasks[message.task_id]
            if isinstance(message, TaskDone):
                forgery = conn.forgery(task, message)
                if forgery is not None:
                    message = self._reject_forgery(conn, message, forgery)
            if isinstance(message, TaskDone):
                conn.completed += 1
                conn.observe(task, message, conn.last_seen)
                if task.first_token_at is not None:
                    ttfts = self._ttft_by_tier.setdefault(conn.tier, deque(maxlen=TTFT_WINDOW))
                    ttfts.append(task.first_token_at - task.started_at)
                ban = self.bans.get(conn.miner_id)
                if ban is not None and ban.until <= conn.last_seen:
                    del self.bans[conn.miner_id]  # served well again: the next ban starts short
                self.book.record(conn.miner_id, Outcome.COMPLETED)
                for listener in self._result_listeners:
                    listener(conn, message, task.purpose)
            else:
                conn.failed += 1
            self._freed(1)
        task.events.put_nowait(message)

    def _reject_forgery(self, conn: MinerConnection, done: TaskDone, why: str) -> TaskFailed:
        log.warning(
            "miner %s sent a result for %s that fails verification: %s",
            conn.miner_id,
            done.task_id,
            why,
        )
        self.book.record(conn.miner_id, Outcome.FORGED)
        return TaskFailed(
            task_id=done.task_id,
            code="engine_error",
            message=f"the result of miner {conn.miner_id} was rejected: {why}",
            retryable=True,
        )

    def loadable_models(self) -> dict[ModelName, list[MinerConnection]]:
        """Per variant, the connected miners (parked ones too) that could load it
        now and do not serve it."""
        loadable: dict[ModelName, list[MinerConnection]] = {}
        for conn in self._miners.values():
            if conn.state in (MinerState.LIVE, MinerState.PARKED):
                for offer in conn.info.loadable:
                    loadable.setdefault(offer.name, []).append(conn)
        return loadable

    def loading_models(self) -> dict[ModelName, list[MinerConnection]]:
        """Per variant, the miners asked to load it that do not serve it yet
        (for an autoscaler: capacity on its way)."""
        loading: dict[ModelName, list[MinerConnection]] = {}
        for conn in self._miners.values():
            asked = {w.name for w in conn.model_waits if w.load}
            for name in dict.fromkeys([*conn.loading, *sorted(asked)]):
                loading.setdefault(name, []).append(conn)
        return loading

    async def request_load(
        self, miner_id: MinerId, name: ModelName, timeout_s: float = LOAD_TIMEOUT_S
    ) -> ModelOffer:
        """Ask a miner to load one of its ``loadable`` variants and wait until it
        serves it (the miner loads off its request path; tasks for the variant
        go to it only from then on). Returns the miner's offer; raises
        ``ModelChangeError``. A variant already served returns at once; one
        already loading is waited for, not asked again."""
        conn = self._connection(miner_id)
        served = next((o for o in conn.info.models if o.name == name), None)
        if served is not None and name not in conn.unloading:
            return served
        pending = any(w.load and w.name == name for w in conn.model_waits)
        if not pending and name not in conn.loading:
            self._check_loadable(conn, name)
        wait = self._wait_for(conn, name, load=True)
        if not pending and name not in conn.loading:
            await _send_quietly(conn, encode(LoadModel(name=name)))
        offer = await self._finish(conn, wait, timeout_s, f"load {name}")
        assert offer is not None
        return offer

    async def request_unload(
        self, miner_id: MinerId, name: ModelName, timeout_s: float = 30.0
    ) -> None:
        """Stop sending a miner tasks for ``name`` now and ask it to unload the
        variant; its running tasks finish first. Returns once the miner has
        stopped offering it; raises ``ModelChangeError``."""
        conn = self._connection(miner_id)
        served = [o.name for o in conn.info.models]
        if name not in served:
            raise ModelChangeError(
                "model_not_loaded",
                f"miner {conn.info.name} ({miner_id}) does not serve {name}; "
                f"it serves {', '.join(served) or 'nothing'}",
            )
        if len(served) == 1:
            raise ModelChangeError(
                "last_model",
                f"{name} is the only model miner {conn.info.name} serves; load another "
                "variant on it first, or stop the miner",
            )
        conn.unloading.add(name)
        conn.info = conn.info.model_copy(
            update={"models": tuple(o for o in conn.info.models if o.name != name)}
        )
        wait = self._wait_for(conn, name, load=False)
        await _send_quietly(conn, encode(UnloadModel(name=name)))
        await self._finish(conn, wait, timeout_s, f"unload {name}")

    def _connection(self, miner_id: MinerId) -> MinerConnection:
        conn = self._miners.get(miner_id)
        if conn is None:
            raise ModelChangeError(
                "miner_not_found",
                f"no miner {miner_id!r} is connected; `inferswarm status` lists the miners",
            )
        return conn

    def _check_loadable(self, conn: MinerConnection, name: ModelName) -> None:
        if any(o.name == name for o in conn.info.loadable):
            return
        could = ", ".join(o.name for o in conn.info.loadable) or "nothing (its memory is full)"
        raise ModelChangeError(
            "model_not_loadable",
            f"miner {conn.info.name} ({conn.miner_id}) cannot load {name} now: it has no such "
            f"file or not enough free memory. It could load: {could}",
        )

    def _wait_for(self, conn: MinerConnection, name: ModelName, *, load: bool) -> _ModelWait:
        wait = _ModelWait(name, load, asyncio.get_running_loop().create_future())
        conn.model_waits.append(wait)
        return wait

    async def _finish(
        self, conn: MinerConnection, wait: _ModelWait, timeout_s: float, what: str
    ) -> ModelOffer | None:
        try:
            return await asyncio.wait_for(asyncio.shield(wait.done), timeout_s)
        except TimeoutError:
            raise ModelChangeError(
                "load_timeout",
                f"miner {conn.info.name} did not {what} within {timeout_s:g} s; "
                "see the miner's log",
            ) from None
        finally:
            if wait in conn.model_waits:
                conn.model_waits.remove(wait)

    def _models_changed(self, conn: MinerConnection, message: ModelsChanged) -> None:
        before = {o.name for o in conn.info.models} | conn.unloading
        offered = {o.name for o in message.models}
        conn.unloading &= offered  # the miner has let go of the others
        # An unload the miner refused: it serves that variant again.
        conn.unloading -= {n for n in conn.unloading if _concerns(message.error, n, conn)}
        models = tuple(o for o in message.models if o.name not in conn.unloading)
        slots = message.slots or conn.info.slots
        conn.info = conn.info.model_copy(
            update={"models": models, "loadable": message.loadable, "slots": slots}
        )
        conn.speed.slots = slots
        conn.loading = message.loading
        after = {o.name for o in models}
        for name in sorted(after - before):
            self.note(EventKind.MODEL_LOAD, conn.miner_id, f"loaded {name}; serving it now")
        for name in sorted(before - after):
            self.note(EventKind.MODEL_UNLOAD, conn.miner_id, f"unloaded {name}")
        if message.error:
            log.warning("miner %s: %s", conn.miner_id, message.error)
            self.note(EventKind.MODEL_ERROR, conn.miner_id, message.error)
        for wait in list(conn.model_waits):
            self._resolve(conn, wait, message, models)
        if after - before:
            self._freed(slots)

    def _resolve(
        self,
        conn: MinerConnection,
        wait: _ModelWait,
        message: ModelsChanged,
        models: tuple[ModelOffer, ...],
    ) -> None:
        offer = next((o for o in models if o.name == wait.name), None)
        if wait.load and offer is not None:
            _settle(wait, offer)
        elif not wait.load and wait.name not in {o.name for o in message.models}:
            _settle(wait, None)
        elif _concerns(message.error, wait.name, conn) and wait.name not in message.loading:
            _settle(wait, ModelChangeError("miner_refused", message.error))
        else:
            return
        conn.model_waits.remove(wait)

    async def start_task(
        self,
        miner_id: MinerId,
        task: TaskAssign,
        *,
        expected_tokens: int,
        prefix: tuple[int, ...] = (),
        session: str | None = None,
        purpose: ResultPurpose = ResultPurpose.REQUEST,
    ) -> asyncio.Queue[TaskEvent]:
        conn = self._miners[miner_id]
        queue: asyncio.Queue[TaskEvent] = asyncio.Queue()
        conn.tasks[task.task_id] = TaskInFlight(
            events=queue,
            started_at=self._clock(),
            expected_tokens=expected_tokens,
            concurrency=len(conn.tasks) + 1,
            model_hash=conn.model_hash(task.model),
            purpose=purpose,
        )
        # A miner that reports its cache keeps its report plus what was sent since.
        reports = conn.heartbeat is not None and conn.heartbeat.prefix_blocks is not None
        self.prefixes.record(miner_id, prefix, keep=conn.info.slots + reports)
        if session:
            self.sessions.record(session, miner_id)
        try:
            await conn.send(encode(task))
        except Exception as exc:  # the socket died under us: report it as a lost miner
            conn.tasks.pop(task.task_id, None)
            queue.put_nowait(MinerLost(f"could not send the task to {conn.info.name}: {exc}"))
        return queue

    async def score(
        self, miner_id: MinerId, request: VerifyAssign, timeout_s: float
    ) -> VerifyResult:
        """Send a teacher-forced check to a miner and wait for its scores;
        ``ConnectionError`` if it leaves, ``TimeoutError`` if it takes too long
        (a miner too old to know the message never answers)."""
        conn = self._miners[miner_id]
        waiting: asyncio.Future[VerifyResult] = asyncio.get_running_loop().create_future()
        conn.checks[request.verify_id] = waiting
        try:
            await conn.send(encode(request))
            return await asyncio.wait_for(waiting, timeout_s)
        finally:
            conn.checks.pop(request.verify_id, None)

    def cancel_task(self, miner_id: MinerId, task_id: TaskId) -> None:
        """Free the task's slot now and tell the miner in the background.

        Synchronous on purpose: it runs in ``finally`` blocks of requests whose
        client went away, where the surrounding scope is already cancelled and
        any ``await`` would be cancelled too.
        """
        conn = self._miners.get(miner_id)
        if conn is None or conn.tasks.pop(task_id, None) is None:
            return
        self._freed(1)
        notice = asyncio.get_running_loop().create_task(
            _send_quietly(conn, encode(TaskCancel(task_id=task_id)))
        )
        self._background.add(notice)
        notice.add_done_callback(self._background.discard)

    def drain(self, conn: MinerConnection, reason: str) -> None:
        """Give the miner no new tasks; those in flight run to the end."""
        if conn.state is MinerState.LIVE:
            conn.state = MinerState.DRAINING
            self.note(EventKind.DRAINING, conn.miner_id, reason)

    async def park(self, conn: MinerConnection, heartbeat_interval_s: float) -> None:
        """Hold an idle miner in reserve: no tasks, slow heartbeats."""
        conn.state = MinerState.PARKED
        conn.silence_allowed_s = max(self._heartbeat_timeout_s, 3 * heartbeat_interval_s)
        await _send_quietly(
            conn, encode(Park(parked=True, heartbeat_interval_s=heartbeat_interval_s))
        )

    async def activate(self, conn: MinerConnection, heartbeat_interval_s: float) -> None:
        """Offer a parked (or draining) miner work again."""
        conn.state = MinerState.LIVE
        conn.silence_allowed_s = None
        await _send_quietly(
            conn, encode(Park(parked=False, heartbeat_interval_s=heartbeat_interval_s))
        )
        self._freed(conn.info.slots)

    async def expire_silent(self) -> list[MinerConnection]:
        """Drop miners whose last frame is older than their heartbeat timeout."""
        now = self._clock()
        silent = [
            c
            for c in self._miners.values()
            if now - c.last_seen > (c.silence_allowed_s or self._heartbeat_timeout_s)
        ]
        for conn in silent:
            allowed = conn.silence_allowed_s or self._heartbeat_timeout_s
            reason = f"no heartbeat for more than {allowed:g} s"
            await self.remove(conn, reason)
            await conn.close(reason)
        return silent


def _concerns(error: str, name: ModelName, conn: MinerConnection) -> bool:
    """Whether a miner's error is about ``name``: it names it, or it is the only
    change waited for (the message carries no name of its own)."""
    if not error:
        return False
    return name in error or len({w.name for w in conn.model_waits} | conn.unloading) <= 1


def _settle(wait: _ModelWait, outcome: ModelOffer | ModelChangeError | None) -> None:
    if wait.done.done():
        return
    if isinstance(outcome, ModelChangeError):
        wait.done.set_exception(outcome)
    else:
        wait.done.set_result(outcome)


async def _send_quietly(conn: MinerConnection, frame: str) -> None:
    try:
        await conn.send(frame)
    except Exception:
        log.debug("a frame to miner %s was lost; it is disconnecting", conn.miner_id)

"""Live state of the miners connected to this router.

The registry owns each miner's connection and the tasks in flight on it. The
gateway feeds it frames; the dispatcher starts tasks and reads their events;
the scheduler sees only an immutable ``Snapshot``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from inferswarm.protocol import (
    Heartbeat,
    MinerId,
    ModelName,
    Register,
    TaskAssign,
    TaskCancel,
    TaskChunk,
    TaskDone,
    TaskFailed,
    TaskId,
    encode,
)
from inferswarm.router.schedule import MinerState, MinerView, Snapshot

log = logging.getLogger(__name__)

SendFrame = Callable[[str], Awaitable[None]]
CloseConnection = Callable[[str], Awaitable[None]]
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class MinerLost:
    """The miner running a task disconnected or stopped heartbeating."""

    reason: str


TaskEvent = TaskChunk | TaskDone | TaskFailed | MinerLost

SPEED_SMOOTHING = 0.3
"""Weight of the newest observation in a miner's generation-speed EWMA."""


@dataclass(eq=False)
class TaskInFlight:
    events: asyncio.Queue[TaskEvent]
    started_at: float
    first_token_at: float | None = None
    tokens: int = 0


@dataclass(eq=False)
class MinerConnection:
    """One connected miner. Mutable, router-internal."""

    info: Register
    send: SendFrame
    close: CloseConnection
    connected_at: float
    last_seen: float
    state: MinerState = MinerState.LIVE
    heartbeat: Heartbeat | None = None
    last_heartbeat_at: float | None = None
    tasks: dict[TaskId, TaskInFlight] = field(default_factory=dict)
    completed: int = 0
    failed: int = 0
    generated_tokens: int = 0
    observed_tokens_per_s: float | None = None

    @property
    def tokens_per_s(self) -> float | None:
        """Observed generation speed wins over the miner's own claim."""
        if self.observed_tokens_per_s is not None:
            return self.observed_tokens_per_s
        return self.info.claimed_tokens_per_s

    def observe_speed(self, task: TaskInFlight, now: float) -> None:
        if task.first_token_at is None or task.tokens < 2 or now <= task.first_token_at:
            return
        speed = (task.tokens - 1) / (now - task.first_token_at)
        if self.observed_tokens_per_s is None:
            self.observed_tokens_per_s = speed
        else:
            self.observed_tokens_per_s += SPEED_SMOOTHING * (speed - self.observed_tokens_per_s)

    @property
    def miner_id(self) -> MinerId:
        return self.info.miner_id

    def view(self) -> MinerView:
        return MinerView(
            miner_id=self.miner_id,
            state=self.state,
            context_lengths={m.name: m.context_length for m in self.info.models},
            slots=self.info.slots,
            busy=len(self.tasks),
            tokens_per_s=self.tokens_per_s,
        )


class MinerRegistry:
    def __init__(self, clock: Clock, heartbeat_timeout_s: float) -> None:
        self._clock = clock
        self._heartbeat_timeout_s = heartbeat_timeout_s
        self._miners: dict[MinerId, MinerConnection] = {}
        self._background: set[asyncio.Task[None]] = set()

    def snapshot(self) -> Snapshot:
        return Snapshot(tuple(conn.view() for conn in self._miners.values()))

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

    async def add(self, info: Register, send: SendFrame, close: CloseConnection) -> MinerConnection:
        """Register a miner; a reconnecting miner replaces its stale connection."""
        stale = self._miners.get(info.miner_id)
        if stale is not None:
            await self.remove(stale, "the miner reconnected on a new connection")
            await stale.close("replaced by a newer connection from the same miner")
        now = self._clock()
        conn = MinerConnection(info=info, send=send, close=close, connected_at=now, last_seen=now)
        self._miners[info.miner_id] = conn
        log.info("miner %s (%s) joined with %d slots", info.miner_id, info.name, info.slots)
        return conn

    async def remove(self, conn: MinerConnection, reason: str) -> None:
        """Forget a miner and fail its in-flight tasks so they can move elsewhere."""
        if self._miners.get(conn.miner_id) is conn:
            del self._miners[conn.miner_id]
            log.info("miner %s left: %s", conn.miner_id, reason)
        lost = MinerLost(f"miner {conn.info.name} ({conn.miner_id}) was lost: {reason}")
        for task in conn.tasks.values():
            task.events.put_nowait(lost)
        conn.tasks.clear()

    def on_message(
        self, conn: MinerConnection, message: Heartbeat | TaskChunk | TaskDone | TaskFailed
    ) -> None:
        conn.last_seen = self._clock()
        if isinstance(message, Heartbeat):
            conn.heartbeat = message
            conn.last_heartbeat_at = conn.last_seen
            return
        task = conn.tasks.get(message.task_id)
        if task is None:
            return  # a late frame for a task already finished or cancelled
        if isinstance(message, TaskChunk):
            if task.first_token_at is None:
                task.first_token_at = conn.last_seen
            task.tokens += message.tokens
            conn.generated_tokens += message.tokens
        else:
            del conn.tasks[message.task_id]
            if isinstance(message, TaskDone):
                conn.completed += 1
                conn.observe_speed(task, conn.last_seen)
            else:
                conn.failed += 1
        task.events.put_nowait(message)

    async def start_task(self, miner_id: MinerId, task: TaskAssign) -> asyncio.Queue[TaskEvent]:
        conn = self._miners[miner_id]
        queue: asyncio.Queue[TaskEvent] = asyncio.Queue()
        conn.tasks[task.task_id] = TaskInFlight(events=queue, started_at=self._clock())
        try:
            await conn.send(encode(task))
        except Exception as exc:  # the socket died under us: report it as a lost miner
            conn.tasks.pop(task.task_id, None)
            queue.put_nowait(MinerLost(f"could not send the task to {conn.info.name}: {exc}"))
        return queue

    def cancel_task(self, miner_id: MinerId, task_id: TaskId) -> None:
        """Free the task's slot now and tell the miner in the background.

        Synchronous on purpose: it runs in ``finally`` blocks of requests whose
        client went away, where the surrounding scope is already cancelled and
        any ``await`` would be cancelled too.
        """
        conn = self._miners.get(miner_id)
        if conn is None or conn.tasks.pop(task_id, None) is None:
            return
        notice = asyncio.get_running_loop().create_task(
            _send_quietly(conn, encode(TaskCancel(task_id=task_id)))
        )
        self._background.add(notice)
        notice.add_done_callback(self._background.discard)

    async def expire_silent(self) -> list[MinerConnection]:
        """Drop miners whose last frame is older than the heartbeat timeout."""
        deadline = self._clock() - self._heartbeat_timeout_s
        silent = [c for c in self._miners.values() if c.last_seen < deadline]
        for conn in silent:
            reason = f"no heartbeat for more than {self._heartbeat_timeout_s:g} s"
            await self.remove(conn, reason)
            await conn.close(reason)
        return silent


async def _send_quietly(conn: MinerConnection, frame: str) -> None:
    try:
        await conn.send(frame)
    except Exception:
        log.debug("a frame to miner %s was lost; it is disconnecting", conn.miner_id)

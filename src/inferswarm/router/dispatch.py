"""Sending a task to a miner and relaying what comes back.

``Dispatcher.run`` yields the task's text chunks and finally a ``TaskDone``.
Before the first chunk reaches the client, a failed or lost miner is replaced
by another (bounded attempts, never the same miner twice); after it, the
failure is raised, since the client already holds part of the answer. Every
wait is bounded, so no request hangs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass

from inferswarm.openai_compat.errors import (
    APIError,
    GatewayTimeout,
    InvalidRequest,
    ServiceUnavailable,
    UpstreamFailed,
)
from inferswarm.protocol import (
    MinerId,
    ModelName,
    SamplingParams,
    TaskAssign,
    TaskChunk,
    TaskDone,
    TaskFailed,
    TaskId,
)
from inferswarm.protocol.messages import ChatMessage
from inferswarm.router.registry import MinerLost, MinerRegistry, TaskEvent
from inferswarm.router.schedule import Policy, TaskNeeds, choose_miner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DispatchLimits:
    max_attempts: int = 3
    first_token_timeout_s: float = 120.0
    idle_timeout_s: float = 60.0


@dataclass(frozen=True)
class Job:
    """One generation the API asked for, before it is bound to a miner."""

    model: ModelName
    sampling: SamplingParams
    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None

    def assign(self, task_id: TaskId) -> TaskAssign:
        return TaskAssign(
            task_id=task_id,
            model=self.model,
            prompt=self.prompt,
            messages=self.messages,
            sampling=self.sampling,
        )


class _Retry(Exception):
    """This attempt failed before any output; try another miner."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Dispatcher:
    def __init__(self, registry: MinerRegistry, policy: Policy, limits: DispatchLimits) -> None:
        self._registry = registry
        self._policy = policy
        self._limits = limits
        self._sequence = itertools.count()

    async def run(self, job: Job) -> AsyncGenerator[TaskChunk | TaskDone, None]:
        tried: set[MinerId] = set()
        failures: list[str] = []
        for _ in range(self._limits.max_attempts):
            miner_id = self._choose(job, tried, failures)
            tried.add(miner_id)
            try:
                async with aclosing(self._attempt(job, miner_id)) as events:
                    async for event in events:
                        yield event
                return
            except _Retry as retry:
                log.warning("task on %s failed before output: %s", miner_id, retry.reason)
                failures.append(retry.reason)
        raise UpstreamFailed(
            f"the request failed on {len(tried)} miners: {'; '.join(failures)}. "
            "Retry later; if it keeps failing, check the miners' logs.",
            code="miners_failed",
        )

    def _choose(self, job: Job, tried: set[MinerId], failures: list[str]) -> MinerId:
        needs = TaskNeeds(
            model=job.model,
            max_tokens=job.sampling.max_tokens,
            exclude=frozenset(tried),
            sequence=next(self._sequence),
        )
        decision = choose_miner(needs, self._registry.snapshot(), self._policy)
        if decision.miner_id is not None:
            return decision.miner_id
        if failures:
            raise UpstreamFailed(
                f"the request failed on {len(tried)} miners: {'; '.join(failures)}; "
                f"then {decision.reason}. Retry later; if it keeps failing, check the miners' logs.",
                code="miners_failed",
            )
        raise ServiceUnavailable(
            f"{decision.reason}. Start a miner for this model or retry shortly.",
            code="no_miner_available",
            headers={"Retry-After": "1"},
        )

    async def _attempt(
        self, job: Job, miner_id: MinerId
    ) -> AsyncGenerator[TaskChunk | TaskDone, None]:
        task = job.assign(TaskId(f"task-{uuid.uuid4().hex}"))
        queue = await self._registry.start_task(miner_id, task)
        produced = False
        finished = False
        try:
            while True:
                timeout = (
                    self._limits.idle_timeout_s if produced else self._limits.first_token_timeout_s
                )
                event = await self._next_event(queue, timeout, produced, miner_id)
                if isinstance(event, TaskChunk):
                    produced = True
                    yield event
                elif isinstance(event, TaskDone):
                    finished = True
                    yield event
                    return
                else:
                    finished = True
                    raise _failure(event, produced)
        finally:
            if not finished:  # client went away or the wait timed out: free the slot
                self._registry.cancel_task(miner_id, task.task_id)

    async def _next_event(
        self, queue: asyncio.Queue[TaskEvent], wait_s: float, produced: bool, miner_id: MinerId
    ) -> TaskEvent:
        try:
            return await asyncio.wait_for(queue.get(), wait_s)
        except TimeoutError:
            what = "the next token" if produced else "the first token"
            reason = f"miner {miner_id} sent no {what} within {wait_s:g} s"
            if produced:
                raise GatewayTimeout(reason, code="miner_timeout") from None
            raise _Retry(reason) from None


def _failure(event: TaskFailed | MinerLost, produced: bool) -> Exception:
    if isinstance(event, MinerLost):
        if produced:
            return UpstreamFailed(f"{event.reason} mid-stream", code="miner_lost")
        return _Retry(event.reason)
    if event.code == "context_length_exceeded":
        return InvalidRequest(event.message, param="messages", code=event.code)
    if event.code == "invalid_request":
        return InvalidRequest(event.message, code=event.code)
    if event.retryable and not produced:
        return _Retry(f"{event.code}: {event.message}")
    error: APIError = UpstreamFailed(f"miner failed: {event.message}", code=event.code)
    return error

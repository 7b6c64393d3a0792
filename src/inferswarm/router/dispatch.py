"""Sending a task to a miner and relaying what comes back.

``Dispatcher.run`` yields the task's text chunks and finally a ``TaskDone``.
Before the first chunk reaches the client, a failed or lost miner is replaced
by another (bounded attempts, never the same miner twice); after it, the
failure is raised, since the client already holds part of the answer. Every
wait is bounded, so no request hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass

from inferswarm.openai_compat.errors import (
    APIError,
    InvalidRequest,
    ServiceUnavailable,
    UpstreamFailed,
)
from inferswarm.protocol import (
    MinerId,
    ModelName,
    Resume,
    SamplingParams,
    TaskAssign,
    TaskChunk,
    TaskDone,
    TaskFailed,
    TaskId,
)
from inferswarm.protocol.messages import ChatMessage
from inferswarm.protocol.prefix import prompt_text
from inferswarm.protocol.variants import UnknownPrecision, resolve_variants, variant_on
from inferswarm.router.admission import WaitQueue
from inferswarm.router.affinity import (
    BLOCK_CHARS,
    CHARS_PER_TOKEN_UPPER,
    min_prompt_tokens,
    prefix_blocks,
)
from inferswarm.router.events import EventKind
from inferswarm.router.registry import MinerConnection, MinerLost, MinerRegistry, TaskEvent
from inferswarm.router.schedule import (
    DEFAULT_EXPECTED_OUTPUT_TOKENS,
    Decision,
    Policy,
    TaskNeeds,
    choose_miner,
)
from inferswarm.router.verify.reputation import Outcome
from inferswarm.storage import ResultPurpose

log = logging.getLogger(__name__)


RETRY_BACKOFF_S = 0.05
MODEL_RECHECK_S = 1.0
"""While a model is being loaded for a request: how often it looks again."""
MIN_PROGRESS_DEADLINE_S = 10.0
PROGRESS_DEADLINE_TOKENS = 100
"""A stream that stalls for this many of its miner's token times has stalled."""


@dataclass(frozen=True)
class DispatchLimits:
    max_attempts: int = 3
    """Miners tried before the first token reaches the client."""
    max_migrations: int = 2
    """Times a stream may move to another miner after its first token."""
    hedge_delay_s: float = 2.0
    """Hedging delay while a tier has too few TTFT samples for a p95."""
    first_token_timeout_s: float = 120.0
    idle_timeout_s: float = 60.0


@dataclass(frozen=True)
class Job:
    """One generation the API asked for, before it is bound to a miner.

    ``tenant`` is who the work is for (fair queueing), ``session`` the
    client's session key (affinity), ``policy`` an admin's override.
    """

    model: ModelName
    sampling: SamplingParams
    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    tenant: str = "anonymous"
    session: str | None = None
    policy: Policy | None = None
    hedge: bool = False
    purpose: ResultPurpose = ResultPurpose.REQUEST
    """Why it runs, kept in the result ledger. Never sent to the miner: one that
    could tell a check from a request could behave well only when checked."""
    avoid: frozenset[MinerId] = frozenset()
    """Miners this job must not run on (a spot check avoids the miner it checks)."""
    claimed: set[MinerId] | None = None
    """Shared by the redundant copies of one task: each adds its miner, so
    every copy runs on a different miner."""
    model_hash: str = ""
    """Run only on miners whose model file has this SHA-256 (verification)."""
    min_precision: str | None = None
    logprobs: bool = False
    """Ask the miner for each generated token's log-probability (``TaskDone``)."""

    def prompt_text(self) -> str:
        """The prompt as the model will roughly see it, for estimates and prefix hashing."""
        return prompt_text(self.prompt, self.messages)

    def assign(
        self, task_id: TaskId, resume: Resume | None = None, model: ModelName | None = None
    ) -> TaskAssign:
        """The task for one miner; ``model`` is the variant it runs (default: as asked)."""
        sampling = self.sampling
        if resume is not None and sampling.max_tokens is not None:
            sampling = sampling.model_copy(
                update={"max_tokens": sampling.max_tokens - resume.tokens}
            )
        return TaskAssign(
            task_id=task_id,
            model=model or self.model,
            prompt=self.prompt,
            messages=self.messages,
            sampling=sampling,
            resume=resume,
            model_hash=self.model_hash,
            logprobs=self.logprobs or None,
        )


@dataclass
class Trace:
    """What the dispatcher did with one job, for metrics and response headers:
    the miner that served it (the last one, if the stream moved) and how long
    it waited in the queue."""

    miner_id: MinerId | None = None
    miner_name: str | None = None
    tier: int | None = None
    queue_wait_s: float = 0.0

    def served_by(self, miner_id: MinerId, conn: MinerConnection | None) -> None:
        self.miner_id = miner_id
        if conn is not None:
            self.miner_name = conn.info.name
            self.tier = conn.tier


class _Retry(Exception):
    """This attempt failed before any output; try another miner."""

    def __init__(self, reason: str, outcome: Outcome = Outcome.ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome


class _Migrate(_Retry):
    """This attempt failed after some output; continue it on another miner."""


@dataclass
class _Progress:
    """What the client has already received, across miners."""

    parts: list[str]
    tokens: int = 0
    migrations: int = 0

    def resume(self) -> Resume | None:
        return Resume(text="".join(self.parts), tokens=self.tokens) if self.parts else None


@dataclass(frozen=True)
class _Placement:
    """What the scheduler needs to know about a job, computed once per job."""

    prompt_tokens: int
    prefix: tuple[int, ...]


class Dispatcher:
    def __init__(
        self,
        registry: MinerRegistry,
        policy: Policy,
        limits: DispatchLimits,
        queue: WaitQueue,
        seeds: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._clock = clock
        self._policy = policy
        self._limits = limits
        self._queue = queue
        self._seeds = seeds or random.Random()
        self._sequence = itertools.count()
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self._capacity = asyncio.Event()
        """Set (and replaced) whenever capacity frees up, a loaded model included."""
        registry.on_capacity(queue.wake)
        registry.on_capacity(self._capacity_changed)

    @property
    def policy(self) -> Policy:
        return self._policy

    async def run(
        self, job: Job, trace: Trace | None = None
    ) -> AsyncGenerator[TaskChunk | TaskDone, None]:
        """Yield the job's chunks, then a ``TaskDone`` with usage for the whole job;
        ``trace`` is filled in as the job goes."""
        self.in_flight += 1
        self.idle.clear()
        try:
            async with aclosing(self._run(job, trace or Trace())) as events:
                async for event in events:
                    yield event
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()

    async def _run(self, job: Job, trace: Trace) -> AsyncGenerator[TaskChunk | TaskDone, None]:
        """The job's chunks and its ``TaskDone``.

        Before the first token a failed miner is replaced (``max_attempts``);
        after it, the stream migrates: another miner continues from the text
        already sent, so the client sees one uninterrupted answer.
        """
        tried: set[MinerId] = set(job.avoid)
        failures: list[str] = []
        text = job.prompt_text()
        placement = _Placement(min_prompt_tokens(text), prefix_blocks(text))
        progress = _Progress(parts=[])
        attempts = 0
        lost_reason = ""
        while True:
            try:
                miner_id = await self._choose(job, placement, tried, failures, trace)
            except APIError as no_miner:
                if not progress.migrations:
                    raise
                raise UpstreamFailed(
                    f"{lost_reason}, and no miner could continue the stream: {no_miner.message}",
                    code="miner_lost",
                ) from None
            tried.add(miner_id)
            if job.claimed is not None:
                job.claimed.add(miner_id)
            trace.served_by(miner_id, self._registry.get(miner_id))
            before = progress.tokens
            try:
                resume = progress.resume()
                attempt = (
                    self._hedged(job, placement, miner_id, tried, trace)
                    if job.hedge and resume is None
                    else self._attempt(job, placement, miner_id, resume)
                )
                async with aclosing(attempt) as events:
                    async for event in events:
                        if isinstance(event, TaskChunk):
                            progress.parts.append(event.text)
                            progress.tokens += event.tokens
                            yield event
                        else:
                            yield _whole_job_usage(event, before)
                            return
            except _Migrate as lost:
                self._registry.penalize(miner_id, lost.reason, lost.outcome)
                if progress.migrations >= self._limits.max_migrations:
                    raise UpstreamFailed(
                        f"{lost.reason}; the stream already moved {progress.migrations} times",
                        code="miner_lost",
                    ) from None
                progress.migrations += 1
                self._registry.note(
                    EventKind.MIGRATION, miner_id, f"after {progress.tokens} tokens: {lost.reason}"
                )
                lost_reason = lost.reason
                log.warning(
                    "migrating a stream off %s after %d tokens: %s",
                    miner_id,
                    progress.tokens,
                    lost.reason,
                )
                if (
                    job.sampling.max_tokens is not None
                    and progress.tokens >= job.sampling.max_tokens
                ):
                    yield _synthetic_done(progress)  # every token arrived; only the end was lost
                    return
                tried = {miner_id}  # only the lost miner is out; the ban keeps it out
            except _Retry as retry:
                self._registry.penalize(miner_id, retry.reason, retry.outcome)
                log.warning("task on %s failed before output: %s", miner_id, retry.reason)
                failures.append(retry.reason)
                attempts += 1
                if attempts < self._limits.max_attempts:
                    self._registry.note(EventKind.FAILOVER, miner_id, retry.reason)
                if attempts >= self._limits.max_attempts:
                    raise UpstreamFailed(
                        f"the request failed on {len(tried)} miners: {'; '.join(failures)}. "
                        "Retry later; if it keeps failing, check the miners' logs.",
                        code="miners_failed",
                    ) from None
                # Back off a little, doubling, so a failing network is not hammered.
                await asyncio.sleep(RETRY_BACKOFF_S * 2 ** (attempts - 1))

    async def _choose(
        self,
        job: Job,
        placement: _Placement,
        tried: set[MinerId],
        failures: list[str],
        trace: Trace,
    ) -> MinerId:
        # Arrivals queue behind tasks already waiting, so nobody jumps the line.
        ticket = self._queue.ticket()
        if self._queue.has_waiters():
            await self._wait(job, ticket, trace)
        loaded_by: float | None = None
        while True:
            decision = self._decide(job, placement, tried)
            if decision.miner_id is not None:
                return decision.miner_id
            if decision.saturated:
                await self._wait(job, ticket, trace)
            elif self._coming(job):
                if loaded_by is None:
                    loaded_by = self._clock() + self._queue.timeout_s
                    self._registry.want(job.model)  # the autoscaler places it now
                await self._wait_for_model(job, loaded_by, trace)
            else:
                break
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

    def _capacity_changed(self, slots: int) -> None:
        self._capacity.set()
        self._capacity = asyncio.Event()

    def _coming(self, job: Job) -> bool:
        try:
            return self._registry.coming(job.model, job.min_precision)
        except UnknownPrecision:
            return False

    async def _wait_for_model(self, job: Job, deadline: float, trace: Trace) -> None:
        """No live miner serves the job's model yet, but one is about to load it:
        wait for capacity to change (not in the queue, whose wakes are for free
        slots), looking again every MODEL_RECHECK_S in case the load failed."""
        started = self._clock()
        if started >= deadline:
            raise ServiceUnavailable(
                f"No miner finished loading a variant of '{job.model}' within "
                f"{self._queue.timeout_s:g} s. Retry later; the router's events say why.",
                code="model_loading",
                headers={"Retry-After": "5"},
            )
        try:
            with contextlib.suppress(TimeoutError):
                wait_s = min(MODEL_RECHECK_S, deadline - started)
                await asyncio.wait_for(self._capacity.wait(), wait_s)
        finally:
            trace.queue_wait_s += self._clock() - started

    async def _wait(self, job: Job, ticket: int, trace: Trace) -> None:
        started = self._clock()
        try:
            await self._queue.wait(job.tenant, ticket)
        finally:
            trace.queue_wait_s += self._clock() - started

    def _decide(self, job: Job, placement: _Placement, tried: set[MinerId]) -> Decision:
        exclude = set(tried) | (job.claimed or set())
        if job.model_hash:
            exclude |= {
                c.miner_id
                for c in self._registry.connections()
                if c.model_hash(job.model) != job.model_hash
            }
        needs = TaskNeeds(
            model=job.model,
            prompt_tokens=placement.prompt_tokens,
            max_tokens=job.sampling.max_tokens,
            exclude=frozenset(exclude),
            sequence=next(self._sequence),
            seed=self._seeds.getrandbits(64),
            prefix_blocks=placement.prefix,
            block_tokens=BLOCK_CHARS // CHARS_PER_TOKEN_UPPER,
            session=job.session,
            min_precision=job.min_precision,
        )
        decision = choose_miner(needs, self._registry.snapshot(), job.policy or self._policy)
        log.debug("task for %s: %s", job.model, decision.reason)
        return decision

    async def _attempt(
        self, job: Job, placement: _Placement, miner_id: MinerId, resume: Resume | None
    ) -> AsyncGenerator[TaskChunk | TaskDone, None]:
        task = job.assign(
            TaskId(f"task-{uuid.uuid4().hex}"), resume, self._variant_on(job, placement, miner_id)
        )
        expected = job.sampling.max_tokens or DEFAULT_EXPECTED_OUTPUT_TOKENS
        queue = await self._registry.start_task(
            miner_id,
            task,
            expected_tokens=expected,
            prefix=placement.prefix,
            session=job.session,
            purpose=job.purpose,
        )
        produced = False
        finished = False
        idle_deadline = self._progress_deadline(miner_id)
        try:
            while True:
                timeout = idle_deadline if produced else self._limits.first_token_timeout_s
                event = await self._next_event(
                    queue, timeout, produced or resume is not None, miner_id
                )
                if isinstance(event, TaskChunk):
                    produced = True
                    yield event
                elif isinstance(event, TaskDone):
                    finished = True
                    yield event
                    return
                else:
                    finished = True
                    raise _failure(event, produced or resume is not None)
        finally:
            if not finished:  # client went away or the wait timed out: free the slot
                self._registry.cancel_task(miner_id, task.task_id)

    async def _hedged(
        self,
        job: Job,
        placement: _Placement,
        miner_id: MinerId,
        tried: set[MinerId],
        trace: Trace,
    ) -> AsyncGenerator[TaskChunk | TaskDone, None]:
        """Run on ``miner_id``; if no first token comes within the p95 TTFT of its
        tier, start a duplicate on another miner and keep whichever answers
        first. The other is cancelled, so its slot frees at once."""
        primary = self._attempt(job, placement, miner_id, None)
        racers: dict[
            asyncio.Future[TaskChunk | TaskDone], AsyncGenerator[TaskChunk | TaskDone, None]
        ] = {asyncio.ensure_future(anext(primary)): primary}
        owners = {primary: miner_id}
        await asyncio.wait(
            racers, timeout=self._registry.hedge_delay_s(miner_id, self._limits.hedge_delay_s)
        )
        if not any(future.done() for future in racers):
            decision = self._decide(job, placement, tried | {miner_id})
            if decision.miner_id is not None:
                tried.add(decision.miner_id)
                backup = self._attempt(job, placement, decision.miner_id, None)
                racers[asyncio.ensure_future(anext(backup))] = backup
                owners[backup] = decision.miner_id
                self._registry.note(
                    EventKind.HEDGE,
                    decision.miner_id,
                    f"backing up a slow first token on {miner_id}",
                )
                log.info("hedging a slow first token on %s with %s", miner_id, decision.miner_id)
        first, winner = await _first_answer(racers)
        trace.served_by(owners[winner], self._registry.get(owners[winner]))
        try:
            yield first
            async for event in winner:
                yield event
        finally:
            await winner.aclose()

    def _variant_on(self, job: Job, placement: _Placement, miner_id: MinerId) -> ModelName | None:
        """The variant of the job's model that this miner is to run: the most
        precise it serves that fits (what the scheduler chose it for)."""
        conn = self._registry.get(miner_id)
        if conn is None:
            return None
        windows = {o.name: o.context_length for o in conn.info.models}
        try:
            variants = resolve_variants(job.model, windows, job.min_precision).variants
        except UnknownPrecision:
            return None
        needed = placement.prompt_tokens + (job.sampling.max_tokens or 1)
        return variant_on(variants, windows, needed)

    def _progress_deadline(self, miner_id: MinerId) -> float:
        """Seconds a stream may go without a token on this miner: many times its
        measured time per token, never below a floor (prompt work of other
        sequences can pause it) nor above the configured limit."""
        conn = self._registry.get(miner_id)
        speed = conn.speed.effective() if conn is not None else None
        if speed is None:
            return self._limits.idle_timeout_s
        per_token_s = 1 / speed.per_sequence(conn.info.slots if conn else 1)
        return min(
            self._limits.idle_timeout_s,
            max(MIN_PROGRESS_DEADLINE_S, PROGRESS_DEADLINE_TOKENS * per_token_s),
        )

    async def _next_event(
        self, queue: asyncio.Queue[TaskEvent], wait_s: float, produced: bool, miner_id: MinerId
    ) -> TaskEvent:
        try:
            return await asyncio.wait_for(queue.get(), wait_s)
        except TimeoutError:
            what = "the next token" if produced else "the first token"
            reason = f"miner {miner_id} sent no {what} within {wait_s:g} s"
            raise (_Migrate if produced else _Retry)(reason, Outcome.TIMEOUT) from None


def _failure(event: TaskFailed | MinerLost, produced: bool) -> Exception:
    if isinstance(event, MinerLost):
        return _Migrate(event.reason) if produced else _Retry(event.reason)
    if event.code == "context_length_exceeded":
        return InvalidRequest(event.message, param="messages", code=event.code)
    if event.code == "invalid_request":
        return InvalidRequest(event.message, code=event.code)
    if event.retryable:
        reason = f"{event.code}: {event.message}"
        return _Migrate(reason) if produced else _Retry(reason)
    error: APIError = UpstreamFailed(f"miner failed: {event.message}", code=event.code)
    return error


async def _first_answer(
    racers: dict[asyncio.Future[TaskChunk | TaskDone], AsyncGenerator[TaskChunk | TaskDone, None]],
) -> tuple[TaskChunk | TaskDone, AsyncGenerator[TaskChunk | TaskDone, None]]:
    """The first racer to produce an event wins; racers that fail drop out;
    if all fail, the last failure is raised. Losers are cancelled."""
    pending = dict(racers)
    failure: BaseException | None = None
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                generator = pending.pop(future)
                if future.exception() is None:
                    return future.result(), generator
                failure = future.exception()
                await generator.aclose()
        assert failure is not None
        raise failure
    finally:
        for future, generator in pending.items():
            future.cancel()
            with contextlib.suppress(BaseException):
                await future
            await generator.aclose()


def _whole_job_usage(done: TaskDone, tokens_before: int) -> TaskDone:
    """The last miner counted only its own tokens; the client gets the whole job's."""
    return done.model_copy(update={"completion_tokens": tokens_before + done.completion_tokens})


def _synthetic_done(progress: _Progress) -> TaskDone:
    return TaskDone(
        task_id=TaskId("migrated"),
        finish_reason="length",
        prompt_tokens=0,
        completion_tokens=progress.tokens,
    )

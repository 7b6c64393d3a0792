"""Runs batch jobs: their tasks go to miners through the dispatcher, as many
at a time as ``batch_budget`` allows beside interactive traffic; each result
is committed to the store as it arrives, so a restarted router carries on
where it stopped and every line is answered exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from inferswarm.openai_compat import schemas
from inferswarm.openai_compat.errors import APIError
from inferswarm.openai_compat.schemas import InferswarmOptions
from inferswarm.router.completion import (
    Caller,
    Runner,
    chat_response,
    collect_all,
    completion_response,
    plan_chat,
    plan_completion,
)
from inferswarm.router.dispatch import Dispatcher
from inferswarm.router.registry import MinerRegistry
from inferswarm.router.segment.batch import (
    BatchShare,
    batch_budget,
    failed_response_line,
    output_line,
)
from inferswarm.router.verify.service import Reports, verification_body
from inferswarm.storage import (
    BatchRecord,
    BatchStatus,
    BatchTask,
    BlobDir,
    FileRecord,
    Store,
    TaskState,
)

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({404, 429, 502, 503})
"""Failures that may pass: no miner for the model yet, busy, a miner failed."""
MAX_ATTEMPTS = 5
RETRY_DELAY_S = 1.0
INTERACTIVE_LINGER_S = 5.0
"""Interactive traffic counts as present this long after its last request."""
TICK_S = 0.25


class BatchRunner:
    def __init__(
        self,
        store: Store,
        blobs: BlobDir,
        dispatcher: Dispatcher,
        registry: MinerRegistry,
        share: BatchShare,
        clock: Callable[[], float] = time.time,
        retry_delay_s: float = RETRY_DELAY_S,
        max_attempts: int = MAX_ATTEMPTS,
        run: Runner | None = None,
        runner_for: Callable[[InferswarmOptions | None], tuple[Runner, Reports]] | None = None,
    ) -> None:
        """``run`` sends one job (default: the dispatcher directly; the app
        passes its metrics and spot-check wrapper so batch tasks are measured
        and checked like requests); ``runner_for`` picks the runner of a line
        by its ``inferswarm`` options, with the reports its runs will fill
        (the app's runs redundant lines with consensus and reports their
        verification, as a request's response does; default: ``run`` for all)."""
        self._store = store
        self._blobs = blobs
        self._dispatcher = dispatcher
        self._run = run or dispatcher.run
        self._runner_for = runner_for or (lambda _options: (self._run, {}))
        self._registry = registry
        self._share = share
        self._clock = clock
        self._retry_delay_s = retry_delay_s
        self._max_attempts = max_attempts
        self._batches: dict[str, BatchRecord] = {}
        self._pending: dict[str, deque[BatchTask]] = {}
        self._running: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._retries: set[asyncio.TimerHandle] = set()
        self._delayed: dict[str, int] = {}
        """Tasks per batch waiting out a retry delay: neither pending nor running."""
        self._last_interactive = -math.inf
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        registry.on_capacity(lambda _slots: self._wake.set())

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        """Take up every batch a previous run left unfinished."""
        for batch in await self._store.active_batches():
            await self._adopt(batch)
        self._loop_task = asyncio.create_task(self._run_forever())

    async def stop(self) -> None:
        """Stop at once; unfinished tasks stay pending in the store."""
        for handle in self._retries:
            handle.cancel()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def submit(self, batch: BatchRecord) -> None:
        await self._adopt(batch)
        self._wake.set()

    async def cancel(self, batch_id: str) -> None:
        batch = self._batches.get(batch_id)
        if batch is not None:
            self._batches[batch_id] = replace(batch, status=BatchStatus.CANCELLING)
            self._wake.set()

    async def _adopt(self, batch: BatchRecord) -> None:
        if batch.status is BatchStatus.VALIDATING:
            await self._store.set_batch_status(batch.id, BatchStatus.IN_PROGRESS, self._now())
            batch = replace(batch, status=BatchStatus.IN_PROGRESS)
        self._batches[batch.id] = batch
        self._pending[batch.id] = deque(await self._store.pending_batch_tasks(batch.id))

    async def _run_forever(self) -> None:
        while True:
            try:
                await self._step()
            except Exception:
                log.exception("the batch runner failed a step; it will retry")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_S)
            self._wake.clear()

    async def _step(self) -> None:
        for batch in list(self._batches.values()):
            await self._advance(batch)
        self._fill()

    async def _advance(self, batch: BatchRecord) -> None:
        """Finish a batch that has nothing left to do, or that was cancelled or expired."""
        if batch.status is BatchStatus.IN_PROGRESS and self._now() >= batch.expires_at:
            batch = replace(batch, status=BatchStatus.EXPIRED)
            self._batches[batch.id] = batch
        stopping = batch.status in (BatchStatus.CANCELLING, BatchStatus.EXPIRED)
        if stopping:
            self._pending[batch.id].clear()
            for (batch_id, _), task in self._running.items():
                if batch_id == batch.id:
                    task.cancel()
        if stopping:
            self._delayed.pop(batch.id, None)
        if self._pending[batch.id] or self._running_for(batch.id) or self._delayed.get(batch.id):
            return
        final = {
            BatchStatus.CANCELLING: BatchStatus.CANCELLED,
            BatchStatus.EXPIRED: BatchStatus.EXPIRED,
        }.get(batch.status, BatchStatus.COMPLETED)
        await self._finalize(batch, final)

    def _running_for(self, batch_id: str) -> bool:
        return any(key[0] == batch_id for key in self._running)

    def _fill(self) -> None:
        budget = self._budget()
        while len(self._running) < budget:
            task = self._next_task()
            if task is None:
                return
            batch = self._batches[task.batch_id]
            key = (task.batch_id, task.line)
            self._running[key] = asyncio.create_task(self._execute(batch, task))

    def _budget(self) -> int:
        slots = sum(
            conn.info.slots
            for conn in self._registry.connections()
            if not self._registry.is_banned(conn.miner_id)
        )
        interactive = max(0, self._dispatcher.in_flight - len(self._running))
        now = time.monotonic()
        if interactive:
            self._last_interactive = now
        active = now - self._last_interactive < INTERACTIVE_LINGER_S
        return batch_budget(slots, interactive, active, self._share)

    def _next_task(self) -> BatchTask | None:
        """Oldest batch first, in line order."""
        for batch_id, batch in self._batches.items():
            queue = self._pending[batch_id]
            if queue and batch.status is BatchStatus.IN_PROGRESS:
                return queue.popleft()
        return None

    async def _execute(self, batch: BatchRecord, task: BatchTask) -> None:
        attempts = task.attempts + 1
        try:
            try:
                line = await self._answer(batch, task)
                state = TaskState.DONE
            except APIError as exc:
                if exc.status_code in RETRYABLE_STATUSES and attempts < self._max_attempts:
                    self._retry_later(replace(task, attempts=attempts))
                    return
                line = failed_response_line(task.custom_id, exc.status_code, exc.body())
                state = TaskState.FAILED
            # Still counted as running until committed, so the batch cannot
            # be finalized without this line.
            await self._store.finish_batch_task(batch.id, task.line, state, line, attempts)
        finally:
            self._running.pop((task.batch_id, task.line), None)
            self._wake.set()

    async def _answer(self, batch: BatchRecord, task: BatchTask) -> str:
        caller = Caller(tenant=f"batch:{batch.owner}", is_admin=False)
        if batch.endpoint == "/v1/chat/completions":
            chat = schemas.ChatCompletionRequest.model_validate_json(task.body)
            plan = plan_chat(chat, caller, self._registry)
            run, reports = self._runner_for(chat.inferswarm)
            results = await collect_all(plan, run)
            response = chat_response(f"chatcmpl-{uuid.uuid4().hex}", chat, plan, results)
        else:
            text = schemas.CompletionRequest.model_validate_json(task.body)
            plan = plan_completion(text, caller, self._registry)
            run, reports = self._runner_for(text.inferswarm)
            results = await collect_all(plan, run)
            response = completion_response(f"cmpl-{uuid.uuid4().hex}", text, plan, results)
        if reports:
            response["inferswarm"] = verification_body(reports, plan.jobs)
        return output_line(task.custom_id, response)

    def _retry_later(self, task: BatchTask) -> None:
        delay = self._retry_delay_s * 2 ** (task.attempts - 1)

        batch_id = task.batch_id
        self._delayed[batch_id] = self._delayed.get(batch_id, 0) + 1

        def requeue() -> None:
            self._retries.discard(handle)
            if batch_id in self._delayed:
                self._delayed[batch_id] -= 1
            batch = self._batches.get(batch_id)
            if batch is not None and batch.status is BatchStatus.IN_PROGRESS:
                self._pending[batch_id].append(task)
            self._wake.set()

        handle = asyncio.get_running_loop().call_later(delay, requeue)
        self._retries.add(handle)

    async def _finalize(self, batch: BatchRecord, status: BatchStatus) -> None:
        now = self._now()
        await self._store.set_batch_status(batch.id, BatchStatus.FINALIZING, now)
        files: list[FileRecord] = []
        ids: dict[TaskState, str | None] = {}
        for state, suffix in ((TaskState.DONE, "output"), (TaskState.FAILED, "errors")):
            file_id = f"file-{batch.id}-{suffix}"
            size = await self._blobs.write_chunks(
                file_id, _lines(self._store.batch_results(batch.id, state))
            )
            ids[state] = file_id if size else None
            if size:
                name = f"{batch.id}_{suffix}.jsonl"
                files.append(FileRecord(file_id, batch.owner, "batch_output", name, size, now))
            else:
                self._blobs.delete(file_id)
        await self._store.finalize_batch(
            batch.id, status, now, files, ids[TaskState.DONE], ids[TaskState.FAILED]
        )
        del self._batches[batch.id]
        del self._pending[batch.id]
        self._delayed.pop(batch.id, None)
        log.info("batch %s %s", batch.id, status.value)

    def _now(self) -> int:
        return int(self._clock())


async def _lines(results: AsyncIterator[str]) -> AsyncIterator[bytes]:
    async for line in results:
        yield line.encode() + b"\n"

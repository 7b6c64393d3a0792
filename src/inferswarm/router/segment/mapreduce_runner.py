"""Runs map-reduce jobs: every chunk's map task at once over the miners, then
reduce levels until one answer is left. Each task's output is committed as it
arrives and the next level is derived only from committed outputs, so a
restarted router resumes a job without redoing finished tasks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from inferswarm.openai_compat.errors import APIError, InvalidRequest
from inferswarm.protocol import ChatMessage, ModelName, SamplingParams
from inferswarm.router.completion import Runner, collect
from inferswarm.router.dispatch import Dispatcher, Job
from inferswarm.router.registry import MinerRegistry
from inferswarm.router.segment.mapreduce import (
    group_partials,
    halves,
    map_prompt,
    reduce_prompt,
)
from inferswarm.storage import JobRecord, JobTask, Store, TaskState

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({404, 429, 502, 503})
MAX_ATTEMPTS = 5
RETRY_DELAY_S = 1.0
MAP = "map"


@dataclass(frozen=True)
class MapReduceParams:
    """What a job asked for, as stored in its record."""

    model: str
    map_prompt: str
    reduce_prompt: str
    map_max_tokens: int
    reduce_max_tokens: int
    reduce_input_tokens: int
    temperature: float
    frequency_penalty: float = 0.0

    @classmethod
    def of(cls, params: dict[str, Any]) -> MapReduceParams:
        return cls(**{name: params[name] for name in cls.__dataclass_fields__ if name in params})


class JobFailed(Exception):
    pass


def map_key(index: int) -> str:
    return f"{MAP}:{index:05d}"


def reduce_key(level: int, group: int) -> str:
    return f"reduce:{level:02d}:{group:05d}"


class MapReduceRunner:
    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        registry: MinerRegistry,
        clock: Callable[[], float] = time.time,
        run: Runner | None = None,
    ) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._run_job = run or dispatcher.run
        self._registry = registry
        self._clock = clock
        self._jobs: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        for job in await self._store.active_jobs():
            self.submit(job)

    def submit(self, job: JobRecord) -> None:
        self._jobs[job.id] = asyncio.create_task(self._run(job))

    async def cancel(self, job_id: str) -> None:
        task = self._jobs.pop(job_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._store.finish_job(job_id, "cancelled", int(self._clock()), None, None)

    async def stop(self) -> None:
        """Stop at once; the jobs stay active in the store and resume on restart."""
        tasks = list(self._jobs.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, job: JobRecord) -> None:
        params = MapReduceParams.of(job.params)
        try:
            await self._store.set_job_status(job.id, "running")
            result = await self._levels(job.id, params)
            await self._store.finish_job(job.id, "completed", int(self._clock()), result, None)
            log.info("map-reduce job %s completed", job.id)
        except JobFailed as failed:
            error = {"code": "job_failed", "message": str(failed)}
            await self._store.finish_job(job.id, "failed", int(self._clock()), None, error)
            log.warning("map-reduce job %s failed: %s", job.id, failed)
        finally:
            self._jobs.pop(job.id, None)

    async def _levels(self, job_id: str, params: MapReduceParams) -> dict[str, Any]:
        tasks = await self._store.job_tasks(job_id)
        outputs = await self._run_map(job_id, params, tasks)
        level = 1
        while True:
            groups = group_partials([o["text"] for o in outputs], params.reduce_input_tokens)
            if level > 1 and len(outputs) > 1 and len(groups) >= len(outputs):
                raise JobFailed(
                    "partial results no longer shrink when reduced; lower map_max_tokens "
                    "or reduce_max_tokens"
                )
            level_tasks = [
                JobTask(job_id, reduce_key(level, g), json.dumps(group))
                for g, group in enumerate(groups)
            ]
            await self._store.add_job_tasks(level_tasks)
            stored = {t.key: t for t in await self._store.job_tasks(job_id)}
            prompts = {
                t.key: reduce_prompt(params.reduce_prompt, json.loads(stored[t.key].input))
                for t in level_tasks
            }
            outputs = await self._run_level(
                job_id,
                params,
                [stored[k] for k in sorted(prompts)],
                prompts,
                params.reduce_max_tokens,
            )
            if len(outputs) == 1:
                return _result(outputs[0], await self._store.job_tasks(job_id))
            level += 1

    async def _run_map(
        self, job_id: str, params: MapReduceParams, tasks: list[JobTask]
    ) -> list[dict[str, Any]]:
        """Map outputs in text order. A chunk that overflows a context is cut in
        two, recorded as new tasks, and the halves run in a further round."""
        while True:
            maps = sorted((t for t in tasks if t.key.startswith(MAP + ":")), key=lambda t: t.key)
            if not any(t.state is TaskState.PENDING for t in maps):
                return [json.loads(t.output or "{}") for t in maps if t.state is TaskState.DONE]
            prompts = {t.key: map_prompt(params.map_prompt, t.input) for t in maps}
            await self._run_level(job_id, params, maps, prompts, params.map_max_tokens)
            tasks = await self._store.job_tasks(job_id)

    async def _split(self, job_id: str, task: JobTask) -> None:
        parts = halves(task.input)
        if len(parts) < 2:
            raise JobFailed(f"a single word of the input does not fit the context ({task.key})")
        await self._store.add_job_tasks(
            [JobTask(job_id, f"{task.key}.{i}", part) for i, part in enumerate(parts)]
        )
        await self._store.finish_job_task(job_id, task.key, TaskState.FAILED, "split", 1)

    async def _run_level(
        self,
        job_id: str,
        params: MapReduceParams,
        tasks: list[JobTask],
        prompts: dict[str, str],
        max_tokens: int,
    ) -> list[dict[str, Any]]:
        """Run every pending task of a level at once, bounded by the network's
        slots; return the level's outputs in key order."""
        limit = asyncio.Semaphore(max(1, self._slots(params.model)))

        async def one(task: JobTask) -> None:
            try:
                async with limit:
                    output = await self._generate(params, prompts[task.key], max_tokens, task)
            except _Overflow:
                await self._split(job_id, task)
                return
            await self._store.finish_job_task(
                job_id, task.key, TaskState.DONE, json.dumps(output), task.attempts + 1
            )

        pending = [t for t in tasks if t.state is TaskState.PENDING]
        try:
            async with asyncio.TaskGroup() as group:
                for task in pending:
                    group.create_task(one(task))
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        stored = {t.key: t for t in await self._store.job_tasks(job_id)}
        return [
            json.loads(stored[t.key].output or "{}")
            for t in tasks
            if stored[t.key].state is TaskState.DONE
        ]

    async def _generate(
        self, params: MapReduceParams, prompt: str, max_tokens: int, task: JobTask
    ) -> dict[str, Any]:
        job = Job(
            model=ModelName(params.model),
            sampling=SamplingParams(
                max_tokens=max_tokens,
                temperature=params.temperature,
                seed=0,
                frequency_penalty=params.frequency_penalty,
            ),
            messages=(ChatMessage(role="user", content=prompt),),
            tenant=f"job:{task.job_id}",
        )
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                text, done = await collect(self._run_job(job))
                return {
                    "text": text.strip(),
                    "prompt_tokens": done.prompt_tokens,
                    "completion_tokens": done.completion_tokens,
                }
            except InvalidRequest as exc:
                if exc.code == "context_length_exceeded" and task.key.startswith(MAP + ":"):
                    raise _Overflow(task) from None
                raise JobFailed(f"{task.key}: {exc.message}") from None
            except APIError as exc:
                if exc.status_code not in RETRYABLE_STATUSES or attempt == MAX_ATTEMPTS:
                    raise JobFailed(f"{task.key} failed {attempt} times: {exc.message}") from None
                await asyncio.sleep(RETRY_DELAY_S * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def _slots(self, model: str) -> int:
        miners = {conn.miner_id: conn for conn, _ in self._registry.offers_for(model)}
        return sum(
            conn.info.slots
            for conn in miners.values()
            if not self._registry.is_banned(conn.miner_id)
        )


class _Overflow(Exception):
    def __init__(self, task: JobTask) -> None:
        super().__init__(task.key)
        self.task = task


def _result(final: dict[str, Any], tasks: list[JobTask]) -> dict[str, Any]:
    outputs = [json.loads(t.output) for t in tasks if t.state is TaskState.DONE and t.output]
    return {
        "text": final["text"],
        "usage": {
            "prompt_tokens": sum(o["prompt_tokens"] for o in outputs),
            "completion_tokens": sum(o["completion_tokens"] for o in outputs),
            "tasks": len(outputs),
        },
    }

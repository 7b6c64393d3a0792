"""Canary tasks: answers that verification established, kept in the store and
replayed to quarantined miners to earn their way back.

A canary is a real client task (its prompt or messages, its sampling, decoded
greedily) whose answer two or more miners agreed on, so a miner sees nothing
that sets it apart from other traffic: the same message, no pinned model file,
an ordinary task id. It never goes to a miner whose result made the answer
(that miner could remember it), and a miner gets the canaries it has seen least
first. Canaries, and which miner got which with what result, live in the store,
so a restarted router keeps testing its quarantined miners with what it knew.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from inferswarm.protocol import MinerId, ModelName, SamplingParams, TaskId
from inferswarm.protocol.messages import ChatMessage
from inferswarm.router.dispatch import Job
from inferswarm.storage import CanaryRecord, CanaryRun, Store

CANARIES_PER_MODEL = 64
"""Canaries kept per model file; the oldest go first."""

Write = Callable[[Coroutine[Any, Any, None]], None]
"""Queues a store write (the verifier's ordered ledger writer)."""


@dataclass(frozen=True)
class Canary:
    """A task with a verified answer, replayed to quarantined miners."""

    id: str
    job: Job
    answer: str
    model_hash: str
    sources: frozenset[MinerId]


class CanaryBook:
    def __init__(
        self,
        rng: random.Random,
        clock: Callable[[], float] = time.time,
        keep: int = CANARIES_PER_MODEL,
    ) -> None:
        self._rng = rng
        self._clock = clock
        self._keep = keep
        self._canaries: dict[str, Canary] = {}
        self._given: dict[MinerId, Counter[str]] = {}
        """How often each miner got each canary (loaded from the store on first use)."""
        self._store: Store | None = None
        self._write: Write | None = None

    async def attach(self, store: Store, write: Write) -> None:
        """Load the canaries the store remembers and save every later one to it."""
        self._store, self._write = store, write
        for record in await store.canaries():
            self._canaries[record.id] = _canary(record)

    def __len__(self) -> int:
        return len(self._canaries)

    def remember(self, job: Job, model_hash: str, answer: str, sources: Sequence[MinerId]) -> None:
        """Keep a greedy task and its verified answer as a canary."""
        canary = Canary(
            id=f"canary-{uuid.uuid4().hex}",
            job=Job(
                model=job.model, sampling=job.sampling, prompt=job.prompt, messages=job.messages
            ),
            answer=answer,
            model_hash=model_hash,
            sources=frozenset(sources),
        )
        self._canaries[canary.id] = canary
        same_file = [c for c in self._canaries.values() if c.model_hash == model_hash]
        for old in same_file[: max(0, len(same_file) - self._keep)]:
            del self._canaries[old.id]
        if self._store is not None and self._write is not None:
            self._write(self._store.add_canary(_record(canary, int(self._clock())), self._keep))

    async def pick(self, miner_id: MinerId, files: dict[ModelName, str]) -> Canary | None:
        """A canary for one of the miner's model files (``files``: model name to
        file hash) that it did not help make, the one it has seen least."""
        offered = set(files.items())
        fitting = [
            c
            for c in self._canaries.values()
            if (c.job.model, c.model_hash) in offered and miner_id not in c.sources
        ]
        if not fitting:
            return None
        given = await self._given_to(miner_id)
        least = min(given[c.id] for c in fitting)
        return self._rng.choice([c for c in fitting if given[c.id] == least])

    def given(self, canary: Canary, miner_id: MinerId, task_id: TaskId) -> None:
        self._given.setdefault(miner_id, Counter())[canary.id] += 1
        self._save_run(CanaryRun(task_id, canary.id, miner_id, int(self._clock())))

    def judged(self, canary: Canary, miner_id: MinerId, task_id: TaskId, passed: bool) -> None:
        self._save_run(CanaryRun(task_id, canary.id, miner_id, int(self._clock()), passed))

    async def _given_to(self, miner_id: MinerId) -> Counter[str]:
        if miner_id not in self._given:
            runs = await self._store.canary_runs(miner_id) if self._store else []
            self._given[miner_id] = Counter(run.canary_id for run in runs)
        return self._given[miner_id]

    def _save_run(self, run: CanaryRun) -> None:
        if self._store is not None and self._write is not None:
            self._write(self._store.record_canary_run(run))


def _record(canary: Canary, now: int) -> CanaryRecord:
    job = canary.job
    request = {
        "prompt": job.prompt,
        "messages": [m.model_dump() for m in job.messages] if job.messages else None,
        "sampling": job.sampling.model_dump(),
    }
    return CanaryRecord(
        id=canary.id,
        model=job.model,
        model_hash=canary.model_hash,
        request=json.dumps(request),
        answer=canary.answer,
        sources=tuple(sorted(canary.sources)),
        created_at=now,
    )


def _canary(record: CanaryRecord) -> Canary:
    request = json.loads(record.request)
    messages = request.get("messages")
    job = Job(
        model=ModelName(record.model),
        sampling=SamplingParams.model_validate(request["sampling"]),
        prompt=request.get("prompt"),
        messages=tuple(ChatMessage.model_validate(m) for m in messages) if messages else None,
    )
    return Canary(
        record.id, job, record.answer, record.model_hash, frozenset(map(MinerId, record.sources))
    )

"""Fault injection, for tests and demos of verification only: a miner started
with ``--fault KIND[:PROBABILITY]`` misbehaves on that share of its tasks.

- ``corrupt``: plausible but wrong text (a fluent answer to another question);
- ``random``: random tokens;
- ``lazy``: the real answer cut short after a quarter of it;
- ``slow``: the real answer, with a pause before every chunk;
- ``fabricate-logprobs``: the real answer, with invented per-token
  log-probabilities (``TaskDone.token_logprobs``) where the task asked for
  them: what a miner that did not run the model, or skipped computing them,
  would claim. Tasks that ask for none are left as they are.

The faulty miner still signs what it sends: a signature proves who produced a
result, not that it is right; verification finds that out.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from enum import StrEnum

from inferswarm.miner.engines.base import Engine, TaskRejected
from inferswarm.miner.engines.teacher import ScoresOutputs
from inferswarm.protocol import (
    Capability,
    ModelOffer,
    TaskAssign,
    TaskChunk,
    TaskDone,
    VerifyAssign,
    VerifyResult,
)


class FaultKind(StrEnum):
    CORRUPT = "corrupt"
    RANDOM = "random"
    LAZY = "lazy"
    SLOW = "slow"
    FABRICATE_LOGPROBS = "fabricate-logprobs"


SLOW_PAUSE_S = 0.25
LAZY_SHARE = 0.25
FABRICATED_LOGPROB_RANGE = (-2.5, 0.0)
"""Invented log-probabilities are drawn uniformly from here: plausible-looking
numbers for a small model's answers."""

_WRONG_ANSWERS = (
    "The capital of Australia is Sydney, which also hosts the federal parliament "
    "and most government ministries.",
    "Water boils at 50 degrees Celsius at sea level, which is why cooking pasta takes so long.",
    "Photosynthesis is how animals turn sunlight into protein inside their muscles.",
    "The French Revolution began in 1901 after the invention of the printing press in Paris.",
    "Python lists are immutable, so appending to one always raises an error.",
)
_RANDOM_TOKENS = ("zq", "blorp", "7x", "@@", "kel", "vun", "!?", "orra", "~~", "pim", "0x1f")


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    probability: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """``corrupt`` or ``corrupt:0.1``; the message of a ``ValueError`` says what is valid."""
        name, _, share = spec.partition(":")
        kinds = ", ".join(k.value for k in FaultKind)
        try:
            kind = FaultKind(name.strip().lower())
        except ValueError:
            raise ValueError(f"unknown fault {name!r}; choose one of: {kinds}") from None
        try:
            probability = float(share) if share else 1.0
        except ValueError:
            raise ValueError(f"fault probability {share!r} is not a number") from None
        if not 0 <= probability <= 1:
            raise ValueError(f"fault probability {probability} is not between 0 and 1")
        return cls(kind, probability)


class FaultyEngine:
    """Wraps an engine and applies each fault to its share of tasks."""

    def __init__(self, engine: Engine, faults: tuple[Fault, ...], rng: random.Random) -> None:
        self._engine = engine
        self._faults = faults
        self._rng = rng
        self.name = engine.name
        self.slots = engine.slots

    @property
    def capability(self) -> Capability | None:
        return self._engine.capability

    @capability.setter
    def capability(self, value: Capability | None) -> None:
        self._engine.capability = value

    def offers(self) -> tuple[ModelOffer, ...]:
        return self._engine.offers()

    def claimed_tokens_per_s(self) -> float | None:
        return self._engine.claimed_tokens_per_s()

    def benchmark_identity(self) -> dict[str, object] | None:
        return self._engine.benchmark_identity()

    async def benchmark(self) -> Capability | None:
        return await self._engine.benchmark()

    async def close(self) -> None:
        await self._engine.close()

    async def score(self, request: VerifyAssign) -> VerifyResult:
        """Checks of other miners' results are scored honestly: these faults
        are about the miner's own results."""
        if not isinstance(self._engine, ScoresOutputs):
            raise TaskRejected("invalid_request", "this engine cannot score", retryable=True)
        return await self._engine.score(request)

    async def generate(self, task: TaskAssign) -> AsyncGenerator[TaskChunk | TaskDone, None]:
        active = {f.kind for f in self._faults if self._rng.random() < f.probability}
        async with aclosing(self._engine.generate(task)) as events:
            if not active - {FaultKind.SLOW, FaultKind.FABRICATE_LOGPROBS}:
                async for event in events:
                    if FaultKind.SLOW in active:
                        await asyncio.sleep(SLOW_PAUSE_S)
                    if FaultKind.FABRICATE_LOGPROBS in active and isinstance(event, TaskDone):
                        event = self._fabricated(event)
                    yield event
                return
            chunks: list[TaskChunk] = []
            done: TaskDone | None = None
            async for event in events:
                if isinstance(event, TaskChunk):
                    chunks.append(event)
                else:
                    done = event
        assert done is not None
        for chunk in self._falsify(active, task, chunks):
            if FaultKind.SLOW in active:
                await asyncio.sleep(SLOW_PAUSE_S)
            yield chunk
        yield self._fabricated(done) if FaultKind.FABRICATE_LOGPROBS in active else done

    def _fabricated(self, done: TaskDone) -> TaskDone:
        if done.token_logprobs is None:
            return done
        invented = tuple(
            round(self._rng.uniform(*FABRICATED_LOGPROB_RANGE), 4) for _ in done.token_logprobs
        )
        return done.model_copy(update={"token_logprobs": invented})

    def _falsify(
        self, active: set[FaultKind], task: TaskAssign, chunks: list[TaskChunk]
    ) -> list[TaskChunk]:
        tokens = sum(c.tokens for c in chunks)
        if FaultKind.LAZY in active:
            return chunks[: max(1, int(len(chunks) * LAZY_SHARE))] if chunks else []
        if FaultKind.CORRUPT in active:
            words = self._rng.choice(_WRONG_ANSWERS).split()
        else:
            words = [self._rng.choice(_RANDOM_TOKENS) for _ in range(max(1, tokens))]
        words = words[: max(1, tokens)]
        return [TaskChunk(task_id=task.task_id, text=f" {w}", tokens=1) for w in words]

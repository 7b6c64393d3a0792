"""Several models on one miner: one engine per model behind the engine interface.

Tasks go to the engine serving the task's model. Slots add up: the agent
admits as many tasks as all engines together can run, and each engine
bounds its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

from inferswarm.miner.engines.base import Engine, TaskRejected, TracksCache
from inferswarm.miner.engines.teacher import ScoresOutputs
from inferswarm.protocol import (
    Capability,
    ModelName,
    ModelOffer,
    TaskAssign,
    TaskChunk,
    TaskDone,
    VerifyAssign,
    VerifyResult,
)


class MultiModelEngine:
    """Routes each task to the engine that serves its model."""

    def __init__(self, engines: Sequence[Engine]) -> None:
        if not engines:
            raise ValueError("a miner needs at least one model to serve")
        self.parts = tuple(engines)
        self.name = engines[0].name
        self.slots = sum(engine.slots for engine in engines)
        self._by_model: dict[ModelName, Engine] = {
            offer.name: engine for engine in engines for offer in engine.offers()
        }

    @property
    def capability(self) -> Capability | None:
        return next((e.capability for e in self.parts if e.capability), None)

    @capability.setter
    def capability(self, value: Capability | None) -> None:
        """Capability is measured per model (``parts``); a whole-miner value is ignored."""

    def offers(self) -> tuple[ModelOffer, ...]:
        return tuple(offer for engine in self.parts for offer in engine.offers())

    def claimed_tokens_per_s(self) -> float | None:
        claims = [c for e in self.parts if (c := e.claimed_tokens_per_s()) is not None]
        return max(claims) if claims else None

    def _engine_for(self, model: ModelName) -> Engine:
        engine = self._by_model.get(model)
        if engine is None:
            served = ", ".join(self._by_model)
            raise TaskRejected(
                "model_not_loaded", f"this miner serves {served}, not {model}", retryable=True
            )
        return engine

    async def score(self, request: VerifyAssign) -> VerifyResult:
        engine = self._engine_for(request.model)
        if not isinstance(engine, ScoresOutputs):
            raise TaskRejected(
                "invalid_request", f"the {engine.name} engine cannot score outputs", retryable=True
            )
        return await engine.score(request)

    async def generate(self, task: TaskAssign) -> AsyncGenerator[TaskChunk | TaskDone, None]:
        engine = self._engine_for(task.model)
        async with aclosing(engine.generate(task)) as events:
            async for event in events:
                yield event

    def cached_prefix_blocks(self) -> frozenset[int]:
        """Prefix blocks held by any engine that tracks its cache."""
        held = [e.cached_prefix_blocks() for e in self.parts if isinstance(e, TracksCache)]
        return frozenset().union(*held)

    def benchmark_identity(self) -> dict[str, object] | None:
        return None

    async def benchmark(self) -> Capability | None:
        return None

    async def close(self) -> None:
        await asyncio.gather(*(engine.close() for engine in self.parts))

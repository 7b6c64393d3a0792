"""Several models on one miner: one engine per model behind the engine interface.

Tasks go to the engine serving the task's model. Slots add up: the agent
admits as many tasks as all engines together can run, and each engine
bounds its own. The set can change while tasks run (the router asks the
miner to load or unload a variant): ``add`` serves a loaded engine,
``withdraw`` stops giving a model new tasks at once, and ``release`` waits
for its running tasks before closing it.
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
        self.name = engines[0].name
        self._by_model: dict[ModelName, Engine] = {}
        self._running: dict[Engine, int] = {}
        self._idle: dict[Engine, asyncio.Event] = {}
        self._withdrawn: dict[ModelName, Engine] = {}
        self.slots = 0
        """Slots of the engines serving now."""
        for engine in engines:
            self.add(engine)

    @property
    def parts(self) -> tuple[Engine, ...]:
        """The engines serving now (withdrawn ones excluded)."""
        return tuple(dict.fromkeys(self._by_model.values()))

    @property
    def capability(self) -> Capability | None:
        return next((e.capability for e in self.parts if e.capability), None)

    @capability.setter
    def capability(self, value: Capability | None) -> None:
        """Capability is measured per model (``parts``); a whole-miner value is ignored."""

    def offers(self) -> tuple[ModelOffer, ...]:
        return tuple(offer for engine in self.parts for offer in engine.offers())

    def add(self, engine: Engine) -> None:
        """Serve ``engine``'s models from now on."""
        for offer in engine.offers():
            self._by_model[offer.name] = engine
        self._running.setdefault(engine, 0)
        self.slots = sum(e.slots for e in self.parts)

    def withdraw(self, model: ModelName) -> Engine:
        """Give ``model`` no new task; its running tasks go on. Raises ``KeyError``
        when it is not served."""
        engine = self._by_model.pop(model)
        self._withdrawn[model] = engine
        self.slots = sum(e.slots for e in self.parts)
        return engine

    async def release(self, model: ModelName) -> None:
        """Close a withdrawn model's engine once its running tasks have ended."""
        engine = self._withdrawn[model]
        if self._running.get(engine, 0):
            await self._idle.setdefault(engine, asyncio.Event()).wait()
        del self._withdrawn[model]
        if engine not in self._by_model.values():
            self._running.pop(engine, None)
            self._idle.pop(engine, None)
            await engine.close()

    def held_offers(self) -> tuple[ModelOffer, ...]:
        """Offers of withdrawn engines still in memory (running their last tasks)."""
        return tuple(o for e in dict.fromkeys(self._withdrawn.values()) for o in e.offers())

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
        self._running[engine] += 1
        try:
            async with aclosing(engine.generate(task)) as events:
                async for event in events:
                    yield event
        finally:
            self._running[engine] -= 1
            if not self._running[engine] and engine in self._idle:
                self._idle[engine].set()

    def cached_prefix_blocks(self) -> frozenset[int]:
        """Prefix blocks held by any engine that tracks its cache."""
        held = [e.cached_prefix_blocks() for e in self.parts if isinstance(e, TracksCache)]
        return frozenset().union(*held)

    def benchmark_identity(self) -> dict[str, object] | None:
        return None

    async def benchmark(self) -> Capability | None:
        return None

    async def close(self) -> None:
        engines = dict.fromkeys([*self._by_model.values(), *self._withdrawn.values()])
        await asyncio.gather(*(engine.close() for engine in engines))

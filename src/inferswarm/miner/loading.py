"""Loading and unloading variants while the miner serves (the router's
``LoadModel`` and ``UnloadModel``).

A ``ModelLoader`` knows the variants the miner has on disk (``LoadOption``:
what it would offer and how to build its engine) and its memory budgets. A
load builds the engine in a worker thread, so the event loop, heartbeats and
running tasks go on meanwhile; the model joins the ``MultiModelEngine``, and
so the miner's offers, only once it is ready. An unload withdraws the model
at once and frees it when its running tasks have ended. Where a variant goes
(RAM, VRAM) and whether it fits is the pure ``placement.plan_load``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from inferswarm.miner.engines.base import Engine
from inferswarm.miner.engines.multi import MultiModelEngine
from inferswarm.miner.placement import LoadPlan, plan_load
from inferswarm.protocol import ModelName, ModelOffer

log = logging.getLogger(__name__)

Prepare = Callable[[Engine], Awaitable[None]]
"""Run on a freshly built engine before it is offered (e.g. its benchmark)."""


class LoadRefused(Exception):
    """The miner will not load or unload this model; the message says why."""


@dataclass(frozen=True)
class LoadOption:
    """A variant on disk the miner could load."""

    offer: ModelOffer
    """What the miner would offer once loaded; ``memory_bytes`` is its estimate."""
    build: Callable[[int], Engine]
    """Loads the model with this many layers on the GPUs (blocking: it runs in a
    worker thread)."""
    layers: int = 0
    """Its layer count, to offload a share of them when it does not fit VRAM whole."""


async def _nothing(engine: Engine) -> None:
    return None


@dataclass(frozen=True)
class MemoryBudget:
    """What the miner's models may use together (after the safety margin)."""

    ram_bytes: int
    vram_bytes: int = 0


class ModelLoader:
    """The variants a miner serves, loads and could load, within its memory.

    ``placed`` says where the models served at start sit (default: all in RAM).
    """

    def __init__(
        self,
        engine: MultiModelEngine,
        options: Sequence[LoadOption],
        budget: MemoryBudget,
        prepare: Prepare = _nothing,
        placed: Mapping[ModelName, LoadPlan] | None = None,
    ) -> None:
        self.engine = engine
        self._options = {option.offer.name: option for option in options}
        self.budget = budget
        self._prepare = prepare
        placed = placed or {}
        self._resident: dict[ModelName, LoadPlan] = {
            o.name: placed.get(o.name, LoadPlan(0, o.memory_bytes)) for o in engine.offers()
        }
        """Every model in memory or on its way: served, loading, or finishing its tasks."""
        self._loading: set[ModelName] = set()

    @property
    def loading(self) -> tuple[ModelName, ...]:
        return tuple(sorted(self._loading))

    def used_bytes(self) -> int:
        """RAM taken by what is served, on its way out, or loading."""
        return sum(plan.ram_bytes for plan in self._resident.values())

    def used_vram_bytes(self) -> int:
        return sum(plan.vram_bytes for plan in self._resident.values())

    def loadable(self) -> tuple[ModelOffer, ...]:
        """Variants on disk, not in memory, that fit the memory free now."""
        return tuple(
            option.offer
            for name, option in self._options.items()
            if name not in self._resident and isinstance(self._plan(option), LoadPlan)
        )

    def _plan(self, option: LoadOption) -> LoadPlan | str:
        return plan_load(
            option.offer.name,
            option.offer.memory_bytes,
            option.layers,
            self.budget.ram_bytes - self.used_bytes(),
            self.budget.vram_bytes - self.used_vram_bytes(),
        )

    async def load(self, name: ModelName) -> None:
        """Load ``name`` off the event loop and serve it; ``LoadRefused`` says why not."""
        option, plan = self._check_load(name)
        self._resident[name] = plan
        self._loading.add(name)
        try:
            log.info(
                "loading %s (~%.0f MiB, %d layers on GPU)",
                name,
                option.offer.memory_bytes / 2**20,
                plan.gpu_layers,
            )
            engine = await asyncio.to_thread(option.build, plan.gpu_layers)
            try:
                await self._prepare(engine)
            except BaseException:
                await engine.close()
                raise
        except BaseException as exc:
            del self._resident[name]
            if isinstance(exc, Exception):
                raise LoadRefused(f"loading {name} failed: {type(exc).__name__}: {exc}") from exc
            raise
        finally:
            self._loading.discard(name)
        self.engine.add(engine)
        log.info("loaded %s; serving %s", name, ", ".join(o.name for o in self.engine.offers()))

    def _check_load(self, name: ModelName) -> tuple[LoadOption, LoadPlan]:
        if name in self._loading:
            raise LoadRefused(f"{name} is already loading on this miner")
        if name in {o.name for o in self.engine.offers()}:
            raise LoadRefused(f"{name} is already loaded on this miner")
        if name in self._resident:
            raise LoadRefused(
                f"{name} is being unloaded and still finishing its tasks; ask again once it is free"
            )
        option = self._options.get(name)
        if option is None:
            known = ", ".join(self._options) or "none"
            raise LoadRefused(
                f"this miner has no file for {name} (variants on its disk: {known}); "
                "put the GGUF file in a --model-dir of the miner"
            )
        plan = self._plan(option)
        if isinstance(plan, str):
            raise LoadRefused(plan)
        return option, plan

    def withdraw(self, name: ModelName) -> None:
        """Stop offering ``name`` now; ``release`` frees it later."""
        served = [o.name for o in self.engine.offers()]
        if name not in served:
            raise LoadRefused(f"{name} is not loaded on this miner (it serves {', '.join(served)})")
        if len(served) == 1:
            raise LoadRefused(
                f"{name} is the only model this miner serves; load another one first, "
                "or stop the miner"
            )
        self.engine.withdraw(name)
        log.info("unloading %s: no new tasks; freeing it when its tasks end", name)

    async def release(self, name: ModelName) -> None:
        """Free a withdrawn model once its running tasks have ended."""
        await self.engine.release(name)
        self._resident.pop(name, None)
        log.info("unloaded %s", name)

"""Loading and unloading variants while the miner serves (the router's
``LoadModel`` and ``UnloadModel``).

A ``ModelLoader`` knows the variants the miner has on disk (``LoadOption``:
what it would offer and how to build its engine) and its memory budget. A
load builds the engine in a worker thread, so the event loop, heartbeats and
running tasks go on meanwhile; the model joins the ``MultiModelEngine``, and
so the miner's offers, only once it is ready. An unload withdraws the model
at once and frees it when its running tasks have ended. Whether a variant
fits is the pure ``placement.load_refusal``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from inferswarm.miner.engines.base import Engine
from inferswarm.miner.engines.multi import MultiModelEngine
from inferswarm.miner.placement import load_refusal
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
    build: Callable[[], Engine]
    """Loads the model (blocking: it runs in a worker thread)."""


async def _nothing(engine: Engine) -> None:
    return None


class ModelLoader:
    """The variants a miner serves, loads and could load, within its memory."""

    def __init__(
        self,
        engine: MultiModelEngine,
        options: Sequence[LoadOption],
        budget_bytes: int,
        prepare: Prepare = _nothing,
    ) -> None:
        self.engine = engine
        self._options = {option.offer.name: option for option in options}
        self.budget_bytes = budget_bytes
        self._prepare = prepare
        self._loading: dict[ModelName, int] = {}

    @property
    def loading(self) -> tuple[ModelName, ...]:
        return tuple(self._loading)

    def used_bytes(self) -> int:
        """Memory of what is served, on its way out, or loading."""
        resident = (*self.engine.offers(), *self.engine.held_offers())
        return sum(o.memory_bytes for o in resident) + sum(self._loading.values())

    def loadable(self) -> tuple[ModelOffer, ...]:
        """Variants on disk, not served or loading, that fit the memory free now."""
        busy = {o.name for o in self.engine.offers()} | set(self._loading)
        used = self.used_bytes()
        return tuple(
            option.offer
            for name, option in self._options.items()
            if name not in busy
            and load_refusal(name, option.offer.memory_bytes, used, self.budget_bytes) is None
        )

    async def load(self, name: ModelName) -> None:
        """Load ``name`` off the event loop and serve it; ``LoadRefused`` says why not."""
        option = self._check_load(name)
        self._loading[name] = option.offer.memory_bytes
        try:
            log.info("loading %s (~%.0f MiB)", name, option.offer.memory_bytes / 2**20)
            engine = await asyncio.to_thread(option.build)
            try:
                await self._prepare(engine)
            except BaseException:
                await engine.close()
                raise
        except LoadRefused:
            raise
        except Exception as exc:
            raise LoadRefused(f"loading {name} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            del self._loading[name]
        self.engine.add(engine)
        log.info("loaded %s; serving %s", name, ", ".join(o.name for o in self.engine.offers()))

    def _check_load(self, name: ModelName) -> LoadOption:
        if name in {o.name for o in self.engine.offers()}:
            raise LoadRefused(f"{name} is already loaded on this miner")
        if name in self._loading:
            raise LoadRefused(f"{name} is already loading on this miner")
        option = self._options.get(name)
        if option is None:
            known = ", ".join(self._options) or "none"
            raise LoadRefused(
                f"this miner has no file for {name} (variants on its disk: {known}); "
                "put the GGUF file in a --model-dir of the miner"
            )
        why = load_refusal(name, option.offer.memory_bytes, self.used_bytes(), self.budget_bytes)
        if why is not None:
            raise LoadRefused(why)
        return option

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
        log.info("unloaded %s", name)

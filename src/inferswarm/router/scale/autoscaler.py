"""The autoscaler loop: every few seconds, read the signals of each model,
decide, and have the provider carry the decision out; then place models
that requests wait for and no miner serves onto miners that can load them.

Scale-down always drains first: the chosen miners are given no new tasks
here, in the router, and only released (stopped, parked) once the tasks
they had are done, so no request is lost. A miner that is the last live one
serving some other model is not drained for this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from inferswarm.protocol import MinerId, ModelName
from inferswarm.router.events import EventKind
from inferswarm.router.registry import MinerConnection, MinerRegistry, ModelChangeError
from inferswarm.router.scale.placement import Candidate, Load, place
from inferswarm.router.scale.policy import (
    Decision,
    Direction,
    ModelSignals,
    ScaleMemory,
    ScalePolicy,
    decide,
)
from inferswarm.router.scale.providers import Provider, serves
from inferswarm.router.scale.signals import SignalReader
from inferswarm.router.schedule import MinerState

log = logging.getLogger(__name__)

DECISIONS_KEPT = 100
DRAIN_POLL_S = 0.1
LOAD_RETRY_AFTER_S = 60.0
"""A miner whose load of a variant failed is not asked for it again for this long."""


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    evaluation: int
    """Which evaluation (1, 2, ...) made it."""
    at: float
    """Wall-clock time."""
    decision: Decision
    signals: ModelSignals
    action: str
    """What the provider did, or why nothing was done."""


@dataclass(slots=True)
class PlacementRecord:
    evaluation: int
    at: float
    load: Load
    outcome: str = "asked"
    """asked, then loaded, or failed with why."""


class ScaleMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.desired = Gauge(
            "inferswarm_autoscale_desired_miners",
            "Miners the autoscaler wants for a model.",
            ("model",),
            registry=registry,
        )
        self.current = Gauge(
            "inferswarm_autoscale_current_miners",
            "Live and starting miners for a model, as the autoscaler counts them.",
            ("model",),
            registry=registry,
        )
        self.decisions = Counter(
            "inferswarm_autoscale_decisions",
            "Autoscaler decisions, by direction: up, down or hold.",
            ("model", "direction"),
            registry=registry,
        )
        self.placements = Counter(
            "inferswarm_autoscale_placements",
            "Loads of a model nobody served onto a standby miner, by outcome: asked, loaded "
            "or failed.",
            ("model", "outcome"),
            registry=registry,
        )


class Autoscaler:
    def __init__(
        self,
        policy: ScalePolicy,
        provider: Provider,
        registry: MinerRegistry,
        reader: SignalReader,
        metrics: ScaleMetrics,
        *,
        interval_s: float,
        drain_timeout_s: float,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        heartbeat_s: float = 1.0,
    ) -> None:
        self.policy = policy
        self.provider = provider
        self._registry = registry
        self._reader = reader
        self._metrics = metrics
        self.interval_s = interval_s
        self._drain_timeout_s = drain_timeout_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._memory: dict[str, ScaleMemory] = {}
        self._releases: set[asyncio.Task[None]] = set()
        self._task_ended = asyncio.Event()
        registry.on_capacity(lambda _slots: self._task_ended.set())
        self._heartbeat_s = heartbeat_s
        self._loads: set[asyncio.Task[None]] = set()
        self._asked: dict[str, str] = {}
        """Miner id -> the variant it was asked to load, until it answers."""
        self._failed_loads: dict[tuple[str, str], float] = {}
        """(miner id, variant) -> when its load failed."""
        self._unplaced: dict[str, str] = {}
        """Why demand for a model has no miner, as last logged."""
        self.evaluations = 0
        self.decisions: deque[DecisionRecord] = deque(maxlen=DECISIONS_KEPT)
        self.placements: deque[PlacementRecord] = deque(maxlen=DECISIONS_KEPT)
        registry.places_models = True
        # A request waiting for a model nobody serves gets it placed now, not next round.
        registry.on_want(self._wanted)

    async def run(self) -> None:
        """Start the first miners, then evaluate every ``interval_s`` until cancelled."""
        await self.provider.start(self.policy.min_miners)
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.evaluate()
            except Exception:
                log.exception("autoscaler evaluation failed; will try again")

    async def released(self) -> None:
        """Wait until the miners being drained have been released."""
        await asyncio.gather(*self._releases)

    async def loaded(self) -> None:
        """Wait until the loads asked for have been answered."""
        await asyncio.gather(*self._loads)

    async def close(self) -> None:
        for task in [*self._releases, *self._loads]:
            task.cancel()
        await self.provider.close()

    def models(self) -> set[str]:
        served = {
            offer.name
            for conn in self._registry.connections()
            if self.provider.owns(conn) and conn.state is not MinerState.DRAINING
            for offer in conn.info.models
        }
        return served | self.provider.models()

    async def evaluate(self) -> list[DecisionRecord]:
        """One round over every model; what was decided."""
        self.evaluations += 1
        models = self.models()
        if not models:  # nothing joined yet, or the first miners died: start them again
            await self.provider.start(self.policy.min_miners)
        records = [await self._evaluate(model) for model in sorted(models)]
        self.place_models()
        return records

    async def _evaluate(self, model: str) -> DecisionRecord:
        now = self._clock()
        miners = [c for c in self._registry.connections() if serves(c, model)]
        starting = self.provider.starting(model, now)
        signals = self._reader.read(model, miners, starting, self._wall_clock())
        memory = self._memory.get(model, ScaleMemory())
        decision, memory = decide(self.policy, signals, memory, now)
        decision = self._within_headroom(decision)
        if decision.direction is not Direction.HOLD:
            self._memory[model] = memory
        else:
            # A hold remembers what was wanted, but not a change that did not happen.
            self._memory[model] = ScaleMemory(
                self._memory.get(model, ScaleMemory()).last_change_at,
                memory.last_slo_step_at,
                memory.wanted,
            )
        action = await self._carry_out(decision, miners, now)
        return self._record(decision, signals, action)

    def _within_headroom(self, decision: Decision) -> Decision:
        if decision.direction is not Direction.UP:
            return decision
        room = self.provider.headroom(decision.model)
        if room is None or decision.desired - decision.current <= room:
            return decision
        desired = decision.current + room
        reason = (
            f"{decision.reason}; wants {decision.desired} but {self.provider.name} "
            f"has room for {room} more"
        )
        return Decision(decision.model, decision.current, desired, reason)

    async def _carry_out(
        self, decision: Decision, miners: list[MinerConnection], now: float
    ) -> str:
        change = decision.desired - decision.current
        if change > 0:
            return await self.provider.grow(decision.model, change, now)
        if change < 0:
            return self._drain(decision, miners, -change)
        return ""

    def _drain(self, decision: Decision, miners: list[MinerConnection], count: int) -> str:
        candidates = [
            c
            for c in miners
            if c.state is MinerState.LIVE
            and self.provider.owns(c)
            and not self._last_server(c, decision.model)
        ]
        # The least busy first; among equals the newest, so long-lived miners stay.
        candidates.sort(key=lambda c: (len(c.tasks), -c.connected_at))
        chosen = candidates[:count]
        for conn in chosen:
            self._registry.drain(conn, f"autoscaler: {decision.reason}")
        release = asyncio.create_task(self._release_when_idle(decision.model, chosen))
        self._releases.add(release)
        release.add_done_callback(self._releases.discard)
        names = ", ".join(c.info.name for c in chosen) or "none of ours"
        return f"draining {names}"

    def _last_server(self, conn: MinerConnection, model: str) -> bool:
        """Whether ``conn`` is the only live miner serving a model besides ``model``."""
        served = self._registry.served_models()
        return any(
            offer.name != model and served.get(offer.name) == [conn] for offer in conn.info.models
        )

    async def _release_when_idle(self, model: str, conns: list[MinerConnection]) -> None:
        deadline = self._clock() + self._drain_timeout_s
        while any(c.tasks for c in conns) and self._clock() < deadline:
            self._task_ended.clear()
            # Woken when any task ends; the timeout covers miners that vanish.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._task_ended.wait(), DRAIN_POLL_S * 10)
        try:
            action = await self.provider.release(model, conns)
        except Exception:
            log.exception("releasing drained miners failed")
            return
        log.info("autoscaler released %s miner(s) of %s: %s", len(conns), model, action)

    def _record(self, decision: Decision, signals: ModelSignals, action: str) -> DecisionRecord:
        record = DecisionRecord(self.evaluations, self._wall_clock(), decision, signals, action)
        model, direction = decision.model, decision.direction
        self._metrics.desired.labels(model).set(decision.desired)
        self._metrics.current.labels(model).set(decision.current)
        self._metrics.decisions.labels(model, direction.value).inc()
        self.decisions.append(record)
        summary = f"{model}: {decision.current} → {decision.desired} miners ({decision.reason})"
        if direction is Direction.HOLD:
            log.debug("autoscaler holds %s", summary)
            return record
        log.info("autoscaler scales %s %s; %s", direction.value, summary, action)
        self._registry.events.record(EventKind.SCALE, "", "autoscaler", f"{summary}; {action}")
        return record

    def place_models(self) -> list[Load]:
        """Ask standby miners to load the models requests wait for and nobody
        serves (``placement.place``); the loads go on in the background."""
        now = self._clock()
        self._failed_loads = {
            pair: at for pair, at in self._failed_loads.items() if now - at < LOAD_RETRY_AFTER_S
        }
        demand = {m: n for m, n in self._reader.metrics.running_by_model.items() if n > 0}
        loads, unplaced = place(demand, self._candidates(), self._failed_loads.keys())
        for load in loads:
            self._ask(load)
        for left in unplaced:
            if self._unplaced.get(left.model) != left.reason:
                log.info("autoscaler cannot place %s yet: %s", left.model, left.reason)
        self._unplaced = {left.model: left.reason for left in unplaced}
        return loads

    def _wanted(self, model: str) -> None:
        try:
            self.place_models()
        except Exception:  # the request waits all the same; the next round tries again
            log.exception("placing %s failed; will try again", model)

    def _candidates(self) -> list[Candidate]:
        loading: dict[MinerId, set[str]] = {}
        for variant, conns in self._registry.loading_models().items():
            for conn in conns:
                loading.setdefault(conn.miner_id, set()).add(variant)
        for miner_id, asked in self._asked.items():  # asked, but the request not sent yet
            loading.setdefault(MinerId(miner_id), set()).add(asked)
        return [
            Candidate(
                miner_id=str(conn.miner_id),
                name=conn.info.name,
                parked=conn.state is MinerState.PARKED,
                busy_slots=len(conn.tasks),
                tokens_per_s=conn.tokens_per_s or 0.0,
                serves=tuple(o.name for o in conn.info.models),
                loading=tuple(sorted(loading.get(conn.miner_id, ()))),
                loadable=tuple(o.name for o in conn.info.loadable),
            )
            for conn in self._registry.connections()
            if conn.state in (MinerState.LIVE, MinerState.PARKED)
        ]

    def _ask(self, load: Load) -> None:
        record = PlacementRecord(self.evaluations, self._wall_clock(), load)
        self.placements.append(record)
        self._metrics.placements.labels(load.model, "asked").inc()
        log.info("autoscaler places %s on %s: %s", load.variant, load.miner_name, load.reason)
        detail = f"placing {load.variant}: {load.reason}"
        self._registry.events.record(EventKind.SCALE, load.miner_id, load.miner_name, detail)
        self._asked[load.miner_id] = load.variant
        task = asyncio.create_task(self._load(record))
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)

    async def _load(self, record: PlacementRecord) -> None:
        load = record.load
        try:
            await self._registry.request_load(MinerId(load.miner_id), ModelName(load.variant))
        except ModelChangeError as exc:
            self._failed_loads[(load.miner_id, load.variant)] = self._clock()
            record.outcome = f"failed: {exc.message}"
            self._metrics.placements.labels(load.model, "failed").inc()
            log.warning("%s could not load %s: %s", load.miner_name, load.variant, exc.message)
            return
        finally:
            self._asked.pop(load.miner_id, None)
        conn = self._registry.get(MinerId(load.miner_id))
        if conn is not None and conn.state is MinerState.PARKED:
            await self._registry.activate(conn, self._heartbeat_s)
        record.outcome = "loaded"
        self._metrics.placements.labels(load.model, "loaded").inc()
        log.info("%s loaded %s and serves it now", load.miner_name, load.variant)

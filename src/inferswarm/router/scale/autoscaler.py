"""The autoscaler loop: every few seconds, read the signals of each model and
decide; have the provider add miners, and where it has no more to give, load
the model onto parked or idle miners that can (``placement.place``, which
also places models that requests wait for and no miner serves).

Scale-down always drains first: the chosen miners are given no new tasks
here, in the router, and only released (stopped, parked) once the tasks
they had are done, so no request is lost. Which miners leave looks at every
model they serve (``removal.plan_removals``): a miner another model still
needs is not drained but unloads the cold model only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from inferswarm.protocol import MinerId, ModelName, split_model_name
from inferswarm.router.events import EventKind
from inferswarm.router.registry import MinerConnection, MinerRegistry, ModelChangeError
from inferswarm.router.scale.placement import Candidate, Load, place, spare_loaders
from inferswarm.router.scale.policy import (
    Decision,
    Direction,
    ModelSignals,
    ScaleMemory,
    ScalePolicy,
    decide,
)
from inferswarm.router.scale.providers import Provider, serves
from inferswarm.router.scale.removal import Removal, Server, Way, plan_removals
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


@dataclass(slots=True)
class UnloadRecord:
    evaluation: int
    at: float
    removal: Removal
    outcome: str = "asked"
    """asked, then unloaded, or failed with why."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """One model's decision this round, and how a scale-up is to be carried out."""

    decision: Decision
    signals: ModelSignals
    by_provider: int = 0
    """Miners asked of the provider."""
    by_loading: int = 0
    """Miners to load the model onto, for what the provider cannot give."""


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
            "Loads of a model onto a standby or idle miner (nobody served it, or scaling "
            "wanted more miners than its provider gives), by outcome: asked, loaded or failed.",
            ("model", "outcome"),
            registry=registry,
        )
        self.unloads = Counter(
            "inferswarm_autoscale_unloads",
            "Models unloaded from a miner another model still needs, instead of draining it, "
            "by outcome: asked, unloaded or failed.",
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
        self._failed_unloads: dict[tuple[str, str], float] = {}
        """(miner id, model) -> when its unload failed."""
        self._unplaced: dict[str, str] = {}
        """Why demand for a model has no miner, as last logged."""
        self.evaluations = 0
        self.decisions: deque[DecisionRecord] = deque(maxlen=DECISIONS_KEPT)
        self.placements: deque[PlacementRecord] = deque(maxlen=DECISIONS_KEPT)
        self.unloads: deque[UnloadRecord] = deque(maxlen=DECISIONS_KEPT)
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
        """Wait until the loads and unloads asked for have been answered."""
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
        """One round over every model: decide each, grow through the provider,
        load onto spare miners what it cannot give, then scale down; what was
        decided."""
        self.evaluations += 1
        models = self.models()
        if not models:  # nothing joined yet, or the first miners died: start them again
            await self.provider.start(self.policy.min_miners)
        now = self._clock()
        self._forget_failures(now)
        candidates = self._candidates()
        plans = [self._plan(model, candidates, now) for model in sorted(models)]
        actions: dict[str, list[str]] = {p.decision.model: [] for p in plans}
        for plan in plans:
            if plan.by_provider:
                model = plan.decision.model
                actions[model].append(await self.provider.grow(model, plan.by_provider, now))
        more = {p.decision.model: p.by_loading for p in plans if p.by_loading}
        for load in self.place_models(more):
            if load.model in more:
                actions[load.model].append(f"{load.miner_name} loads {load.variant}")
        for model in more.keys() & self._unplaced.keys():
            actions[model].append(self._unplaced[model])
        for model, action in self._scale_down(plans).items():
            actions[model].append(action)
        return [
            self._record(p.decision, p.signals, "; ".join(filter(None, actions[p.decision.model])))
            for p in plans
        ]

    def _plan(self, model: str, candidates: list[Candidate], now: float) -> _Plan:
        miners = [c for c in self._registry.connections() if serves(c, model)]
        # Miners loading the model count as capacity on its way, like those starting.
        loading = sum(model in c.loading for c in candidates)
        starting = self.provider.starting(model, now) + loading
        share = 1 / max(1, len(variants_served(self._registry, model)))
        signals = self._reader.read(model, miners, starting, self._wall_clock(), share)
        memory = self._memory.get(model, ScaleMemory())
        decision, memory = decide(self.policy, signals, memory, now)
        plan = self._within_reach(decision, signals, candidates)
        if plan.decision.direction is not Direction.HOLD:
            self._memory[model] = memory
        else:
            # A hold remembers what was wanted, but not a change that did not happen.
            self._memory[model] = ScaleMemory(
                self._memory.get(model, ScaleMemory()).last_change_at,
                memory.last_slo_step_at,
                memory.wanted,
            )
        return plan

    def _within_reach(
        self, decision: Decision, signals: ModelSignals, candidates: list[Candidate]
    ) -> _Plan:
        """Split a scale-up between the provider and loads onto spare miners,
        lowering the count wanted to what the two can give."""
        change = decision.desired - decision.current
        room = self.provider.headroom(decision.model)
        if change <= 0 or room is None:
            return _Plan(decision, signals, by_provider=max(change, 0))
        loaders = spare_loaders(decision.model, candidates, self._failed_loads.keys())
        by_provider = min(change, room)
        by_loading = min(change - by_provider, loaders)
        if by_provider + by_loading < change:
            can_load = f" and {loaders} parked or idle miner(s) can load it" if loaders else ""
            reason = (
                f"{decision.reason}; wants {decision.desired} but {self.provider.name} "
                f"has room for {room} more{can_load}"
            )
            desired = decision.current + by_provider + by_loading
            decision = Decision(decision.model, decision.current, desired, reason)
        return _Plan(decision, signals, by_provider, by_loading)

    def _scale_down(self, plans: list[_Plan]) -> dict[str, str]:
        """Carry out every scale-down of this round together (``removal.plan_removals``:
        a miner leaves only if all the models it serves can spare it); what was
        done per model."""
        served = self._registry.served_models()
        excess = {
            p.decision.model: max(
                0,
                min(
                    p.decision.current - p.decision.desired,
                    len(served.get(ModelName(p.decision.model), [])) - 1,
                ),
            )
            for p in plans
            if p.decision.direction is Direction.DOWN
        }
        if not excess:
            return {}
        servers = [
            Server(
                miner_id=str(c.miner_id),
                name=c.info.name,
                serves=tuple(o.name for o in c.info.models),
                busy_slots=len(c.tasks),
                connected_at=c.connected_at,
            )
            for c in self._registry.connections()
            if c.state is MinerState.LIVE and self.provider.owns(c)
        ]
        removals = plan_removals(excess, servers, self._failed_unloads.keys())
        reasons = {p.decision.model: p.decision.reason for p in plans}
        drained: dict[str, list[MinerConnection]] = {}
        for removal in removals:
            conn = self._registry.get(MinerId(removal.miner_id))
            if conn is None:
                continue
            if removal.way is Way.DRAIN:
                detail = f"autoscaler: {reasons[removal.model]}; {removal.reason}"
                self._registry.drain(conn, detail)
                drained.setdefault(removal.model, []).append(conn)
            else:
                self._unload(removal)
        for model, conns in drained.items():
            release = asyncio.create_task(self._release_when_idle(model, conns))
            self._releases.add(release)
            release.add_done_callback(self._releases.discard)
        return {model: _removed(model, count, removals) for model, count in excess.items()}

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

    def place_models(self, more: Mapping[str, int] | None = None) -> list[Load]:
        """Ask standby miners to load the models requests wait for and nobody
        serves, and ``more`` miners for served models the provider cannot grow
        (``placement.place``); the loads go on in the background."""
        self._forget_failures(self._clock())
        demand = {m: n for m, n in self._reader.metrics.running_by_model.items() if n > 0}
        loads, unplaced = place(demand, self._candidates(), self._failed_loads.keys(), more)
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

    def _forget_failures(self, now: float) -> None:
        self._failed_loads = {
            pair: at for pair, at in self._failed_loads.items() if now - at < LOAD_RETRY_AFTER_S
        }
        self._failed_unloads = {
            pair: at for pair, at in self._failed_unloads.items() if now - at < LOAD_RETRY_AFTER_S
        }

    def _loading_by_miner(self) -> dict[MinerId, set[str]]:
        """The variants each miner is loading, or has been asked to load."""
        loading: dict[MinerId, set[str]] = {}
        for variant, conns in self._registry.loading_models().items():
            for conn in conns:
                loading.setdefault(conn.miner_id, set()).add(variant)
        for miner_id, asked in self._asked.items():  # asked, but the request not sent yet
            loading.setdefault(MinerId(miner_id), set()).add(asked)
        return loading

    def _candidates(self) -> list[Candidate]:
        loading = self._loading_by_miner()
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

    def _unload(self, removal: Removal) -> None:
        record = UnloadRecord(self.evaluations, self._wall_clock(), removal)
        self.unloads.append(record)
        self._metrics.unloads.labels(removal.model, "asked").inc()
        log.info("autoscaler unloads %s from %s", removal.model, removal.reason)
        detail = f"unloading {removal.model}: {removal.reason}"
        self._registry.events.record(EventKind.SCALE, removal.miner_id, removal.miner_name, detail)
        task = asyncio.create_task(self._do_unload(record))
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)

    async def _do_unload(self, record: UnloadRecord) -> None:
        removal = record.removal
        try:
            # The router sends it no new tasks for the model from now; the miner frees
            # the model once the tasks it runs have finished.
            await self._registry.request_unload(MinerId(removal.miner_id), ModelName(removal.model))
        except ModelChangeError as exc:
            self._failed_unloads[(removal.miner_id, removal.model)] = self._clock()
            record.outcome = f"failed: {exc.message}"
            self._metrics.unloads.labels(removal.model, "failed").inc()
            log.warning(
                "%s could not unload %s: %s", removal.miner_name, removal.model, exc.message
            )
            return
        record.outcome = "unloaded"
        self._metrics.unloads.labels(removal.model, "unloaded").inc()
        log.info("%s unloaded %s", removal.miner_name, removal.model)


def _removed(model: str, excess: int, removals: list[Removal]) -> str:
    """What a scale-down of ``model`` did, for its decision record."""
    if excess == 0:
        return "keeping its only live miner (the others counted are still starting or loading)"
    mine = [r for r in removals if r.model == model]
    drained = [r.miner_name for r in mine if r.way is Way.DRAIN]
    unloaded = [r.miner_name for r in mine if r.way is Way.UNLOAD]
    done = []
    if drained:
        done.append(f"draining {', '.join(drained)}")
    if unloaded:
        done.append(f"unloading it from {', '.join(unloaded)} (still needed for other models)")
    return "; ".join(done) or "none of ours can go (each serves a model that still needs it)"


def variants_served(registry: MinerRegistry, model: str) -> set[ModelName]:
    """The variants of ``model``'s family that live miners serve now."""
    family = split_model_name(model).family
    return {n for n in registry.served_models() if split_model_name(n).family == family}

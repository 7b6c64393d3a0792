"""The autoscaler loop with the standby and command providers, in process:
a real registry and metrics, miners as recorded WebSocket senders, a set clock."""

from __future__ import annotations

import sys
from contextlib import aclosing
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from inferswarm.openai_compat.errors import ServiceUnavailable
from inferswarm.protocol import (
    PROTOCOL_VERSION,
    HardwareProfile,
    MinerId,
    ModelName,
    ModelOffer,
    ModelsChanged,
    Register,
    SamplingParams,
    TaskAssign,
    TaskDone,
    TaskId,
)
from inferswarm.router.admission import WaitQueue
from inferswarm.router.dispatch import Dispatcher, DispatchLimits, Job
from inferswarm.router.events import EventKind
from inferswarm.router.metrics import RouterMetrics
from inferswarm.router.registry import MinerConnection, MinerRegistry
from inferswarm.router.scale.autoscaler import Autoscaler, DecisionRecord, ScaleMetrics
from inferswarm.router.scale.policy import ScalePolicy
from inferswarm.router.scale.providers import CommandProvider, Provider, StandbyProvider
from inferswarm.router.scale.removal import Way
from inferswarm.router.scale.signals import SignalReader
from inferswarm.router.schedule import MinerState, Policy
from recorded import RecordedMiner

MODEL = ModelName("m")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def offer(name: str) -> ModelOffer:
    return ModelOffer(name=ModelName(name), context_length=512)


def register(
    name: str, slots: int, serves: tuple[str, ...] = (MODEL,), loadable: tuple[str, ...] = ()
) -> Register:
    return Register(
        protocol_version=PROTOCOL_VERSION,
        miner_id=MinerId(f"id-{name}"),
        name=name,
        engine="fake",
        hardware=HardwareProfile(cpu_model="x", cpu_cores=2, ram_bytes=2**30),
        models=tuple(offer(m) for m in serves),
        slots=slots,
        loadable=tuple(offer(m) for m in loadable),
    )


class World:
    def __init__(self, provider_for: type[Provider] | None = None, command: str = "") -> None:
        self.clock = Clock()
        self.registry = MinerRegistry(self.clock, heartbeat_timeout_s=5, wall_clock=self.clock)
        self.metrics = RouterMetrics(self.registry, WaitQueue(10, 10), self.clock)
        self.policy = ScalePolicy(
            min_miners=1, max_miners=3, scale_down_window_s=10, scale_down_cooldown_s=10
        )
        self.provider: Provider = (
            CommandProvider(command, (MODEL,), self.registry, start_timeout_s=30)
            if command
            else StandbyProvider(self.registry, parked_heartbeat_s=5, heartbeat_s=1)
        )
        self.scaler = Autoscaler(
            self.policy,
            self.provider,
            self.registry,
            SignalReader(self.metrics),
            ScaleMetrics(self.metrics.registry),
            interval_s=2,
            drain_timeout_s=30,
            clock=self.clock,
            wall_clock=self.clock,
        )
        self.miners: dict[str, RecordedMiner] = {}

    async def join(
        self,
        name: str,
        slots: int = 1,
        serves: tuple[str, ...] = (MODEL,),
        loadable: tuple[str, ...] = (),
    ) -> MinerConnection:
        miner = self.miners[name] = RecordedMiner()
        info = register(name, slots, serves, loadable)
        return await self.registry.add(info, miner.send, miner.close)

    async def tick(self, seconds: float = 2) -> list[DecisionRecord]:
        self.clock.now += seconds
        return await self.scaler.evaluate()

    def states(self) -> dict[str, str]:
        return {c.info.name: c.state.value for c in self.registry.connections()}


def task(n: int) -> TaskAssign:
    return TaskAssign(
        task_id=TaskId(f"t{n}"), model=MODEL, prompt="p", sampling=SamplingParams(max_tokens=4)
    )


async def settle() -> None:
    import asyncio

    for _ in range(5):
        await asyncio.sleep(0)


async def test_standby_parks_idle_miners_one_by_one_and_activates_them_under_load() -> None:
    world = World()
    for name in ("a", "b", "c"):
        await world.join(name)
    for _ in range(12):  # idle: down to the minimum, one miner per cooldown
        await world.tick()
        await settle()
    assert sorted(world.states().values()) == ["live", "parked", "parked"]
    parked = [name for name, state in world.states().items() if state == "parked"]
    assert all(world.miners[name].parks() == [True] for name in parked)
    assert world.registry.get(MinerId(f"id-{parked[0]}")).silence_allowed_s == 15  # type: ignore[union-attr]
    assert [c.info.name for c in world.registry.served_models()[MODEL]] == [
        n for n, s in world.states().items() if s == "live"
    ]

    world.metrics.running_by_model[MODEL] = 3  # three requests in flight, one slot live
    await world.tick()
    assert sorted(world.states().values()) == ["live", "live", "live"]
    assert all(world.miners[name].parks() == [True, False] for name in parked)
    kinds = [e.kind for e in world.registry.events.recent()]
    assert kinds.count(EventKind.SCALE) == 3
    up = world.scaler.decisions[-1]
    assert (up.decision.current, up.decision.desired) == (1, 3)
    assert "waiting 3" in up.decision.reason


async def test_scale_down_drains_first_and_releases_only_when_the_tasks_are_done() -> None:
    world = World()
    a = await world.join("a", slots=4)
    b = await world.join("b", slots=4)
    await world.registry.start_task(a.miner_id, task(1), expected_tokens=4)
    await world.registry.start_task(b.miner_id, task(2), expected_tokens=4)
    world.metrics.running_by_model[MODEL] = 2  # 2 busy of 8 slots: one miner is enough
    await world.tick()
    await settle()
    states = world.states()
    assert sorted(states.values()) == ["draining", "live"]
    drained = next(c for c in (a, b) if c.state is MinerState.DRAINING)
    assert world.miners[drained.info.name].parks() == []  # still running its task
    for _ in range(3):
        await world.tick()
        await settle()
    assert drained.state is MinerState.DRAINING
    task_id = next(iter(drained.tasks))
    done = TaskDone(task_id=task_id, finish_reason="stop", prompt_tokens=1, completion_tokens=1)
    world.registry.on_message(drained, done)
    await settle()
    assert drained.state is MinerState.PARKED
    assert world.miners[drained.info.name].parks() == [True]
    drains = [e for e in world.registry.events.recent() if e.kind is EventKind.DRAINING]
    assert [e.miner_name for e in drains] == [drained.info.name]
    assert drains[0].detail.startswith("autoscaler: ")


async def test_the_command_provider_runs_the_operator_command_with_count_and_model(
    tmp_path: Path,
) -> None:
    calls = tmp_path / "calls"
    script = f"{sys.executable} -c \"import sys; open(sys.argv[1], 'a').write(' '.join(sys.argv[2:]) + chr(10))\" {calls} {{model}} {{count}} {{miners}}"
    world = World(command=script)
    await world.scaler.provider.start(1)
    assert not calls.exists()  # no command before the first evaluation has counted miners
    await world.tick()
    assert calls.read_text().splitlines() == ["m 1 "]  # up to the minimum; none drained
    await world.join("one")
    world.metrics.running_by_model[MODEL] = 3
    await world.tick()
    assert calls.read_text().splitlines()[-1] == "m 3 "
    # The two asked for count as starting: no second command while they come up.
    await world.tick()
    assert len(calls.read_text().splitlines()) == 2
    assert world.scaler.decisions[-1].signals.miners == 3
    # Demand gone: after the cooldown one miner is drained, then the command is told the
    # new count and which miner to stop (the newest of the idle ones).
    await world.join("two")
    world.clock.now += 0.1
    await world.join("three")
    world.metrics.running_by_model[MODEL] = 0
    for _ in range(6):
        await world.tick()
    await world.scaler.released()
    assert calls.read_text().splitlines()[2] == "m 2 three"
    assert world.states()["three"] == "draining"


OTHER = ModelName("other")


async def test_a_model_nobody_serves_is_loaded_on_a_parked_miner_that_then_takes_work() -> None:
    world = World()
    await world.join("a")
    b = await world.join("b", loadable=(OTHER,))
    await world.registry.park(b, 5)
    assert world.registry.coming(OTHER), "a request for it waits instead of a 404"
    assert not world.registry.coming("nobody-has-it")
    world.metrics.running_by_model[OTHER] = 2
    world.registry.want(OTHER)  # what the dispatcher says when a request starts to wait
    await settle()
    assert world.miners["b"].loads() == [OTHER], "placed at once, not at the next evaluation"
    world.registry.on_message(b, ModelsChanged(models=(offer(MODEL),), loading=(OTHER,)))
    assert world.registry.coming(OTHER), "still waited for while it loads"
    await world.tick()
    await settle()
    assert world.miners["b"].loads() == [OTHER], "asked once while it loads"
    world.registry.on_message(b, ModelsChanged(models=(offer(MODEL), offer(OTHER)), slots=2))
    await world.scaler.loaded()
    assert b.state is MinerState.LIVE
    assert world.miners["b"].parks() == [True, False]
    assert [c.info.name for c in world.registry.served_models()[OTHER]] == ["b"]
    assert not world.registry.coming(OTHER)
    placement = world.scaler.placements[-1]
    assert (placement.load.miner_name, placement.load.variant, placement.outcome) == (
        "b",
        OTHER,
        "loaded",
    )
    assert "2 request(s) in flight for other and no miner serves it" in placement.load.reason
    scale_events = [e for e in world.registry.events.recent() if e.kind is EventKind.SCALE]
    assert [(e.miner_name, e.detail.split(":")[0]) for e in scale_events] == [
        ("b", "placing other")
    ]
    exposition = generate_latest(world.metrics.registry).decode()
    assert 'inferswarm_autoscale_placements_total{model="other",outcome="loaded"} 1.0' in exposition


async def test_a_failed_load_is_not_asked_of_that_miner_again_for_a_while() -> None:
    world = World()
    b = await world.join("b", loadable=(OTHER,))
    world.metrics.running_by_model[OTHER] = 1
    await world.tick()
    await settle()
    refusal = ModelsChanged(
        models=(offer(MODEL),), loadable=(offer(OTHER),), error="loading other failed: disk"
    )
    world.registry.on_message(b, refusal)
    await world.scaler.loaded()
    assert world.scaler.placements[-1].outcome == "failed: loading other failed: disk"
    for _ in range(3):
        await world.tick(10)
        await settle()
    assert world.miners["b"].loads() == [OTHER]
    await world.tick(40)
    await settle()
    assert world.miners["b"].loads() == [OTHER, OTHER]
    await world.scaler.close()


async def test_the_last_miner_serving_a_model_is_not_drained_for_another() -> None:
    world = World()
    await world.join("a")
    await world.join("b", serves=(MODEL, OTHER))  # newest, so first to go were it not for OTHER
    for _ in range(8):
        await world.tick()
        await settle()
    assert world.states() == {"a": "parked", "b": "live"}


async def test_a_request_waits_for_a_model_on_its_way_and_gives_up_saying_why() -> None:
    world = World()
    await world.join("b", loadable=(OTHER,))
    dispatcher = Dispatcher(
        world.registry, Policy.LEAST_LOADED, DispatchLimits(), WaitQueue(10, 0.3)
    )
    job = Job(model=OTHER, sampling=SamplingParams(max_tokens=4), prompt="hi")
    with pytest.raises(ServiceUnavailable) as refused:
        async with aclosing(world.metrics.measured(dispatcher, job)) as events:
            await anext(events)
    assert refused.value.code == "model_loading"
    assert "No miner finished loading a variant of 'other' within 0.3 s" in refused.value.message
    assert world.miners["b"].loads() == [OTHER], "the wait asked the autoscaler to place it"
    await world.scaler.close()


async def test_more_miners_for_a_served_model_come_from_loading_it_on_standby_miners() -> None:
    world = World()
    await world.join("a")  # serves m: the only one
    b = await world.join("b", serves=(OTHER,), loadable=(MODEL,))
    world.clock.now += 1
    c = await world.join("c", serves=(OTHER,), loadable=(MODEL,))
    await world.registry.park(c, 5)
    world.metrics.running_by_model[MODEL] = 3  # 3 in flight, 1 slot live
    records = await world.tick()
    await settle()
    up = next(r for r in records if r.decision.model == MODEL)
    assert (up.decision.current, up.decision.desired) == (1, 3)
    assert up.action == "c loads m; b loads m", "no parked miner serves m: both load it"
    assert world.miners["c"].loads() == [MODEL] and world.miners["b"].loads() == [MODEL]
    assert "scaling wants 2 more miner(s) for m" in world.scaler.placements[-1].load.reason
    # While they load they count as capacity on its way: nothing more is asked.
    loading = ModelsChanged(models=(offer(OTHER),), loading=(MODEL,))
    for conn in (b, c):
        world.registry.on_message(conn, loading)
    records = await world.tick()
    await settle()
    held = next(r for r in records if r.decision.model == MODEL)
    assert (held.decision.current, held.decision.desired) == (3, 3)
    assert world.miners["b"].loads() == [MODEL]
    for conn in (b, c):
        world.registry.on_message(conn, ModelsChanged(models=(offer(OTHER), offer(MODEL))))
    await world.scaler.loaded()
    assert c.state is MinerState.LIVE, "the parked miner was activated once it served m"
    assert len(world.registry.served_models()[MODEL]) == 3
    exposition = generate_latest(world.metrics.registry).decode()
    assert 'inferswarm_autoscale_placements_total{model="m",outcome="loaded"} 2.0' in exposition
    await world.scaler.close()


async def test_scale_down_keeps_a_miner_a_busy_model_needs_and_unloads_the_cold_one() -> None:
    world = World()
    await world.join("a", slots=2)  # m only; the oldest
    world.clock.now += 1
    b = await world.join("b", slots=2, serves=(MODEL, OTHER))
    world.clock.now += 1
    c = await world.join("c", slots=2, serves=(MODEL, OTHER))  # the newest and idlest
    world.metrics.running_by_model[OTHER] = 2  # other wants its two miners; m wants one
    await world.tick()
    await world.scaler.released()
    # Drained (idle, so parked at once), though b and c are newer: they serve other too.
    assert world.states() == {"a": "parked", "b": "live", "c": "live"}
    drain = next(e for e in world.registry.events.recent() if e.kind is EventKind.DRAINING)
    assert drain.detail.endswith("a: it serves nothing else")
    records: list[DecisionRecord] = []
    for _ in range(6):  # the cooldown, then m goes from 2 miners to 1
        records += await world.tick()
        await settle()
    down = [r for r in records if r.decision.model == MODEL and r.decision.direction == "down"]
    assert [r.action for r in down] == ["unloading it from c (still needed for other models)"]
    assert world.states() == {"a": "parked", "b": "live", "c": "live"}, "no miner drained"
    assert world.miners["c"].unloads() == [MODEL]
    assert [o.name for o in c.info.models] == [OTHER], "no new m tasks go to c"
    world.registry.on_message(c, ModelsChanged(models=(offer(OTHER),)))
    await world.scaler.loaded()
    unload = world.scaler.unloads[-1]
    assert (unload.removal.miner_name, unload.removal.way, unload.outcome) == (
        "c",
        Way.UNLOAD,
        "unloaded",
    )
    assert [c.info.name for c in world.registry.served_models()[MODEL]] == ["b"]
    assert [x.info.name for x in world.registry.served_models()[OTHER]] == ["b", "c"]
    assert b.state is MinerState.LIVE
    exposition = generate_latest(world.metrics.registry).decode()
    assert 'inferswarm_autoscale_unloads_total{model="m",outcome="unloaded"} 1.0' in exposition
    scale_events = [e.detail for e in world.registry.events.recent() if e.kind is EventKind.SCALE]
    assert any(d.startswith("unloading m: c: still needed for other") for d in scale_events)


def test_requests_that_name_a_family_count_for_its_served_variants() -> None:
    world = World()
    reader = SignalReader(world.metrics)
    world.metrics.running_by_model["fam"] = 4
    world.metrics.running_by_model["fam:q8_0"] = 1
    now = world.clock.now
    alone = reader.read("fam:q8_0", [], 0, now)
    shared = reader.read("fam:q8_0", [], 0, now, family_share=0.5)
    assert (alone.waiting, alone.demand) == (5, 5)
    assert (shared.waiting, shared.demand) == (3, 3)
    assert reader.read("other:q8_0", [], 0, now).demand == 0  # another family's requests

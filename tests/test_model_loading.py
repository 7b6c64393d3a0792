"""Loading and unloading variants at the router's request, on fake engines.

The miner's ``ModelLoader`` and the router's registry in process, then both
ends as real processes through the admin API, the CLI and the openai client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing

import httpx
import openai
import pytest

from inferswarm.miner.engines.fake import FakeEngine, FakeEngineConfig, fake_load_option
from inferswarm.miner.engines.multi import MultiModelEngine
from inferswarm.miner.loading import LoadOption, LoadRefused, MemoryBudget, ModelLoader
from inferswarm.miner.placement import LoadPlan, plan_load
from inferswarm.protocol import (
    PROTOCOL_VERSION,
    HardwareProfile,
    LoadModel,
    MinerId,
    ModelName,
    ModelOffer,
    ModelsChanged,
    Register,
    SamplingParams,
    TaskAssign,
    TaskDone,
    TaskId,
    UnloadModel,
)
from inferswarm.router.events import EventKind
from inferswarm.router.registry import MinerConnection, MinerRegistry, ModelChangeError
from netutil import Network, network
from recorded import RecordedMiner

A, B, HUGE = ModelName("fake-a"), ModelName("fake-b"), ModelName("fake-huge")
MB = 10**6


def fake(name: str, memory_mb: int, **changes: object) -> FakeEngineConfig:
    config = FakeEngineConfig(model=name, slots=1, memory_bytes=memory_mb * MB)
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def task(n: int, model: str = A, max_tokens: int = 8) -> TaskAssign:
    return TaskAssign(
        task_id=TaskId(f"t{n}"),
        model=ModelName(model),
        prompt="hello",
        sampling=SamplingParams(max_tokens=max_tokens),
    )


def loader(load_s: float = 0.0) -> ModelLoader:
    """Serves fake-a (100 MB) in a 500 MB budget; fake-b (200 MB) loads in
    ``load_s``; fake-huge (1 GB) never fits."""
    engine = MultiModelEngine([FakeEngine(fake(A, 100, tokens_per_s=40.0))])
    options = [
        fake_load_option(fake(A, 100)),
        fake_load_option(fake(B, 200), load_s),
        fake_load_option(fake(HUGE, 1000)),
    ]
    return ModelLoader(engine, options, MemoryBudget(ram_bytes=500 * MB))


# The miner side ----------------------------------------------------------------------------


def test_a_variant_loaded_on_request_goes_where_memory_is_free() -> None:
    assert plan_load("m", 200, layers=10, ram_free=300) == LoadPlan(0, 200, 0)
    assert plan_load("m", 200, layers=10, ram_free=0, vram_free=500) == LoadPlan(10, 0, 200)
    # 300 of 1,000 bytes fit the GPU: 3 of 10 layers go there, the rest to RAM.
    assert plan_load("m", 1000, layers=10, ram_free=800, vram_free=300) == LoadPlan(3, 700, 300)
    why = plan_load("m", 201 * MB, layers=0, ram_free=100 * MB)
    assert isinstance(why, str) and "m needs ~192 MiB of RAM" in why and "--memory-limit" in why


async def test_a_miner_with_a_gpu_loads_onto_it_what_its_free_vram_holds() -> None:
    layers_asked: list[int] = []

    def build(gpu_layers: int) -> FakeEngine:
        layers_asked.append(gpu_layers)
        return FakeEngine(fake(B, 200))

    engine = MultiModelEngine([FakeEngine(fake(A, 100))])
    option = LoadOption(FakeEngine(fake(B, 200)).offers()[0], build, layers=30)
    placed = {A: LoadPlan(gpu_layers=30, ram_bytes=0, vram_bytes=100 * MB)}
    budget = MemoryBudget(ram_bytes=50 * MB, vram_bytes=300 * MB)
    models = ModelLoader(engine, [option], budget, placed=placed)
    assert [o.name for o in models.loadable()] == [B]  # 200 MB fit the 200 MB of VRAM left
    await models.load(B)
    assert layers_asked == [30] and models.used_vram_bytes() == 300 * MB


async def test_a_load_runs_off_the_event_loop_and_is_offered_only_when_ready() -> None:
    models = loader(load_s=0.3)
    assert [o.name for o in models.loadable()] == [B]  # A is served, HUGE does not fit
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    load = asyncio.create_task(models.load(B))
    await asyncio.sleep(0.1)
    assert models.loading == (B,)
    assert [o.name for o in models.engine.offers()] == [A]  # not offered while loading
    assert models.loadable() == ()  # B is on its way; nothing else fits beside it
    await load
    ticker.cancel()
    assert ticks >= 15  # the loop went on while the 0.3 s load ran in a thread
    assert [o.name for o in models.engine.offers()] == [A, B]
    assert models.engine.slots == 2 and models.used_bytes() == 300 * MB


async def test_loads_that_cannot_happen_say_why() -> None:
    models = loader()
    with pytest.raises(LoadRefused, match="no file for fake-c"):
        await models.load(ModelName("fake-c"))
    with pytest.raises(LoadRefused, match="fake-huge needs ~954 MiB of RAM"):
        await models.load(HUGE)
    with pytest.raises(LoadRefused, match="already loaded"):
        await models.load(A)
    with pytest.raises(LoadRefused, match="only model"):
        models.withdraw(A)
    with pytest.raises(LoadRefused, match="not loaded"):
        models.withdraw(B)


async def test_a_failing_load_is_reported_and_leaves_nothing_behind() -> None:
    models = loader()

    def broken(gpu_layers: int) -> FakeEngine:
        raise OSError("disk on fire")

    models._options[B] = dataclasses.replace(models._options[B], build=broken)
    with pytest.raises(LoadRefused, match="loading fake-b failed: OSError: disk on fire"):
        await models.load(B)
    assert models.loading == () and [o.name for o in models.loadable()] == [B]


async def test_an_unload_refuses_new_tasks_and_frees_the_model_after_its_running_task() -> None:
    models = loader()
    await models.load(B)
    chunks: list[str] = []

    async def run() -> None:  # 8 tokens at 40 tokens/s: 0.2 s
        async with aclosing(models.engine.generate(task(1))) as events:
            async for event in events:
                if not isinstance(event, TaskDone):
                    chunks.append(event.text)

    running = asyncio.create_task(run())
    await asyncio.sleep(0.05)
    models.withdraw(A)
    assert [o.name for o in models.engine.offers()] == [B] and models.engine.slots == 1
    with pytest.raises(Exception, match="serves fake-b, not fake-a"):
        async with aclosing(models.engine.generate(task(2))) as events:
            await anext(events)
    assert models.used_bytes() == 300 * MB  # A still holds its memory
    release = asyncio.create_task(models.release(A))
    await asyncio.sleep(0.05)
    assert not release.done()  # waits for the running task
    await running
    await release
    assert len(chunks) == 8  # the task ran to its end
    assert models.used_bytes() == 200 * MB
    assert [o.name for o in models.loadable()] == [A]  # back on the shelf


# The router side ---------------------------------------------------------------------------


def offer(name: str) -> ModelOffer:
    return ModelOffer(name=ModelName(name), context_length=512, memory_bytes=100 * MB)


@pytest.fixture
async def joined() -> AsyncIterator[tuple[MinerRegistry, MinerConnection, RecordedMiner]]:
    registry = MinerRegistry(time.monotonic, heartbeat_timeout_s=5)
    miner = RecordedMiner()
    info = Register(
        protocol_version=PROTOCOL_VERSION,
        miner_id=MinerId("id-m"),
        name="m",
        engine="fake",
        hardware=HardwareProfile(cpu_model="x", cpu_cores=2, ram_bytes=2**30),
        models=(offer(A),),
        slots=1,
        loadable=(offer(B),),
    )
    conn = await registry.add(info, miner.send, miner.close)
    yield registry, conn, miner


def changed(
    *models: str, loading: tuple[str, ...] = (), loadable: tuple[str, ...] = (), error: str = ""
) -> ModelsChanged:
    return ModelsChanged(
        models=tuple(offer(m) for m in models),
        loading=tuple(ModelName(n) for n in loading),
        loadable=tuple(offer(n) for n in loadable),
        error=error,
        slots=len(models),
    )


async def test_the_router_offers_a_loaded_variant_only_once_the_miner_is_ready(
    joined: tuple[MinerRegistry, MinerConnection, RecordedMiner],
) -> None:
    registry, conn, miner = joined
    assert list(registry.loadable_models()) == [B]
    load = asyncio.create_task(registry.request_load(conn.miner_id, B))
    await asyncio.sleep(0)
    assert miner.asked() == [LoadModel(name=B)]
    assert registry.loading_models() == {B: [conn]}  # asked, not acknowledged yet
    registry.on_message(conn, changed(A, loading=(B,)))
    await asyncio.sleep(0)
    assert not load.done() and registry.offers_for(B) == [] and conn.loading == (B,)
    registry.on_message(conn, changed(A, B))
    assert (await load).name == B
    assert registry.loading_models() == {}
    assert [c.info.name for c, _ in registry.offers_for(B)] == ["m"]
    assert conn.info.slots == 2 and conn.loading == ()
    events = [(e.kind, e.detail) for e in registry.events.recent()]
    assert (EventKind.MODEL_LOAD, f"loaded {B}; serving it now") in events
    # Asking again for what is served answers at once, without a second LoadModel.
    assert (await registry.request_load(conn.miner_id, B)).name == B
    assert len(miner.asked()) == 1


async def test_loads_the_router_cannot_ask_for_fail_with_a_reason(
    joined: tuple[MinerRegistry, MinerConnection, RecordedMiner],
) -> None:
    registry, conn, miner = joined
    with pytest.raises(ModelChangeError, match="no miner 'nobody'") as unknown:
        await registry.request_load(MinerId("nobody"), B)
    assert unknown.value.code == "miner_not_found"
    with pytest.raises(ModelChangeError, match="cannot load fake-c now") as not_loadable:
        await registry.request_load(conn.miner_id, ModelName("fake-c"))
    assert not_loadable.value.code == "model_not_loadable"
    with pytest.raises(ModelChangeError) as last:
        await registry.request_unload(conn.miner_id, A)
    assert last.value.code == "last_model"
    assert miner.asked() == []  # none of these reached the miner


async def test_an_error_from_the_miner_fails_the_load_and_a_lost_miner_fails_the_wait(
    joined: tuple[MinerRegistry, MinerConnection, RecordedMiner],
) -> None:
    registry, conn, _ = joined
    load = asyncio.create_task(registry.request_load(conn.miner_id, B))
    await asyncio.sleep(0)
    error = "fake-b needs ~191 MiB and only 10 MiB is free"  # memory went to something else
    registry.on_message(conn, changed(A, loadable=(B,), error=error))
    with pytest.raises(ModelChangeError, match="only 10 MiB") as refused:
        await load
    assert refused.value.code == "miner_refused"
    assert registry.events.recent()[0].kind is EventKind.MODEL_ERROR
    load = asyncio.create_task(registry.request_load(conn.miner_id, B))
    await asyncio.sleep(0)
    await registry.remove(conn, "the connection closed")
    with pytest.raises(ModelChangeError, match="was lost") as lost:
        await load
    assert lost.value.code == "miner_lost"


async def test_an_unload_stops_routing_at_once(
    joined: tuple[MinerRegistry, MinerConnection, RecordedMiner],
) -> None:
    registry, conn, miner = joined
    registry.on_message(conn, changed(A, B))
    unload = asyncio.create_task(registry.request_unload(conn.miner_id, A))
    await asyncio.sleep(0)
    assert registry.offers_for(A) == []  # before the miner has even answered
    assert miner.asked() == [UnloadModel(name=A)]
    registry.on_message(conn, changed(A, B))  # sent before it saw the unload: still held back
    assert registry.offers_for(A) == [] and not unload.done()
    registry.on_message(conn, changed(B))
    await unload
    assert [o.name for o in conn.info.models] == [B] and conn.unloading == set()
    assert registry.events.recent()[0].detail == f"unloaded {A}"


# Both ends as processes --------------------------------------------------------------------


def inferswarm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferswarm", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def fake_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    with network(tmp_path_factory.mktemp("loading")) as net:
        yield start_fake_network(net)


def start_fake_network(net: Network) -> Network:
    net.start_router()
    net.start_miner(
        "m",
        "--model-name",
        A,
        "--fake-speed",
        "20",
        "--fake-output-tokens",
        "30",
        "--fake-loadable",
        f"{B}=100MB",
        "--fake-loadable",
        f"{HUGE}=100GB",
        "--fake-load-s",
        "0.5",
    )
    net.wait_miners(1)
    return net


def admin(net: Network, miner_id: str, body: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{net.base_url}/v1/admin/miners/{miner_id}/models", json=body, timeout=30)


@pytest.fixture
def client(fake_network: Network) -> Iterator[openai.OpenAI]:
    base_url = fake_network.base_url + "/v1"
    with openai.OpenAI(base_url=base_url, api_key="none", max_retries=0) as api:
        yield api


def test_a_fake_miner_loads_and_unloads_through_the_admin_api(
    fake_network: Network, client: openai.OpenAI
) -> None:
    net = fake_network
    miner_id = str(net.miners()[0]["id"])
    listed = httpx.get(net.base_url + "/v1/models").json()
    assert [m["id"] for m in listed["loadable"]] == [B]  # fake-huge does not fit
    assert listed["loadable"][0]["loadable_on"] == 1
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model=B, prompt="hi", max_tokens=2)

    done = inferswarm("models", "load", "m", B, "--router", net.base_url)
    assert done.returncode == 0, done.stderr
    assert f"Loaded: {B}" in done.stdout
    assert {m.id for m in client.models.list().data} == {A, B}
    answer = client.completions.create(model=B, prompt="hi", max_tokens=2)
    assert answer.choices[0].text

    # Unload A while a task on it runs (30 tokens at 20 tokens/s): the task finishes.
    results: list[str] = []
    streaming = threading.Thread(
        target=lambda: results.append(
            client.completions.create(model=A, prompt="long", max_tokens=30).choices[0].text
        )
    )
    streaming.start()
    deadline = time.monotonic() + 10
    while not net.miners()[0]["busy"] and time.monotonic() < deadline:
        time.sleep(0.05)
    unloaded = admin(net, miner_id, {"unload": A})
    assert unloaded.status_code == 200, unloaded.text
    assert unloaded.json()["models"] == [B]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model=A, prompt="hi", max_tokens=2)
    streaming.join(timeout=20)
    assert len(results[0].split()) == 30
    deadline = time.monotonic() + 10  # freed after its task: loadable again
    while A not in net.miners()[0]["loadable"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert net.miners()[0]["loadable"] == [A]
    kinds = [e["kind"] for e in httpx.get(net.base_url + "/v1/network").json()["events"]]
    assert kinds.count("model_load") == 1 and kinds.count("model_unload") == 1


def test_admin_errors_are_openai_errors_that_say_what_to_do(fake_network: Network) -> None:
    net = fake_network
    miner_id = str(net.miners()[0]["id"])
    unknown = admin(net, "nobody", {"load": B})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "miner_not_found"
    too_big = admin(net, miner_id, {"load": HUGE})
    assert too_big.status_code == 409
    error = too_big.json()["error"]
    assert error["code"] == "model_not_loadable" and "It could load: fake-" in error["message"]
    both = admin(net, miner_id, {"load": B, "unload": A})
    assert both.status_code == 400 and "either" in both.json()["error"]["message"]
    done = inferswarm("models", "unload", "nobody", A, "--router", net.base_url)
    assert done.returncode == 1 and "no connected miner is 'nobody'" in done.stderr

from __future__ import annotations

from pathlib import Path

from inferswarm.miner.engines.fake import FakeEngine, FakeEngineConfig
from inferswarm.miner.probe import CapabilityCache, establish_capability
from inferswarm.protocol import Capability

MEASURED = Capability(
    prompt_tokens_per_s=500, generation_tokens_per_s=50, batched_generation_tokens_per_s=50
)


class CountingEngine(FakeEngine):
    """A fake whose benchmark counts its runs, keyed like a real engine."""

    runs = 0

    def benchmark_identity(self) -> dict[str, object] | None:
        return {"model_sha256": "abc", "device": "test", "slots": self.slots}

    async def benchmark(self) -> Capability | None:
        self.runs += 1
        return MEASURED


async def test_a_benchmark_runs_once_and_is_then_read_from_disk(tmp_path: Path) -> None:
    cache = CapabilityCache(tmp_path / "capability.json")
    engine = CountingEngine(FakeEngineConfig())
    assert await establish_capability(engine, cache, rebenchmark=False) == MEASURED
    assert (
        await establish_capability(engine, CapabilityCache(cache.path), rebenchmark=False)
        == MEASURED
    )
    assert engine.runs == 1
    await establish_capability(engine, cache, rebenchmark=True)
    assert engine.runs == 2


async def test_a_different_setup_is_benchmarked_anew(tmp_path: Path) -> None:
    cache = CapabilityCache(tmp_path / "capability.json")
    one, four = CountingEngine(FakeEngineConfig(slots=1)), CountingEngine(FakeEngineConfig(slots=4))
    await establish_capability(one, cache, rebenchmark=False)
    await establish_capability(four, cache, rebenchmark=False)
    assert (one.runs, four.runs) == (1, 1)


async def test_a_corrupt_cache_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "capability.json"
    path.write_text("{not json")
    engine = CountingEngine(FakeEngineConfig())
    assert await establish_capability(engine, CapabilityCache(path), rebenchmark=False) == MEASURED


async def test_the_fake_reports_its_configured_speed() -> None:
    engine = FakeEngine(FakeEngineConfig(tokens_per_s=20, slots=3))
    capability = await engine.benchmark()
    assert capability is not None
    assert capability.source == "configured"
    assert capability.batched_generation_tokens_per_s == 60

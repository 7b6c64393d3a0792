"""Fault injection (``--fault``) on a fake engine, and a miner's refusal of a
task pinned to a model file it does not have."""

from __future__ import annotations

import random

import pytest

from inferswarm.miner.agent import AgentSettings, MinerAgent
from inferswarm.miner.engines.fake import FakeEngine, FakeEngineConfig
from inferswarm.miner.faults import Fault, FaultKind, FaultyEngine
from inferswarm.miner.identity import MinerIdentity
from inferswarm.protocol import (
    HardwareProfile,
    ModelName,
    SamplingParams,
    TaskAssign,
    TaskChunk,
    TaskDone,
    TaskId,
)

TASK = TaskAssign(
    task_id=TaskId("t"), model=ModelName("fake-model"), prompt="hi", sampling=SamplingParams()
)


async def _text(engine: FakeEngine | FaultyEngine) -> tuple[str, TaskDone]:
    parts: list[str] = []
    async for event in engine.generate(TASK):
        if isinstance(event, TaskChunk):
            parts.append(event.text)
        else:
            return "".join(parts), event
    raise AssertionError("no TaskDone")


@pytest.mark.parametrize("kind", [FaultKind.CORRUPT, FaultKind.RANDOM, FaultKind.LAZY])
async def test_each_fault_changes_the_answer(kind: FaultKind) -> None:
    honest, _ = await _text(FakeEngine(FakeEngineConfig()))
    faulty = FaultyEngine(FakeEngine(FakeEngineConfig()), (Fault(kind),), random.Random(1))
    text, done = await _text(faulty)
    assert text and text != honest
    assert done.finish_reason in ("stop", "length")
    if kind is FaultKind.LAZY:
        assert honest.startswith(text) and len(text) < len(honest)


async def test_slow_keeps_the_answer_and_probability_zero_is_honest() -> None:
    honest, _ = await _text(FakeEngine(FakeEngineConfig(natural_length=2)))
    slow = FaultyEngine(
        FakeEngine(FakeEngineConfig(natural_length=2)), (Fault(FaultKind.SLOW),), random.Random(1)
    )
    assert (await _text(slow))[0] == honest
    never = FaultyEngine(
        FakeEngine(FakeEngineConfig()), (Fault(FaultKind.CORRUPT, 0.0),), random.Random(1)
    )
    assert (await _text(never))[0] == (await _text(FakeEngine(FakeEngineConfig())))[0]


async def test_fabricate_logprobs_keeps_the_text_and_invents_the_logprobs() -> None:
    asked = TASK.model_copy(update={"logprobs": True})
    honest = FakeEngine(FakeEngineConfig())
    fabricator = FaultyEngine(
        FakeEngine(FakeEngineConfig()), (Fault.parse("fabricate-logprobs"),), random.Random(1)
    )
    text, done = await _collect(honest, asked)
    faked_text, faked = await _collect(fabricator, asked)
    assert faked_text == text
    assert done.token_logprobs is not None and faked.token_logprobs is not None
    assert len(faked.token_logprobs) == len(done.token_logprobs)
    assert faked.token_logprobs != done.token_logprobs
    _, unasked = await _collect(fabricator, TASK)  # nothing claimed, nothing to fake
    assert unasked.token_logprobs is None


async def _collect(engine: FakeEngine | FaultyEngine, task: TaskAssign) -> tuple[str, TaskDone]:
    parts: list[str] = []
    async for event in engine.generate(task):
        if isinstance(event, TaskChunk):
            parts.append(event.text)
        else:
            return "".join(parts), event
    raise AssertionError("no TaskDone")


@pytest.mark.parametrize(
    ("spec", "message"),
    [("explode", "unknown fault"), ("corrupt:x", "not a number"), ("lazy:2", "between 0 and 1")],
)
def test_bad_fault_specs_are_explained(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Fault.parse(spec)


def test_a_task_pinned_to_another_model_file_is_refused() -> None:
    engine = FakeEngine(FakeEngineConfig())
    agent = MinerAgent(
        AgentSettings(router_url="http://x", identity=MinerIdentity.generate(), name="m"),
        engine,
        HardwareProfile(cpu_model="c", cpu_cores=1, ram_bytes=1),
    )
    assert (
        agent._refusal(TASK.model_copy(update={"model_hash": engine.offers()[0].file_hash})) is None
    )
    refusal = agent._refusal(TASK.model_copy(update={"model_hash": "0" * 64}))
    assert refusal is not None and refusal.code == "model_not_loaded" and refusal.retryable

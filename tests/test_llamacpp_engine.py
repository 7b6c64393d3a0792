"""Both llama.cpp engines in process: cancellation and limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from inferswarm.miner.engines.base import Engine, TaskRejected
from inferswarm.miner.engines.llamacpp import LlamaConfig, LlamaCppEngine
from inferswarm.miner.engines.llamacpp_batched import BatchedLlamaEngine
from inferswarm.miner.models import default_model_path
from inferswarm.protocol import ModelName, SamplingParams, TaskAssign, TaskChunk, TaskDone, TaskId

pytestmark = pytest.mark.llama


@pytest.fixture(params=[BatchedLlamaEngine, LlamaCppEngine])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[Engine]:
    built = await asyncio.to_thread(
        request.param, LlamaConfig(default_model_path(), context_length=512, slots=1, threads=1)
    )
    yield built
    await built.close()


def task(prompt: str, max_tokens: int | None, task_id: str = "t") -> TaskAssign:
    return TaskAssign(
        task_id=TaskId(task_id),
        model=ModelName("smollm2-135m-instruct:q4_1"),
        prompt=prompt,
        sampling=SamplingParams(max_tokens=max_tokens, temperature=0),
    )


async def test_closing_the_stream_frees_the_only_slot(engine: Engine) -> None:
    async with aclosing(
        engine.generate(task("The history of the Roman Empire begins", 400))
    ) as events:
        async for event in events:
            assert isinstance(event, TaskChunk)
            break

    # With one slot, a leaked context would make this wait forever.
    async def second() -> TaskDone:
        last = None
        async for event in engine.generate(task("Hi", 3, "t2")):
            last = event
        assert isinstance(last, TaskDone)
        return last

    done = await asyncio.wait_for(second(), 30)
    assert done.completion_tokens == 3


async def test_too_long_a_prompt_is_rejected_and_not_retryable(engine: Engine) -> None:
    with pytest.raises(TaskRejected) as rejected:
        async for _ in engine.generate(task("word " * 600, 10)):
            pass
    assert rejected.value.code == "context_length_exceeded"
    assert not rejected.value.retryable


async def test_unlimited_max_tokens_stops_at_the_context(engine: Engine) -> None:
    last = None
    async for event in engine.generate(task("a b c", None)):
        last = event
    assert isinstance(last, TaskDone)
    assert last.prompt_tokens + last.completion_tokens <= 512

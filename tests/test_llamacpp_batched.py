"""The batching llama.cpp engine on the shipped model: a task's answer does
not depend on what else runs beside it, and sequences leave cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import aclosing

import pytest

from inferswarm.miner.engines.llamacpp import LlamaConfig, LlamaCppEngine
from inferswarm.miner.engines.llamacpp_batched import BatchedLlamaEngine
from inferswarm.miner.models import default_model_path
from inferswarm.protocol import (
    ChatMessage,
    ModelName,
    Resume,
    SamplingParams,
    TaskAssign,
    TaskChunk,
    TaskDone,
    TaskId,
)

pytestmark = pytest.mark.llama
MODEL = ModelName("smollm2-135m-instruct:q4_1")
SLOTS = 8

PROMPTS = [
    "The history of the Roman Empire begins",
    "1, 2, 3, 4, 5,",
    "Once upon a time, in a small village,",
    "The capital of France is",
    "def fibonacci(n):",
    "In 1969, astronauts",
    "The best way to learn a new language is",
    # Longer than one prompt chunk: it is prefilled across several steps
    # while the others are already generating.
    "My favourite recipe for bread starts with flour, water, salt and yeast. " * 14,
]
LENGTHS = [40, 24, 48, 16, 40, 32, 24, 20]
"""Different lengths, so sequences leave the batch at different steps."""


@pytest.fixture(scope="module")
def engine() -> Iterator[BatchedLlamaEngine]:
    """One engine for the module (the engine is not bound to an event loop)."""
    built = BatchedLlamaEngine(
        LlamaConfig(default_model_path(), context_length=1024, slots=SLOTS, threads=1)
    )
    yield built
    asyncio.run(built.close())


def task(
    prompt: str, max_tokens: int | None, *, task_id: str = "t", **sampling: object
) -> TaskAssign:
    return TaskAssign(
        task_id=TaskId(task_id),
        model=MODEL,
        prompt=prompt,
        sampling=SamplingParams.model_validate(
            {"max_tokens": max_tokens, "temperature": 0, **sampling}
        ),
    )


async def answer(
    engine: BatchedLlamaEngine, assign: TaskAssign, delay: float = 0
) -> tuple[str, TaskDone]:
    await asyncio.sleep(delay)
    parts: list[str] = []
    async for event in engine.generate(assign):
        if isinstance(event, TaskChunk):
            parts.append(event.text)
        else:
            return "".join(parts), event
    raise AssertionError("the stream ended without TaskDone")


@pytest.fixture(scope="module")
def alone(engine: BatchedLlamaEngine) -> list[str]:
    """Each prompt generated with nothing else running."""

    async def one_by_one() -> list[str]:
        pairs = zip(PROMPTS, LENGTHS, strict=True)
        return [(await answer(engine, task(p, n)))[0] for p, n in pairs]

    return asyncio.run(one_by_one())


async def test_one_sequence_repeats_itself_exactly(
    engine: BatchedLlamaEngine, alone: list[str]
) -> None:
    again, done = await answer(engine, task(PROMPTS[0], LENGTHS[0]))
    assert again == alone[0]
    assert done.completion_tokens == LENGTHS[0]


async def test_three_mixed_length_sequences_match_their_solo_runs(
    engine: BatchedLlamaEngine, alone: list[str]
) -> None:
    chosen = [0, 2, 7]  # short, medium and a multi-chunk prompt, at once
    together = await asyncio.gather(*(answer(engine, task(PROMPTS[i], LENGTHS[i])) for i in chosen))
    assert [text for text, _ in together] == [alone[i] for i in chosen]


async def test_eight_staggered_sequences_match_their_solo_runs(
    engine: BatchedLlamaEngine, alone: list[str]
) -> None:
    """Tasks join while others are mid-prompt or mid-generation."""
    together = await asyncio.gather(
        *(
            answer(engine, task(p, n, task_id=f"s{i}"), delay=0.15 * i)
            for i, (p, n) in enumerate(zip(PROMPTS, LENGTHS, strict=True))
        )
    )
    assert [text for text, _ in together] == alone
    assert [done.completion_tokens for _, done in together] == LENGTHS


async def test_more_tasks_than_slots_queue_and_all_complete(
    engine: BatchedLlamaEngine, alone: list[str]
) -> None:
    many = [(PROMPTS[i % 4], 6) for i in range(SLOTS + 4)]
    results = await asyncio.gather(*(answer(engine, task(p, n)) for p, n in many))
    assert all(done.completion_tokens == 6 for _, done in results)
    assert results[0][0] == results[4][0]


async def test_seeded_sampling_is_the_same_alone_and_batched(engine: BatchedLlamaEngine) -> None:
    seeded = task(PROMPTS[2], 24, temperature=0.9, top_p=0.95, seed=7)
    solo, _ = await answer(engine, seeded)
    batched = await asyncio.gather(
        answer(engine, seeded), answer(engine, task(PROMPTS[1], 24, temperature=0.9, seed=8))
    )
    assert batched[0][0] == solo


async def test_a_shared_prefix_is_reused_with_the_same_answer(engine: BatchedLlamaEngine) -> None:
    system = "You answer questions about geography carefully and briefly. " * 16
    question = system + "Q: What is the capital of Italy? A:"
    cold, _ = await answer(engine, task(question, 12))
    await answer(engine, task(system + "Q: What is the largest ocean? A:", 4))
    held = engine.held_prefix_blocks()
    assert len(held) >= 2  # the system prompt is over 2 blocks of 64 tokens
    # Busy sequences are donors too: the same question twice at once.
    warm = await asyncio.gather(
        answer(engine, task(question, 12)), answer(engine, task(question, 12))
    )
    assert [text for text, _ in warm] == [cold, cold]


async def test_cancelling_frees_the_sequence_for_new_tasks(engine: BatchedLlamaEngine) -> None:
    streams = [engine.generate(task(PROMPTS[0], 500, task_id=f"c{i}")) for i in range(SLOTS)]
    for stream in streams:
        async with aclosing(stream) as events:
            async for event in events:
                assert isinstance(event, TaskChunk)
                break
    # A leaked sequence would leave this task waiting for a slot forever.
    results = await asyncio.wait_for(
        asyncio.gather(*(answer(engine, task("Hi", 3)) for _ in range(SLOTS))), 120
    )
    assert all(done.completion_tokens == 3 for _, done in results)


async def test_stop_sequences_end_generation_without_the_stop(engine: BatchedLlamaEngine) -> None:
    text, done = await answer(engine, task("1, 2, 3, 4, 5,", 20, stop=[","]))
    assert done.finish_reason == "stop"
    assert text.strip() == "6"


async def test_max_tokens_is_exact_and_reported(engine: BatchedLlamaEngine) -> None:
    text, done = await answer(engine, task("Once upon a time, in a small village,", 7))
    assert done.finish_reason == "length"
    assert done.completion_tokens == 7
    assert text.strip()


async def test_a_resumed_task_continues_where_the_text_stopped(
    engine: BatchedLlamaEngine, alone: list[str]
) -> None:
    whole = alone[0]
    head = whole[: len(whole) // 2]
    head = head[: head.rfind(" ")]  # cut between words: the tokens re-tokenize alike
    resumed = task(PROMPTS[0], 10).model_copy(update={"resume": Resume(text=head, tokens=0)})
    rest, done = await answer(engine, resumed)
    assert whole.startswith(head + rest)
    _, plain = await answer(engine, task(PROMPTS[0], 1))
    assert done.prompt_tokens == plain.prompt_tokens  # counted as on the first miner


async def test_chat_messages_use_the_models_template(engine: BatchedLlamaEngine) -> None:
    chat = TaskAssign(
        task_id=TaskId("chat"),
        model=MODEL,
        messages=(ChatMessage(role="user", content="What color is the sky on a clear day?"),),
        sampling=SamplingParams(max_tokens=30, temperature=0),
    )
    text, done = await answer(engine, chat)
    assert "blue" in text.lower()
    assert done.prompt_tokens > 10


async def test_answers_match_the_sequential_engine_token_for_token(alone: list[str]) -> None:
    """So a task migrated between miners of either engine goes on unchanged."""
    config = LlamaConfig(default_model_path(), context_length=1024, slots=1, threads=1)
    sequential = await asyncio.to_thread(LlamaCppEngine, config)
    try:
        for index in (0, 2, 7):
            text = ""
            async for event in sequential.generate(task(PROMPTS[index], LENGTHS[index])):
                if isinstance(event, TaskChunk):
                    text += event.text
            assert text == alone[index]
    finally:
        await sequential.close()

"""The teacher-forced check on the shipped model: honest greedy and sampled
answers (with their claimed log-probabilities) pass; the same answers passed
through the miner's real ``--fault`` code fail, each for its reason."""

from __future__ import annotations

import random
from collections.abc import AsyncGenerator

import pytest

from inferswarm.miner.engines.llamacpp import LlamaConfig
from inferswarm.miner.engines.llamacpp_batched import BatchedLlamaEngine
from inferswarm.miner.faults import Fault, FaultKind, FaultyEngine
from inferswarm.miner.models import default_model_path
from inferswarm.protocol import (
    ChatMessage,
    ModelName,
    SamplingParams,
    TaskAssign,
    TaskChunk,
    TaskDone,
    TaskId,
    VerifyAssign,
)
from inferswarm.router.verify.teacher import Claim, TeacherPolicy, TeacherVerdict, judge

pytestmark = pytest.mark.llama
MODEL = ModelName("smollm2-135m-instruct:q4_1")
PROMPTS = ("What is photosynthesis?", "Give one tip for learning a new language.")
FAILS_BECAUSE = {
    FaultKind.CORRUPT: "outside the model's top 40",
    FaultKind.RANDOM: "outside the model's top 40",
    FaultKind.LAZY: "it claims",
    FaultKind.FABRICATE_LOGPROBS: "claimed log-probabilities are wrong",
}


class Replay:
    """Replays one recorded answer, so a fault applies to real model output."""

    name = "replay"
    slots = 1

    def __init__(self, events: list[TaskChunk | TaskDone]) -> None:
        self._events = events

    async def generate(self, task: TaskAssign) -> AsyncGenerator[TaskChunk | TaskDone, None]:
        for event in self._events:
            yield event


async def run(engine: object, task: TaskAssign) -> list[TaskChunk | TaskDone]:
    return [event async for event in engine.generate(task)]  # type: ignore[attr-defined]


async def check(
    engine: BatchedLlamaEngine, task: TaskAssign, events: list[TaskChunk | TaskDone]
) -> TeacherVerdict:
    text = "".join(e.text for e in events if isinstance(e, TaskChunk))
    done = events[-1]
    assert isinstance(done, TaskDone)
    scores = await engine.score(
        VerifyAssign(verify_id=TaskId("v"), model=MODEL, messages=task.messages, output=text)
    )
    claim = Claim(
        finish_reason=done.finish_reason,
        completion_tokens=done.completion_tokens,
        token_logprobs=done.token_logprobs,
        temperature=task.sampling.temperature,
    )
    return judge(scores, claim, TeacherPolicy())


async def test_honest_answers_pass_and_every_fault_fails_on_the_real_model() -> None:
    engine = BatchedLlamaEngine(
        LlamaConfig(model_path=default_model_path(), context_length=512, slots=1, threads=1)
    )
    honest: dict[str, TeacherVerdict] = {}
    faulty: dict[str, TeacherVerdict] = {}
    try:
        for index, prompt in enumerate(PROMPTS):
            for temperature in (0.0, 0.9):
                task = TaskAssign(
                    task_id=TaskId(f"t{index}-{temperature}"),
                    model=MODEL,
                    messages=(ChatMessage(role="user", content=prompt),),
                    sampling=SamplingParams(max_tokens=40, temperature=temperature, seed=index),
                    logprobs=True,
                )
                events = await run(engine, task)
                honest[task.task_id] = await check(engine, task, events)
                if temperature:
                    continue
                for kind in FAILS_BECAUSE:
                    cheat = FaultyEngine(Replay(events), (Fault(kind),), random.Random(index))  # type: ignore[arg-type]
                    faulty[f"{kind}-{index}"] = await check(engine, task, await run(cheat, task))
    finally:
        await engine.close()
    assert all(v.passed for v in honest.values()), honest
    for name, verdict in faulty.items():
        assert not verdict.passed, (name, verdict)
        kind = FaultKind(name.rsplit("-", 1)[0])
        assert FAILS_BECAUSE[kind] in verdict.reason, (name, verdict)

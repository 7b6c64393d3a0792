"""Outcome rates and cost of the teacher-forced check, measured on real
llama.cpp runs of the shipped SmolLM2-135M Q4_1 (for bench/verification.py).

- honest: each prompt answered greedily and sampled at temperature 0.7 and 1.0
  (two seeds each), with per-token log-probabilities claimed; every answer is
  scored by teacher forcing and judged by the router's real ``teacher.judge``:
  a failure is a false positive;
- faulty: the honest answers replayed through the miner's real ``--fault`` code
  (corrupt, random, lazy, fabricate-logprobs), scored and judged the same way;
- cost: wall time of scoring (one prefill) against generating the same answers.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from inferswarm.miner.engines.llamacpp import LlamaConfig, LlamaCppEngine
from inferswarm.miner.faults import Fault, FaultKind, FaultyEngine
from inferswarm.miner.models import default_model_path
from inferswarm.protocol import (
    ChatMessage,
    SamplingParams,
    TaskAssign,
    TaskChunk,
    TaskDone,
    TaskId,
    VerifyAssign,
    VerifyResult,
)
from inferswarm.router.verify.teacher import Claim, TeacherPolicy, TeacherVerdict, judge
from verification_rates import PROMPTS as CONSENSUS_PROMPTS

PROMPTS = (
    *CONSENSUS_PROMPTS,  # the consensus measurement's, then twelve more
    "Explain what a verb is.",
    "Write a haiku about rain.",
    "What is the capital of Italy?",
    "How does a bicycle work?",
    "List three colors of the rainbow.",
    "Why do leaves change color in autumn?",
    "What is two plus two?",
    "Tell me a fun fact about octopuses.",
    "What should I pack for a beach trip?",
    "How do I boil an egg?",
    "What is gravity?",
    "Recommend a good habit for mornings.",
)
MAX_TOKENS = 64
SAMPLED = ((0.7, 1), (0.7, 2), (1.0, 1), (1.0, 2))
FAULTS = (FaultKind.CORRUPT, FaultKind.RANDOM, FaultKind.LAZY, FaultKind.FABRICATE_LOGPROBS)


@dataclass(frozen=True)
class Answer:
    task: TaskAssign
    chunks: tuple[TaskChunk, ...]
    done: TaskDone
    seconds: float
    cpu_seconds: float

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.chunks)


class Replay:
    """An engine that replays recorded answers, so faults apply to real output."""

    def __init__(self, answers: dict[TaskId, Answer], name: str) -> None:
        self._answers = answers
        self.name = name
        self.slots = 1
        self.capability = None

    async def generate(self, task: TaskAssign) -> AsyncGenerator[TaskChunk | TaskDone, None]:
        answer = self._answers[task.task_id]
        for chunk in answer.chunks:
            yield chunk
        yield answer.done


def _task(
    engine: LlamaCppEngine, index: int, prompt: str, temperature: float, seed: int
) -> TaskAssign:
    return TaskAssign(
        task_id=TaskId(f"t-{index}-{temperature}-{seed}"),
        model=engine.offers()[0].name,
        messages=(ChatMessage(role="user", content=prompt),),
        sampling=SamplingParams(max_tokens=MAX_TOKENS, temperature=temperature, seed=seed),
        logprobs=True,
    )


async def _run(engine: Any, task: TaskAssign) -> Answer:
    started, cpu = time.perf_counter(), time.process_time()
    chunks: list[TaskChunk] = []
    async for event in engine.generate(task):
        if isinstance(event, TaskChunk):
            chunks.append(event)
        else:
            wall = time.perf_counter() - started
            return Answer(task, tuple(chunks), event, wall, time.process_time() - cpu)
    raise AssertionError("no TaskDone")


async def _score(
    engine: LlamaCppEngine, answer: Answer
) -> tuple[VerifyResult, tuple[float, float]]:
    """The scores, and the (wall, CPU) seconds they took."""
    started, cpu = time.perf_counter(), time.process_time()
    result = await engine.score(
        VerifyAssign(
            verify_id=TaskId(f"v-{answer.task.task_id}"),
            model=answer.task.model,
            messages=answer.task.messages,
            output=answer.text,
        )
    )
    return result, (time.perf_counter() - started, time.process_time() - cpu)


def _judged(result: VerifyResult, answer: Answer, policy: TeacherPolicy) -> TeacherVerdict:
    claim = Claim(
        finish_reason=answer.done.finish_reason,
        completion_tokens=answer.done.completion_tokens,
        token_logprobs=answer.done.token_logprobs,
        temperature=answer.task.sampling.temperature,
    )
    return judge(result, claim, policy)


async def measure(
    prompts: tuple[str, ...] = PROMPTS, policy: TeacherPolicy | None = None
) -> dict[str, Any]:
    """The teacher check's detection and false-positive rates, and its cost ratio."""
    policy = policy or TeacherPolicy()
    # One thread: on a shared 2-core machine two llama.cpp threads spin-wait on
    # each other and run 5-10x slower; the scorer then gets one thread too.
    config = LlamaConfig(model_path=default_model_path(), context_length=1024, threads=1)
    engine = LlamaCppEngine(config)
    try:
        await _run(engine, _task(engine, -1, "warm up", 0.0, 0))
        await _score(engine, await _run(engine, _task(engine, -2, "warm up", 0.0, 0)))
        honest: dict[str, list[Answer]] = {"greedy": [], "sampled": []}
        for index, prompt in enumerate(prompts):
            honest["greedy"].append(await _run(engine, _task(engine, index, prompt, 0.0, 0)))
            for temperature, seed in SAMPLED:
                task = _task(engine, index, prompt, temperature, seed)
                honest["sampled"].append(await _run(engine, task))
        rates: dict[str, Any] = {"prompts": len(prompts), "max_tokens": MAX_TOKENS}
        generate_s = score_s = generate_cpu = score_cpu = 0.0
        details: dict[str, list[dict[str, Any]]] = {}
        for kind, answers in honest.items():
            verdicts = []
            for answer in answers:
                result, (seconds, cpu) = await _score(engine, answer)
                generate_s += answer.seconds
                generate_cpu += answer.cpu_seconds
                score_s += seconds
                score_cpu += cpu
                verdict = _judged(result, answer, policy)
                verdicts.append(verdict)
                details.setdefault(kind, []).append(_stats(result, answer, verdict))
            rates[f"honest_{kind}_fail"] = sum(not v.passed for v in verdicts) / len(verdicts)
            rates[f"honest_{kind}_answers"] = len(verdicts)
        # The scorer runs on half the threads (background work), so its wall
        # time overstates its cost; CPU seconds compare the work itself.
        every_honest = sum(rates[f"honest_{k}_fail"] * len(v) for k, v in honest.items())
        rates["teacher_honest_fail"] = every_honest / sum(len(v) for v in honest.values())
        rates["score_over_generate_wall"] = round(score_s / generate_s, 4)
        rates["score_over_generate_cpu"] = round(score_cpu / generate_cpu, 4)
        every = honest["greedy"] + honest["sampled"]
        recorded = {a.task.task_id: a for a in every}
        detects: dict[str, float] = {}
        for fault in FAULTS:
            faulty = FaultyEngine(Replay(recorded, "replay"), (Fault(fault),), random.Random(5))  # type: ignore[arg-type]
            caught = 0
            for answer in every:
                cheat = await _run(faulty, answer.task)
                result, _ = await _score(engine, cheat)
                verdict = _judged(result, cheat, policy)
                caught += not verdict.passed
                details.setdefault(fault.value, []).append(_stats(result, cheat, verdict))
            detects[fault.value] = round(caught / len(every), 4)
        rates["teacher_detects"] = detects
        rates["spread"] = {k: _spread(v) for k, v in details.items()}
        return rates
    finally:
        await engine.close()


def _stats(result: VerifyResult, answer: Answer, verdict: TeacherVerdict) -> dict[str, Any]:
    claimed = answer.done.token_logprobs or ()
    diffs = [abs(a - t.logprob) for a, t in zip(claimed, result.tokens, strict=False)]
    return {
        "outside": verdict.outside_share,
        "gap": verdict.mean_gap,
        "eos_rank": result.eos_rank,
        "finish": answer.done.finish_reason,
        "tokens": len(result.tokens),
        "claimed": answer.done.completion_tokens,
        "max_logprob_diff": max(diffs, default=0.0),
        "reason": verdict.reason,
    }


def _spread(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Worst and typical values, to see the margin each threshold leaves."""
    ended = [s["eos_rank"] for s in stats if s["finish"] == "stop"]
    return {
        "outside_max": round(max(s["outside"] for s in stats), 3),
        "outside_min": round(min(s["outside"] for s in stats), 3),
        "gap_max": round(max(s["gap"] for s in stats), 3),
        "gap_min": round(min(s["gap"] for s in stats), 3),
        "gap_median": round(statistics.median(s["gap"] for s in stats), 3),
        "eos_rank_when_stopped_max": max(ended, default=None),
        "length_share_min": round(min(s["tokens"] / max(s["claimed"], 1) for s in stats), 3),
        "logprob_diff_max": round(max(s["max_logprob_diff"] for s in stats), 3),
        "reasons": sorted({s["reason"].split(" ")[0] + "…" for s in stats}),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(asyncio.run(measure()), indent=2))

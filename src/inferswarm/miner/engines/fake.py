"""A fake engine for tests, benchmarks and simulation — never a default.

It streams deterministic words at a configured speed after a configured
latency, and can be told to fail a share of tasks.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from inferswarm.miner.engines.base import Engine, TaskRejected
from inferswarm.miner.loading import LoadOption
from inferswarm.protocol import (
    Capability,
    ModelName,
    ModelOffer,
    SamplingParams,
    TaskAssign,
    TaskChunk,
    TaskDone,
    TokenScore,
    VerifyAssign,
    VerifyResult,
)

FAKE_MODEL = "fake-model"
HUNG_S = 3600.0
UNLIMITED_TOKENS_PER_S = 1e6
"""Reported for a fake configured with no delay."""
FAKE_LIKELY = TokenScore(rank=0, logprob=-0.1, top_logprob=-0.1)
FAKE_UNLIKELY = TokenScore(rank=500, logprob=-9.0, top_logprob=-0.1)
"""How the fake's teacher-forced check scores a word it would (not) have produced."""


@dataclass
class FakeEngineConfig:
    model: str = FAKE_MODEL
    tokens_per_s: float = 0.0  # per sequence; 0 = as fast as possible
    prompt_tokens_per_s: float = 0.0  # 0 = prompts cost nothing
    stall_after: int | None = None
    """Stop producing after this many tokens while staying connected: a hung engine."""
    claimed_tokens_per_s: float | None = None
    """Report this generation speed instead of the true one: a lying miner."""
    latency_s: float = 0.0
    failure_rate: float = 0.0
    natural_length: int = 24
    context_length: int = 8192
    slots: int = 4
    seed: int | None = None
    echo_tag: str | None = None
    """Start each answer with ``[tag:last prompt word:seed]``, so a test can see
    which miner ran which task."""
    memory_bytes: int = 0
    """The memory the fake model claims to take (for placement and loading)."""


class FakeEngine:
    name = "fake"

    def __init__(self, config: FakeEngineConfig) -> None:
        self.config = config
        self.slots = config.slots
        self._random = random.Random(config.seed)
        self.capability: Capability | None = None

    def offers(self) -> tuple[ModelOffer, ...]:
        return (
            ModelOffer(
                name=ModelName(self.config.model),
                context_length=self.config.context_length,
                # Fakes of one model name stand for the same file.
                file_hash=hashlib.sha256(f"fake:{self.config.model}".encode()).hexdigest(),
                quantization="fake",
                capability=self.capability,
                memory_bytes=self.config.memory_bytes,
            ),
        )

    def claimed_tokens_per_s(self) -> float | None:
        return self.config.tokens_per_s or None

    async def generate(self, task: TaskAssign) -> AsyncGenerator[TaskChunk | TaskDone, None]:
        prompt_tokens = _count_words(task)
        limit = task.sampling.max_tokens or (self.config.context_length - prompt_tokens)
        if prompt_tokens + limit > self.config.context_length:
            raise TaskRejected(
                "context_length_exceeded",
                f"the prompt ({prompt_tokens} tokens) plus max_tokens ({limit}) exceeds the "
                f"context window of {self.config.context_length} tokens",
                retryable=False,
            )
        if self._random.random() < self.config.failure_rate:
            raise TaskRejected("engine_error", "the fake engine failed on purpose", retryable=True)
        delay_first = self.config.latency_s
        if self.config.prompt_tokens_per_s:
            delay_first += prompt_tokens / self.config.prompt_tokens_per_s
        if delay_first:
            await asyncio.sleep(delay_first)
        start = task.resume.tokens if task.resume else 0  # a migrated task goes on from there
        produced = max(0, min(limit, self.config.natural_length - start))
        delay = 1 / self.config.tokens_per_s if self.config.tokens_per_s else 0.0
        loop = asyncio.get_running_loop()
        due = loop.time()
        for index in range(start, start + produced):
            if delay:
                # Paced against a schedule, so overheads do not accumulate and the
                # fake delivers exactly its configured speed.
                due += delay
                await asyncio.sleep(max(0.0, due - loop.time()))
            if index == self.config.stall_after:
                await asyncio.sleep(HUNG_S)
            yield TaskChunk(task_id=task.task_id, text=self._word(task, index), tokens=1)
        finish = "length" if produced == limit else "stop"
        yield TaskDone(
            task_id=task.task_id,
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=produced,
            token_logprobs=(FAKE_LIKELY.logprob,) * produced if task.logprobs else None,
        )

    async def score(self, request: VerifyAssign) -> VerifyResult:
        """Teacher forcing, faked: one word is one token; a word this fake would
        have produced at its position is likely, any other is not, and the end
        is likely only after ``natural_length`` words."""
        task = TaskAssign(
            task_id=request.verify_id,
            model=request.model,
            prompt=request.prompt,
            messages=request.messages,
            sampling=SamplingParams(),
        )
        words = request.output.split()
        expected = [self._word(task, i).strip() for i in range(len(words))]
        scores = tuple(
            FAKE_LIKELY if word == want else FAKE_UNLIKELY
            for word, want in zip(words, expected, strict=True)
        )
        end = FAKE_LIKELY if len(words) >= self.config.natural_length else FAKE_UNLIKELY
        return VerifyResult(
            verify_id=request.verify_id, tokens=scores, eos_rank=end.rank, eos_logprob=end.logprob
        )

    def _word(self, task: TaskAssign, index: int) -> str:
        if index == 0 and self.config.echo_tag is not None:
            last_word = _prompt_text(task).split()[-1:] or [""]
            return f" [{self.config.echo_tag}:{last_word[0]}:{task.sampling.seed}]"
        return f" w{index}"

    def benchmark_identity(self) -> dict[str, object] | None:
        return None

    async def benchmark(self) -> Capability | None:
        """The fake is as fast as it is configured to be."""
        generation = (
            self.config.claimed_tokens_per_s or self.config.tokens_per_s or UNLIMITED_TOKENS_PER_S
        )
        return Capability(
            prompt_tokens_per_s=self.config.prompt_tokens_per_s or UNLIMITED_TOKENS_PER_S,
            generation_tokens_per_s=generation,
            batched_sequences=self.slots,
            batched_generation_tokens_per_s=generation * self.slots,
            source="configured",
        )

    async def close(self) -> None:
        return None


def _prompt_text(task: TaskAssign) -> str:
    if task.prompt is not None:
        return task.prompt
    return " ".join(m.content for m in task.messages or ())


def _count_words(task: TaskAssign) -> int:
    if task.prompt is not None:
        return max(1, len(task.prompt.split()))
    return sum(len(m.content.split()) + 4 for m in task.messages or ())


def fake_load_option(config: FakeEngineConfig, load_s: float = 0.0) -> LoadOption:
    """A fake model the router may ask a miner to load; loading takes ``load_s``."""

    def build(gpu_layers: int) -> Engine:
        time.sleep(load_s)  # in the loader's worker thread, as a real load blocks
        return FakeEngine(config)

    return LoadOption(FakeEngine(config).offers()[0], build)

"""llama.cpp with continuous batching, in process.

One context holds a KV cache shared by ``slots`` sequence ids. A single
decode thread runs the loop: between two ``llama_decode`` calls new tasks join
(taking an idle sequence, reusing its or another sequence's cached prefix),
finished and cancelled ones leave, and every sequence samples its next token
with its own sampler chain. What to decode is decided by the pure planner in
``batching``; this module only does the llama.cpp calls and the hand-off of
tokens to the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import psutil

from inferswarm import __version__
from inferswarm.miner.engines.base import TaskRejected
from inferswarm.miner.engines.batching import (
    Placement,
    SequenceTable,
    Slice,
    Stream,
    advance,
    plan_step,
)
from inferswarm.miner.engines.llamacpp import (
    TOP_K,
    End,
    Event,
    LlamaConfig,
    LlamaFileEngine,
    Piece,
    chat_formatter,
    check_model,
    relay,
)
from inferswarm.miner.engines.teacher import TeacherScorer, logits_at, token_logprob
from inferswarm.miner.engines.text import StopSequenceFilter
from inferswarm.miner.hardware import probe_hardware
from inferswarm.protocol import (
    Capability,
    FinishReason,
    ModelName,
    SamplingParams,
    TaskAssign,
    TaskChunk,
    TaskDone,
    TaskId,
)
from inferswarm.protocol.prefix import prefix_blocks, prompt_text

PROMPT_CHUNK = 128
"""Prompt tokens one decode step takes on top of the generating sequences: a
long prompt costs running streams one such step's delay at a time."""
MAX_AUTO_SLOTS = 8
"""Beyond this many sequences a CPU gains little aggregate speed (the issue's
measurement: 8 sequences ~1.85x one on 2 cores) while each one slows down."""
KV_MEMORY_SHARE = 0.25
"""Share of available memory the KV cache may take when slots are chosen."""
PENALTY_LAST_N = 64
"""Tokens the frequency and presence penalties look back over (as ``Llama``)."""


@dataclass(eq=False)
class _Job:
    """One task inside the decode thread."""

    prompt: list[int]
    reported_prompt_tokens: int
    sampling: SamplingParams
    limit: int
    emit: Callable[[Event], None]
    text_blocks: tuple[int, ...] = ()
    cancelled: bool = False
    stream: Stream | None = None
    sampler: Any = None
    stops: StopSequenceFilter = field(init=False)
    produced: int = 0
    unsent: int = 0
    logprobs: list[float] | None = None
    """Each generated token's log-probability, when the task asked for them."""

    def __post_init__(self) -> None:
        self.stops = StopSequenceFilter(self.sampling.stop)


def auto_slots(kv_bytes_per_token: int, context_length: int, available_bytes: int) -> int:
    """As many sequences as fit in ``KV_MEMORY_SHARE`` of memory, 1 to ``MAX_AUTO_SLOTS``."""
    per_sequence = max(kv_bytes_per_token * context_length, 1)
    return max(1, min(MAX_AUTO_SLOTS, int(available_bytes * KV_MEMORY_SHARE) // per_sequence))


def _kv_bytes_per_token(model: Any) -> int:
    """F16 keys and values over every layer."""
    import llama_cpp

    layers = llama_cpp.llama_model_n_layer(model.model)
    heads = llama_cpp.llama_model_n_head(model.model)
    kv_heads = llama_cpp.llama_model_n_head_kv(model.model)
    head_dim = model.n_embd() // max(heads, 1)
    return int(2 * layers * kv_heads * head_dim * 2)


class BatchedLlamaEngine(LlamaFileEngine):
    """Serves ``slots`` tasks at once from one llama.cpp context (``config.slots``
    0: as many as memory allows, at most ``MAX_AUTO_SLOTS``)."""

    name = "llamacpp-batched"

    def __init__(
        self, config: LlamaConfig, prompt_chunk: int = PROMPT_CHUNK, *, reuse_prefixes: bool = True
    ) -> None:
        import llama_cpp
        from llama_cpp import _internals

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = config.gpu_layers
        self._model: Any = _internals.LlamaModel(
            path_model=str(config.model_path), params=model_params, verbose=False
        )
        if config.slots < 1:
            available = psutil.virtual_memory().available
            slots = auto_slots(_kv_bytes_per_token(self._model), config.context_length, available)
            config = dataclasses.replace(config, slots=slots)
        self.config = config
        self.slots = config.slots
        self.capability = None
        self._threads = config.threads or os.cpu_count() or 1
        self._budget = prompt_chunk + config.slots
        params = llama_cpp.llama_context_default_params()
        # One KV stream per sequence, not one unified cache: attention then
        # reduces over the same cells in the same order whether a sequence runs
        # alone or in a batch, so batching never changes a greedy answer (with
        # a unified cache, interleaved cells changed rounding and some answers).
        params.kv_unified = False
        # As llama_cpp.Llama does: with flash attention off too, greedy answers
        # match the sequential engine's token for token (measured on the shipped
        # model), so a task migrated between the two engines goes on unchanged.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.n_seq_max = config.slots
        params.n_ctx = config.context_length * config.slots
        params.n_batch = params.n_ubatch = self._budget
        params.n_threads = params.n_threads_batch = self._threads
        params.no_perf = True
        self._ctx: Any = _internals.LlamaContext(model=self._model, params=params, verbose=False)
        self._batch: Any = _internals.LlamaBatch(n_tokens=self._budget, embd=0, n_seq_max=1)
        self._chat = chat_formatter(self._model)
        self._identify(config)
        self._scorer = TeacherScorer(
            self._model, self._tokenize, config.context_length, self._threads
        )
        self._table = SequenceTable(config.slots, reuse_prefixes=reuse_prefixes)
        self._inbox: list[_Job] = []
        self._waiting: deque[_Job] = deque()
        self._running: list[_Job] = []
        self._wakeup = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="llama-decode", daemon=True)
        self._thread.start()

    def cached_prefix_blocks(self) -> frozenset[int]:
        """The router's prefix blocks of the prompts whose KV this engine holds
        now, for heartbeats: cache-aware routing then works from the real cache."""
        with self._wakeup:
            return self._table.held_text_blocks()

    def held_prefix_blocks(self) -> frozenset[int]:
        """Hashes of the 64-token prompt blocks whose KV this engine holds."""
        with self._wakeup:
            return self._table.prefix_blocks()

    def benchmark_identity(self) -> dict[str, object] | None:
        import llama_cpp

        return {
            "model_sha256": self._hash,
            "engine": f"llama-cpp-python {llama_cpp.__version__} batched",
            "inferswarm": __version__,
            "device": probe_hardware().summary(),
            "threads": self._threads,
            "slots": self.slots,
            "context": self.config.context_length,
            "batch": self._budget,
        }

    async def benchmark(self) -> Capability | None:
        return await measure_capability(self, self._model_name, self.slots)

    async def generate(self, task: TaskAssign) -> AsyncGenerator[TaskChunk | TaskDone, None]:
        check_model(task.model, self._model_name)
        prompt = self._tokenize(task)
        if not prompt:  # a model without BOS and an empty prompt: nothing to decode from
            raise TaskRejected(
                "invalid_request", "the prompt is empty; send some text", retryable=False
            )
        resumed = (
            len(self._model.tokenize(task.resume.text.encode(), add_bos=False, special=False))
            if task.resume
            else 0
        )
        events: asyncio.Queue[Event] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def emit(item: Event) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody listens
                loop.call_soon_threadsafe(events.put_nowait, item)

        job = _Job(
            prompt=prompt,
            reported_prompt_tokens=len(prompt) - resumed,
            sampling=task.sampling,
            limit=task.sampling.max_tokens or (self.config.context_length - len(prompt)),
            emit=emit,
            text_blocks=prefix_blocks(prompt_text(task.prompt, task.messages)),
            logprobs=[] if task.logprobs else None,
        )
        with self._wakeup:
            if self._closing:
                raise TaskRejected("engine_error", "the engine is shutting down", retryable=True)
            self._inbox.append(job)
            self._wakeup.notify()
        try:
            async with aclosing(relay(events, task.task_id)) as stream:
                async for event in stream:
                    yield event
        finally:
            with self._wakeup:
                job.cancelled = True  # a finished job has left already: no effect
                self._wakeup.notify()

    async def close(self) -> None:
        with self._wakeup:
            self._closing = True
            self._wakeup.notify()
        await asyncio.to_thread(self._thread.join)
        self._scorer.close()
        self._batch.close()
        self._ctx.close()
        self._model.close()

    # -- the decode thread ---------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wakeup:
                while not (self._inbox or self._waiting or self._running or self._closing):
                    self._wakeup.wait()
                if self._closing:
                    break
                self._waiting.extend(self._inbox)
                self._inbox.clear()
                self._drop_cancelled()
                self._admit()
            plan = plan_step([j.stream for j in self._running if j.stream], self._budget)
            if not plan:
                continue
            try:
                self._step(plan)
            except Exception as exc:  # never leave streams waiting on a dead thread
                self._fail_all(repr(exc))
        for job in [*self._running, *self._waiting, *self._inbox]:
            job.emit(TaskRejected("engine_error", "the engine shut down", retryable=True))
            self._free(job, keep_cache=False)

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._running if j.cancelled]:
            self._free(job, keep_cache=False)
        self._waiting = deque(j for j in self._waiting if not j.cancelled)

    def _admit(self) -> None:
        while self._waiting:
            placement = self._table.place(self._waiting[0].prompt)
            if placement is None:
                return
            job = self._waiting.popleft()
            self._apply(placement, job.text_blocks)
            job.stream = Stream(placement.seq_id, job.prompt[placement.reuse :], placement.reuse)
            job.sampler = self._sampler_for(job.sampling)
            self._running.append(job)

    def _apply(self, placement: Placement, text_blocks: tuple[int, ...]) -> None:
        import llama_cpp

        memory = self._ctx.memory
        if placement.copy_from is None:
            llama_cpp.llama_memory_seq_rm(memory, placement.seq_id, placement.reuse, -1)
        else:
            # Between streams llama.cpp copies whole streams only: copy, then trim.
            llama_cpp.llama_memory_seq_rm(memory, placement.seq_id, -1, -1)
            llama_cpp.llama_memory_seq_cp(memory, placement.copy_from, placement.seq_id, -1, -1)
            llama_cpp.llama_memory_seq_rm(memory, placement.seq_id, placement.reuse, -1)
        self._table.start(placement, text_blocks)

    def _free(self, job: _Job, *, keep_cache: bool) -> None:
        import llama_cpp

        if job in self._running:
            self._running.remove(job)
        if job.stream is not None:
            if not keep_cache:
                llama_cpp.llama_memory_seq_rm(self._ctx.memory, job.stream.seq_id, -1, -1)
            self._table.release(job.stream.seq_id, keep_cache=keep_cache)
            job.stream = None
        if job.sampler is not None:
            job.sampler.close()
            job.sampler = None

    def _sampler_for(self, sampling: SamplingParams) -> Any:
        from llama_cpp import _internals

        sampler: Any = _internals.LlamaSampler()  # type: ignore[no-untyped-call]
        if sampling.frequency_penalty or sampling.presence_penalty:
            sampler.add_penalties(
                self._model.n_vocab(),
                PENALTY_LAST_N,
                1.0,
                sampling.frequency_penalty,
                sampling.presence_penalty,
            )
        if sampling.temperature == 0:
            sampler.add_greedy()
            return sampler
        sampler.add_top_k(TOP_K)
        sampler.add_top_p(sampling.top_p, 1)
        sampler.add_temp(sampling.temperature)
        seed = sampling.seed if sampling.seed is not None else random.getrandbits(31)
        sampler.add_dist(seed & 0xFFFFFFFF)
        return sampler

    def _step(self, plan: list[Slice]) -> None:
        import llama_cpp

        batch = self._batch.batch
        index = 0
        outputs: list[tuple[int, int]] = []  # (batch index, seq id) to sample
        for part in plan:
            for offset, token in enumerate(part.tokens):
                batch.token[index] = token
                batch.pos[index] = part.position + offset
                batch.n_seq_id[index] = 1
                batch.seq_id[index][0] = part.stream.seq_id
                batch.logits[index] = False
                index += 1
            if part.wants_logits:
                batch.logits[index - 1] = True
                outputs.append((index - 1, part.stream.seq_id))
        batch.n_tokens = index
        status = llama_cpp.llama_decode(self._ctx.ctx, batch)
        if status != 0:
            self._fail_all(f"llama_decode returned {status}")
            return
        for part in plan:
            self._table.extend(part.stream.seq_id, part.tokens)
        advance(plan)
        by_seq = {j.stream.seq_id: j for j in self._running if j.stream}
        for at, seq_id in outputs:
            job = by_seq[seq_id]
            token = llama_cpp.llama_sampler_sample(job.sampler.sampler, self._ctx.ctx, at)
            if job.logprobs is not None:
                logits = logits_at(self._ctx.ctx, at, self._model.n_vocab())
                job.logprobs.append(token_logprob(logits, token))
            self._accept(job, token)

    def _accept(self, job: _Job, token: int) -> None:
        import llama_cpp

        assert job.stream is not None
        if llama_cpp.llama_vocab_is_eog(self._model.vocab, token):
            self._finish(job, "stop")
            return
        job.produced += 1
        job.unsent += 1
        text = job.stops.feed_bytes(self._model.detokenize([token], special=False))
        if text:
            job.emit(Piece(text, job.unsent))
            job.unsent = 0
        if job.stops.stopped:
            self._finish(job, "stop")
        elif job.produced >= job.limit:
            self._finish(job, "length")
        else:
            job.stream.pending.append(token)
            job.stream.decoding = True

    def _finish(self, job: _Job, reason: FinishReason) -> None:
        rest = job.stops.flush()
        if rest:
            job.emit(Piece(rest, job.unsent))
        logprobs = None if job.logprobs is None else tuple(job.logprobs[: job.produced])
        job.emit(End(reason, job.reported_prompt_tokens, job.produced, logprobs))
        self._free(job, keep_cache=True)

    def _fail_all(self, why: str) -> None:
        import llama_cpp

        for job in list(self._running):
            job.emit(TaskRejected("engine_error", f"llama.cpp failed: {why}", retryable=True))
            self._free(job, keep_cache=False)
        llama_cpp.llama_memory_clear(self._ctx.memory, True)


BENCH_PROMPT = "The quick brown fox jumps over the lazy dog while the band plays on. " * 12
BENCH_GENERATED_TOKENS = 32


async def measure_capability(engine: Any, model: ModelName, sequences: int) -> Capability:
    """Prompt speed, one sequence's generation speed and the aggregate over
    ``sequences`` at once, measured through ``engine.generate`` itself.

    Generation speeds count only tokens after each sequence's first one, so
    prompt processing does not dilute them.
    """

    def task(index: int, prompt: str, max_tokens: int) -> TaskAssign:
        return TaskAssign(
            task_id=TaskId(f"benchmark-{index}"),
            model=model,
            # Distinct prompts: a shared one would be a prefix-cache hit.
            prompt=f"{index}. {prompt}",
            sampling=SamplingParams(max_tokens=max_tokens, temperature=0),
        )

    async def run(assign: TaskAssign) -> tuple[float, float, int, int]:
        """(seconds to the first token, seconds after it, prompt tokens, tokens after the first)."""
        started = time.perf_counter()
        first = started
        count = 0
        prompt_tokens = 0
        async for event in engine.generate(assign):
            if isinstance(event, TaskChunk):
                if count == 0:
                    first = time.perf_counter()
                count += event.tokens
            else:
                prompt_tokens = event.prompt_tokens
        return first - started, time.perf_counter() - first, prompt_tokens, max(count - 1, 0)

    def speed(after: float, tokens: int) -> float:
        return tokens / after if after > 0 else 0.0

    short = "Write about the sea."
    await run(task(-1, short, 2))  # warm-up: the first decode allocates compute buffers
    ttft, _, prompt_tokens, _ = await run(task(-2, BENCH_PROMPT, 1))
    _, after, _, count = await run(task(-3, short, BENCH_GENERATED_TOKENS + 1))
    alone = speed(after, count)
    batched = alone
    if sequences > 1:
        runs = (run(task(i, short, BENCH_GENERATED_TOKENS // 2 + 1)) for i in range(sequences))
        batched = sum(speed(r[1], r[3]) for r in await asyncio.gather(*runs))
    return Capability(
        prompt_tokens_per_s=round(prompt_tokens / ttft, 1),
        generation_tokens_per_s=round(max(alone, 0.1), 1),
        batched_sequences=sequences,
        batched_generation_tokens_per_s=round(max(batched, 0.1), 1),
    )

"""llama.cpp through ``llama-cpp-python``, in process.

Each slot is its own ``Llama`` context over the same memory-mapped weights.
Generation runs in a worker thread and hands tokens to the event loop through
a queue, so heartbeats and other tasks never stall behind a decode.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferswarm import __version__
from inferswarm.miner.catalog import CatalogEntry
from inferswarm.miner.engines.base import TaskRejected
from inferswarm.miner.engines.teacher import TeacherScorer, logits_at, token_logprob
from inferswarm.miner.engines.text import StopSequenceFilter
from inferswarm.miner.hardware import probe_hardware
from inferswarm.miner.models import file_sha256, model_name_for, quantization_of
from inferswarm.protocol import (
    Capability,
    FinishReason,
    ModelName,
    ModelOffer,
    TaskAssign,
    TaskChunk,
    TaskDone,
    TaskId,
    VerifyAssign,
    VerifyResult,
)

TOP_K = 40
"""llama.cpp's default; OpenAI's API has no top_k, and sampling a small model
over its whole vocabulary at temperature 1 gives noise."""


@dataclass(frozen=True)
class LlamaConfig:
    model_path: Path
    context_length: int = 2048
    slots: int = 1
    threads: int | None = None
    batch_size: int = 256
    model_name: str | None = None
    gpu_layers: int = 0
    entry: CatalogEntry | None = None
    """What the catalog knows of the file; without it, name and hash come from the file."""


@dataclass
class Piece:
    """Text a decode thread produced, on its way to the event loop."""

    text: str
    tokens: int


@dataclass
class End:
    """A decode thread finished a task."""

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    logprobs: tuple[float, ...] | None = None
    """Each generated token's log-probability, when the task asked for them."""


Event = Piece | End | BaseException


async def relay(
    events: asyncio.Queue[Event], task_id: TaskId
) -> AsyncGenerator[TaskChunk | TaskDone, None]:
    """A decode thread's events as the task's chunks and its ``TaskDone``;
    an exception the thread sent is raised here."""
    while True:
        item = await events.get()
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, Piece):
            yield TaskChunk(task_id=task_id, text=item.text, tokens=item.tokens)
            continue
        yield TaskDone(
            task_id=task_id,
            finish_reason=item.finish_reason,
            prompt_tokens=item.prompt_tokens,
            completion_tokens=item.completion_tokens,
            token_logprobs=item.logprobs,
        )
        return


class LlamaFileEngine:
    """What both llama.cpp engines do alike with their one GGUF file: name it,
    offer it, tokenize tasks for it, and score other miners' outputs on it."""

    config: LlamaConfig
    capability: Capability | None
    _model: Any
    _chat: Any
    _model_name: ModelName
    _hash: str
    _scorer: TeacherScorer

    def _identify(self, config: LlamaConfig) -> None:
        entry = config.entry
        default_name = entry.name if entry else model_name_for(config.model_path)
        self._model_name = ModelName(config.model_name or default_name)
        self._hash = entry.file_sha256 if entry else file_sha256(config.model_path)

    def offers(self) -> tuple[ModelOffer, ...]:
        return (
            model_offer(
                self.config, self._model_name, self._hash, self._chat is not None, self.capability
            ),
        )

    def claimed_tokens_per_s(self) -> float | None:
        return self.capability.generation_tokens_per_s if self.capability else None

    async def score(self, request: VerifyAssign) -> VerifyResult:
        """The teacher-forced check of another miner's output (``teacher``)."""
        check_model(request.model, self._model_name)
        return await self._scorer.score(request)

    def _tokenize(self, task: TaskAssign) -> list[int]:
        return tokenize_task(
            self._model.tokenize, self._chat, task, self._model_name, self.config.context_length
        )


class LlamaCppEngine(LlamaFileEngine):
    name = "llamacpp"

    def __init__(self, config: LlamaConfig) -> None:
        from llama_cpp import Llama  # imported here: it loads the native library

        self.config = config
        self.slots = config.slots
        threads = config.threads or max(1, (os.cpu_count() or 1) // config.slots)
        self._contexts: asyncio.Queue[Any] = asyncio.Queue()
        first = None
        for _ in range(config.slots):
            llm = Llama(
                model_path=str(config.model_path),
                n_ctx=config.context_length,
                n_threads=threads,
                n_batch=config.batch_size,
                n_gpu_layers=config.gpu_layers,
                verbose=False,
            )
            first = first or llm
            self._contexts.put_nowait(llm)
        assert first is not None
        self._chat = chat_formatter(first._model)
        self._threads = threads
        self.capability = None
        self._identify(config)
        self._model = first._model  # the weights every context shares
        self._scorer = TeacherScorer(self._model, self._tokenize, config.context_length, threads)

    def benchmark_identity(self) -> dict[str, object] | None:
        import llama_cpp

        return {
            "model_sha256": self._hash,
            "engine": f"llama-cpp-python {llama_cpp.__version__}",
            "inferswarm": __version__,
            "device": probe_hardware().summary(),
            "threads": self._threads,
            "slots": self.slots,
            "context": self.config.context_length,
            "batch": self.config.batch_size,
        }

    async def benchmark(self) -> Capability | None:
        contexts = [await self._contexts.get() for _ in range(self.slots)]
        try:
            return await asyncio.to_thread(_benchmark_blocking, contexts)
        finally:
            for llm in contexts:
                self._contexts.put_nowait(llm)

    async def generate(self, task: TaskAssign) -> AsyncGenerator[TaskChunk | TaskDone, None]:
        check_model(task.model, self._model_name)
        llm = await self._contexts.get()
        try:
            prompt_tokens = tokenize_task(
                llm.tokenize, self._chat, task, self._model_name, self.config.context_length
            )
        except BaseException:
            self._contexts.put_nowait(llm)
            raise
        cancelled = threading.Event()
        events: asyncio.Queue[Piece | End | BaseException] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def emit(item: Piece | End | BaseException) -> None:
            loop.call_soon_threadsafe(events.put_nowait, item)

        worker = loop.run_in_executor(
            None, _generate_blocking, llm, task, prompt_tokens, cancelled, emit
        )
        try:
            async with aclosing(relay(events, task.task_id)) as stream:
                async for event in stream:
                    yield event
            await worker
        finally:
            # On cancel the thread may still be decoding: the context goes back
            # to the pool only once it has stopped.
            cancelled.set()
            worker.add_done_callback(lambda _: self._contexts.put_nowait(llm))

    async def close(self) -> None:
        self._scorer.close()
        while not self._contexts.empty():
            self._contexts.get_nowait().close()


def check_model(wanted: ModelName, served: ModelName) -> None:
    """``TaskRejected`` unless this engine serves ``wanted``."""
    if wanted != served:
        raise TaskRejected(
            "model_not_loaded", f"this miner serves {served}, not {wanted}", retryable=True
        )


BENCH_PROMPT_TOKENS = 128
BENCH_GENERATED_TOKENS = 32


def catalog_fields(config: LlamaConfig) -> dict[str, Any]:
    """The offer's catalog fields (family, size, memory estimate), when known."""
    entry = config.entry
    if entry is None:
        return {}
    return {
        "family": entry.family,
        "architecture": entry.architecture,
        "parameters": entry.parameters,
        "file_bytes": entry.file_bytes,
        "memory_bytes": entry.memory_bytes(config.context_length, config.slots),
    }


def _benchmark_blocking(contexts: list[Any]) -> Capability:
    first = contexts[0]
    text = "The quick brown fox jumps over the lazy dog while the band plays on. " * 30
    tokens = first.tokenize(text.encode(), add_bos=True)[:BENCH_PROMPT_TOKENS]
    first.reset()
    first.eval(tokens[:8])  # warm-up: the first decode allocates compute buffers
    first.reset()
    started = time.perf_counter()
    first.eval(tokens)
    prompt_speed = len(tokens) / (time.perf_counter() - started)
    alone = _generation_speed(first, tokens[:16])
    batched = alone
    if len(contexts) > 1:
        with ThreadPoolExecutor(len(contexts)) as pool:
            started = time.perf_counter()
            list(pool.map(lambda llm: _generation_speed(llm, tokens[:16]), contexts))
            batched = len(contexts) * BENCH_GENERATED_TOKENS / (time.perf_counter() - started)
    for llm in contexts:
        llm.reset()
    return Capability(
        prompt_tokens_per_s=round(prompt_speed, 1),
        generation_tokens_per_s=round(alone, 1),
        batched_sequences=len(contexts),
        batched_generation_tokens_per_s=round(batched, 1),
    )


def _generation_speed(llm: Any, prompt: list[int]) -> float:
    """Tokens per second after the first token (the first one pays for the prompt)."""
    llm.reset()
    started = 0.0
    for count, _ in enumerate(llm.generate(prompt, temp=0.0, top_k=1), start=1):
        if count == 1:
            started = time.perf_counter()
        if count == BENCH_GENERATED_TOKENS + 1:
            break
    return BENCH_GENERATED_TOKENS / (time.perf_counter() - started)


def chat_formatter(model: Any) -> Any:
    """The model's own chat template (from its GGUF metadata), or None."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = model.metadata().get("tokenizer.chat_template")
    if not template:
        return None
    eos = model.token_get_text(model.token_eos()) if model.token_eos() != -1 else ""
    bos = model.token_get_text(model.token_bos()) if model.token_bos() != -1 else ""
    return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)


def tokenize_task(
    tokenize: Callable[..., list[int]],
    chat: Any,
    task: TaskAssign,
    model_name: str,
    context_length: int,
) -> list[int]:
    """The task's prompt as tokens (chat template applied, resumed text appended);
    ``TaskRejected`` when it cannot run in ``context_length`` tokens."""
    if task.messages is not None:
        if chat is None:
            raise TaskRejected(
                "invalid_request",
                f"{model_name} has no chat template; use /v1/completions",
                retryable=False,
            )
        messages = [{"role": m.role, "content": m.content} for m in task.messages]
        try:
            prompt = chat(messages=messages).prompt
        except Exception as exc:  # templates may reject role orders
            raise TaskRejected(
                "invalid_request",
                f"the model's chat template rejected the messages: {exc}",
                retryable=False,
            ) from exc
        tokens: list[int] = tokenize(prompt.encode(), add_bos=False, special=True)
    else:
        tokens = tokenize((task.prompt or "").encode(), add_bos=True, special=False)
    if task.resume is not None:
        # A migrated task: what another miner already produced becomes part of
        # the prompt, and generation goes on from the end of it.
        tokens += tokenize(task.resume.text.encode(), add_bos=False, special=False)
    wanted = task.sampling.max_tokens or 1
    if len(tokens) + wanted > context_length:
        raise TaskRejected(
            "context_length_exceeded",
            f"This model's context window is {context_length} tokens, but the prompt has {len(tokens)} tokens "
            f"and max_tokens asks for {wanted} more. Shorten the prompt or lower max_tokens.",
            retryable=False,
        )
    return tokens


def _generate_blocking(
    llm: Any,
    task: TaskAssign,
    prompt_tokens: list[int],
    cancelled: threading.Event,
    emit: Callable[[Piece | End | BaseException], None],
) -> None:
    """Runs in a worker thread: sample tokens until a stop, the limit, or cancel."""
    try:
        emit(_decode_loop(llm, task, prompt_tokens, cancelled, emit))
    except Exception as exc:
        emit(TaskRejected("engine_error", f"llama.cpp failed: {exc}", retryable=True))


def _decode_loop(
    llm: Any,
    task: TaskAssign,
    prompt_tokens: list[int],
    cancelled: threading.Event,
    emit: Callable[[Piece | End | BaseException], None],
) -> End:
    import llama_cpp

    sampling = task.sampling
    limit = sampling.max_tokens or (llm.n_ctx() - len(prompt_tokens))
    llm.set_seed(sampling.seed if sampling.seed is not None else random.getrandbits(31))
    stops = StopSequenceFilter(sampling.stop)
    produced = 0
    unsent = 0  # tokens whose text is held back (partial UTF-8 or a possible stop)
    logprobs: list[float] | None = [] if task.logprobs else None
    finish: FinishReason = "length"
    tokens: Iterator[int] = llm.generate(
        prompt_tokens,
        temp=sampling.temperature,
        top_p=sampling.top_p,
        top_k=TOP_K,
        min_p=0.0,
        frequency_penalty=sampling.frequency_penalty,
        presence_penalty=sampling.presence_penalty,
    )
    for token in tokens:
        if cancelled.is_set():
            break
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            finish = "stop"
            break
        produced += 1
        unsent += 1
        if logprobs is not None:  # the logits it was sampled from are still the last row
            logprobs.append(token_logprob(logits_at(llm._ctx.ctx, -1, llm.n_vocab()), token))
        text = stops.feed_bytes(llm.detokenize([token], special=False))
        if text:
            emit(Piece(text, unsent))
            unsent = 0
        if stops.stopped:
            finish = "stop"
            break
        if produced >= limit:
            break
    rest = stops.flush()
    if rest:
        emit(Piece(rest, unsent))
    resumed = task.resume.text if task.resume else ""
    original = len(prompt_tokens) - (
        len(llm.tokenize(resumed.encode(), add_bos=False)) if resumed else 0
    )
    return End(finish, original, produced, tuple(logprobs) if logprobs is not None else None)


def catalog_offer(config: LlamaConfig) -> ModelOffer:
    """What an engine for ``config`` will offer, from its catalog entry alone
    (for a variant not loaded yet)."""
    entry = config.entry
    assert entry is not None, "an offer before loading needs the file's catalog entry"
    name = ModelName(config.model_name or entry.name)
    return model_offer(config, name, entry.file_sha256, entry.has_chat_template, None)


def model_offer(
    config: LlamaConfig,
    name: ModelName,
    file_hash: str,
    has_chat_template: bool,
    capability: Capability | None,
) -> ModelOffer:
    """What a llama.cpp engine offers the router, from its file and catalog entry."""
    return ModelOffer(
        name=name,
        context_length=config.context_length,
        file_hash=file_hash,
        quantization=config.entry.variant if config.entry else quantization_of(config.model_path),
        has_chat_template=has_chat_template,
        capability=capability,
        **catalog_fields(config),
    )

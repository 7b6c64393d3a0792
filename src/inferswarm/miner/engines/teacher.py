"""Teacher forcing: score a claimed output under the model with one prefill.

A validator holding the same model file evaluates prompt + claimed output in
one pass with logits at every output position, and reports for each claimed
token its rank in the model's distribution, its log-probability and the top
choice's, then how likely the end-of-sequence token was after the last one.
That costs one prefill (batched matrix products) instead of one decode step
per token, which is why it is the cheap check (bench/verification.py measures
the ratio). The router's pure verdict (``router.verify.teacher``) decides.

The scorer has its own small llama.cpp context over the engine's loaded
weights (memory-mapped, not loaded twice), made on first use, so checks never
disturb the KV cache of running tasks; it runs on half the engine's threads,
one check at a time: verification is background work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from inferswarm.miner.engines.base import TaskRejected
from inferswarm.protocol import (
    SamplingParams,
    TaskAssign,
    TokenScore,
    VerifyAssign,
    VerifyResult,
)

PromptTokenizer = Callable[[TaskAssign], list[int]]
"""The engine's own prompt tokenization (chat template and all), so a check
scores exactly the tokens a task would have been given."""

SCORE_BATCH = 256
"""Tokens per decode of a check: bounds the logits buffer (tokens x vocabulary floats)."""


@runtime_checkable
class ScoresOutputs(Protocol):
    """An engine that can run the teacher-forced check."""

    async def score(self, request: VerifyAssign) -> VerifyResult:
        """Score ``request.output`` under the model; ``TaskRejected`` when it cannot."""
        ...


def log_softmax_stats(logits: np.ndarray[Any, Any], token: int) -> tuple[int, float, float]:
    """(rank, log-probability, top log-probability) of ``token`` under ``logits``."""
    top = float(logits.max())
    lse = top + float(np.log(np.exp(logits - top, dtype=np.float64).sum()))
    value = float(logits[token])
    return int((logits > value).sum()), value - lse, top - lse


def token_logprob(logits: np.ndarray[Any, Any], token: int) -> float:
    """``token``'s log-probability under ``logits`` (what a miner claims per token)."""
    return log_softmax_stats(logits, token)[1]


def logits_at(ctx: Any, index: int, n_vocab: int) -> np.ndarray[Any, Any]:
    """The logits row of batch output ``index`` (-1: the last), without a copy."""
    import llama_cpp

    pointer = llama_cpp.llama_get_logits_ith(ctx, index)
    return np.ctypeslib.as_array(pointer, shape=(n_vocab,))


class TeacherScorer:
    """Teacher-forced scoring over an engine's model (``_internals.LlamaModel``)."""

    def __init__(
        self, model: Any, tokenize_prompt: PromptTokenizer, context_length: int, threads: int
    ) -> None:
        self.model = model
        self._tokenize_prompt = tokenize_prompt
        self._context_length = context_length
        self._threads = max(1, threads // 2)
        self._lock = asyncio.Lock()
        self._ctx: Any = None
        self._batch: Any = None

    async def score(self, request: VerifyAssign) -> VerifyResult:
        output = self.model.tokenize(request.output.encode(), add_bos=False, special=False)
        task = TaskAssign(
            task_id=request.verify_id,
            model=request.model,
            prompt=request.prompt,
            messages=request.messages,
            sampling=SamplingParams(max_tokens=max(1, len(output))),
        )
        prompt = self._tokenize_prompt(task)
        if not prompt:
            raise TaskRejected("invalid_request", "nothing to score: empty prompt", retryable=False)
        async with self._lock:
            scores, eos = await asyncio.to_thread(self._score_blocking, prompt, output)
        return VerifyResult(
            verify_id=request.verify_id, tokens=tuple(scores), eos_rank=eos[0], eos_logprob=eos[1]
        )

    def close(self) -> None:
        if self._ctx is not None:
            self._batch.close()
            self._ctx.close()
            self._ctx = None

    def _context(self) -> Any:
        if self._ctx is None:
            import llama_cpp
            from llama_cpp import _internals

            params = llama_cpp.llama_context_default_params()
            params.n_ctx = self._context_length
            params.n_batch = params.n_ubatch = SCORE_BATCH
            params.n_threads = params.n_threads_batch = self._threads
            params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            params.no_perf = True
            self._ctx = _internals.LlamaContext(model=self.model, params=params, verbose=False)
            self._batch = _internals.LlamaBatch(n_tokens=SCORE_BATCH, embd=0, n_seq_max=1)
        return self._ctx

    def _score_blocking(
        self, prompt: list[int], output: list[int]
    ) -> tuple[list[TokenScore], tuple[int, float]]:
        import llama_cpp

        ctx = self._context()
        llama_cpp.llama_memory_clear(ctx.memory, True)
        n_vocab = self.model.n_vocab()
        ends = _end_tokens(self.model)
        tokens = [*prompt, *output]
        first = len(prompt) - 1  # the logits at position i predict token i + 1
        scores: list[TokenScore] = []
        eos = (0, 0.0)
        for start in range(0, len(tokens), SCORE_BATCH):
            part = tokens[start : start + SCORE_BATCH]
            _fill(self._batch.batch, part, start, wants=lambda p: p >= first)
            status = llama_cpp.llama_decode(ctx.ctx, self._batch.batch)
            if status != 0:
                raise TaskRejected(
                    "engine_error", f"llama_decode returned {status}", retryable=True
                )
            for index in range(len(part)):
                position = start + index
                if position < first:
                    continue
                logits = logits_at(ctx.ctx, index, n_vocab)
                if position + 1 < len(tokens):
                    rank, logprob, top = log_softmax_stats(logits, tokens[position + 1])
                    scores.append(TokenScore(rank=rank, logprob=logprob, top_logprob=top))
                else:
                    eos = _end_stats(logits, ends)
        return scores, eos


def _fill(batch: Any, tokens: Sequence[int], start: int, wants: Callable[[int], bool]) -> None:
    for index, token in enumerate(tokens):
        batch.token[index] = token
        batch.pos[index] = start + index
        batch.n_seq_id[index] = 1
        batch.seq_id[index][0] = 0
        batch.logits[index] = wants(start + index)
    batch.n_tokens = len(tokens)


def _end_tokens(model: Any) -> list[int]:
    """The model's end-of-generation tokens (EOS, and EOT where it has one)."""
    import llama_cpp

    vocab = model.vocab
    found = (llama_cpp.llama_vocab_eos(vocab), llama_cpp.llama_vocab_eot(vocab))
    return sorted({t for t in found if t >= 0})


def _end_stats(logits: np.ndarray[Any, Any], ends: list[int]) -> tuple[int, float]:
    """Rank and log-probability of the likeliest end-of-generation token."""
    if not ends:
        return 0, 0.0
    best = max(ends, key=lambda t: float(logits[t]))
    rank, logprob, _ = log_softmax_stats(logits, best)
    return rank, logprob

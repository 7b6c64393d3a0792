"""Making and judging variants: llama.cpp's quantiser and a perplexity run.

``quantize`` calls llama.cpp's own ``llama_model_quantize`` through
llama-cpp-python. ``measure_quality`` scores a variant on a fixed real text
(Python's own documentation, shipped with CPython as ``pydoc_data.topics``):
perplexity from llama.cpp's logits, and prompt and generation speed.
"""

from __future__ import annotations

import ctypes
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QUANT_TYPES = ("q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_1", "q4_0", "q3_k_m", "q2_k")
"""Types ``inferswarm quantize`` offers, most precise first."""


class QuantizeError(Exception):
    """llama.cpp could not quantise the file; the message says what to check."""


def quantize(source: Path, output: Path, kind: str, threads: int = 0) -> None:
    """Write ``source`` quantised to ``kind`` at ``output``. A source that is
    already quantised is re-quantised (its lost precision does not come back)."""
    import llama_cpp

    # llama.cpp logs every tensor through llama-cpp-python's logger; keep errors only.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}", None)
    if ftype is None:
        raise QuantizeError(f"unknown type {kind!r}; choose one of: {', '.join(QUANT_TYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.allow_requantize = True
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    status = llama_cpp.llama_model_quantize(
        str(source).encode(), str(partial).encode(), ctypes.byref(params)
    )
    if status != 0:
        partial.unlink(missing_ok=True)
        raise QuantizeError(
            f"llama.cpp failed to quantise {source} to {kind} (status {status}); "
            "check that the source is a GGUF model and the disk has room"
        )
    partial.replace(output)


def quality_text() -> str:
    """A fixed real English text: CPython's reference on compound statements."""
    from pydoc_data.topics import topics

    return "\n".join(topics[key] for key in ("if", "while", "for", "try", "with", "function"))


@dataclass(frozen=True)
class Quality:
    tokens: int
    perplexity: float
    prompt_tokens_per_s: float
    generation_tokens_per_s: float


def measure_quality(
    path: Path, tokens: int = 512, window: int = 256, threads: int | None = None
) -> Quality:
    """Perplexity over the first ``tokens`` tokens of ``quality_text()`` in
    windows of ``window`` tokens, and this machine's speed on them."""
    import numpy as np
    from llama_cpp import Llama

    llm: Any = Llama(
        model_path=str(path),
        n_ctx=window,
        n_batch=window,
        n_threads=threads,
        logits_all=True,
        verbose=False,
    )
    try:
        return _score(np, llm, tokens, window)
    finally:
        llm.close()


def _score(np: Any, llm: Any, tokens: int, window: int) -> Quality:
    ids = llm.tokenize(quality_text().encode(), add_bos=False)[:tokens]
    nll, scored, eval_s = 0.0, 0, 0.0
    for start in range(0, len(ids) - 1, window - 1):
        chunk = [llm.token_bos(), *ids[start : start + window - 1]]
        llm.reset()
        began = time.perf_counter()
        llm.eval(chunk)
        eval_s += time.perf_counter() - began
        logits = np.asarray(llm.scores[: len(chunk) - 1], dtype=np.float64)
        nll += _negative_log_likelihood(np, logits, chunk[1:])
        scored += len(chunk) - 1
    return Quality(
        tokens=scored,
        perplexity=float(np.exp(nll / scored)),
        prompt_tokens_per_s=scored / eval_s,
        generation_tokens_per_s=_generation_speed(llm, min(32, window - 2)),
    )


def _negative_log_likelihood(np: Any, logits: Any, targets: list[int]) -> float:
    peak = logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits - peak).sum(axis=1)) + peak[:, 0]
    picked = logits[np.arange(len(targets)), targets]
    return float((log_norm - picked).sum())


def _generation_speed(llm: Any, tokens: int) -> float:
    llm.reset()
    began = time.perf_counter()
    produced = 0
    for _ in llm.generate([llm.token_bos()], temp=0.0):
        produced += 1
        if produced >= tokens:
            break
    return produced / (time.perf_counter() - began)

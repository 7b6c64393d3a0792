"""Outcome rates for bench/verification.py, measured on real llama.cpp runs of
the shipped SmolLM2-135M Q4_1: how often each strategy tells a faulty output
from the honest one, and how often two honest outputs are told apart.

- honest: greedy (temperature 0) answers, run twice: exact must find them equal;
- faulty: the same answers passed through the miner's real ``--fault`` code
  (corrupt, random, lazy), compared with the honest answer;
- sampled: two honest answers at temperature 0.8 with different seeds, and with
  one seed (what redundant runs use), for the semantic false-verdict rate.
Semantic comparisons use all-MiniLM-L6-v2 (needs the 'verify' extra).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from inferswarm.miner.engines.llamacpp import LlamaConfig, LlamaCppEngine
from inferswarm.miner.faults import Fault, FaultKind, FaultyEngine
from inferswarm.miner.models import default_model_path
from inferswarm.protocol import ChatMessage, SamplingParams, TaskAssign, TaskChunk, TaskId
from inferswarm.router.verify.consensus import DEFAULT_SEMANTIC_THRESHOLD
from inferswarm.router.verify.embeddings import MiniLMEmbedder, missing_extra

PROMPTS = (
    "What color is the sky on a clear day?",
    "Name a fruit that is yellow.",
    "Why do we need sleep?",
    "Give one tip for learning a new language.",
    "What is the boiling point of water?",
    "Describe a cat in one sentence.",
    "What is photosynthesis?",
    "How many days are in a week?",
    "Suggest a name for a pet dog.",
    "What does a thermometer measure?",
    "Why is exercise healthy?",
    "What is the largest planet in the solar system?",
)
MAX_TOKENS = 32


async def _answer(engine: Any, prompt: str, temperature: float, seed: int) -> str:
    task = TaskAssign(
        task_id=TaskId(f"t-{random.getrandbits(32)}"),
        model=engine.offers()[0].name,
        messages=(ChatMessage(role="user", content=prompt),),
        sampling=SamplingParams(max_tokens=MAX_TOKENS, temperature=temperature, seed=seed),
    )
    parts = [e.text async for e in engine.generate(task) if isinstance(e, TaskChunk)]
    return "".join(parts)


async def measure(prompts: tuple[str, ...] = PROMPTS) -> dict[str, Any]:
    # One thread: two spin-wait on each other on a shared 2-core machine (5-10x slower).
    config = LlamaConfig(model_path=default_model_path(), context_length=512, threads=1)
    engine = LlamaCppEngine(config)
    honest = [await _answer(engine, p, 0.0, 0) for p in prompts]
    again = [await _answer(engine, p, 0.0, 1) for p in prompts]
    sampled = [
        (await _answer(engine, p, 0.8, 1), await _answer(engine, p, 0.8, 2)) for p in prompts
    ]
    same_seed = [
        (await _answer(engine, p, 0.8, 7), await _answer(engine, p, 0.8, 7)) for p in prompts
    ]
    faulty: dict[str, list[str]] = {}
    for kind in (FaultKind.CORRUPT, FaultKind.RANDOM, FaultKind.LAZY):
        wrapped = FaultyEngine(engine, (Fault(kind),), random.Random(5))
        faulty[kind.value] = [await _answer(wrapped, p, 0.0, 0) for p in prompts]
    await engine.close()
    rates: dict[str, Any] = {
        "prompts": len(prompts),
        "exact_honest_equal": sum(a == b for a, b in zip(honest, again, strict=True))
        / len(prompts),
        "exact_detects": {
            kind: sum(f != h for f, h in zip(outs, honest, strict=True)) / len(prompts)
            for kind, outs in faulty.items()
        },
    }
    if missing_extra() is not None:
        rates["semantic"] = f"not measured: {missing_extra()}"
        return rates
    embedder = MiniLMEmbedder.load()

    def cosine(a: str, b: str) -> float:
        va, vb = embedder.embed([a, b])
        return sum(x * y for x, y in zip(va, vb, strict=True))

    threshold = DEFAULT_SEMANTIC_THRESHOLD
    rates["semantic_detects"] = {
        kind: sum(cosine(f, h) < threshold for f, h in zip(outs, honest, strict=True))
        / len(prompts)
        for kind, outs in faulty.items()
    }
    sampled_similarity = [cosine(a, b) for a, b in sampled]
    rates["semantic_false_verdict_sampled"] = sum(s < threshold for s in sampled_similarity) / len(
        prompts
    )
    rates["semantic_false_verdict_greedy"] = sum(
        cosine(a, b) < threshold for a, b in zip(honest, again, strict=True)
    ) / len(prompts)
    rates["sampled_similarity_mean"] = sum(sampled_similarity) / len(prompts)
    rates["semantic_false_verdict_same_seed"] = sum(
        cosine(a, b) < threshold for a, b in same_seed
    ) / len(prompts)
    return rates


if __name__ == "__main__":
    import json

    print(json.dumps(asyncio.run(measure()), indent=2))

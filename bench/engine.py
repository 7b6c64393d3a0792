"""One miner's engine under concurrent load: continuous batching against the
sequential high-level engine and ``python -m llama_cpp.server``, side by side
in one run, on the shipped model.

For each concurrency level the same load generator (closed loop: ``c`` clients,
each sending its next request when the last one ends) drives, in turn:

1. ``batched``: this project's ``BatchedLlamaEngine`` (continuous batching),
2. ``sequential``: ``LlamaCppEngine`` with one slot (``llama_cpp.Llama``, one
   request at a time),
3. ``llama_cpp.server``: llama-cpp-python's own OpenAI server on the same
   file, streamed over HTTP (needs the ``bench`` extra).

It reports aggregate generation tokens/s, time to first token and inter-token
latency (p50/p99), and how many streams completed. Then two checks: bare
llama.cpp (a plain decode loop, no engine) against the batched engine at
concurrency 1, and the time to first token of a follow-up request sharing a
500-token system prompt with and without prefix reuse.

The engines run in this process, the server as a child; all share this
machine's cores, so only ratios within one run mean anything.

    python bench/engine.py --concurrency 1,2,4,8,16 --max-tokens 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from inferswarm.miner.engines.base import Engine
from inferswarm.miner.engines.llamacpp import LlamaConfig, LlamaCppEngine
from inferswarm.miner.engines.llamacpp_batched import BatchedLlamaEngine
from inferswarm.miner.models import default_model_path, model_name_for
from inferswarm.protocol import ModelName, SamplingParams, TaskAssign, TaskChunk, TaskId
from netutil import free_port
from report import write_results

RESULTS = Path(__file__).parent / "results"
console = Console(width=120)

Source = Callable[[str, int], AsyncIterator[int]]
"""Streams one completion: yields the number of tokens in each piece as it
arrives; returns normally only when the stream completed."""


@dataclass
class Stream:
    ttft_s: float
    gaps_s: list[float]
    tokens: int


@dataclass
class Cell:
    system: str
    concurrency: int
    requests: int
    completed: int
    tokens: int
    seconds: float
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    failures: list[str] = field(default_factory=list)


def engine_source(engine: Engine, model: ModelName) -> Source:
    async def stream(prompt: str, max_tokens: int) -> AsyncIterator[int]:
        task = TaskAssign(
            task_id=TaskId("bench"),
            model=model,
            prompt=prompt,
            sampling=SamplingParams(max_tokens=max_tokens, temperature=0),
        )
        async for event in engine.generate(task):
            if isinstance(event, TaskChunk) and event.tokens:
                yield event.tokens

    return stream


def server_source(session: aiohttp.ClientSession, url: str, model: str) -> Source:
    """llama_cpp.server streams one SSE event per token. aiohttp: the lightest
    streaming client here (see bench/loadgen_client.py), as it shares the cores."""

    async def stream(prompt: str, max_tokens: int) -> AsyncIterator[int]:
        body = {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
        }
        finished = False
        async with session.post(url + "/v1/completions", json=body) as response:
            response.raise_for_status()
            async for raw in response.content:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choice = json.loads(line[6:])["choices"][0]
                if choice.get("text"):
                    yield 1
                finished = finished or choice.get("finish_reason") is not None
        if not finished:
            raise RuntimeError("the stream ended without a finish_reason (interrupted)")

    return stream


async def measure(source: Source, prompt: str, max_tokens: int) -> Stream:
    started = last = time.perf_counter()
    ttft = 0.0
    gaps: list[float] = []
    tokens = 0
    async for count in source(prompt, max_tokens):
        now = time.perf_counter()
        if tokens == 0:
            ttft = now - started
        else:
            gaps += [(now - last) / count] * count
        tokens += count
        last = now
    return Stream(ttft, gaps, tokens)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def prompt_for(index: int) -> str:
    """Distinct prompts (no prefix-cache help) that make the model write on."""
    return f"Chapter {index}. Once upon a time, in a kingdom by the sea, there lived"


async def load(
    system: str, source: Source, concurrency: int, requests: int, max_tokens: int
) -> Cell:
    queue = list(range(requests))
    streams: list[Stream] = []
    failures: list[str] = []

    async def client() -> None:
        while queue:
            index = queue.pop()
            try:
                streams.append(await measure(source, prompt_for(index), max_tokens))
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}"[:200])

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    tokens = sum(s.tokens for s in streams)
    ttfts = [s.ttft_s * 1000 for s in streams if s.tokens]
    gaps = [g * 1000 for s in streams for g in s.gaps_s]
    return Cell(
        system=system,
        concurrency=concurrency,
        requests=requests,
        completed=len(streams),
        tokens=tokens,
        seconds=round(seconds, 2),
        tokens_per_s=round(tokens / seconds, 1),
        ttft_p50_ms=round(percentile(ttfts, 0.5), 1),
        ttft_p99_ms=round(percentile(ttfts, 0.99), 1),
        itl_p50_ms=round(percentile(gaps, 0.5), 1),
        itl_p99_ms=round(percentile(gaps, 0.99), 1),
        failures=failures[:3],
    )


def start_server(
    model: Path, threads: int, ctx: int, interrupt: bool, log: Path
) -> tuple[Any, str]:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--n_ctx",
        str(ctx),
        "--interrupt_requests",
        str(interrupt),
    ]
    with log.open("wb") as sink:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            error = log.read_text(errors="replace")
            raise RuntimeError(f"llama_cpp.server exited:\n{error[-2000:]}")
        try:
            if httpx.get(url + "/v1/models", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("llama_cpp.server did not start within 120 s")


def bare_tokens_per_s(model: Path, threads: int, tokens: int) -> float:
    """A plain greedy decode loop on the low-level API: the ceiling for one sequence."""
    import llama_cpp
    from llama_cpp import _internals

    llm: Any = _internals.LlamaModel(
        path_model=str(model), params=llama_cpp.llama_model_default_params(), verbose=False
    )
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_threads, params.n_threads_batch = 2048, threads, threads
    ctx: Any = _internals.LlamaContext(model=llm, params=params, verbose=False)
    sampler: Any = _internals.LlamaSampler()  # type: ignore[no-untyped-call]
    sampler.add_greedy()  # type: ignore[no-untyped-call]
    prompt = llm.tokenize(prompt_for(0).encode(), add_bos=True, special=False)
    # The batch points into these arrays: they must outlive each decode.
    held = (llama_cpp.llama_token * len(prompt))(*prompt)
    llama_cpp.llama_decode(ctx.ctx, llama_cpp.llama_batch_get_one(held, len(prompt)))
    token = llama_cpp.llama_sampler_sample(sampler.sampler, ctx.ctx, -1)
    one = (llama_cpp.llama_token * 1)()
    started = time.perf_counter()
    for _ in range(tokens):
        one[0] = token
        llama_cpp.llama_decode(ctx.ctx, llama_cpp.llama_batch_get_one(one, 1))
        token = llama_cpp.llama_sampler_sample(sampler.sampler, ctx.ctx, -1)
    speed = tokens / (time.perf_counter() - started)
    sampler.close()
    ctx.close()
    llm.close()
    return speed


async def engine_tokens_per_s(engine: Engine, model: ModelName, tokens: int) -> float:
    """One sequence through the engine, timed after its first token as the bare loop is."""
    stream = await measure(engine_source(engine, model), prompt_for(0), tokens + 1)
    return (stream.tokens - 1) / sum(stream.gaps_s)


SYSTEM_PROMPT = (
    "You are the support assistant of a small bookshop. You answer questions about "
    "opening hours, orders, deliveries, returns and book recommendations, politely and "
    "in two sentences at most. "
) * 14
QUESTIONS = [
    "Do you deliver to Lyon?",
    "Can I return a damaged book?",
    "What should I read after Dune?",
    "Are you open on Sundays?",
]


async def follow_up_ttft(engine: Engine, model: ModelName) -> float:
    """Median time to first token of follow-ups once one request has seen the system prompt."""
    source = engine_source(engine, model)
    await measure(source, f"{SYSTEM_PROMPT}\nQ: {QUESTIONS[0]}\nA:", 4)
    ttfts = [
        (await measure(source, f"{SYSTEM_PROMPT}\nQ: {q}\nA:", 4)).ttft_s for q in QUESTIONS[1:]
    ]
    return statistics.median(ttfts)


def show(cells: list[Cell]) -> None:
    table = Table(title="Engine throughput under concurrent load (shipped model)")
    for column in (
        "system",
        "conc",
        "done/req",
        "gen tok/s",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "ITL p50 ms",
        "ITL p99 ms",
    ):
        table.add_column(column, justify="left" if column == "system" else "right")
    for c in cells:
        table.add_row(
            c.system,
            str(c.concurrency),
            f"{c.completed}/{c.requests}",
            f"{c.tokens_per_s:.1f}",
            f"{c.ttft_p50_ms:.0f}",
            f"{c.ttft_p99_ms:.0f}",
            f"{c.itl_p50_ms:.1f}",
            f"{c.itl_p99_ms:.1f}",
        )
    console.print(table)


def ratios(cells: list[Cell]) -> dict[str, dict[str, float]]:
    """Batched throughput over each other system's, per concurrency."""
    speed = {(c.system, c.concurrency): c.tokens_per_s for c in cells}
    out: dict[str, dict[str, float]] = {}
    for (system, conc), value in speed.items():
        if system == "batched":
            continue
        base = speed.get(("batched", conc))
        if base and value:
            out.setdefault(f"batched_over_{system}", {})[str(conc)] = round(base / value, 2)
    return out


async def main(args: argparse.Namespace) -> None:
    path = default_model_path()
    model = ModelName(model_name_for(path))
    levels = [int(c) for c in args.concurrency.split(",")]
    config = LlamaConfig(path, context_length=args.ctx, threads=args.threads)
    batched = BatchedLlamaEngine(
        LlamaConfig(path, context_length=args.ctx, threads=args.threads, slots=args.slots)
    )
    sequential = LlamaCppEngine(config)
    server_log = Path(tempfile.gettempdir()) / f"llama_cpp_server_{os.getpid()}.log"
    proc, url = start_server(path, args.threads, args.ctx, args.server_interrupt, server_log)
    cells: list[Cell] = []
    try:
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            sources: dict[str, Source] = {
                "batched": engine_source(batched, model),
                "sequential": engine_source(sequential, model),
                "llama_cpp.server": server_source(session, url, model),
            }
            for source in sources.values():  # warm-up: first decodes allocate buffers
                await measure(source, prompt_for(-1), 2)
            for turn, concurrency in enumerate(levels):
                order = list(sources)[turn % 3 :] + list(sources)[: turn % 3]  # spread drift
                for name in order:
                    requests = max(concurrency * args.rounds, 4)
                    console.log(f"{name}: concurrency {concurrency}, {requests} requests")
                    cells.append(
                        await load(name, sources[name], concurrency, requests, args.max_tokens)
                    )
        show(cells)
        # Taking turns, best of three each: other work on the machine only slows a run down.
        bare, engine_alone = 0.0, 0.0
        for _ in range(3):
            bare = max(bare, await asyncio.to_thread(bare_tokens_per_s, path, args.threads, 64))
            engine_alone = max(engine_alone, await engine_tokens_per_s(batched, model, 64))
        overhead = {
            "bare_llama_cpp_tokens_per_s": round(bare, 1),
            "batched_engine_tokens_per_s": round(engine_alone, 1),
            "engine_over_bare": round(engine_alone / bare, 3),
        }
        console.print(f"Concurrency 1, after the first token: {overhead}")
        warm = await follow_up_ttft(batched, model)
        no_reuse = BatchedLlamaEngine(
            LlamaConfig(path, context_length=args.ctx, threads=args.threads, slots=args.slots),
            reuse_prefixes=False,
        )
        try:
            cold = await follow_up_ttft(no_reuse, model)
        finally:
            await no_reuse.close()
        prefix = {
            "system_prompt_tokens": len(
                batched._model.tokenize(SYSTEM_PROMPT.encode(), add_bos=True, special=False)
            ),
            "follow_up_ttft_ms_with_reuse": round(warm * 1000, 1),
            "follow_up_ttft_ms_without_reuse": round(cold * 1000, 1),
            "speedup": round(cold / warm, 2),
        }
        console.print(f"Shared system prompt, follow-up TTFT: {prefix}")
        speedups = ratios(cells)
        console.print(f"Throughput ratios: {speedups}")
    finally:
        proc.terminate()
        proc.wait(10)
        await batched.close()
        await sequential.close()
    settings = {
        "model": str(path.name),
        "threads": args.threads,
        "batched_slots": batched.slots,
        "context": args.ctx,
        "max_tokens": args.max_tokens,
        "concurrency": levels,
        "requests_per_level": f"max(concurrency * {args.rounds}, 4)",
        "server_interrupt_requests": args.server_interrupt,
    }
    write_results(
        args.out,
        "engine",
        settings,
        [asdict(c) for c in cells],
        ratios=speedups,
        concurrency_1_overhead=overhead,
        prefix_reuse=prefix,
    )
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--out", type=Path, default=RESULTS / "engine.json")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="requests per client per level")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument(
        "--slots", type=int, default=0, help="batched engine slots (0: its own choice)"
    )
    parser.add_argument(
        "--server-interrupt",
        action="store_true",
        help="keep llama_cpp.server's default interrupt_requests=True (cuts concurrent streams)",
    )
    asyncio.run(main(parser.parse_args()))

"""``inferswarm bench``: load any OpenAI-compatible server and report latency and throughput."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from inferswarm.loadgen.distributions import DistributionSyntaxError, parse_distribution
from inferswarm.loadgen.target import BenchError, Endpoint, Load, Target, api_root

if TYPE_CHECKING:
    from inferswarm.loadgen.driver import RunResult
    from inferswarm.loadgen.stats import RequestRecord, Summary

# The driver (aiohttp), the summary (numpy) and the plot (matplotlib) are imported
# inside the command, so every other inferswarm command starts without them.

DEFAULT_REQUESTS = 100


def bench(
    base_url: Annotated[
        str,
        typer.Option(
            help="OpenAI-compatible server: an inferswarm router, llama.cpp's server, vLLM, ...",
            envvar="INFERSWARM_BASE_URL",
        ),
    ] = "http://127.0.0.1:8000",
    api_key: Annotated[
        str | None,
        typer.Option(
            help="API key sent as a Bearer token.", envvar=["INFERSWARM_API_KEY", "OPENAI_API_KEY"]
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model to load (default: the first in /v1/models).")
    ] = None,
    endpoint: Annotated[
        Endpoint, typer.Option(help="chat: /v1/chat/completions; completions: /v1/completions.")
    ] = Endpoint.CHAT,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="Keep N requests in flight (default mode, N=1)."),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Send R requests/s with Poisson arrivals, whatever the server's pace (open loop).",
        ),
    ] = None,
    requests: Annotated[
        int | None,
        typer.Option(min=1, help=f"Send this many requests (default {DEFAULT_REQUESTS})."),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(min=0.1, help="Send requests for this many seconds, then wait for the last."),
    ] = None,
    prompt_tokens: Annotated[
        str,
        typer.Option(
            help="Prompt length in words: 128, uniform:64,256 or normal:128,32.",
        ),
    ] = "128",
    output_tokens: Annotated[
        str,
        typer.Option(help="max_tokens per request: 64, uniform:16,128 or normal:64,16."),
    ] = "64",
    seed: Annotated[int, typer.Option(help="Seed for prompts, lengths and arrivals.")] = 0,
    usage: Annotated[
        bool,
        typer.Option(
            help="Ask for stream_options.include_usage and count tokens from it; "
            "--no-usage counts one token per streamed chunk.",
        ),
    ] = True,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds one request may take.")] = 600.0,
    json_path: Annotated[
        Path | None,
        typer.Option("--json", help="Save the settings, summary and every request here."),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG of latency and throughput over time here.")
    ] = None,
) -> None:
    """Load an OpenAI-compatible server with streaming requests; report TTFT, inter-token and end-to-end latency percentiles, throughput and errors."""
    from inferswarm.loadgen.driver import resolve_model
    from inferswarm.loadgen.render import summary_tables
    from inferswarm.loadgen.stats import summarise

    console = Console()
    try:
        load = _load(concurrency, rate, requests, duration, prompt_tokens, output_tokens, seed)
        root = api_root(base_url)
        chosen = asyncio.run(resolve_model(root, model, api_key))
    except (BenchError, DistributionSyntaxError) as exc:
        typer.echo(f"inferswarm bench: {exc}", err=True)
        raise typer.Exit(2) from None
    target = Target(root, chosen, endpoint, api_key, usage, timeout)
    mode = f"rate {load.rate:g} req/s" if load.rate else f"concurrency {load.concurrency}"
    title = f"{chosen} at {root} ({endpoint.value}, {mode})"
    result = _run_with_progress(target, load, console, title)
    summary = summarise(result.records, result.client_cpu_s)
    console.print(summary_tables(summary, title))
    if json_path is not None:
        _write_json(json_path, target, load, summary, result.records)
        console.print(f"saved {json_path}")
    if plot is not None:
        from inferswarm.loadgen.plot import write_plot

        write_plot(result.records, plot, title)
        console.print(f"plotted {plot}")
    if result.interrupted:
        raise typer.Exit(130)
    if summary.succeeded == 0:
        raise typer.Exit(1)


def _load(
    concurrency: int | None,
    rate: float | None,
    requests: int | None,
    duration: float | None,
    prompt_tokens: str,
    output_tokens: str,
    seed: int,
) -> Load:
    if concurrency is not None and rate is not None:
        raise BenchError("choose one of --concurrency (closed loop) and --rate (open loop)")
    if requests is None and duration is None:
        requests = DEFAULT_REQUESTS
    return Load(
        prompt_lengths=parse_distribution(prompt_tokens),
        output_lengths=parse_distribution(output_tokens),
        concurrency=None if rate is not None else (concurrency or 1),
        rate=rate,
        duration_s=duration,
        requests=requests,
        seed=seed,
    )


def _run_with_progress(target: Target, load: Load, console: Console, title: str) -> RunResult:
    """Run the load under a progress bar; on Ctrl-C, the requests finished so far."""
    from inferswarm.loadgen.driver import RunResult, run_load

    total = load.requests if load.duration_s is None else None
    finished: list[RequestRecord] = []
    cpu_started = time.process_time()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[errors]} errors"),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=4,  # redrawing is the generator's main idle cost
    ) as progress:
        bar = progress.add_task(title, total=total, errors=0)
        errors = 0

        def on_done(record: RequestRecord) -> None:
            nonlocal errors
            finished.append(record)
            errors += 0 if record.ok else 1
            progress.update(bar, advance=1, errors=errors)

        try:
            return asyncio.run(run_load(target, load, on_done))
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted: {len(finished)} requests had finished[/]")
            finished.sort(key=lambda r: r.index)
            return RunResult(finished, time.process_time() - cpu_started, interrupted=True)


def _write_json(
    path: Path, target: Target, load: Load, summary: Summary, records: list[RequestRecord]
) -> None:
    settings: dict[str, Any] = {
        "api_root": target.api_root,
        "model": target.model,
        "endpoint": target.endpoint.value,
        "concurrency": load.concurrency,
        "rate": load.rate,
        "requests": load.requests,
        "duration_s": load.duration_s,
        "prompt_tokens": str(load.prompt_lengths),
        "output_tokens": str(load.output_lengths),
        "seed": load.seed,
        "ask_usage": target.ask_usage,
    }
    document = {
        "settings": settings,
        "summary": summary.as_dict(),
        "requests": [asdict(r) | {"e2e_s": r.e2e_s, "tpot_s": r.tpot_s} for r in records],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")

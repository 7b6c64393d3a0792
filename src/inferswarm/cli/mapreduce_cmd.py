"""``inferswarm map-reduce``: summarise (or otherwise digest) a text longer
than any miner's context, as a job on the router."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

POLL_S = 0.5


def map_reduce(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="The text file to process."
        ),
    ],
    prompt: Annotated[
        str, typer.Option(help="Instruction run on each chunk (the map step).")
    ] = "Summarise the key points of this text in a few sentences.",
    reduce_prompt: Annotated[
        str, typer.Option(help="Instruction that combines partial results (the reduce step).")
    ] = "Combine these partial summaries into one concise summary.",
    model: Annotated[
        str | None, typer.Option(help="Model to use (default: the first the router serves).")
    ] = None,
    router: Annotated[
        str, typer.Option(help="Router base URL.", envvar="INFERSWARM_ROUTER")
    ] = "http://127.0.0.1:8000",
    api_key: Annotated[
        str | None,
        typer.Option(help="Client API key if the router has auth on.", envvar="INFERSWARM_API_KEY"),
    ] = None,
    chunk_tokens: Annotated[
        int | None, typer.Option(help="Tokens per chunk (default: what the contexts allow).")
    ] = None,
    overlap_tokens: Annotated[int, typer.Option(min=0, help="Tokens shared by neighbours.")] = 64,
    map_max_tokens: Annotated[int, typer.Option(min=1, help="Answer length per chunk.")] = 128,
    reduce_max_tokens: Annotated[int, typer.Option(min=1, help="Answer length per reduce.")] = 256,
    frequency_penalty: Annotated[
        float,
        typer.Option(min=-2, max=2, help="Discourages repetition (small models loop when greedy)."),
    ] = 0.3,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result object as JSON.")
    ] = False,
) -> None:
    """Split FILE into chunks that fit the miners' contexts, run --prompt on every chunk
    across the network, then combine the results with --reduce-prompt (in levels when
    they do not fit one context). The job lives on the router: it survives a restart."""
    console = Console(stderr=True)
    base = router.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        body: dict[str, Any] = {
            "type": "map_reduce",
            "model": model or _first_model(client, base),
            "input": file.read_text(errors="replace"),
            "map_prompt": prompt,
            "reduce_prompt": reduce_prompt,
            "overlap_tokens": overlap_tokens,
            "map_max_tokens": map_max_tokens,
            "reduce_max_tokens": reduce_max_tokens,
            "frequency_penalty": frequency_penalty,
        }
        if chunk_tokens is not None:
            body["chunk_tokens"] = chunk_tokens
        job = _call(client, "POST", "/v1/jobs", base, json=body)
        console.print(
            f"job {job['id']}: {job['progress']['map']['total']} chunks of ~"
            f"{job['progress']['chunk_tokens']} tokens on {job['model']}"
        )
        job = _follow(client, base, job, console)
        if job["status"] != "completed":
            error = (job.get("error") or {}).get("message", job["status"])
            typer.echo(f"The job {job['status']}: {error}", err=True)
            raise typer.Exit(1)
        result = _call(client, "GET", f"/v1/jobs/{job['id']}/result", base)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(result["text"])
        usage = result["usage"]
        console.print(
            f"[dim]{usage['tasks']} tasks, {usage['prompt_tokens']} prompt tokens, "
            f"{usage['completion_tokens']} generated[/dim]"
        )


def _follow(
    client: httpx.Client, base: str, job: dict[str, Any], console: Console
) -> dict[str, Any]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        maps = progress.add_task("map", total=job["progress"]["map"]["total"])
        reduces = progress.add_task("reduce", total=None)
        while job["status"] in ("queued", "running"):
            time.sleep(POLL_S)
            job = _call(client, "GET", f"/v1/jobs/{job['id']}", base)
            stage = job["progress"]
            progress.update(maps, total=stage["map"]["total"], completed=stage["map"]["done"])
            levels = stage["reduce"]["levels"]
            progress.update(
                reduces,
                description=f"reduce (level {levels})" if levels else "reduce",
                total=stage["reduce"]["total"] or None,
                completed=stage["reduce"]["done"],
            )
    return job


def _first_model(client: httpx.Client, base: str) -> str:
    models = _call(client, "GET", "/v1/models", base)["data"]
    if not models:
        typer.echo("The router serves no model yet: start a miner first.", err=True)
        raise typer.Exit(1)
    name: str = models[0]["id"]
    return name


def _call(client: httpx.Client, method: str, path: str, base: str, **kwargs: Any) -> Any:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        typer.echo(f"Cannot reach the router at {base}: {exc}. Is it running?", err=True)
        raise typer.Exit(1) from None
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        typer.echo(f"The router answered {response.status_code}: {message}", err=True)
        raise typer.Exit(1)
    return response.json()

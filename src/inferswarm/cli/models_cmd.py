"""``inferswarm models``, ``inferswarm quantize`` and ``inferswarm quality``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn
from rich.table import Table

from inferswarm.miner.probe import default_cache_dir

models_app = typer.Typer(
    help="The model families and variants the network serves now, with live capacity; "
    "'load' and 'unload' change what a miner serves.",
)

RouterUrl = Annotated[str, typer.Option(help="Router base URL.", envvar="INFERSWARM_ROUTER")]
AdminKey = Annotated[
    str | None,
    typer.Option(
        help="Admin key, if the router has auth on.",
        envvar="INFERSWARM_ADMIN_KEY",
        show_default=False,
    ),
]
Miner = Annotated[
    str, typer.Argument(metavar="MINER", help="Miner id or name (`inferswarm status` lists them).")
]
Variant = Annotated[str, typer.Argument(metavar="NAME", help="Variant, e.g. gemma-3-270m:q4_k_m.")]


@models_app.callback(invoke_without_command=True)
def models(
    ctx: typer.Context,
    router: RouterUrl = "http://127.0.0.1:8000",
    api_key: Annotated[
        str | None,
        typer.Option(help="Client API key if the router has auth on.", envvar="INFERSWARM_API_KEY"),
    ] = None,
) -> None:
    """The model families and variants the network serves now, with live capacity."""
    if ctx.invoked_subcommand is not None:
        return
    body = _get(router, "/v1/models", api_key)
    console = _console()
    console.print(models_table(body["data"]))
    if body.get("loadable"):
        console.print(loadable_table(body["loadable"]))


@models_app.command()
def load(
    miner: Miner,
    name: Variant,
    router: RouterUrl = "http://127.0.0.1:8000",
    admin_key: AdminKey = None,
) -> None:
    """Ask a miner to load a variant it has on disk; waits until the miner serves it."""
    _change(router, admin_key, miner, {"load": name}, f"loading {name}")


@models_app.command()
def unload(
    miner: Miner,
    name: Variant,
    router: RouterUrl = "http://127.0.0.1:8000",
    admin_key: AdminKey = None,
) -> None:
    """Ask a miner to stop serving a variant; its running tasks finish first."""
    _change(router, admin_key, miner, {"unload": name}, f"unloading {name}")


def _change(router: str, key: str | None, miner: str, body: dict[str, str], doing: str) -> None:
    miner_id = _miner_id(router, key, miner)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), transient=True) as progress:
        progress.add_task(f"{doing} on {miner}", total=None)
        done = _request(router, "POST", f"/v1/admin/miners/{miner_id}/models", key, body)
    table = Table(title=f"Miner {miner} ({miner_id})", show_header=False)
    table.add_row("serves", ", ".join(done["models"]) or "nothing")
    table.add_row("loading", ", ".join(done["loading"]) or "-")
    table.add_row("could load", ", ".join(done["loadable"]) or "-")
    console = _console()
    verb = "Loaded" if done["action"] == "load" else "Unloading (running tasks finish first)"
    console.print(f"{verb}: {done['model']}")
    console.print(table)


def _miner_id(router: str, key: str | None, miner: str) -> str:
    """The id of the miner named or numbered ``miner``."""
    miners = _get(router, "/v1/miners", key)["data"]
    matches = [m["id"] for m in miners if miner in (m["id"], m["name"])]
    if len(matches) == 1:
        return str(matches[0])
    known = ", ".join(f"{m['name']} ({m['id']})" for m in miners) or "none"
    why = "several miners are called" if matches else "no connected miner is"
    typer.echo(f"{why} {miner!r}; give a miner id. Connected: {known}", err=True)
    raise typer.Exit(1)


def _get(router: str, path: str, key: str | None) -> dict[str, Any]:
    return _request(router, "GET", path, key)


def _request(
    router: str, method: str, path: str, key: str | None, body: dict[str, str] | None = None
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        # A load may take minutes: the router answers once the miner serves the variant.
        response = httpx.request(
            method, router.rstrip("/") + path, headers=headers, json=body, timeout=660
        )
    except httpx.HTTPError as exc:
        typer.echo(f"Cannot reach the router at {router}: {exc}. Is it running?", err=True)
        raise typer.Exit(1) from None
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:300]
        typer.echo(f"The router answered {response.status_code}: {message}", err=True)
        raise typer.Exit(1)
    result: dict[str, Any] = response.json()
    return result


def models_table(entries: list[dict[str, Any]]) -> Table:
    table = Table(title="Models")
    table.add_column("model", no_wrap=True)
    table.add_column("variant")
    for column in ("miners", "loadable on", "slots (busy)", "tokens/s", "context", "memory"):
        table.add_column(column, justify="right")
    for entry in entries:
        variant = entry.get("variant") or ", ".join(
            v.partition(":")[2] for v in entry.get("variants", [])
        )
        memory = entry.get("memory_bytes") or 0
        table.add_row(
            entry["id"],
            variant,
            str(entry["miners"]),
            str(entry.get("loadable_on", 0)),
            f"{entry['slots']} ({entry.get('busy_slots', 0)})",
            f"{entry.get('tokens_per_s', 0):.0f}",
            str(entry["context_length"]),
            f"{memory / 2**20:.0f} MiB" if memory else "",
        )
    return table


def loadable_table(entries: list[dict[str, Any]]) -> Table:
    """Variants no miner serves now but some could load (``inferswarm models load``)."""
    table = Table(title="Loadable on request (not served now)")
    table.add_column("model", no_wrap=True)
    for column in ("variant", "loadable on", "memory"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for entry in entries:
        memory = entry.get("memory_bytes") or 0
        table.add_row(
            entry["id"],
            entry.get("variant", ""),
            f"{entry['loadable_on']} miner(s)",
            f"{memory / 2**20:.0f} MiB" if memory else "",
        )
    return table


def quantize(
    source: Annotated[Path, typer.Argument(help="GGUF file to quantise.", exists=True)],
    type_: Annotated[
        str, typer.Option("--type", help="Quantisation type: q8_0, q5_k_m, q4_k_m, q3_k_m, q2_k…")
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            help="Where to write (default: FAMILY.TYPE.gguf in the models cache, where "
            "'miner --models auto' finds it)."
        ),
    ] = None,
    threads: Annotated[int, typer.Option(min=0, help="Threads (0: all cores).")] = 0,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Cache directory (default: ~/.cache/inferswarm).", envvar="INFERSWARM_CACHE_DIR"
        ),
    ] = None,
) -> None:
    """Quantise a GGUF model with llama.cpp's own quantiser."""
    from inferswarm.miner.catalog import Catalog
    from inferswarm.miner.quantize import QuantizeError
    from inferswarm.miner.quantize import quantize as run_quantize

    cache = cache_dir or default_cache_dir()
    catalog = Catalog(cache / "catalog.json")
    source_entry = catalog.entry(source)
    kind = type_.lower()
    target = output or cache / "models" / f"{source_entry.family}.{kind.upper()}.gguf"
    if source_entry.variant not in ("f32", "f16", "bf16"):
        typer.echo(
            f"Note: {source.name} is already {source_entry.variant}; re-quantising to {kind} "
            "cannot restore precision the source lost (no higher-precision source is shipped)."
        )
    with Progress(transient=True) as progress:
        progress.add_task(f"quantising to {kind}", total=None)
        try:
            run_quantize(source, target, kind, threads)
        except QuantizeError as exc:
            typer.echo(f"Cannot quantise: {exc}", err=True)
            raise typer.Exit(2) from None
    entry = catalog.entry(target)
    typer.echo(
        f"{target}: {entry.name}, {entry.file_bytes / 2**20:.1f} MiB, sha256 {entry.file_sha256[:16]}…"
    )


def quality(
    files: Annotated[list[Path], typer.Argument(help="GGUF files to compare.", exists=True)],
    tokens: Annotated[int, typer.Option(min=16, help="Tokens of the fixed text to score.")] = 1024,
    window: Annotated[int, typer.Option(min=16, help="Context per perplexity window.")] = 256,
    context: Annotated[int, typer.Option(min=64, help="Context for the memory estimate.")] = 2048,
    threads: Annotated[int | None, typer.Option(min=1, help="llama.cpp threads.")] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Cache directory (default: ~/.cache/inferswarm).", envvar="INFERSWARM_CACHE_DIR"
        ),
    ] = None,
) -> None:
    """Perplexity, size, memory and speed per variant on a fixed real text (pydoc topics)."""
    from inferswarm.miner.catalog import Catalog
    from inferswarm.miner.quantize import measure_quality

    catalog = Catalog((cache_dir or default_cache_dir()) / "catalog.json")
    table = Table(title=f"Quality on {tokens} tokens of CPython's pydoc topics")
    for column in (
        "variant",
        "bits/w",
        "file",
        f"memory @{context}",
        "perplexity",
        "prompt tok/s",
        "gen tok/s",
    ):
        table.add_column(column, justify="left" if column == "variant" else "right", no_wrap=True)
    with Progress(transient=True) as progress:
        task = progress.add_task("measuring", total=len(files))
        for path in files:
            entry = catalog.entry(path)
            result = measure_quality(path, tokens=tokens, window=window, threads=threads)
            table.add_row(
                entry.name,
                f"{entry.file_bytes * 8 / max(1, entry.parameters):.2f}",
                f"{entry.file_bytes / 2**20:.0f} MiB",
                f"{entry.memory_bytes(context) / 2**20:.0f} MiB",
                f"{result.perplexity:.2f}",
                f"{result.prompt_tokens_per_s:.0f}",
                f"{result.generation_tokens_per_s:.1f}",
            )
            progress.advance(task)
    _console().print(table)


def _console() -> Console:
    """Full width on a terminal; wide enough for whole model names in a pipe or file."""
    return Console() if sys.stdout.isatty() else Console(width=160)

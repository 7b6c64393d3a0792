"""The ``inferswarm`` command."""

from __future__ import annotations

import typer

from inferswarm.cli.access_cmd import audit, bans_app, keys_app, tokens_app
from inferswarm.cli.bench_cmd import bench
from inferswarm.cli.mapreduce_cmd import map_reduce
from inferswarm.cli.miner_cmd import miner
from inferswarm.cli.models_cmd import models_app, quality, quantize
from inferswarm.cli.router_cmd import router
from inferswarm.cli.status_cmd import status
from inferswarm.cli.up_cmd import up

app = typer.Typer(
    name="inferswarm",
    help="A decentralized AI inference network: routers allocate OpenAI-compatible requests "
    "to miners running quantized GGUF models on llama.cpp.",
    no_args_is_help=True,
    add_completion=False,
)
app.command(help=up.__doc__)(up)
app.command(help=router.__doc__)(router)
app.command(help=miner.__doc__)(miner)
app.command(help=status.__doc__)(status)
app.command(help=bench.__doc__)(bench)
app.command(name="map-reduce", help=map_reduce.__doc__)(map_reduce)
app.add_typer(models_app, name="models")
app.command(help=quantize.__doc__)(quantize)
app.command(help=quality.__doc__)(quality)
app.add_typer(keys_app, name="keys")
app.add_typer(tokens_app, name="tokens")
app.add_typer(bans_app, name="bans")
app.command(help=audit.__doc__)(audit)


def main() -> None:
    app()

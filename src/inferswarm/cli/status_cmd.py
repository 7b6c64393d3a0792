"""``inferswarm status``: the router's miners as a table."""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table


def status(
    router: Annotated[
        str, typer.Option(help="Router base URL.", envvar="INFERSWARM_ROUTER")
    ] = "http://127.0.0.1:8000",
    api_key: Annotated[
        str | None,
        typer.Option(help="Client API key if the router has auth on.", envvar="INFERSWARM_API_KEY"),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the raw JSON instead of a table.")
    ] = False,
) -> None:
    """Show the miners connected to a router: hardware, model, load, speed, state."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = router.rstrip("/") + "/v1/miners"
    try:
        response = httpx.get(url, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        typer.echo(
            f"Cannot reach the router at {router}: {exc}. Is it running? (inferswarm router / make up)",
            err=True,
        )
        raise typer.Exit(1) from None
    if response.status_code != 200:
        typer.echo(
            f"The router answered {response.status_code}: {_error_message(response)}", err=True
        )
        raise typer.Exit(1)
    miners = response.json()["data"]
    if as_json:
        typer.echo(json.dumps(response.json(), indent=2))
        return
    Console().print(miners_table(miners, router))


def miners_table(miners: list[dict[str, Any]], router: str) -> Table:
    table = Table(title=f"inferswarm miners at {router}", caption=f"{len(miners)} miner(s)")
    for column in (
        "id",
        "name",
        "hardware",
        "model",
        "tier",
        "slots busy/total",
        "tokens/s",
        "done/failed",
        "reputation",
        "state",
    ):
        table.add_column(
            column,
            justify="right" if column in ("tokens/s", "done/failed", "reputation") else "left",
        )
    for m in miners:
        speed = m.get("tokens_per_s")
        table.add_row(
            m["id"],
            m["name"],
            m.get("hardware_summary", ""),
            ", ".join(m["models"]),
            f"T{m.get('tier', 1)}",
            f"{m['busy']}/{m['slots']}",
            f"{speed:.1f}" if speed else "-",
            f"{m.get('completed', 0)}/{m.get('failed', 0)}",
            f"{m['reputation']:.2f}" if m.get("reputation") is not None else "-",
            f"[red]{m['state']}[/red]" if m["state"] == "quarantined" else m["state"],
        )
    return table


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]

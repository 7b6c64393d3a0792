"""``inferswarm status``: the router's miners, models and recent events as
tables, once or refreshed live with ``--watch``."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

EVENTS_SHOWN = 10


class RouterUnavailable(Exception):
    """The router could not be asked; the message says why and what to do."""


def status(
    router: Annotated[
        str, typer.Option(help="Router base URL.", envvar="INFERSWARM_ROUTER")
    ] = "http://127.0.0.1:8000",
    api_key: Annotated[
        str | None,
        typer.Option(help="Client API key if the router has auth on.", envvar="INFERSWARM_API_KEY"),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the raw /v1/network JSON instead of tables.")
    ] = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Refresh the tables live until Ctrl-C.")
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between refreshes with --watch.")
    ] = 2.0,
    count: Annotated[
        int, typer.Option(min=0, help="With --watch, stop after this many refreshes (0: never).")
    ] = 0,
) -> None:
    """Show the network behind a router: miners (hardware, model, load, speed, state),
    models, throughput and latency of the last minute, and recent events."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=router.rstrip("/"), headers=headers, timeout=10) as client:
        try:
            network = fetch_network(client, router)
        except RouterUnavailable as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(1) from None
        if as_json:
            typer.echo(json.dumps(network, indent=2))
            return
        if not watch:
            Console().print(render(network, router))
            return
        watch_network(client, router, network, interval, count, Console())


def watch_network(
    client: httpx.Client,
    router: str,
    network: dict[str, Any],
    interval: float,
    count: int,
    console: Console,
) -> None:
    """Redraw the tables every ``interval`` seconds; a router that stops
    answering shows the last tables with the error under them."""
    refreshes = 1
    with Live(render(network, router), console=console, auto_refresh=False) as live:
        try:
            while not count or refreshes < count:
                time.sleep(interval)
                try:
                    network = fetch_network(client, router)
                    view = render(network, router)
                except RouterUnavailable as exc:
                    view = Group(render(network, router), Text(str(exc), style="bold red"))
                live.update(view, refresh=True)
                refreshes += 1
        except KeyboardInterrupt:
            pass


def fetch_network(client: httpx.Client, router: str) -> dict[str, Any]:
    try:
        response = client.get("/v1/network", params={"series_s": 1})
    except httpx.HTTPError as exc:
        raise RouterUnavailable(
            f"Cannot reach the router at {router}: {exc}. Is it running? (inferswarm router / make up)"
        ) from None
    if response.status_code != 200:
        raise RouterUnavailable(
            f"The router answered {response.status_code}: {_error_message(response)}"
        )
    network: dict[str, Any] = response.json()
    return network


def render(network: dict[str, Any], router: str) -> Group:
    return Group(
        summary_line(network),
        miners_table(network["miners"], router),
        models_table(network["models"]),
        events_table(network["events"][:EVENTS_SHOWN]),
    )


def summary_line(network: dict[str, Any]) -> Text:
    minute = network["last_minute"]
    totals = network["totals"]
    return Text(
        f"queue {network['queue']['depth']}/{network['queue']['capacity']} · "
        f"in flight {network['in_flight']} · slots {network['busy_slots']}/{network['slots']} · "
        f"last minute: {minute['generation_tokens_per_s']:.1f} tokens/s, "
        f"TTFT p50/p95 {_seconds(minute['ttft_p50'])}/{_seconds(minute['ttft_p95'])}, "
        f"e2e p50/p95 {_seconds(minute['e2e_p50'])}/{_seconds(minute['e2e_p95'])} · "
        f"failovers {totals.get('failover', 0)}, migrations {totals.get('migration', 0)}, "
        f"hedges {totals.get('hedge', 0)}, bans {totals.get('ban', 0)}, "
        f"failed verifications {totals.get('verify_fail', 0)}, "
        f"quarantines {totals.get('quarantine', 0)}{_ledger(network.get('verification', {}))}"
    )


def _ledger(verification: dict[str, Any]) -> str:
    """The ledger's results by purpose, those there are (a router too old to say: nothing)."""
    counts = verification.get("results_by_purpose", {})
    shown = ", ".join(f"{count} {purpose}" for purpose, count in counts.items() if count)
    return f" · ledger: {shown}" if shown else ""


def miners_table(miners: list[dict[str, Any]], router: str) -> Table:
    table = Table(title=f"inferswarm miners at {router}", caption=f"{len(miners)} miner(s)")
    right = ("tokens/s", "done/failed", "CPU", "RAM", "reputation")
    for column in (
        "id",
        "name",
        "hardware",
        "model",
        "tier",
        "slots busy/total",
        "tokens/s",
        "CPU",
        "RAM",
        "done/failed",
        "reputation",
        "state",
    ):
        table.add_column(column, justify="right" if column in right else "left")
    for m in miners:
        speed = m.get("tokens_per_s")
        usage = m.get("utilisation") or {}
        state = "banned" if m.get("banned") else m["state"]
        table.add_row(
            m["id"],
            m["name"],
            m.get("hardware_summary", ""),
            ", ".join([*m["models"], *(f"{n} (loading)" for n in m.get("loading", ()))]),
            f"T{m.get('tier', 1)}",
            f"{m['busy']}/{m['slots']}",
            f"{speed:.1f}" if speed else "-",
            _percent(usage.get("cpu_percent")),
            _percent(usage.get("ram_percent")),
            f"{m.get('completed', 0)}/{m.get('failed', 0)}",
            f"{m['reputation']:.2f}" if m.get("reputation") is not None else "-",
            f"[red]{state}[/red]" if state == "quarantined" else state,
        )
    return table


def models_table(models: list[dict[str, Any]]) -> Table:
    table = Table(title="models", caption=f"{len(models)} model(s)")
    for column in ("model", "miners", "slots busy/total", "tokens/s"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for model in models:
        table.add_row(
            model["id"],
            str(model["miners"]),
            f"{model['busy_slots']}/{model['slots']}",
            f"{model['tokens_per_s']:.1f}",
        )
    return table


def events_table(events: list[dict[str, Any]]) -> Table:
    table = Table(title="recent events", caption="newest first")
    for column in ("time", "event", "miner", "detail"):
        table.add_column(column)
    for event in events:
        table.add_row(
            datetime.fromtimestamp(event["time"]).strftime("%H:%M:%S"),
            event["kind"],
            event["miner_name"],
            event["detail"],
        )
    return table


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]

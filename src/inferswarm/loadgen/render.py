"""The summary of a run as rich tables."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table

from inferswarm.loadgen.stats import PERCENTILES, Summary

CPU_SHARE_WARNING = 0.7
"""Above this share of one core the generator may be measuring itself."""


def summary_tables(summary: Summary, title: str) -> Group:
    parts: list[Table] = [latency_table(summary, title), throughput_table(summary)]
    if summary.errors:
        parts.append(errors_table(summary))
    return Group(*parts)


def latency_table(summary: Summary, title: str) -> Table:
    table = Table(title=title)
    table.add_column("latency (ms)")
    for column in ("mean", *(f"p{p}" for p in PERCENTILES), "samples"):
        table.add_column(column, justify="right")
    rows = (
        ("time to first token", summary.ttft),
        ("inter-token (per chunk)", summary.itl),
        ("time per output token", summary.tpot),
        ("end to end", summary.e2e),
    )
    for name, dist in rows:
        table.add_row(
            name, _ms(dist.mean), *(_ms(dist.percentiles[p]) for p in PERCENTILES), str(dist.count)
        )
    return table


def throughput_table(summary: Summary) -> Table:
    table = Table(show_header=False, title="throughput")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("requests (ok / failed)", f"{summary.succeeded} / {summary.failed}")
    table.add_row("elapsed", f"{summary.elapsed_s:.2f} s")
    table.add_row("request throughput", f"{summary.request_throughput:.2f} req/s")
    table.add_row("output token throughput", f"{summary.output_token_throughput:.1f} tokens/s")
    table.add_row("output tokens", str(summary.output_tokens))
    if summary.prompt_tokens is not None:
        table.add_row("prompt tokens (server count)", str(summary.prompt_tokens))
    cpu = summary.client_cpu_per_request_ms
    share = f"{100 * summary.client_cpu_share:.0f}% of one core"
    if summary.client_cpu_share > CPU_SHARE_WARNING:
        share = f"[bold red]{share}: the generator may be the bottleneck[/]"
    table.add_row("client CPU per request", f"{cpu:.2f} ms" if cpu is not None else "-")
    table.add_row("client CPU", share)
    return table


def errors_table(summary: Summary) -> Table:
    table = Table(title="errors")
    table.add_column("kind")
    table.add_column("count", justify="right")
    table.add_column("first message")
    for kind, count in summary.errors.items():
        table.add_row(kind, str(count), summary.first_errors.get(kind, ""))
    return table


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.1f}"

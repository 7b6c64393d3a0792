"""A PNG of a run: latency of each request and throughput per second over time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI

import matplotlib.pyplot as plt
import numpy as np

from inferswarm.loadgen.stats import RequestRecord


def write_plot(records: Sequence[RequestRecord], path: Path, title: str) -> None:
    good = [r for r in records if r.ok]
    figure, (latency, throughput) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    figure.suptitle(title)
    starts = np.array([r.start_s for r in good])
    latency.scatter(starts, [1000 * r.e2e_s for r in good], s=8, label="end to end")
    ttft = [(r.start_s, 1000 * r.ttft_s) for r in good if r.ttft_s is not None]
    if ttft:
        latency.scatter(*zip(*ttft, strict=True), s=8, label="time to first token")
    failed = [r.start_s for r in records if not r.ok]
    if failed:
        latency.scatter(failed, [0] * len(failed), s=12, marker="x", color="red", label="failed")
    latency.set_ylabel("latency (ms)")
    latency.legend(loc="upper left")
    latency.grid(alpha=0.3)

    span = max((r.end_s for r in good), default=1.0)
    width = max(1.0, span / 40)  # about 40 bars whatever the length of the run
    edges = np.arange(0.0, span + width, width)
    chunk_times, chunk_tokens = _chunks(good)
    tokens, _ = np.histogram(chunk_times, bins=edges, weights=chunk_tokens)
    requests, _ = np.histogram([r.end_s for r in good], bins=edges)
    throughput.stairs(tokens / width, edges, color="tab:blue", label="output tokens/s")
    throughput.set_ylabel("output tokens/s")
    throughput.set_xlabel(
        f"seconds since start ({width:.3g} s bins; tokens when they arrived, requests when they ended)"
    )
    throughput.set_ylim(bottom=0)
    throughput.grid(alpha=0.3)
    per_request = throughput.twinx()
    per_request.stairs(requests / width, edges, color="tab:orange", label="requests/s")
    per_request.set_ylabel("requests/s")
    per_request.set_ylim(bottom=0)
    lines = throughput.get_legend_handles_labels()
    more = per_request.get_legend_handles_labels()
    throughput.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _chunks(records: Sequence[RequestRecord]) -> tuple[list[float], list[float]]:
    """When each streamed chunk arrived and how many tokens it carried.

    The server's token count (when it gave one) is spread evenly over the chunks.
    """
    times: list[float] = []
    tokens: list[float] = []
    for r in records:
        if r.ttft_s is None:
            continue
        arrivals = r.start_s + r.ttft_s + np.concatenate(([0.0], np.cumsum(r.chunk_gaps_s)))
        times.extend(arrivals.tolist())
        tokens.extend([r.output_tokens / len(arrivals)] * len(arrivals))
    return times, tokens

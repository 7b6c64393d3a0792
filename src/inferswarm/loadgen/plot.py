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

    ends = np.array([r.end_s for r in good])
    edges = _one_second_bins(float(ends.max()) if len(ends) else 1.0)
    widths = np.diff(edges)
    requests, _ = np.histogram(ends, bins=edges)
    tokens, _ = np.histogram(ends, bins=edges, weights=[r.output_tokens for r in good])
    throughput.stairs(tokens / widths, edges, color="tab:blue", label="output tokens/s")
    throughput.set_ylabel("output tokens/s")
    throughput.set_xlabel("seconds since start (requests counted when they finish)")
    throughput.set_ylim(bottom=0)
    throughput.grid(alpha=0.3)
    per_request = throughput.twinx()
    per_request.stairs(requests / widths, edges, color="tab:orange", label="requests/s")
    per_request.set_ylabel("requests/s")
    per_request.set_ylim(bottom=0)
    lines = throughput.get_legend_handles_labels()
    more = per_request.get_legend_handles_labels()
    throughput.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _one_second_bins(last: float) -> np.ndarray:
    """Edges 0, 1, 2, ... and the last finish, so the final partial second is not undercounted."""
    whole = np.arange(0.0, np.floor(last) + 1.0)
    return whole if last <= whole[-1] else np.append(whole, last)

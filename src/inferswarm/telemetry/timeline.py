"""Per-second samples of the last few minutes: what charts and "the last
minute" figures are computed from.

A ``Timeline`` keeps one bucket per whole second of an injected clock, in a
ring of ``seconds`` buckets. Counters add up within a second, latencies are
kept as samples (at most ``max_samples`` per second, so a burst cannot grow
memory without bound), gauges keep their last value. Pure: every call takes
``now``; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

DEFAULT_SECONDS = 300
DEFAULT_MAX_SAMPLES = 512


@dataclass
class Second:
    """Everything recorded during one whole second."""

    t: int
    counts: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..1) of unsorted ``values``; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


class Timeline:
    def __init__(
        self, seconds: int = DEFAULT_SECONDS, max_samples: int = DEFAULT_MAX_SAMPLES
    ) -> None:
        if seconds < 1:
            raise ValueError("a timeline needs at least one second")
        self.seconds = seconds
        self.max_samples = max_samples
        self._buckets: deque[Second] = deque(maxlen=seconds)

    def count(self, now: float, name: str, amount: float = 1) -> None:
        counts = self._bucket(now).counts
        counts[name] = counts.get(name, 0) + amount

    def observe(self, now: float, name: str, value: float) -> None:
        samples = self._bucket(now).samples.setdefault(name, [])
        if len(samples) < self.max_samples:
            samples.append(value)

    def gauge(self, now: float, name: str, value: float) -> None:
        self._bucket(now).gauges[name] = value

    def _bucket(self, now: float) -> Second:
        t = math.floor(now)
        if self._buckets and self._buckets[-1].t == t:
            return self._buckets[-1]
        if self._buckets and self._buckets[-1].t > t:
            # A clock that stepped back: keep adding to the newest second.
            return self._buckets[-1]
        bucket = Second(t)
        self._buckets.append(bucket)
        return bucket

    def window(self, now: float, last_s: int) -> list[Second]:
        """The buckets of the ``last_s`` whole seconds up to ``now``, oldest
        first, with empty seconds filled in."""
        end = math.floor(now)
        start = end - min(last_s, self.seconds) + 1
        recorded = {b.t: b for b in self._buckets if start <= b.t <= end}
        return [recorded.get(t) or Second(t) for t in range(start, end + 1)]

    def summary(
        self,
        now: float,
        last_s: int,
        counters: Iterable[str],
        latencies: Iterable[str],
        quantiles: Sequence[float] = (0.5, 0.95),
    ) -> dict[str, float | None]:
        """Rates per second of ``counters`` and percentiles of ``latencies``
        over the last ``last_s`` seconds, e.g. ``tokens_per_s`` and ``ttft_p95``."""
        seconds = self.window(now, last_s)
        result: dict[str, float | None] = {}
        for name in counters:
            total = sum(b.counts.get(name, 0) for b in seconds)
            result[f"{name}_per_s"] = total / len(seconds)
        for name in latencies:
            values = [v for b in seconds for v in b.samples.get(name, ())]
            for q in quantiles:
                result[f"{name}_p{round(q * 100)}"] = percentile(values, q)
        return result

    def series(
        self,
        now: float,
        last_s: int,
        counters: Iterable[str],
        latencies: Iterable[str],
        gauges: Iterable[str],
        quantiles: Sequence[float] = (0.5, 0.95),
    ) -> list[dict[str, float | None]]:
        """One point per second for charts: counters as totals of that second,
        latency percentiles of that second (None when nothing finished), and
        gauges (None when not sampled that second)."""
        counters, latencies, gauges = list(counters), list(latencies), list(gauges)
        points = []
        for bucket in self.window(now, last_s):
            point: dict[str, float | None] = {"t": bucket.t}
            for name in counters:
                point[name] = bucket.counts.get(name, 0)
            for name in latencies:
                values = bucket.samples.get(name, [])
                for q in quantiles:
                    point[f"{name}_p{round(q * 100)}"] = percentile(values, q)
            for name in gauges:
                point[name] = bucket.gauges.get(name)
            points.append(point)
        return points

    def rate(self, now: float, name: str, last_s: int) -> float:
        """Average per second of counter ``name`` over the last ``last_s`` seconds."""
        seconds = self.window(now, last_s)
        return sum(b.counts.get(name, 0) for b in seconds) / len(seconds)

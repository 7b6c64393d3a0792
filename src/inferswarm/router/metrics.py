"""Prometheus metrics for the router, in the naming style of vLLM and SGLang.

Request-level figures are recorded as requests finish; per-miner figures are
read from the live registry at scrape time, so they are never stale and
never duplicated. Each router owns its own ``CollectorRegistry``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from inferswarm.router.registry import MinerRegistry

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
"""Seconds, from a cached prompt on a GPU to a long answer on a board."""


class RouterMetrics:
    def __init__(self, miners: MinerRegistry) -> None:
        self.registry = CollectorRegistry()
        labels = ("model",)
        self.requests = Counter(
            "inferswarm_requests",
            "Client requests by outcome.",
            ("model", "outcome"),
            registry=self.registry,
        )
        self.ttft = Histogram(
            "inferswarm_time_to_first_token_seconds",
            "Time to first token.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.e2e = Histogram(
            "inferswarm_e2e_request_latency_seconds",
            "End-to-end request latency.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "inferswarm_prompt_tokens", "Prompt tokens processed.", labels, registry=self.registry
        )
        self.generation_tokens = Counter(
            "inferswarm_generation_tokens", "Tokens generated.", labels, registry=self.registry
        )
        self.in_flight = Gauge(
            "inferswarm_requests_running", "Requests in flight.", registry=self.registry
        )
        self.verifications = Counter(
            "inferswarm_verifications",
            "Verifications by purpose (redundant, spot_check, canary), consensus and verdict.",
            ["purpose", "consensus", "verdict"],
            registry=self.registry,
        )
        self.reputation_outcomes = Counter(
            "inferswarm_reputation_outcomes",
            "Outcomes recorded in the reputation book (pass, fail, forged, timeout, ...).",
            ["outcome"],
            registry=self.registry,
        )
        self.quarantines = Counter(
            "inferswarm_quarantines", "Times a miner was quarantined.", registry=self.registry
        )
        self.registry.register(_MinerCollector(miners))


class _MinerCollector(Collector):
    """Per-miner and network-wide figures, read from the registry when scraped."""

    def __init__(self, miners: MinerRegistry) -> None:
        self._miners = miners

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["miner", "name", "tier"]
        slots = GaugeMetricFamily("inferswarm_miner_slots", "Slots a miner offers.", labels=labels)
        busy = GaugeMetricFamily(
            "inferswarm_miner_slots_busy", "Tasks on a miner, running or queued.", labels=labels
        )
        speed = GaugeMetricFamily(
            "inferswarm_miner_tokens_per_second",
            "Aggregate generation speed the router believes.",
            labels=labels,
        )
        reputation = GaugeMetricFamily(
            "inferswarm_miner_reputation", "Reputation score, 0 to 1.", labels=labels
        )
        for conn in self._miners.connections():
            key = [conn.miner_id, conn.info.name, str(conn.tier)]
            reputation.add_metric(key, self._miners.book.score(conn.miner_id))
            slots.add_metric(key, conn.info.slots)
            busy.add_metric(key, len(conn.tasks))
            speed.add_metric(key, conn.tokens_per_s or 0.0)
        yield slots
        yield busy
        yield speed
        yield reputation
        yield GaugeMetricFamily(
            "inferswarm_miners_quarantined",
            "Connected miners in quarantine (only canary tasks).",
            value=sum(
                self._miners.book.is_quarantined(c.miner_id) for c in self._miners.connections()
            ),
        )
        yield GaugeMetricFamily(
            "inferswarm_miners", "Connected miners.", value=len(self._miners.connections())
        )
        yield GaugeMetricFamily(
            "inferswarm_migrations",
            "Streams moved to another miner (total).",
            value=self._miners.migrations,
        )
        yield GaugeMetricFamily(
            "inferswarm_hedges",
            "Duplicate tasks started by hedging (total).",
            value=self._miners.hedges,
        )
        yield GaugeMetricFamily(
            "inferswarm_miners_banned",
            "Miners banned after a failure.",
            value=sum(self._miners.is_banned(m) for m in self._miners.bans),
        )

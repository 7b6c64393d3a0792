"""The miner's own Prometheus exporter (``inferswarm miner --metrics-port``).

Names share the router's style (``inferswarm_`` prefix, base units,
``_total`` counters) with their own prefixes so both can sit in one
Prometheus: ``inferswarm_engine_*`` for the work this miner did,
``inferswarm_host_*`` for its machine. The router's view of every miner is
``inferswarm_miner_*`` on the router.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inferswarm.miner.usage import HostMonitor
from inferswarm.telemetry.timeline import Timeline

SPEED_WINDOW_S = 10
"""Tokens/s is averaged over this many seconds."""


class MinerStats:
    """What the agent did, recorded as it happens; read by heartbeats and ``/metrics``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.registry = CollectorRegistry()
        self.timeline = Timeline(seconds=SPEED_WINDOW_S + 1)
        self.tasks = Counter(
            "inferswarm_engine_tasks",
            "Tasks this miner ended, by outcome (ok, failed, rejected, cancelled).",
            ("model", "outcome"),
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "inferswarm_engine_prompt_tokens",
            "Prompt tokens processed.",
            ("model",),
            registry=self.registry,
        )
        self.generation_tokens = Counter(
            "inferswarm_engine_generation_tokens",
            "Tokens generated.",
            ("model",),
            registry=self.registry,
        )

    def generated(self, model: str, tokens: int) -> None:
        self.generation_tokens.labels(model).inc(tokens)
        self.timeline.count(self._clock(), "tokens", tokens)

    def finished(self, model: str, outcome: str, prompt_tokens: int = 0) -> None:
        self.tasks.labels(model, outcome).inc()
        if prompt_tokens:
            self.prompt_tokens.labels(model).inc(prompt_tokens)

    def tokens_per_s(self) -> float:
        """Generated tokens per second over the last ``SPEED_WINDOW_S`` whole seconds."""
        return self.timeline.rate(self._clock() - 1, "tokens", SPEED_WINDOW_S)


class LoadSource:
    """What the exporter asks the agent at scrape time."""

    def __init__(
        self,
        slots: int,
        busy: Callable[[], int],
        queued: Callable[[], int],
        connected: Callable[[], bool],
    ) -> None:
        self.slots = slots
        self.busy = busy
        self.queued = queued
        self.connected = connected


class LiveCollector(Collector):
    """Slots, tokens/s and the machine's utilisation, read when scraped."""

    def __init__(self, stats: MinerStats, load: LoadSource, host: HostMonitor) -> None:
        self._stats = stats
        self._load = load
        self._host = host

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, value=value)

        yield gauge("inferswarm_engine_slots", "Tasks the engine runs at once.", self._load.slots)
        yield gauge("inferswarm_engine_slots_busy", "Slots running a task.", self._load.busy())
        yield gauge(
            "inferswarm_engine_tasks_queued", "Tasks waiting for a slot.", self._load.queued()
        )
        yield gauge(
            "inferswarm_engine_tokens_per_second",
            f"Tokens generated per second over the last {SPEED_WINDOW_S} s.",
            self._stats.tokens_per_s(),
        )
        yield gauge(
            "inferswarm_engine_router_connected",
            "1 while the miner is registered with its router.",
            float(self._load.connected()),
        )
        usage = self._host.sample()
        yield gauge("inferswarm_host_cpu_percent", "CPU use of the machine.", usage.cpu_percent)
        yield gauge("inferswarm_host_memory_percent", "RAM use of the machine.", usage.ram_percent)
        yield gauge(
            "inferswarm_host_memory_used_bytes", "RAM in use on the machine.", usage.ram_used_bytes
        )
        gpu = GaugeMetricFamily(
            "inferswarm_host_gpu_utilization_percent", "GPU use (NVML).", labels=["gpu"]
        )
        gpu_memory = GaugeMetricFamily(
            "inferswarm_host_gpu_memory_used_bytes", "GPU memory in use (NVML).", labels=["gpu"]
        )
        for card in usage.gpus:
            gpu.add_metric([str(card.index)], card.utilization_percent)
            gpu_memory.add_metric([str(card.index)], card.memory_used_bytes)
        yield gpu
        yield gpu_memory

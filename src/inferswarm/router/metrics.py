"""Prometheus metrics for the router, and the per-second timeline behind
``/v1/network`` and the dashboard.

Names follow the style of vLLM and SGLang with an ``inferswarm_`` prefix and
underscores only (Prometheus keeps colons for recording rules): seconds and
bytes as base units, ``_total`` on counters, ``_percent`` for utilisation as
psutil and NVML report it. Request figures carry ``model`` and ``tier`` (the
capability tier, 1-5, of the miner that served the request; ``none`` when no
miner did); a request fanned out into several tasks (a list of prompts,
``n > 1``) counts once per task, since each has its own miner and latency.
Batch and map-reduce tasks run beside the API and are not in these figures. Per-miner figures are read from the live registry at scrape
time, so they are never stale and never duplicated. Each router owns its own
``CollectorRegistry``.
"""

from __future__ import annotations

import collections
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import aclosing

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inferswarm.openai_compat.errors import APIError
from inferswarm.protocol import TaskChunk, TaskDone
from inferswarm.router.admission import WaitQueue
from inferswarm.router.dispatch import Dispatcher, Job, Trace
from inferswarm.router.events import EventKind
from inferswarm.router.registry import MinerRegistry
from inferswarm.telemetry.timeline import Timeline

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
"""Seconds, from a cached prompt on a GPU to a long answer on a board."""

TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0)
"""Seconds between output tokens: ~1 ms on a GPU to ~1 s on a board under load."""

QUEUE_BUCKETS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds waited for a free slot; most requests wait none, so 0 is a bucket."""

NO_TIER = "none"

EVENT_COUNTERS = {
    EventKind.JOIN: ("inferswarm_miner_joins", "Miners that joined."),
    EventKind.LEAVE: ("inferswarm_miner_leaves", "Miners that left or were dropped."),
    EventKind.DRAINING: ("inferswarm_miner_drains", "Miners that announced a shutdown."),
    EventKind.BAN: ("inferswarm_miner_bans", "Bans of a miner after a failure."),
    EventKind.MIGRATION: ("inferswarm_migrations", "Streams moved to another miner mid-answer."),
    EventKind.HEDGE: (
        "inferswarm_hedges",
        "Duplicate tasks started by hedging a slow first token.",
    ),
    EventKind.VERIFY_FAIL: (
        "inferswarm_verification_failures",
        "Results a verification found wrong (consensus, spot check or canary).",
    ),
    EventKind.FORGED: (
        "inferswarm_forged_results",
        "Results rejected because their signature or output hash did not verify.",
    ),
    EventKind.QUARANTINE: ("inferswarm_quarantines", "Times a miner was quarantined."),
    EventKind.RELEASE: ("inferswarm_quarantine_releases", "Miners released after canaries."),
    EventKind.FAILOVER: (
        "inferswarm_failovers",
        "Tasks retried on another miner after failing before any output.",
    ),
    EventKind.SCALE: ("inferswarm_scale_changes", "Miner count changes by the autoscaler."),
    EventKind.MODEL_LOAD: ("inferswarm_model_loads", "Variants a miner loaded while connected."),
    EventKind.MODEL_UNLOAD: ("inferswarm_model_unloads", "Variants a miner stopped serving."),
    EventKind.MODEL_ERROR: (
        "inferswarm_model_change_failures",
        "Loads or unloads a miner could not do.",
    ),
}

TIMELINE_COUNTERS = ("requests", "errors", "prompt_tokens", "generation_tokens")
TIMELINE_LATENCIES = ("ttft", "itl", "e2e", "queue")
TIMELINE_GAUGES = ("queue_depth", "in_flight", "slots", "busy_slots", "miners")


class RouterMetrics:
    def __init__(
        self,
        miners: MinerRegistry,
        queue: WaitQueue,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = CollectorRegistry()
        self.timeline = Timeline()
        self._wall_clock = wall_clock
        self._miners = miners
        self._queue = queue
        self.running = 0
        self.running_by_model: collections.Counter[str] = collections.Counter()
        """Requests in flight per model, queued or generating: the autoscaler's demand."""
        request = ("model", "tier")
        self.requests = Counter(
            "inferswarm_requests",
            "Requests that reached the dispatcher (each part of a fanned-out request counts), "
            "by outcome: ok, cancelled or the error code.",
            ("model", "tier", "outcome"),
            registry=self.registry,
        )
        self.rejections = Counter(
            "inferswarm_rejections",
            "API requests answered with an error status, by status and error code "
            "(validation, auth, unknown model, full queue, no miner).",
            ("status", "reason"),
            registry=self.registry,
        )
        self.ttft = Histogram(
            "inferswarm_time_to_first_token_seconds",
            "Time to first token.",
            request,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.itl = Histogram(
            "inferswarm_inter_token_latency_seconds",
            "Time between output tokens.",
            request,
            buckets=TOKEN_GAP_BUCKETS,
            registry=self.registry,
        )
        self.e2e = Histogram(
            "inferswarm_e2e_request_latency_seconds",
            "End-to-end request latency.",
            request,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_time = Histogram(
            "inferswarm_request_queue_time_seconds",
            "Time a request waited in the router's queue for a free slot.",
            request,
            buckets=QUEUE_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "inferswarm_prompt_tokens", "Prompt tokens processed.", request, registry=self.registry
        )
        self.generation_tokens = Counter(
            "inferswarm_generation_tokens", "Tokens generated.", request, registry=self.registry
        )
        self.in_flight = Gauge(
            "inferswarm_requests_running",
            "Requests in flight, queued or generating.",
            ("model",),
            registry=self.registry,
        )
        self.verifications = Counter(
            "inferswarm_verifications",
            "Verifications by purpose (redundant, spot_check, canary), consensus or method "
            "(exact, semantic, teacher) and verdict.",
            ["purpose", "consensus", "verdict"],
            registry=self.registry,
        )
        self.reputation_outcomes = Counter(
            "inferswarm_reputation_outcomes",
            "Outcomes recorded in the reputation book (pass, fail, forged, timeout, ...).",
            ["outcome"],
            registry=self.registry,
        )
        self.registry.register(_NetworkCollector(miners, queue))

    def reject(self, status: int, reason: str) -> None:
        self.rejections.labels(str(status), reason).inc()
        self.timeline.count(self._wall_clock(), "errors")

    def sample(self) -> None:
        """Record this second's gauges on the timeline (called about once a second)."""
        now = self._wall_clock()
        connections = self._miners.connections()
        self.timeline.gauge(now, "queue_depth", len(self._queue))
        self.timeline.gauge(now, "in_flight", self.running)
        self.timeline.gauge(now, "slots", sum(c.info.slots for c in connections))
        self.timeline.gauge(now, "busy_slots", sum(len(c.tasks) for c in connections))
        self.timeline.gauge(now, "miners", len(connections))
        for model, running in self.running_by_model.items():
            self.timeline.gauge(now, per_model("in_flight", model), running)

    async def measured(
        self, dispatcher: Dispatcher, job: Job, trace: Trace | None = None
    ) -> AsyncGenerator[TaskChunk | TaskDone, None]:
        """The dispatcher's events for ``job``, with latency, tokens and outcome recorded."""
        trace = trace or Trace()
        clock = time.perf_counter
        started = last_token = clock()
        outcome = "cancelled"
        first_token = True
        self.in_flight.labels(job.model).inc()
        self.running += 1
        self.running_by_model[job.model] += 1
        self.timeline.count(self._wall_clock(), per_model("arrivals", job.model))
        try:
            async with aclosing(dispatcher.run(job, trace)) as events:
                async for event in events:
                    now = clock()
                    labels = (job.model, _tier(trace))
                    if isinstance(event, TaskChunk) and event.tokens:
                        gaps = event.tokens
                        if first_token:
                            first_token = False
                            self._observe("ttft", self.ttft, labels, now - started)
                            self.timeline.observe(
                                self._wall_clock(), per_model("ttft", job.model), now - started
                            )
                            gaps -= 1  # tokens that came along with the first one
                        # A chunk of n tokens spreads its gap over them, so there is
                        # one inter-token latency per output token after the first.
                        gap = (now - last_token) / event.tokens if gaps == event.tokens else 0.0
                        for _ in range(gaps):
                            self._observe("itl", self.itl, labels, gap)
                        last_token = now
                        # Charted as tokens arrive, so throughput does not jump at each end.
                        self.timeline.count(self._wall_clock(), "generation_tokens", event.tokens)
                    elif isinstance(event, TaskDone):
                        outcome = "ok"
                        self._observe("e2e", self.e2e, labels, now - started)
                        self._tokens(labels, event)
                    yield event
        except APIError as exc:
            outcome = exc.code or exc.error_type
            raise
        finally:
            labels = (job.model, _tier(trace))
            self.in_flight.labels(job.model).dec()
            self.running -= 1
            self.running_by_model[job.model] -= 1
            self.requests.labels(*labels, outcome).inc()
            self._observe("queue", self.queue_time, labels, trace.queue_wait_s)
            self.timeline.count(self._wall_clock(), "requests")

    def _observe(self, name: str, histogram: Histogram, labels: tuple[str, str], s: float) -> None:
        histogram.labels(*labels).observe(s)
        self.timeline.observe(self._wall_clock(), name, s)

    def _tokens(self, labels: tuple[str, str], done: TaskDone) -> None:
        now = self._wall_clock()
        self.prompt_tokens.labels(*labels).inc(done.prompt_tokens)
        self.generation_tokens.labels(*labels).inc(done.completion_tokens)
        self.timeline.count(now, "prompt_tokens", done.prompt_tokens)


def per_model(name: str, model: str) -> str:
    """The timeline series of ``name`` for one model (the plain name is network-wide)."""
    return f"{name}:{model}"


def _tier(trace: Trace) -> str:
    return NO_TIER if trace.tier is None else str(trace.tier)


class _NetworkCollector(Collector):
    """Per-miner and network-wide figures, read from the registry when scraped."""

    def __init__(self, miners: MinerRegistry, queue: WaitQueue) -> None:
        self._miners = miners
        self._queue = queue

    def collect(self) -> Iterator[Metric]:
        yield from self._per_miner()
        yield from self._per_model()
        connections = self._miners.connections()
        yield GaugeMetricFamily("inferswarm_miners", "Connected miners.", value=len(connections))
        yield GaugeMetricFamily(
            "inferswarm_requests_waiting",
            "Queue depth: requests waiting for a free slot.",
            value=len(self._queue),
        )
        yield GaugeMetricFamily(
            "inferswarm_queue_capacity",
            "Requests the queue holds before refusing with 429.",
            value=self._queue.max_waiting,
        )
        yield GaugeMetricFamily(
            "inferswarm_miners_quarantined",
            "Connected miners in quarantine (only canary tasks).",
            value=sum(self._miners.book.is_quarantined(c.miner_id) for c in connections),
        )
        yield GaugeMetricFamily(
            "inferswarm_miners_banned",
            "Miners banned after a failure.",
            value=sum(self._miners.is_banned(m) for m in self._miners.bans),
        )
        totals = self._miners.events.totals
        for kind, (name, documentation) in EVENT_COUNTERS.items():
            yield CounterMetricFamily(name, documentation, value=totals[kind])

    def _per_miner(self) -> Iterator[Metric]:
        labels = ["miner", "name", "tier"]

        def gauge(name: str, documentation: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, labels=[*labels, *extra])

        slots = gauge("inferswarm_miner_slots", "Slots a miner offers.")
        busy = gauge("inferswarm_miner_slots_busy", "Tasks on a miner, running or queued.")
        queued = gauge("inferswarm_miner_tasks_queued", "Tasks waiting on the miner for a slot.")
        speed = gauge(
            "inferswarm_miner_tokens_per_second", "Aggregate generation speed the router believes."
        )
        state = gauge("inferswarm_miner_state", "1 for the miner's current state.", ("state",))
        banned = gauge("inferswarm_miner_banned", "1 while the miner is banned.")
        reputation = gauge("inferswarm_miner_reputation", "Reputation score, 0 to 1.")
        cpu = gauge("inferswarm_miner_cpu_percent", "CPU use the miner reported.")
        ram = gauge("inferswarm_miner_memory_percent", "Memory use the miner reported.")
        gpu = gauge(
            "inferswarm_miner_gpu_utilization_percent", "GPU use the miner reported.", ("gpu",)
        )
        gpu_mem = gauge(
            "inferswarm_miner_gpu_memory_used_bytes", "GPU memory the miner reported.", ("gpu",)
        )
        tasks = CounterMetricFamily(
            "inferswarm_miner_tasks",
            "Tasks a miner finished on this connection, by outcome.",
            labels=[*labels, "outcome"],
        )
        tokens = CounterMetricFamily(
            "inferswarm_miner_generation_tokens",
            "Tokens a miner generated on this connection.",
            labels=labels,
        )
        for conn in self._miners.connections():
            key = [conn.miner_id, conn.info.name, str(conn.tier)]
            slots.add_metric(key, conn.info.slots)
            busy.add_metric(key, len(conn.tasks))
            speed.add_metric(key, conn.tokens_per_s or 0.0)
            state.add_metric([*key, conn.state.value], 1)
            banned.add_metric(key, float(self._miners.is_banned(conn.miner_id)))
            reputation.add_metric(key, self._miners.book.score(conn.miner_id))
            tasks.add_metric([*key, "ok"], conn.completed)
            tasks.add_metric([*key, "failed"], conn.failed)
            tokens.add_metric(key, conn.generated_tokens)
            beat = conn.heartbeat
            if beat is None:
                continue
            queued.add_metric(key, beat.queued_tasks)
            cpu.add_metric(key, beat.cpu_percent)
            ram.add_metric(key, beat.ram_percent)
            for card in beat.gpus or ():
                gpu.add_metric([*key, str(card.index)], card.utilization_percent)
                gpu_mem.add_metric([*key, str(card.index)], card.memory_used_bytes)
        yield from (slots, busy, queued, speed, state, banned, cpu, ram, gpu, gpu_mem)
        yield from (tasks, tokens, reputation)

    def _per_model(self) -> Iterator[Metric]:
        miners = GaugeMetricFamily(
            "inferswarm_model_miners", "Live miners serving a model.", labels=["model"]
        )
        slots = GaugeMetricFamily(
            "inferswarm_model_slots", "Slots of the live miners serving a model.", labels=["model"]
        )
        for model, conns in sorted(self._miners.served_models().items()):
            miners.add_metric([model], len(conns))
            slots.add_metric([model], sum(c.info.slots for c in conns))
        yield miners
        yield slots

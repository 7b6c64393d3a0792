"""Reading the policy's signals for one model from the live router."""

from __future__ import annotations

from dataclasses import dataclass

from inferswarm.router.metrics import RouterMetrics, per_model
from inferswarm.router.registry import MinerConnection
from inferswarm.router.scale.policy import ModelSignals
from inferswarm.router.schedule import MinerState
from inferswarm.telemetry.timeline import percentile

DEFAULT_WINDOW_S = 10
"""Seconds of latency and arrivals looked at; the trend compares two such windows."""
DEMAND_WINDOW_S = 5
"""Seconds over which requests in flight are averaged."""


@dataclass(frozen=True, slots=True)
class SignalReader:
    metrics: RouterMetrics
    window_s: int = DEFAULT_WINDOW_S

    def read(
        self, model: str, miners: list[MinerConnection], starting: int, now: float
    ) -> ModelSignals:
        """``miners``: every connection serving ``model``; ``starting``: miners
        asked for that have not joined yet (they count as capacity already, so a
        slow start does not start more)."""
        live = [c for c in miners if c.state is MinerState.LIVE]
        slots = [c.info.slots for c in live]
        # Tasks on draining miners still hold requests in flight: count them as busy,
        # or they would look like requests waiting for a slot.
        busy = sum(len(c.tasks) for c in miners)
        running = self.metrics.running_by_model[model]
        timeline = self.metrics.timeline
        recent = timeline.window(now, 2 * self.window_s)
        older, newer = recent[: self.window_s], recent[self.window_s :]
        ttfts = [v for b in newer for v in b.samples.get(per_model("ttft", model), ())]
        waits = [v for b in newer for v in b.samples.get("queue", ())]
        arrivals = per_model("arrivals", model)
        in_flight = [
            b.gauges[per_model("in_flight", model)]
            for b in recent[-DEMAND_WINDOW_S:]
            if per_model("in_flight", model) in b.gauges
        ]
        in_flight.append(running)  # the reading now, so a step shows at once
        return ModelSignals(
            model=model,
            miners=len(live) + starting,
            slots_per_miner=sum(slots) / len(slots) if slots else 1.0,
            busy_slots=busy,
            # In flight beyond what the live miners run: waiting in the router's queue.
            waiting=max(0, running - busy),
            ttft_p95_s=percentile(ttfts, 0.95),
            queue_wait_p95_s=percentile(waits, 0.95),
            arrivals_per_s=sum(b.counts.get(arrivals, 0) for b in newer) / self.window_s,
            previous_arrivals_per_s=sum(b.counts.get(arrivals, 0) for b in older) / self.window_s,
            average_demand=sum(in_flight) / len(in_flight),
        )

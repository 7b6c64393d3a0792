"""Reading the policy's signals for one model from the live router."""

from __future__ import annotations

from dataclasses import dataclass

from inferswarm.protocol import split_model_name
from inferswarm.router.metrics import RouterMetrics, per_model
from inferswarm.router.registry import MinerConnection
from inferswarm.router.scale.policy import ModelSignals
from inferswarm.router.schedule import MinerState
from inferswarm.telemetry.timeline import Second, percentile

DEFAULT_WINDOW_S = 10
"""Seconds of latency and arrivals looked at; the trend compares two such windows."""
DEMAND_WINDOW_S = 5
"""Seconds over which requests in flight are averaged."""


@dataclass(frozen=True, slots=True)
class SignalReader:
    metrics: RouterMetrics
    window_s: int = DEFAULT_WINDOW_S

    def read(
        self,
        model: str,
        miners: list[MinerConnection],
        starting: int,
        now: float,
        family_share: float = 1.0,
    ) -> ModelSignals:
        """``miners``: every connection serving ``model``; ``starting``: miners
        asked for that have not joined yet (they count as capacity already, so a
        slow start does not start more). Requests that name only ``model``'s
        family count for it by ``family_share`` (1 / the family's variants served),
        since any of those variants may answer them."""
        names = {model: 1.0}
        family, variant = split_model_name(model)
        if variant:
            names[family] = family_share
        live = [c for c in miners if c.state is MinerState.LIVE]
        slots = [c.info.slots for c in live]
        # Tasks on draining miners still hold requests in flight: count them as busy,
        # or they would look like requests waiting for a slot.
        busy = sum(len(c.tasks) for c in miners)
        running = sum(self.metrics.running_by_model[n] * w for n, w in names.items())
        timeline = self.metrics.timeline
        recent = timeline.window(now, 2 * self.window_s)
        older, newer = recent[: self.window_s], recent[self.window_s :]
        ttfts = [v for b in newer for n in names for v in b.samples.get(per_model("ttft", n), ())]
        waits = [v for b in newer for v in b.samples.get("queue", ())]

        def arrivals_per_s(seconds: list[Second]) -> float:
            keys = [(per_model("arrivals", n), w) for n, w in names.items()]
            return sum(b.counts.get(k, 0) * w for b in seconds for k, w in keys) / self.window_s

        def in_flight_at(bucket: Second) -> float | None:
            gauges = [(bucket.gauges.get(per_model("in_flight", n)), w) for n, w in names.items()]
            known = [value * w for value, w in gauges if value is not None]
            return sum(known) if known else None

        in_flight = [v for b in recent[-DEMAND_WINDOW_S:] if (v := in_flight_at(b)) is not None]
        in_flight.append(running)  # the reading now, so a step shows at once
        return ModelSignals(
            model=model,
            miners=len(live) + starting,
            slots_per_miner=sum(slots) / len(slots) if slots else 1.0,
            busy_slots=busy,
            # In flight beyond what the live miners run: waiting in the router's queue.
            waiting=max(0, round(running) - busy),
            ttft_p95_s=percentile(ttfts, 0.95),
            queue_wait_p95_s=percentile(waits, 0.95),
            arrivals_per_s=arrivals_per_s(newer),
            previous_arrivals_per_s=arrivals_per_s(older),
            average_demand=sum(in_flight) / len(in_flight),
        )

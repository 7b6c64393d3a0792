"""The live state of the network as one JSON document: what ``GET /v1/network``
returns, what the dashboard draws and ``inferswarm status`` prints.

A ``snapshot`` is the whole state with the per-second series of the last
minutes; a ``tick`` is what the dashboard's stream sends each second: the
same state with only the two newest series points (the second that just ended
is complete only now) and the events it has not seen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from inferswarm import __version__
from inferswarm.router.admission import WaitQueue
from inferswarm.router.events import NetworkEvent
from inferswarm.router.metrics import (
    TIMELINE_COUNTERS,
    TIMELINE_GAUGES,
    TIMELINE_LATENCIES,
    RouterMetrics,
)
from inferswarm.router.registry import MinerConnection, MinerRegistry

SERIES_SECONDS = 300
SUMMARY_SECONDS = 60
EVENTS_SHOWN = 50
TICK_POINTS = 2


class NetworkView:
    def __init__(
        self,
        registry: MinerRegistry,
        metrics: RouterMetrics,
        queue: WaitQueue,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        policy: str,
        verification: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        """``verification`` gives the network-wide verification state."""
        self._registry = registry
        self._metrics = metrics
        self._queue = queue
        self._clock = clock
        self._wall_clock = wall_clock
        self._policy = policy
        self._verification = verification
        self._started_at = wall_clock()

    def snapshot(self, series_s: int = SERIES_SECONDS) -> dict[str, Any]:
        state = self._state()
        state["series"] = self._series(series_s)
        state["events"] = [_event(e) for e in self._registry.events.recent(EVENTS_SHOWN)]
        return state

    def tick(self, after_seq: int) -> dict[str, Any]:
        state = self._state()
        state["series"] = self._series(TICK_POINTS)
        state["events"] = [_event(e) for e in self._registry.events.recent(after_seq=after_seq)]
        return state

    @property
    def last_event_seq(self) -> int:
        return self._registry.events.last_seq

    def _state(self) -> dict[str, Any]:
        now = self._clock()
        wall = self._wall_clock()
        connections = self._registry.connections()
        timeline = self._metrics.timeline
        totals = self._registry.events.totals
        return {
            "object": "network",
            "time": wall,
            "router": {
                "version": __version__,
                "uptime_s": round(wall - self._started_at, 1),
                "policy": self._policy,
            },
            "miners": [self._miner(conn, now) for conn in connections],
            "models": self._models(),
            "queue": {"depth": len(self._queue), "capacity": self._queue.max_waiting},
            "in_flight": self._metrics.running,
            "slots": sum(c.info.slots for c in connections),
            "busy_slots": sum(len(c.tasks) for c in connections),
            "last_minute": timeline.summary(
                wall, SUMMARY_SECONDS, TIMELINE_COUNTERS, TIMELINE_LATENCIES
            ),
            "totals": {kind.value: totals[kind] for kind in sorted(totals)},
            "verification": self._verification(),
        }

    def _series(self, seconds: int) -> list[dict[str, float | None]]:
        return self._metrics.timeline.series(
            self._wall_clock(), seconds, TIMELINE_COUNTERS, TIMELINE_LATENCIES, TIMELINE_GAUGES
        )

    def _models(self) -> list[dict[str, Any]]:
        served = self._registry.served_models()
        loadable = self._registry.loadable_models()
        return [
            {
                "id": model,
                "miners": len(conns),
                "slots": sum(c.info.slots for c in conns),
                "busy_slots": sum(len(c.tasks) for c in conns),
                "tokens_per_s": round(sum(c.tokens_per_s or 0.0 for c in conns), 1),
                "loadable_on": len(loadable.get(model, ())),
            }
            for model, conns in sorted(served.items())
        ]

    def _miner(self, conn: MinerConnection, now: float) -> dict[str, Any]:
        info = conn.info
        beat = conn.heartbeat
        return {
            "id": info.miner_id,
            "name": info.name,
            "state": self._registry.state_of(conn).value,
            "banned": self._registry.is_banned(conn.miner_id),
            "engine": info.engine,
            "models": [offer.name for offer in info.models],
            "loading": list(conn.loading),
            "loadable": [offer.name for offer in info.loadable],
            "hardware": info.hardware.model_dump(),
            "hardware_summary": info.hardware.summary(),
            "tier": conn.tier,
            "slots": info.slots,
            "busy": len(conn.tasks),
            "queued": beat.queued_tasks if beat else 0,
            "tokens_per_s": _rounded(conn.tokens_per_s),
            "observed_tokens_per_s": _rounded(conn.speed.observed_generation),
            "observed_ttft_s": _rounded(conn.speed.observed_ttft_s, 3),
            "reported_tokens_per_s": _rounded(beat.tokens_per_s if beat else None),
            "reputation": round(self._registry.book.score(conn.miner_id), 4),
            "utilisation": {
                "cpu_percent": beat.cpu_percent if beat else None,
                "ram_percent": beat.ram_percent if beat else None,
                "ram_used_bytes": beat.ram_used_bytes if beat else None,
                "gpus": [g.model_dump() for g in beat.gpus or ()] if beat else [],
            },
            "completed": conn.completed,
            "failed": conn.failed,
            "generated_tokens": conn.generated_tokens,
            "connected_s": round(now - conn.connected_at, 1),
            "last_seen_s": round(now - conn.last_seen, 2),
        }


def _event(event: NetworkEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "time": event.at,
        "kind": event.kind.value,
        "miner_id": event.miner_id,
        "miner_name": event.miner_name,
        "detail": event.detail,
    }


def _rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)

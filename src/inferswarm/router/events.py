"""What happened in the network lately: joins, leaves, bans, migrations,
hedges, failovers, failed verifications, quarantines, model loads and unloads. A bounded log for ``/v1/network``, the dashboard and
``inferswarm status``, with a running total per kind for ``/metrics``."""

from __future__ import annotations

import itertools
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

DEFAULT_KEEP = 200


class EventKind(StrEnum):
    JOIN = "join"
    LEAVE = "leave"
    DRAINING = "draining"
    BAN = "ban"
    MIGRATION = "migration"
    HEDGE = "hedge"
    FAILOVER = "failover"
    VERIFY_FAIL = "verify_fail"
    """A verification (consensus, spot check, canary) found a miner's result wrong."""
    FORGED = "forged"
    """A result whose signature or output hash did not verify."""
    QUARANTINE = "quarantine"
    RELEASE = "release"
    """A quarantined miner passed its canaries and is back on probation."""
    SCALE = "scale"
    """The autoscaler changed the miner count (not about one miner)."""
    MODEL_LOAD = "model_load"
    """A miner loaded a variant (at the router's request) and serves it now."""
    MODEL_UNLOAD = "model_unload"
    """A miner stopped serving a variant."""
    MODEL_ERROR = "model_error"
    """A miner could not load or unload a variant it was asked to."""


@dataclass(frozen=True, slots=True)
class NetworkEvent:
    seq: int
    at: float
    """Wall-clock time (Unix seconds)."""
    kind: EventKind
    miner_id: str
    miner_name: str
    detail: str


class EventLog:
    """The last ``keep`` events, oldest first; ``totals`` counts every event ever."""

    def __init__(self, wall_clock: Callable[[], float], keep: int = DEFAULT_KEEP) -> None:
        self._wall_clock = wall_clock
        self._events: deque[NetworkEvent] = deque(maxlen=keep)
        self._seq = itertools.count(1)
        self.totals: Counter[EventKind] = Counter()

    def record(self, kind: EventKind, miner_id: str, miner_name: str, detail: str) -> NetworkEvent:
        event = NetworkEvent(
            next(self._seq), self._wall_clock(), kind, miner_id, miner_name, detail
        )
        self._events.append(event)
        self.totals[kind] += 1
        return event

    def recent(self, limit: int | None = None, after_seq: int = 0) -> list[NetworkEvent]:
        """Newest first; only events numbered above ``after_seq``."""
        newest_first = [e for e in reversed(self._events) if e.seq > after_seq]
        return newest_first if limit is None else newest_first[:limit]

    @property
    def last_seq(self) -> int:
        return self._events[-1].seq if self._events else 0

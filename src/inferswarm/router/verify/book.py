"""The reputation book: each miner's standing, in memory for the scheduler and
saved to the store after every change so it survives a router restart."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict

from inferswarm.protocol import MinerId
from inferswarm.router.verify.reputation import Outcome, ReputationPolicy, Standing, record
from inferswarm.storage import ReputationRecord, Store

log = logging.getLogger(__name__)

WallClock = Callable[[], float]
OutcomeListener = Callable[[MinerId, Outcome, Standing, Standing], None]
"""Told (miner, outcome, before, after) on every recorded outcome."""


class ReputationBook:
    def __init__(
        self, policy: ReputationPolicy | None = None, clock: WallClock = time.time
    ) -> None:
        # Wall time, not monotonic: decay must carry across router restarts.
        self.policy = policy or ReputationPolicy()
        self._clock = clock
        self._standings: dict[MinerId, Standing] = {}
        self._store: Store | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._write_lock = asyncio.Lock()
        self._listeners: list[OutcomeListener] = []

    async def attach(self, store: Store) -> None:
        """Load what the store remembers and save every later change to it."""
        self._store = store
        for row in await store.load_reputations():
            fields = asdict(row)
            del fields["miner_id"]
            self._standings[MinerId(row.miner_id)] = Standing(**fields)

    async def flush(self) -> None:
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    def on_outcome(self, listener: OutcomeListener) -> None:
        self._listeners.append(listener)

    def standing(self, miner_id: MinerId) -> Standing:
        return self._standings.get(miner_id, Standing(updated_at=self._clock()))

    def score(self, miner_id: MinerId) -> float:
        return self.standing(miner_id).score(self._clock(), self.policy)

    def is_quarantined(self, miner_id: MinerId) -> bool:
        return self.standing(miner_id).quarantined

    def is_suspect(self, miner_id: MinerId) -> bool:
        """A failed check not yet outweighed by passes."""
        return self.standing(miner_id).suspicion > 0

    def quarantined(self) -> list[MinerId]:
        return [m for m, s in self._standings.items() if s.quarantined]

    def record(self, miner_id: MinerId, outcome: Outcome, *, canary: bool = False) -> Standing:
        before = self.standing(miner_id)
        after = record(before, outcome, self._clock(), self.policy, canary=canary)
        self._standings[miner_id] = after
        if after.quarantined and not before.quarantined:
            log.warning(
                "miner %s quarantined after %s (score %.2f)",
                miner_id,
                outcome,
                after.score(self._clock(), self.policy),
            )
        elif before.quarantined and not after.quarantined:
            log.info("miner %s released from quarantine on probation", miner_id)
        for listener in self._listeners:
            listener(miner_id, outcome, before, after)
        self._save(miner_id)
        return after

    def _save(self, miner_id: MinerId) -> None:
        if self._store is None:
            return
        write = asyncio.get_running_loop().create_task(self._write(miner_id))
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)

    async def _write(self, miner_id: MinerId) -> None:
        assert self._store is not None
        # One write at a time, each of the standing as it is when its turn
        # comes: concurrent writes could otherwise land out of order and leave
        # an older standing in the store (a quarantine lost on restart).
        async with self._write_lock:
            row = ReputationRecord(miner_id=miner_id, **asdict(self.standing(miner_id)))
            try:
                await self._store.save_reputation(row)
            except Exception:
                log.exception("saving the reputation of %s failed; it is kept in memory", miner_id)

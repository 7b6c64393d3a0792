"""Per-key rate limits and quotas: requests and tokens per minute, tokens in
all, concurrent streams.

Admission checks and reserves under one lock, so a burst of concurrent
requests cannot all see the same spare capacity; the counters live in the
store, so they survive a restart. Tokens are reserved at admission (an
estimate of the prompt plus ``max_tokens`` per task) and settled with the real
usage when the request ends. Minutes are fixed windows (``now // 60``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field

from inferswarm.openai_compat.errors import RateLimited
from inferswarm.protocol import TaskChunk, TaskDone
from inferswarm.router.access import WallClock
from inferswarm.storage import ApiKeyRecord, Store

WINDOW_S = 60
QUOTA_RETRY_AFTER_S = 3600
"""A spent quota does not come back by itself; this only paces retries."""


@dataclass(frozen=True)
class Used:
    """A key's counters when a request arrives."""

    requests: int = 0
    window_tokens: int = 0
    total_tokens: int = 0
    streams: int = 0


@dataclass(frozen=True)
class Refusal:
    code: str
    message: str
    retry_after_s: int


def decide(
    key: ApiKeyRecord,
    used: Used,
    reserve: int,
    stream: bool,
    max_streams: int | None,
    now: float,
) -> Refusal | None:
    """Why a request reserving ``reserve`` tokens may not start now, or None. Pure."""
    to_next_window = max(1, math.ceil(WINDOW_S - now % WINDOW_S))
    if key.rpm is not None and used.requests >= key.rpm:
        return Refusal(
            "rate_limit_exceeded",
            f"Rate limit reached: this key may send {key.rpm} requests per minute. "
            f"Retry in {to_next_window} s, or ask the operator for a higher --rpm.",
            to_next_window,
        )
    if key.tpm is not None and used.window_tokens + reserve > key.tpm:
        alone = reserve > key.tpm
        return Refusal(
            "tokens_rate_limit_exceeded",
            f"Token rate limit reached: this key may use {key.tpm} tokens per minute and "
            + (
                f"this request alone may use {reserve} (prompt + max_tokens per choice). "
                "Lower max_tokens or n."
                if alone
                else f"{used.window_tokens} are used or reserved this minute. "
                f"Retry in {to_next_window} s."
            ),
            to_next_window,
        )
    if key.quota_tokens is not None and used.total_tokens + reserve > key.quota_tokens:
        left = max(0, key.quota_tokens - used.total_tokens)
        return Refusal(
            "insufficient_quota",
            f"Quota exceeded: this key may use {key.quota_tokens} tokens in all, {left} are "
            f"left and this request may use {reserve}. Lower max_tokens, or ask the operator "
            "for a new key or a larger quota.",
            QUOTA_RETRY_AFTER_S,
        )
    if stream and max_streams is not None and used.streams >= max_streams:
        return Refusal(
            "too_many_streams",
            f"This key already has {used.streams} streams open, the most this router allows "
            "per key. Close one or retry shortly.",
            1,
        )
    return None


@dataclass
class Reservation:
    """What one admitted request holds until ``UsageLimiter.settle``."""

    key: ApiKeyRecord
    window: int
    reserved: int
    stream: bool
    used_tokens: int = 0
    settled: bool = field(default=False)

    def add_tokens(self, tokens: int) -> None:
        self.used_tokens += tokens


class UsageLimiter:
    def __init__(
        self, store: Store, max_streams_per_key: int | None, clock: WallClock = time.time
    ) -> None:
        self._store = store
        self._max_streams = max_streams_per_key
        self._clock = clock
        self._lock = asyncio.Lock()
        self._streams: Counter[str] = Counter()

    async def admit(self, key: ApiKeyRecord, reserve: int, stream: bool) -> Reservation:
        """Reserve capacity for a request, or raise ``RateLimited`` (429 with Retry-After)."""
        async with self._lock:
            now = self._clock()
            window = int(now // WINDOW_S)
            used = await self._used(key, window)
            refusal = decide(key, used, reserve, stream, self._max_streams, now)
            if refusal is not None:
                raise RateLimited(
                    refusal.message,
                    code=refusal.code,
                    headers={"Retry-After": str(refusal.retry_after_s)},
                )
            await self._count(key, window, requests=1, tokens=reserve)
            if stream:
                self._streams[key.id] += 1
        return Reservation(key, window, reserve, stream)

    async def settle(self, reservation: Reservation) -> None:
        """Replace the reserved tokens with those used; release the stream. Idempotent."""
        if reservation.settled:
            return
        reservation.settled = True
        if reservation.stream:
            self._streams[reservation.key.id] -= 1
        delta = reservation.used_tokens - reservation.reserved
        if delta:
            async with self._lock:
                await self._count(reservation.key, reservation.window, requests=0, tokens=delta)

    async def _used(self, key: ApiKeyRecord, window: int) -> Used:
        store = self._store
        return Used(
            requests=await store.usage(key.id, "requests", window) if key.rpm is not None else 0,
            window_tokens=await store.usage(key.id, "tokens", window) if key.tpm is not None else 0,
            total_tokens=await store.usage(key.id, "quota", 0)
            if key.quota_tokens is not None
            else 0,
            streams=self._streams[key.id],
        )

    async def _count(self, key: ApiKeyRecord, window: int, requests: int, tokens: int) -> None:
        # Only limited keys pay for the writes.
        if requests and key.rpm is not None:
            await self._store.add_usage(key.id, "requests", window, requests)
        if tokens and key.tpm is not None:
            await self._store.add_usage(key.id, "tokens", window, tokens)
        if tokens and key.quota_tokens is not None:
            await self._store.add_usage(key.id, "quota", 0, tokens)


async def counted(
    events: AsyncGenerator[TaskChunk | TaskDone, None], reservation: Reservation
) -> AsyncGenerator[TaskChunk | TaskDone, None]:
    """A task's events, its tokens added to ``reservation`` as they come (so a
    cut stream still counts); the ``TaskDone`` corrects the total."""
    chunk_tokens = 0
    async with aclosing(events) as stream:
        async for event in stream:
            if isinstance(event, TaskChunk):
                chunk_tokens += event.tokens
                reservation.add_tokens(event.tokens)
            else:
                reservation.add_tokens(event.prompt_tokens + event.completion_tokens - chunk_tokens)
            yield event

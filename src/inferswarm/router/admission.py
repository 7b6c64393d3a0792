"""The router-side wait queue: when every miner is busy, tasks wait here.

Waiters are served in arrival order within a tenant (an API key) and in turn
across tenants, so one client's burst cannot starve the others. The queue is
bounded in length and in waiting time; a task that cannot wait is refused
with 429 and a ``Retry-After``, never dropped in silence.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from inferswarm.openai_compat.errors import RateLimited


@dataclass(eq=False)
class _Waiter:
    tenant: str
    ticket: int
    woken: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class WaitQueue:
    def __init__(self, max_waiting: int, timeout_s: float) -> None:
        self.max_waiting = max_waiting
        self.timeout_s = timeout_s
        self._tenants: OrderedDict[str, deque[_Waiter]] = OrderedDict()
        self._count = 0
        self._tickets = itertools.count()
        self.rejected = 0
        self.timed_out = 0

    def __len__(self) -> int:
        return self._count

    def depth_by_tenant(self) -> dict[str, int]:
        return {tenant: len(waiters) for tenant, waiters in self._tenants.items()}

    def ticket(self) -> int:
        """A place in line, kept across waits so a waiter woken in vain keeps it."""
        return next(self._tickets)

    async def wait(self, tenant: str, ticket: int | None = None) -> None:
        """Wait until capacity frees up, in ``ticket`` order within the tenant."""
        if self._count >= self.max_waiting:
            self.rejected += 1
            raise RateLimited(
                f"All miners are busy and {self._count} requests are already waiting. "
                "Retry after a short pause.",
                code="queue_full",
                headers={"Retry-After": "2"},
            )
        waiter = _Waiter(tenant, self.ticket() if ticket is None else ticket)
        self._enqueue(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.woken), self.timeout_s)
        except TimeoutError:
            self._remove(waiter)
            if waiter.woken.done():  # woken just as time ran out: the wake is not wasted
                self.wake(1)
            self.timed_out += 1
            raise RateLimited(
                f"No miner became free within {self.timeout_s:g} s. Retry later, or lower the load.",
                code="queue_timeout",
                headers={"Retry-After": "5"},
            ) from None
        except BaseException:  # the client went away while waiting
            self._remove(waiter)
            if waiter.woken.done():
                self.wake(1)
            raise

    def has_waiters(self) -> bool:
        return self._count > 0

    def wake(self, slots: int) -> None:
        """Wake up to ``slots`` waiters, taking tenants in turn."""
        for _ in range(slots):
            waiter = self._next()
            if waiter is None:
                return
            waiter.woken.set_result(None)

    def _enqueue(self, waiter: _Waiter) -> None:
        waiters = self._tenants.setdefault(waiter.tenant, deque())
        position = len(waiters)
        while position > 0 and waiters[position - 1].ticket > waiter.ticket:
            position -= 1
        waiters.insert(position, waiter)
        self._count += 1

    def _next(self) -> _Waiter | None:
        """The head of the first tenant in line; that tenant then goes to the back."""
        for tenant in list(self._tenants):
            waiters = self._tenants[tenant]
            if not waiters:
                del self._tenants[tenant]
                continue
            waiter = waiters.popleft()
            self._count -= 1
            if waiters:
                self._tenants.move_to_end(tenant)
            else:
                del self._tenants[tenant]
            return waiter
        return None

    def _remove(self, waiter: _Waiter) -> None:
        waiters = self._tenants.get(waiter.tenant)
        if waiters is None or waiter not in waiters:
            return
        waiters.remove(waiter)
        self._count -= 1
        if not waiters:
            del self._tenants[waiter.tenant]

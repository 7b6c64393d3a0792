"""Fan-out inside one request: ``n`` choices and lists of prompts become
independent tasks that run at once on different miners; their events are
merged back into one stream, each tagged with its choice index."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Choice:
    """Where one task's output goes in the response."""

    index: int
    prompt_index: int
    seed: int | None


def plan_choices(prompts: int, n: int, seed: int | None) -> list[Choice]:
    """Choices in OpenAI's order: all ``n`` of the first prompt, then the next.

    With a seed, choice ``j`` of every prompt gets ``seed + j``: the request is
    reproducible, yet its ``n`` samples differ from each other.
    """
    return [
        Choice(index=p * n + j, prompt_index=p, seed=None if seed is None else seed + j)
        for p in range(prompts)
        for j in range(n)
    ]


@dataclass(frozen=True)
class _End(Generic[T]):
    index: int
    error: BaseException | None


async def merge_streams(
    streams: list[AsyncGenerator[T, None]],
) -> AsyncGenerator[tuple[int, T], None]:
    """Events of all streams as they come, as ``(stream index, event)``.

    The first stream to fail fails the whole merge and the others are
    cancelled, so no miner keeps working for a client that got an error;
    closing the merge early cancels them too.
    """
    queue: asyncio.Queue[tuple[int, T] | _End[T]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncGenerator[T, None]) -> None:
        error: BaseException | None = None
        try:
            async for event in stream:
                await queue.put((index, event))
        except Exception as exc:
            error = exc
        finally:
            await stream.aclose()
            queue.put_nowait(_End(index, error))

    pumps = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    running = len(pumps)
    try:
        while running:
            item = await queue.get()
            if isinstance(item, _End):
                running -= 1
                if item.error is not None:
                    raise item.error
                continue
            yield item
    finally:
        for task in pumps:
            task.cancel()
        for task in pumps:
            with contextlib.suppress(BaseException):
                await task


async def first_then_rest(
    merged: AsyncGenerator[tuple[int, T], None],
) -> tuple[tuple[int, T], AsyncIterator[tuple[int, T]]]:
    """The first event (raising if the merge fails before any) and the rest."""
    try:
        first = await anext(merged)
    except BaseException:
        await merged.aclose()
        raise
    return first, merged

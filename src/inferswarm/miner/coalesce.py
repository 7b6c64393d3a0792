"""Merging text chunks that are ready at the same moment into one frame.

When an engine produces tokens faster than the socket sends them (a fast GPU,
or many tasks at once), the chunks waiting in the queue are sent as one
message. Nothing waits to be merged: a lone chunk goes out at once.
"""

from __future__ import annotations

import asyncio

from inferswarm.protocol import TaskChunk, TaskDone

StreamItem = TaskChunk | TaskDone | BaseException


def coalesce(items: list[StreamItem]) -> list[StreamItem]:
    """Merge consecutive chunks; keep ``TaskDone`` and errors as they are, in order."""
    merged: list[StreamItem] = []
    for item in items:
        last = merged[-1] if merged else None
        if isinstance(item, TaskChunk) and isinstance(last, TaskChunk):
            merged[-1] = TaskChunk(
                task_id=item.task_id, text=last.text + item.text, tokens=last.tokens + item.tokens
            )
        else:
            merged.append(item)
    return merged


async def next_batch(queue: asyncio.Queue[StreamItem]) -> list[StreamItem]:
    """Wait for one item, then take whatever else is already queued."""
    items = [await queue.get()]
    while not queue.empty():
        items.append(queue.get_nowait())
    return coalesce(items)

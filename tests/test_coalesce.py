from __future__ import annotations

import asyncio

from inferswarm.miner.coalesce import coalesce, next_batch
from inferswarm.miner.engines.base import TaskRejected
from inferswarm.protocol import TaskChunk, TaskDone, TaskId

T = TaskId("t")


def chunk(text: str, tokens: int = 1) -> TaskChunk:
    return TaskChunk(task_id=T, text=text, tokens=tokens)


def test_consecutive_chunks_merge_text_and_token_counts() -> None:
    done = TaskDone(task_id=T, finish_reason="stop", prompt_tokens=1, completion_tokens=3)
    assert coalesce([chunk("a"), chunk("b", 2), done]) == [chunk("ab", 3), done]


def test_errors_and_done_are_kept_in_order() -> None:
    error = TaskRejected("engine_error", "boom", retryable=True)
    assert coalesce([chunk("a"), error, chunk("b")]) == [chunk("a"), error, chunk("b")]


async def test_next_batch_takes_only_what_is_ready() -> None:
    queue: asyncio.Queue[TaskChunk | TaskDone | BaseException] = asyncio.Queue()
    queue.put_nowait(chunk("a"))
    queue.put_nowait(chunk("b"))
    assert await next_batch(queue) == [chunk("ab", 2)]
    later = asyncio.get_running_loop().call_later(0.01, queue.put_nowait, chunk("c"))
    assert await next_batch(queue) == [chunk("c")]
    later.cancel()

"""The engine interface every backend implements."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol, runtime_checkable

from inferswarm.protocol import Capability, FailureCode, ModelOffer, TaskAssign, TaskChunk, TaskDone


class TaskRejected(Exception):
    """The engine cannot run this task. ``retryable`` says whether another miner might."""

    def __init__(self, code: FailureCode, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.code: FailureCode = code
        self.message = message
        self.retryable = retryable


class Engine(Protocol):
    name: str
    slots: int
    capability: Capability | None
    """Set once measured; reported with every offer."""

    def offers(self) -> tuple[ModelOffer, ...]:
        """The models this engine serves."""
        ...

    def claimed_tokens_per_s(self) -> float | None:
        """Generation speed the engine expects of itself (measured later by the router)."""
        ...

    def generate(self, task: TaskAssign) -> AsyncGenerator[TaskChunk | TaskDone, None]:
        """Stream the task's text chunks, then one ``TaskDone``; raise ``TaskRejected``
        when it cannot. Closing the iterator stops generation and frees the slot."""
        ...

    def benchmark_identity(self) -> dict[str, object] | None:
        """What a benchmark result depends on, or None when it needs no cache."""
        ...

    async def benchmark(self) -> Capability | None:
        """Measure prompt and generation speed; None when it cannot be measured."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class TracksCache(Protocol):
    """An engine that knows which prompt prefixes its KV cache holds."""

    def cached_prefix_blocks(self) -> frozenset[int]:
        """Prefix blocks (``protocol.prefix``) of the prompts held now."""
        ...

"""Bounded memories of where work went: prompt prefixes (for cache-aware
routing) and sessions (for session affinity). Both evict the least recently
used entries, so memory stays bounded whatever the traffic."""

from __future__ import annotations

from collections import OrderedDict

from inferswarm.protocol import MinerId
from inferswarm.protocol.prefix import BLOCK_CHARS, MAX_BLOCKS_PER_PROMPT, prefix_blocks

CHARS_PER_TOKEN_UPPER = 6
"""No common tokenizer averages more characters per token than this, so
len(text) // 6 never overestimates a prompt's tokens."""

__all__ = [
    "BLOCK_CHARS",
    "CHARS_PER_TOKEN_UPPER",
    "MAX_BLOCKS_PER_PROMPT",
    "PrefixIndex",
    "SessionMap",
    "min_prompt_tokens",
    "prefix_blocks",
]


def min_prompt_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN_UPPER


class PrefixIndex:
    """Which miners recently processed which prefix blocks.

    A miner is assumed to hold the last prompt of each of its slots (each
    llama.cpp context keeps its last sequence's KV cache), so each miner
    remembers as many recent prompts as it has slots. A miner whose engine
    reports what its cache really holds (in heartbeats) is known exactly
    instead: ``replace`` sets its holdings, and prompts sent since the last
    report are added on top until the next one.
    """

    def __init__(self) -> None:
        self._recent: dict[MinerId, OrderedDict[tuple[int, ...], None]] = {}
        self._holders: dict[int, set[MinerId]] = {}
        self._view: dict[int, frozenset[MinerId]] = {}

    def record(self, miner_id: MinerId, blocks: tuple[int, ...], keep: int) -> None:
        """Note that ``miner_id`` processed a prompt; it holds its last ``keep``."""
        if not blocks:
            return
        recent = self._recent.setdefault(miner_id, OrderedDict())
        recent[blocks] = None
        recent.move_to_end(blocks)
        for block in blocks:
            self._add(block, miner_id)
        while len(recent) > keep:
            old, _ = recent.popitem(last=False)
            self._release(miner_id, old, recent)

    def replace(self, miner_id: MinerId, blocks: tuple[int, ...]) -> None:
        """The miner reported that its cache holds exactly ``blocks``."""
        self.forget(miner_id)
        if blocks:
            self._recent[miner_id] = OrderedDict({blocks: None})
            for block in blocks:
                self._add(block, miner_id)

    def forget(self, miner_id: MinerId) -> None:
        for blocks in self._recent.pop(miner_id, OrderedDict()):
            for block in blocks:
                self._discard(block, miner_id)

    def view(self) -> dict[int, frozenset[MinerId]]:
        return self._view

    def __len__(self) -> int:
        return len(self._holders)

    def _release(
        self, miner_id: MinerId, old: tuple[int, ...], kept: OrderedDict[tuple[int, ...], None]
    ) -> None:
        still_held = {block for blocks in kept for block in blocks}
        for block in old:
            if block not in still_held:
                self._discard(block, miner_id)

    def _add(self, block: int, miner_id: MinerId) -> None:
        holders = self._holders.setdefault(block, set())
        holders.add(miner_id)
        self._view[block] = frozenset(holders)

    def _discard(self, block: int, miner_id: MinerId) -> None:
        holders = self._holders.get(block)
        if holders is None:
            return
        holders.discard(miner_id)
        if holders:
            self._view[block] = frozenset(holders)
        else:
            del self._holders[block]
            del self._view[block]


class SessionMap:
    """Session key -> the miner that served it last, LRU-bounded."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._miners: OrderedDict[str, MinerId] = OrderedDict()

    def record(self, session: str, miner_id: MinerId) -> None:
        self._miners[session] = miner_id
        self._miners.move_to_end(session)
        while len(self._miners) > self._capacity:
            self._miners.popitem(last=False)

    def view(self) -> OrderedDict[str, MinerId]:
        return self._miners

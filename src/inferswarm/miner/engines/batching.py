"""Continuous batching as pure decisions, with no model in sight.

A context holds one KV cache shared by ``n`` sequence ids. ``SequenceTable``
remembers which tokens each sequence's cells hold and decides where a new
prompt goes so that the longest cached prefix is reused. ``plan_step`` decides
what one ``llama_decode`` call processes: one token for every sequence that is
generating, then as much waiting prompt as the step's budget allows, so a long
prompt is eaten in chunks between decode steps instead of stalling every stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

PREFIX_BLOCK_TOKENS = 64
"""Tokens per reported prefix block."""


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def prefix_block_hashes(tokens: Sequence[int], block: int = PREFIX_BLOCK_TOKENS) -> list[int]:
    """Chained hashes of the whole leading blocks: block i's hash covers blocks
    0..i, so equal hashes mean equal prefixes."""
    hashes = []
    digest = hashlib.blake2b(digest_size=8)
    for start in range(0, len(tokens) - block + 1, block):
        digest.update(
            b"".join(t.to_bytes(4, "little", signed=True) for t in tokens[start : start + block])
        )
        hashes.append(int.from_bytes(digest.copy().digest(), "big"))
    return hashes


@dataclass(frozen=True)
class Placement:
    """Where a prompt goes: sequence ``seq_id`` keeps (or receives from
    ``copy_from``) the prompt's first ``reuse`` tokens and computes the rest."""

    seq_id: int
    reuse: int
    copy_from: int | None = None


@dataclass
class _Slot:
    cached: list[int] = field(default_factory=list)
    busy: bool = False
    last_used: int = 0
    text_blocks: tuple[int, ...] = ()
    """The router's prefix blocks (``protocol.prefix``) of the prompt held."""


class SequenceTable:
    """Which sequence ids are busy and which tokens each one's KV cells hold.

    Idle sequences keep their cells so that a later prompt sharing their prefix
    (a system prompt, a conversation's earlier turns) skips recomputing it.
    """

    def __init__(self, sequences: int, *, reuse_prefixes: bool = True) -> None:
        self._slots = [_Slot() for _ in range(sequences)]
        self._reuse = reuse_prefixes
        self._clock = 0

    @property
    def free(self) -> int:
        return sum(not s.busy for s in self._slots)

    def cached(self, seq_id: int) -> list[int]:
        return self._slots[seq_id].cached

    def place(self, prompt: Sequence[int]) -> Placement | None:
        """Take an idle sequence for ``prompt``; None when all are busy.

        At least the prompt's last token is always computed: sampling needs its
        logits, and a cache hit does not keep them.
        """
        idle = [i for i, s in enumerate(self._slots) if not s.busy]
        if not idle:
            return None
        usable = max(len(prompt) - 1, 0) if self._reuse else 0

        def own(i: int) -> int:
            return min(common_prefix(self._slots[i].cached, prompt), usable)

        # The idle sequence with the longest own match; among equals the one
        # unused longest, so recently cached prefixes survive.
        seq_id = max(idle, key=lambda i: (own(i), -self._slots[i].last_used))
        reuse = own(seq_id)
        donor = max(range(len(self._slots)), key=own)
        self._slots[seq_id].busy = True
        self._clock += 1
        self._slots[seq_id].last_used = self._clock
        if own(donor) > reuse:
            return Placement(seq_id, own(donor), copy_from=donor)
        return Placement(seq_id, reuse)

    def start(self, placement: Placement, text_blocks: tuple[int, ...] = ()) -> None:
        """Record what the sequence holds once the placement has been applied:
        the reused tokens now, and the whole new prompt (``text_blocks`` in the
        router's terms) once its rest is computed."""
        slot = self._slots[placement.seq_id]
        source = slot if placement.copy_from is None else self._slots[placement.copy_from]
        slot.cached = source.cached[: placement.reuse]
        slot.text_blocks = text_blocks

    def extend(self, seq_id: int, tokens: Iterable[int]) -> None:
        """Tokens the last decode step wrote into the sequence's cells."""
        self._slots[seq_id].cached.extend(tokens)

    def release(self, seq_id: int, *, keep_cache: bool) -> None:
        slot = self._slots[seq_id]
        slot.busy = False
        if not keep_cache:
            slot.cached = []
            slot.text_blocks = ()

    def held_text_blocks(self) -> frozenset[int]:
        """The router's prefix blocks of every prompt some sequence holds."""
        return frozenset(h for s in self._slots for h in s.text_blocks)

    def prefix_blocks(self, block: int = PREFIX_BLOCK_TOKENS) -> frozenset[int]:
        """Hashes of every whole token block held in some sequence's cache."""
        return frozenset(h for s in self._slots for h in prefix_block_hashes(s.cached, block))


@dataclass
class Stream:
    """A running sequence as the step planner sees it."""

    seq_id: int
    pending: list[int]
    """Tokens to feed: what is left of the prompt, then each sampled token."""
    position: int
    """Tokens already in the sequence's cells (the next token's position)."""
    decoding: bool = False
    """The prompt is done; ``pending`` is the one token sampled last."""


@dataclass(frozen=True)
class Slice:
    """Part of one decode step: ``tokens`` of ``stream`` from ``position`` on."""

    stream: Stream
    tokens: list[int]
    position: int

    @property
    def wants_logits(self) -> bool:
        """Sample after this step only once the whole pending input is in."""
        return len(self.tokens) == len(self.stream.pending)


def plan_step(streams: Sequence[Stream], budget: int) -> list[Slice]:
    """What the next decode step processes, at most ``budget`` tokens.

    Generating streams go first (one token each), so running streams keep their
    pace; prompts then share what is left, oldest first, in chunks.
    """
    decoding = [s for s in streams if s.decoding and s.pending]
    prefilling = [s for s in streams if not s.decoding and s.pending]
    plan = [Slice(s, s.pending[:1], s.position) for s in decoding[:budget]]
    left = budget - len(plan)
    for stream in prefilling:
        if left <= 0:
            break
        take = stream.pending[:left]
        plan.append(Slice(stream, take, stream.position))
        left -= len(take)
    return plan


def advance(plan: Sequence[Slice]) -> None:
    """Account for a decode step that ran ``plan``."""
    for part in plan:
        del part.stream.pending[: len(part.tokens)]
        part.stream.position += len(part.tokens)

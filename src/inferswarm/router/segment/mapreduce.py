"""Map-reduce over text longer than any context window, the pure parts:
cutting the text into overlapping chunks, grouping partial results so each
reduce fits a context, and the prompts of both stages.

Chunks are cut at whitespace, which is a token boundary for the Llama
family's BPE tokenizers (a word's first token carries its leading space).
The router holds no tokenizer (miners may run any model), so sizes are
estimated conservatively from characters; a chunk that still overflows a
miner's context is cut in two and run again (see the runner).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

CHARS_PER_TOKEN = 3.0
"""Conservative: English prose runs ~4.1 characters per token on SmolLM2's
tokenizer, code-heavy text down to ~2.7 (measured on ``pydoc_data.topics``)."""
PROMPT_OVERHEAD_TOKENS = 48
"""Chat template and instructions around a chunk."""
MIN_CHUNK_TOKENS = 32
WORD = re.compile(r"\S+\s*")


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class Sizes:
    """Token budgets of a map-reduce job on a given context window."""

    context_length: int
    map_max_tokens: int
    reduce_max_tokens: int
    instruction_tokens: int

    def chunk_tokens(self) -> int:
        room = self.context_length - self.map_max_tokens - self.instruction_tokens
        return max(MIN_CHUNK_TOKENS, room - PROMPT_OVERHEAD_TOKENS)

    def reduce_input_tokens(self) -> int:
        room = self.context_length - self.reduce_max_tokens - self.instruction_tokens
        return max(MIN_CHUNK_TOKENS, room - PROMPT_OVERHEAD_TOKENS)


def split_text(text: str, chunk_tokens: int, overlap_tokens: int) -> list[str]:
    """Chunks of about ``chunk_tokens`` (estimated), each starting with the
    last ``overlap_tokens`` of the one before, so nothing said across a cut
    is lost to both sides."""
    if overlap_tokens >= chunk_tokens:
        raise ValueError("overlap_tokens must be smaller than chunk_tokens")
    words = WORD.findall(text)
    chunks: list[str] = []
    start = 0
    while start < len(words):
        end, size = start, 0
        while end < len(words) and (
            size + estimate_tokens(words[end]) <= chunk_tokens or end == start
        ):
            size += estimate_tokens(words[end])
            end += 1
        chunks.append("".join(words[start:end]).strip())
        if end >= len(words):
            break
        start = max(start + 1, _overlap_start(words, start, end, overlap_tokens))
    return chunks


def _overlap_start(words: list[str], start: int, end: int, overlap_tokens: int) -> int:
    back, size = end, 0
    while back > start and size + estimate_tokens(words[back - 1]) <= overlap_tokens:
        back -= 1
        size += estimate_tokens(words[back])
    return back


def halves(chunk: str) -> list[str]:
    """A chunk that overflowed a context, cut in two at a word boundary."""
    words = WORD.findall(chunk)
    if len(words) < 2:
        return [chunk]
    middle = len(words) // 2
    return ["".join(words[:middle]).strip(), "".join(words[middle:]).strip()]


def group_partials(partials: list[str], input_tokens: int) -> list[list[str]]:
    """Consecutive partial results in groups whose total fits ``input_tokens``;
    each group becomes one reduce task. A single partial too big to share a
    group goes alone."""
    groups: list[list[str]] = [[]]
    size = 0
    for partial in partials:
        cost = estimate_tokens(partial) + 4  # the "Part n:" label and spacing
        if groups[-1] and size + cost > input_tokens:
            groups.append([])
            size = 0
        groups[-1].append(partial)
        size += cost
    return groups


def map_prompt(instruction: str, chunk: str) -> str:
    return f"{instruction.strip()}\n\n---\n{chunk}\n---"


def reduce_prompt(instruction: str, partials: list[str]) -> str:
    parts = "\n\n".join(f"Part {i + 1}: {p.strip()}" for i, p in enumerate(partials))
    return f"{instruction.strip()}\n\n{parts}"

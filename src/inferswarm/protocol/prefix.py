"""Prompt prefix blocks: the one hashing both sides use, so a miner can tell
the router which prompt prefixes its KV cache holds in the router's terms.

A prompt is rendered as text (``prompt_text``), cut into whole blocks of
``BLOCK_CHARS`` characters, and each block hashed together with all blocks
before it, so equal hashes mean equal prefixes."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

BLOCK_CHARS = 256
"""Characters per prefix block; about 64 tokens of English."""
MAX_BLOCKS_PER_PROMPT = 64


class _Message(Protocol):
    @property
    def role(self) -> str: ...
    @property
    def content(self) -> str: ...


def prompt_text(prompt: str | None, messages: Sequence[_Message] | None) -> str:
    """The prompt as hashed: a completion's text, or a chat's messages in order."""
    if prompt is not None:
        return prompt
    return "".join(f"<{m.role}>\n{m.content}\n" for m in messages or ())


def prefix_blocks(text: str) -> tuple[int, ...]:
    """Chained hashes of the text's whole leading blocks: block i's hash
    covers blocks 0..i."""
    blocks = []
    digest = hashlib.blake2b(digest_size=8)
    for start in range(0, min(len(text), BLOCK_CHARS * MAX_BLOCKS_PER_PROMPT), BLOCK_CHARS):
        block = text[start : start + BLOCK_CHARS]
        if len(block) < BLOCK_CHARS:
            break
        digest.update(block.encode())
        blocks.append(int.from_bytes(digest.copy().digest(), "big"))
    return tuple(blocks)

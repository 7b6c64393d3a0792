"""File contents on disk, next to the database that describes them."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterable
from pathlib import Path

SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class BlobDir:
    """Contents by id under one directory. Writes go to a temporary file that
    is fsynced and renamed, so a crash leaves the old content or the new one,
    never half a file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, blob_id: str) -> Path:
        if not SAFE_ID.match(blob_id):
            raise ValueError(f"not a valid id: {blob_id!r}")
        return self.root / blob_id

    async def write_chunks(self, blob_id: str, chunks: AsyncIterable[bytes]) -> int:
        """Store the chunks as ``blob_id``; return its size."""
        final = self.path(blob_id)
        partial = final.with_name(final.name + ".partial")
        size = 0
        with partial.open("wb") as sink:
            async for chunk in chunks:
                sink.write(chunk)
                size += len(chunk)
            sink.flush()
            await asyncio.to_thread(os.fsync, sink.fileno())
        partial.replace(final)
        return size

    async def write(self, blob_id: str, data: bytes) -> int:
        async def one() -> AsyncIterable[bytes]:
            yield data

        return await self.write_chunks(blob_id, one())

    def read(self, blob_id: str) -> bytes:
        return self.path(blob_id).read_bytes()

    def delete(self, blob_id: str) -> None:
        self.path(blob_id).unlink(missing_ok=True)

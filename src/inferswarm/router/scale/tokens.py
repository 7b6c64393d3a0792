"""What the ``local`` provider needs to let its miners join."""

from __future__ import annotations

from typing import Protocol


class TokenSource(Protocol):
    async def token(self) -> str | None:
        """The join token to start miners with; None when none is needed."""
        ...

    async def revoke(self) -> None: ...

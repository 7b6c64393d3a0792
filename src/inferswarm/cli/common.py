"""Shared CLI helpers."""

from __future__ import annotations

import logging
import re

from rich.logging import RichHandler

SECRET = re.compile(r"\b(isk|ijt)-[A-Za-z0-9_-]{6,}|(?i:bearer)\s+\S+")
"""API keys (``isk-…``), join tokens (``ijt-…``) and bearer credentials of any shape."""


class RedactSecrets(logging.Filter):
    """Second line of defence: no log line carries a key or token, even one a
    library or an exception message happens to include."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = SECRET.sub(_mask, message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def _mask(match: re.Match[str]) -> str:
    return f"{match.group(1)}-[redacted]" if match.group(1) else "Bearer [redacted]"


def setup_logging(level: str) -> None:
    handler = RichHandler(show_path=False, rich_tracebacks=False)
    handler.addFilter(RedactSecrets())
    logging.basicConfig(
        level=level.upper(),
        format="%(name)s: %(message)s",
        datefmt="[%X]",
        handlers=[handler],
    )

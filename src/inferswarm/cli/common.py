"""Shared CLI helpers."""

from __future__ import annotations

import logging

from rich.logging import RichHandler


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(name)s: %(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(show_path=False, rich_tracebacks=False)],
    )

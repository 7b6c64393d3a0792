"""Writing a benchmark's results: one JSON layout for every benchmark."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any


def write_results(
    path: Path, benchmark: str, settings: dict[str, Any], results: Any, **extra: Any
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": benchmark,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "settings": settings,
        "results": results,
        **extra,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")

"""What to load and how hard: the server, the model, the endpoint and the load mode.

Plain data with no HTTP client behind it, so the CLI can build and check it
(and print ``--help``) without importing the driver.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from inferswarm.loadgen.distributions import LengthDistribution
from inferswarm.loadgen.workload import PlannedRequest


class BenchError(Exception):
    """A problem the user must fix before a run can start; the message says what to do."""


class Endpoint(StrEnum):
    CHAT = "chat"
    COMPLETIONS = "completions"


@dataclass(frozen=True)
class Target:
    api_root: str
    """The server's API root, ending in ``/v1``."""
    model: str
    endpoint: Endpoint = Endpoint.CHAT
    api_key: str | None = None
    ask_usage: bool = True
    """Send ``stream_options.include_usage`` so token counts come from the server."""
    timeout_s: float = 600.0

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def url(self) -> str:
        path = "chat/completions" if self.endpoint is Endpoint.CHAT else "completions"
        return f"{self.api_root}/{path}"

    def body(self, planned: PlannedRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": planned.max_tokens,
            "stream": True,
            "temperature": 0,
        }
        if self.ask_usage:
            body["stream_options"] = {"include_usage": True}
        if self.endpoint is Endpoint.CHAT:
            body["messages"] = [{"role": "user", "content": planned.prompt}]
        else:
            body["prompt"] = planned.prompt
        return body


@dataclass(frozen=True)
class Load:
    """How much to send: a fixed number of requests in flight, or a Poisson rate."""

    prompt_lengths: LengthDistribution
    output_lengths: LengthDistribution
    concurrency: int | None = None
    rate: float | None = None
    duration_s: float | None = None
    requests: int | None = None
    seed: int = 0


def api_root(base_url: str) -> str:
    """``http://host:8000``, ``http://host:8000/`` and ``http://host:8000/v1`` all mean the same server."""
    root = base_url.strip().rstrip("/")
    if not root.startswith(("http://", "https://")):
        raise BenchError(f"the base URL {base_url!r} needs a scheme, e.g. http://127.0.0.1:8000")
    return root if root.endswith("/v1") else root + "/v1"


def error_message(text: str) -> str:
    """The message of an OpenAI error envelope, or the start of whatever came back."""
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        return text[:300]
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(payload, dict) and isinstance(payload.get("detail"), str):
        return str(payload["detail"])
    return text[:300]

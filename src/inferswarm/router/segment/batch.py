"""Batch jobs, the pure parts: reading an input file into tasks, the lines of
the output and error files, the batch object, and how much capacity a batch
may take beside interactive traffic."""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from inferswarm.openai_compat import schemas
from inferswarm.storage.records import BatchRecord, BatchTask, TaskState

ENDPOINTS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": schemas.ChatCompletionRequest,
    "/v1/completions": schemas.CompletionRequest,
}
MAX_BATCH_LINES = 50_000
"""OpenAI's limit of requests per batch."""


@dataclass(frozen=True)
class _LineError(Exception):
    code: str
    message: str


def read_batch_input(
    batch_id: str, data: bytes, endpoint: str, served_models: set[str]
) -> list[BatchTask]:
    """One task per non-empty line. A line that cannot run becomes a task that
    has already failed, with its line for the error file; the others run."""
    tasks: list[BatchTask] = []
    seen: set[str] = set()
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        custom_id: str | None = None
        try:
            line = _json_object(raw, number)
            custom_id = _custom_id(line, number)
            _check_unique(custom_id, number, seen)
            body = _request_body(line, number, endpoint, served_models)
            tasks.append(BatchTask(batch_id, number, custom_id, body))
        except _LineError as bad:
            result = error_line(custom_id, bad.code, bad.message, number)
            tasks.append(
                BatchTask(batch_id, number, custom_id, "", state=TaskState.FAILED, result=result)
            )
    return tasks


def _json_object(raw: bytes, number: int) -> dict[str, Any]:
    try:
        line = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _LineError("invalid_json", f"line {number} is not valid JSON: {exc}") from None
    if not isinstance(line, dict):
        raise _LineError(
            "invalid_request",
            f"line {number} must be a JSON object with custom_id, method, url, body",
        )
    return line


def _custom_id(line: dict[str, Any], number: int) -> str:
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise _LineError("missing_custom_id", f"line {number} has no custom_id string")
    return custom_id


def _check_unique(custom_id: str, number: int, seen: set[str]) -> None:
    if custom_id in seen:
        raise _LineError(
            "duplicate_custom_id",
            f"line {number} repeats custom_id {custom_id!r}; each custom_id must be unique "
            "in a batch (the first line with it runs)",
        )
    seen.add(custom_id)


def _request_body(line: dict[str, Any], number: int, endpoint: str, served_models: set[str]) -> str:
    method, url = line.get("method"), line.get("url")
    if method != "POST":
        raise _LineError("invalid_method", f"line {number}: method must be POST, got {method!r}")
    if url != endpoint:
        raise _LineError(
            "invalid_url",
            f"line {number}: url {url!r} does not match the batch's endpoint {endpoint!r}; "
            "every line of a batch must use the batch's endpoint",
        )
    body = line.get("body")
    if not isinstance(body, dict):
        raise _LineError("invalid_body", f"line {number}: body must be a JSON object")
    try:
        request = ENDPOINTS[endpoint].model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise _LineError("invalid_body", f"line {number}: {where}: {first['msg']}") from None
    if getattr(request, "stream", False):
        raise _LineError("invalid_body", f"line {number}: stream is not supported in a batch")
    model = getattr(request, "model", "")
    if model not in served_models:
        available = ", ".join(sorted(served_models)) or "none"
        raise _LineError(
            "model_not_found",
            f"line {number}: the model {model!r} is not served by any live miner "
            f"(available: {available})",
        )
    return json.dumps(body, separators=(",", ":"))


def output_line(custom_id: str | None, response: dict[str, Any]) -> str:
    """A line of the output file: the response the request would have had."""
    return _line(
        {
            "id": f"batch_req_{uuid.uuid4().hex}",
            "custom_id": custom_id,
            "response": {
                "status_code": 200,
                "request_id": response.get("id"),
                "body": response,
            },
            "error": None,
        }
    )


def failed_response_line(custom_id: str | None, status: int, body: dict[str, Any]) -> str:
    """A line of the error file for a request that ran and failed."""
    return _line(
        {
            "id": f"batch_req_{uuid.uuid4().hex}",
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": None, "body": body},
            "error": None,
        }
    )


def error_line(custom_id: str | None, code: str, message: str, line: int | None = None) -> str:
    """A line of the error file for a request that could not run."""
    return _line(
        {
            "id": f"batch_req_{uuid.uuid4().hex}",
            "custom_id": custom_id,
            "response": None,
            "error": {"code": code, "message": message, "line": line},
        }
    )


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def batch_object(batch: BatchRecord, counts: dict[TaskState, int]) -> dict[str, Any]:
    """The batch as OpenAI's API shows it."""
    times = batch.times
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status.value,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": batch.created_at,
        "in_progress_at": times.get("in_progress_at"),
        "expires_at": batch.expires_at,
        "finalizing_at": times.get("finalizing_at"),
        "completed_at": times.get("completed_at"),
        "failed_at": times.get("failed_at"),
        "expired_at": times.get("expired_at"),
        "cancelling_at": times.get("cancelling_at"),
        "cancelled_at": times.get("cancelled_at"),
        "request_counts": {
            "total": sum(counts.values()),
            "completed": counts[TaskState.DONE],
            "failed": counts[TaskState.FAILED],
        },
        "metadata": batch.metadata,
    }


@dataclass(frozen=True)
class BatchShare:
    """How batches share the network with interactive requests.

    Batches may fill every slot interactive traffic leaves idle, except
    ``reserve`` of all slots, kept free while interactive requests are about
    so they start at once (a batch task is never pre-empted); ``floor`` of all
    slots always goes to batches, so they progress under any load. With no
    interactive traffic, ``pipeline`` tasks per slot are in flight, so a miner
    has its next task waiting the moment it finishes one.
    """

    reserve: float = 0.25
    floor: float = 0.1
    pipeline: int = 3


def batch_budget(
    total_slots: int, interactive_busy: int, interactive_active: bool, share: BatchShare
) -> int:
    """Batch tasks that may be in flight now."""
    if total_slots <= 0:
        return 0
    floor = max(1, math.floor(total_slots * share.floor))
    if not interactive_active:
        return total_slots * share.pipeline
    reserve = math.ceil(total_slots * share.reserve)
    return max(floor, total_slots - interactive_busy - reserve)

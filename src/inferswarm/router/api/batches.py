"""``/v1/batches``: OpenAI's Batch API. A batch's lines become tasks recorded
in the store before the batch is acknowledged; the batch runner sends them to
miners beside interactive traffic."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from inferswarm.openai_compat.errors import InvalidRequest, NotFound
from inferswarm.router.api.body import parse_body, request_body_schema
from inferswarm.router.api.files import owned_file, owner_of
from inferswarm.router.api.limits import admit_job, batch_line_models
from inferswarm.router.segment.batch import (
    ENDPOINTS,
    MAX_BATCH_LINES,
    batch_object,
    read_batch_input,
)
from inferswarm.router.segment.batch_runner import BatchRunner
from inferswarm.storage import BatchRecord, BatchStatus, Store, TaskState

router = APIRouter()

COMPLETION_WINDOWS = {"24h": 24 * 3600}


class CreateBatch(BaseModel):
    input_file_id: str = Field(min_length=1)
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None


@router.post("/v1/batches", openapi_extra=request_body_schema(CreateBatch))
async def create_batch(request: Request) -> dict[str, Any]:
    body = await parse_body(request, CreateBatch)
    _check_options(body)
    input_file = await owned_file(request, body.input_file_id)
    if input_file.purpose != "batch":
        raise InvalidRequest(
            f"File {input_file.id} has purpose '{input_file.purpose}'; upload batch input "
            "with purpose 'batch'.",
            param="input_file_id",
            code="invalid_file",
        )
    batch_id = f"batch_{uuid.uuid4().hex}"
    served = set(request.app.state.registry.served_models())
    data = request.app.state.blobs.read(input_file.id)
    tasks = read_batch_input(batch_id, data, body.endpoint, served)
    if not tasks:
        raise InvalidRequest(
            "The input file has no requests.", param="input_file_id", code="empty_file"
        )
    if len(tasks) > MAX_BATCH_LINES:
        raise InvalidRequest(
            f"The input file has {len(tasks)} requests; a batch takes at most "
            f"{MAX_BATCH_LINES}. Split it into several batches.",
            param="input_file_id",
            code="too_many_requests",
        )
    await admit_job(request, batch_line_models(t.body for t in tasks))
    now = int(time.time())
    batch = BatchRecord(
        id=batch_id,
        owner=owner_of(request),
        input_file_id=input_file.id,
        endpoint=body.endpoint,
        completion_window=body.completion_window,
        status=BatchStatus.VALIDATING,
        created_at=now,
        expires_at=now + COMPLETION_WINDOWS[body.completion_window],
        metadata=body.metadata,
    )
    store: Store = request.app.state.store
    await store.add_batch(batch, tasks)
    runner: BatchRunner = request.app.state.batch_runner
    await runner.submit(batch)
    return await _present(store, batch.id)


def _check_options(body: CreateBatch) -> None:
    if body.endpoint not in ENDPOINTS:
        raise InvalidRequest(
            f"endpoint {body.endpoint!r} is not supported; use one of: {', '.join(ENDPOINTS)}.",
            param="endpoint",
            code="invalid_endpoint",
        )
    if body.completion_window not in COMPLETION_WINDOWS:
        raise InvalidRequest(
            f"completion_window {body.completion_window!r} is not supported; use '24h'.",
            param="completion_window",
            code="invalid_completion_window",
        )


@router.get("/v1/batches")
async def list_batches(
    request: Request, limit: int = 20, after: str | None = None
) -> dict[str, Any]:
    if not 1 <= limit <= 100:
        raise InvalidRequest("limit must be between 1 and 100.", param="limit")
    store: Store = request.app.state.store
    records = await store.list_batches(owner_of(request), limit + 1, after)
    data = [batch_object(r, await store.batch_counts(r.id)) for r in records[:limit]]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(records) > limit,
    }


@router.get("/v1/batches/{batch_id}")
async def get_batch(request: Request, batch_id: str) -> dict[str, Any]:
    await _owned_batch(request, batch_id)
    return await _present(request.app.state.store, batch_id)


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(request: Request, batch_id: str) -> dict[str, Any]:
    batch = await _owned_batch(request, batch_id)
    store: Store = request.app.state.store
    if batch.status.is_active and batch.status is not BatchStatus.CANCELLING:
        await store.set_batch_status(batch.id, BatchStatus.CANCELLING, int(time.time()))
        runner: BatchRunner = request.app.state.batch_runner
        await runner.cancel(batch.id)
    return await _present(store, batch.id)


async def _owned_batch(request: Request, batch_id: str) -> BatchRecord:
    batch = await request.app.state.store.get_batch(batch_id)
    if batch is None or batch.owner != owner_of(request):
        raise NotFound(
            f"No batch with id '{batch_id}'. List your batches with GET /v1/batches.",
            param="batch_id",
            code="batch_not_found",
        )
    assert isinstance(batch, BatchRecord)
    return batch


async def _present(store: Store, batch_id: str) -> dict[str, Any]:
    batch = await store.get_batch(batch_id)
    assert batch is not None
    counts: dict[TaskState, int] = await store.batch_counts(batch_id)
    return batch_object(batch, counts)

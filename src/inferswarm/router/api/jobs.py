"""``/v1/jobs``: map-reduce over text longer than any context window. The
job and all its map tasks are recorded before the job is acknowledged."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, model_validator

from inferswarm.openai_compat.errors import Conflict, InvalidRequest, NotFound
from inferswarm.protocol import ModelName
from inferswarm.router.api.body import parse_body, request_body_schema
from inferswarm.router.api.files import owned_file, owner_of
from inferswarm.router.api.limits import admit_job
from inferswarm.router.completion import check_model
from inferswarm.router.registry import MinerRegistry
from inferswarm.router.segment.mapreduce import (
    MIN_CHUNK_TOKENS,
    Sizes,
    estimate_tokens,
    split_text,
)
from inferswarm.router.segment.mapreduce_runner import (
    MAP,
    MapReduceParams,
    MapReduceRunner,
    map_key,
)
from inferswarm.storage import JobRecord, JobTask, Store, TaskState

router = APIRouter()

MAX_INPUT_CHARS = 50 * 2**20


class MapReduceRequest(BaseModel):
    type: Literal["map_reduce"]
    model: str = Field(min_length=1)
    input: str | None = Field(default=None, description="The text (or use input_file_id).")
    input_file_id: str | None = Field(
        default=None, description="A file uploaded with purpose 'user_data'."
    )
    map_prompt: str = Field(
        default="Summarise the key points of this text in a few sentences.", min_length=1
    )
    reduce_prompt: str = Field(
        default="Combine these partial summaries into one concise summary.", min_length=1
    )
    chunk_tokens: int | None = Field(default=None, ge=MIN_CHUNK_TOKENS)
    overlap_tokens: int = Field(default=64, ge=0)
    map_max_tokens: int = Field(default=128, ge=1)
    reduce_max_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=0.0, ge=0, le=2)
    frequency_penalty: float = Field(
        default=0.3,
        ge=-2,
        le=2,
        description="Discourages the loops small models fall into when decoding greedily.",
    )

    @model_validator(mode="after")
    def _one_input(self) -> MapReduceRequest:
        if (self.input is None) == (self.input_file_id is None):
            raise ValueError("give exactly one of input (the text) or input_file_id")
        return self


@router.post("/v1/jobs", openapi_extra=request_body_schema(MapReduceRequest))
async def create_job(request: Request) -> dict[str, Any]:
    body = await parse_body(request, MapReduceRequest)
    await admit_job(request, [body.model])
    text = await _input_text(request, body)
    registry: MinerRegistry = request.app.state.registry
    check_model(ModelName(body.model), "", body.map_max_tokens, registry)
    sizes = Sizes(
        context_length=_smallest_context(registry, body.model),
        map_max_tokens=body.map_max_tokens,
        reduce_max_tokens=body.reduce_max_tokens,
        instruction_tokens=estimate_tokens(max(body.map_prompt, body.reduce_prompt, key=len)),
    )
    chunk_tokens = _chunk_tokens(body, sizes)
    job_id = f"job_{uuid.uuid4().hex}"
    chunks = split_text(text, chunk_tokens, min(body.overlap_tokens, chunk_tokens // 2))
    params = MapReduceParams(
        model=body.model,
        map_prompt=body.map_prompt,
        reduce_prompt=body.reduce_prompt,
        map_max_tokens=body.map_max_tokens,
        reduce_max_tokens=body.reduce_max_tokens,
        reduce_input_tokens=sizes.reduce_input_tokens(),
        temperature=body.temperature,
        frequency_penalty=body.frequency_penalty,
    )
    job = JobRecord(
        id=job_id,
        owner=owner_of(request),
        type="map_reduce",
        status="queued",
        created_at=int(time.time()),
        params={**asdict(params), "chunk_tokens": chunk_tokens, "input_chars": len(text)},
    )
    store: Store = request.app.state.store
    await store.add_job(job)
    await store.add_job_tasks([JobTask(job_id, map_key(i), c) for i, c in enumerate(chunks)])
    runner: MapReduceRunner = request.app.state.job_runner
    runner.submit(job)
    return await _present(store, job_id)


async def _input_text(request: Request, body: MapReduceRequest) -> str:
    if body.input is not None:
        text = body.input
    else:
        record = await owned_file(request, body.input_file_id or "")
        text = request.app.state.blobs.read(record.id).decode("utf-8", errors="replace")
    if not text.strip():
        raise InvalidRequest("The input text is empty.", param="input", code="empty_input")
    if len(text) > MAX_INPUT_CHARS:
        raise InvalidRequest(
            f"The input has {len(text)} characters; a job takes at most {MAX_INPUT_CHARS}.",
            param="input",
            code="input_too_large",
        )
    return text


def _smallest_context(registry: MinerRegistry, model: str) -> int:
    """Chunks must fit every miner of the model, so any miner can take any chunk."""
    return min(offer.context_length for _, offer in registry.offers_for(model))


def _chunk_tokens(body: MapReduceRequest, sizes: Sizes) -> int:
    fits = sizes.chunk_tokens()
    if fits <= MIN_CHUNK_TOKENS:
        raise InvalidRequest(
            f"With map_max_tokens {body.map_max_tokens} and this map_prompt, no text fits the "
            f"smallest context window serving '{body.model}' ({sizes.context_length} tokens). "
            "Lower map_max_tokens or shorten the prompt.",
            param="map_max_tokens",
            code="context_length_exceeded",
        )
    if body.chunk_tokens is not None and body.chunk_tokens > fits:
        raise InvalidRequest(
            f"chunk_tokens {body.chunk_tokens} does not fit the smallest context window serving "
            f"'{body.model}' ({sizes.context_length} tokens) beside the prompt and "
            f"map_max_tokens; use at most {fits}, or leave it out.",
            param="chunk_tokens",
            code="context_length_exceeded",
        )
    return body.chunk_tokens or fits


@router.get("/v1/jobs/{job_id}")
async def get_job(request: Request, job_id: str) -> dict[str, Any]:
    await _owned_job(request, job_id)
    return await _present(request.app.state.store, job_id)


@router.get("/v1/jobs/{job_id}/result")
async def job_result(request: Request, job_id: str) -> dict[str, Any]:
    job = await _owned_job(request, job_id)
    if job.status == "failed" and job.error:
        raise Conflict(
            f"Job {job_id} failed: {job.error['message']}", param="job_id", code="job_failed"
        )
    if job.status != "completed" or job.result is None:
        raise Conflict(
            f"Job {job_id} is {job.status}; poll GET /v1/jobs/{job_id} until it is completed.",
            param="job_id",
            code="job_not_finished",
        )
    return {"id": job.id, "object": "job.result", **job.result}


@router.post("/v1/jobs/{job_id}/cancel")
async def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
    job = await _owned_job(request, job_id)
    if job.status in ("queued", "running"):
        runner: MapReduceRunner = request.app.state.job_runner
        await runner.cancel(job_id)
    return await _present(request.app.state.store, job_id)


async def _owned_job(request: Request, job_id: str) -> JobRecord:
    store: Store = request.app.state.store
    job = await store.get_job(job_id)
    if job is None or job.owner != owner_of(request):
        raise NotFound(f"No job with id '{job_id}'.", param="job_id", code="job_not_found")
    return job


async def _present(store: Store, job_id: str) -> dict[str, Any]:
    job = await store.get_job(job_id)
    assert job is not None
    tasks = await store.job_tasks(job_id)
    maps = [t for t in tasks if t.key.startswith(MAP + ":") and t.output != "split"]
    reduces = [t for t in tasks if t.key.startswith("reduce:")]
    return {
        "id": job.id,
        "object": "job",
        "type": job.type,
        "model": job.params["model"],
        "status": job.status,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "progress": {
            "map": _counts(maps),
            "reduce": {
                **_counts(reduces),
                "levels": len({t.key.split(":")[1] for t in reduces}),
            },
            "chunk_tokens": job.params.get("chunk_tokens"),
        },
        "error": job.error,
    }


def _counts(tasks: list[JobTask]) -> dict[str, int]:
    return {"total": len(tasks), "done": sum(t.state is TaskState.DONE for t in tasks)}

"""``POST /v1/chat/completions`` and ``POST /v1/completions``: parse, plan the
tasks, hand them to the dispatcher, render the results as JSON or server-sent
events. Several prompts or ``n > 1`` fan out into tasks that run at once."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from inferswarm.openai_compat import schemas
from inferswarm.openai_compat.errors import APIError
from inferswarm.protocol import TaskChunk, TaskDone
from inferswarm.router.api.body import parse_body, request_body_schema
from inferswarm.router.api.limits import admit, check_scope, settle
from inferswarm.router.completion import (
    Caller,
    Plan,
    chat_response,
    collect_all,
    completion_response,
    plan_chat,
    plan_completion,
    plan_usage,
)
from inferswarm.router.dispatch import Dispatcher, Job, Trace
from inferswarm.router.metrics import RouterMetrics
from inferswarm.router.segment.fanout import merge_streams
from inferswarm.router.usage_limits import Reservation, counted
from inferswarm.router.verify.service import Reports, Verifier, verification_body

router = APIRouter()


@router.post(
    "/v1/chat/completions", openapi_extra=request_body_schema(schemas.ChatCompletionRequest)
)
async def chat_completions(request: Request) -> Response:
    body = await parse_body(request, schemas.ChatCompletionRequest)
    check_scope(request, body.model)
    plan = plan_chat(body, caller_of(request), request.app.state.registry)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    run, reports = _runner(request, body)
    reservation = await admit(request, plan, body.stream)
    traces = [Trace() for _ in plan.jobs]
    runner = _traced(request, plan, traces, reservation, run)
    if body.stream:
        return await _stream(
            plan, request, body, request_id, _chat_sse, reservation, runner, traces, reports
        )
    try:
        results = await collect_all(plan, runner)
    finally:
        await settle(request, reservation)
    payload = chat_response(request_id, body, plan, results)
    return _verified(payload, served_by(traces), reports, plan.jobs)


@router.post("/v1/completions", openapi_extra=request_body_schema(schemas.CompletionRequest))
async def completions(request: Request) -> Response:
    body = await parse_body(request, schemas.CompletionRequest)
    check_scope(request, body.model)
    plan = plan_completion(body, caller_of(request), request.app.state.registry)
    request_id = f"cmpl-{uuid.uuid4().hex}"
    run, reports = _runner(request, body)
    reservation = await admit(request, plan, body.stream)
    traces = [Trace() for _ in plan.jobs]
    runner = _traced(request, plan, traces, reservation, run)
    if body.stream:
        return await _stream(
            plan, request, body, request_id, _text_sse, reservation, runner, traces, reports
        )
    try:
        results = await collect_all(plan, runner)
    finally:
        await settle(request, reservation)
    payload = completion_response(request_id, body, plan, results)
    return _verified(payload, served_by(traces), reports, plan.jobs)


Events = AsyncGenerator[TaskChunk | TaskDone, None]
JobRunner = Callable[[Request, Job, "Trace | None"], Events]


def _runner(
    request: Request, body: schemas.ChatCompletionRequest | schemas.CompletionRequest
) -> tuple[JobRunner, Reports]:
    """How each job runs: once (perhaps spot-checked later), or on k miners
    with consensus when the request or the router asks for it."""
    verifier: Verifier = request.app.state.verifier
    options = body.inferswarm
    k, consensus = verifier.options(
        options.redundancy if options else None, options.consensus if options else None
    )
    reports: Reports = {}
    if k <= 1:

        def spot_checked(request: Request, job: Job, trace: Trace | None) -> Events:
            job = verifier.prepared(job)
            return _spot_checked(verifier, job, measured(request, job, trace))

        return spot_checked, reports
    redundant = verifier.redundant_runner(k, consensus, reports)
    return (lambda request, job, trace: redundant(job)), reports


async def _spot_checked(
    verifier: Verifier, job: Job, events: AsyncGenerator[TaskChunk | TaskDone, None]
) -> AsyncGenerator[TaskChunk | TaskDone, None]:
    """The events as they are; the finished task is offered for a spot check."""
    parts: list[str] = []
    async with aclosing(events) as stream:
        async for event in stream:
            if isinstance(event, TaskChunk):
                parts.append(event.text)
            else:
                verifier.after_task(job, event, "".join(parts))
            yield event


def _verification_headers(reports: Reports) -> dict[str, str]:
    if not reports:
        return {}
    worst = min(reports.values(), key=lambda r: len(r.verdict.agreeing) / len(r.miners))
    return {"X-Inferswarm-Verification": worst.header()}


def _verified(
    payload: dict[str, Any], headers: dict[str, str], reports: Reports, jobs: Sequence[Job]
) -> Response:
    if reports:
        payload["inferswarm"] = verification_body(reports, jobs)
    return JSONResponse(payload, headers={**headers, **_verification_headers(reports)})


def caller_of(request: Request) -> Caller:
    return Caller(
        tenant=request.state.tenant,
        is_admin=request.state.is_admin,
        hedge_default=request.app.state.settings.hedge,
    )


def measured(
    request: Request, job: Job, trace: Trace | None = None
) -> AsyncGenerator[TaskChunk | TaskDone, None]:
    """The dispatcher's events, with the task's latency, tokens and outcome recorded."""
    metrics: RouterMetrics = request.app.state.metrics
    return metrics.measured(_dispatcher(request), job, trace)


def _traced(
    request: Request,
    plan: Plan,
    traces: list[Trace],
    reservation: Reservation | None = None,
    runner: JobRunner = measured,
) -> Callable[[Job], AsyncGenerator[TaskChunk | TaskDone, None]]:
    """``runner`` (``measured`` by default) with each of the plan's jobs writing
    to its own trace, and its tokens counted against the key's reservation."""
    by_job = {id(job): trace for job, trace in zip(plan.jobs, traces, strict=True)}

    def run(job: Job) -> AsyncGenerator[TaskChunk | TaskDone, None]:
        events = runner(request, job, by_job.get(id(job)))
        return events if reservation is None else counted(events, reservation)

    return run


def served_by(traces: list[Trace]) -> dict[str, str]:
    """Response headers naming the miners that served the request (for a stream
    that moved, the last one), for clients and the dashboard playground."""
    served = [t for t in traces if t.miner_id is not None]
    if not served:
        return {}
    ids = list(dict.fromkeys(str(t.miner_id) for t in served))
    names = list(dict.fromkeys(t.miner_name or str(t.miner_id) for t in served))
    name = ", ".join(names)
    if not (name.isascii() and name.isprintable()):
        name = ", ".join(ids)
    return {"x-inferswarm-miner-id": ", ".join(ids), "x-inferswarm-miner": name}


def _dispatcher(request: Request) -> Dispatcher:
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


SseRenderer = Callable[[TaskChunk | TaskDone, str, str, int, int], list[dict[str, Any]]]


async def _stream(
    plan: Plan,
    request: Request,
    body: schemas.ChatCompletionRequest | schemas.CompletionRequest,
    request_id: str,
    render: SseRenderer,
    reservation: Reservation | None,
    run: Callable[[Job], AsyncGenerator[TaskChunk | TaskDone, None]],
    traces: list[Trace],
    reports: Reports,
) -> Response:
    events = merge_streams([run(job) for job in plan.jobs])
    # Wait for the first event before answering, so an error that happens
    # before any output still gets its proper HTTP status.
    try:
        first = await anext(events)
    except BaseException:
        await events.aclose()
        await settle(request, reservation)
        raise
    created = int(time.time())
    is_chat = isinstance(body, schemas.ChatCompletionRequest)
    obj = "chat.completion.chunk" if is_chat else "text_completion"

    async def sse() -> AsyncIterator[str]:
        try:
            async with aclosing(_sse_lines()) as lines:
                async for line in lines:
                    yield line
        finally:
            await settle(request, reservation)

    async def _sse_lines() -> AsyncGenerator[str, None]:
        done: dict[int, TaskDone] = {}
        async with aclosing(events):
            if is_chat:
                for choice in plan.choices:
                    role = {"role": "assistant", "content": ""}
                    yield _sse(
                        schemas.chat_chunk(
                            request_id, body.model, created, role, None, choice.index
                        )
                    )
            item = first
            try:
                while True:
                    task, event = item
                    for payload in render(event, request_id, body.model, created, task):
                        yield _sse(payload)
                    if isinstance(event, TaskDone):
                        done[task] = event
                    item = await anext(events)
            except StopAsyncIteration:
                pass
            except APIError as exc:
                yield _sse(exc.body())
                return
        if body.wants_usage_in_stream():
            usage = plan_usage(plan, [done[i] for i in range(len(plan.jobs))])
            yield _sse(schemas.usage_chunk(request_id, body.model, created, obj, usage))
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        sse(),
        media_type="text/event-stream",
        # With redundancy: the verdicts of the jobs finished before the first event.
        headers={
            "Cache-Control": "no-cache",
            **served_by(traces),
            **_verification_headers(reports),
        },
    )


def _chat_sse(
    event: TaskChunk | TaskDone, request_id: str, model: str, created: int, index: int
) -> list[dict[str, Any]]:
    if isinstance(event, TaskChunk):
        return [
            schemas.chat_chunk(request_id, model, created, {"content": event.text}, None, index)
        ]
    return [schemas.chat_chunk(request_id, model, created, {}, event.finish_reason, index)]


def _text_sse(
    event: TaskChunk | TaskDone, request_id: str, model: str, created: int, index: int
) -> list[dict[str, Any]]:
    if isinstance(event, TaskChunk):
        return [schemas.text_chunk(request_id, model, created, event.text, None, index)]
    return [schemas.text_chunk(request_id, model, created, "", event.finish_reason, index)]


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"

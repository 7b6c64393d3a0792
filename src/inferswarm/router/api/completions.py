"""``POST /v1/chat/completions`` and ``POST /v1/completions``: parse, check,
hand to the dispatcher, render its events as JSON or server-sent events."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from inferswarm.openai_compat import schemas
from inferswarm.openai_compat.errors import APIError, InvalidRequest, NotFound, PermissionDenied
from inferswarm.protocol import ChatMessage, ModelName, SamplingParams, TaskChunk, TaskDone
from inferswarm.router.affinity import min_prompt_tokens
from inferswarm.router.api.body import parse_body, request_body_schema
from inferswarm.router.dispatch import Dispatcher, Job, Trace
from inferswarm.router.metrics import RouterMetrics
from inferswarm.router.registry import MinerRegistry
from inferswarm.router.schedule import Policy

router = APIRouter()

COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""OpenAI's default for the legacy completions endpoint."""


@router.post(
    "/v1/chat/completions", openapi_extra=request_body_schema(schemas.ChatCompletionRequest)
)
async def chat_completions(request: Request) -> Response:
    body = await parse_body(request, schemas.ChatCompletionRequest)
    messages = tuple(ChatMessage(role=m.role, content=m.text()) for m in body.messages)
    job = _job(body, request, body.max_tokens, messages=messages)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    if body.stream:
        return await _stream(job, request, body, request_id, _chat_sse)
    trace = Trace()
    text, done = await _collect(job, request, trace)
    usage = schemas.usage(done.prompt_tokens, done.completion_tokens)
    return JSONResponse(
        schemas.chat_completion(request_id, body.model, text, done.finish_reason, usage),
        headers=served_by(trace),
    )


@router.post("/v1/completions", openapi_extra=request_body_schema(schemas.CompletionRequest))
async def completions(request: Request) -> Response:
    body = await parse_body(request, schemas.CompletionRequest)
    max_tokens = body.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS
    job = _job(body, request, max_tokens, prompt=body.prompt_text())
    request_id = f"cmpl-{uuid.uuid4().hex}"
    if body.stream:
        return await _stream(job, request, body, request_id, _text_sse)
    trace = Trace()
    text, done = await _collect(job, request, trace)
    if body.echo:
        text = body.prompt_text() + text
    usage = schemas.usage(done.prompt_tokens, done.completion_tokens)
    return JSONResponse(
        schemas.text_completion(request_id, body.model, text, done.finish_reason, usage),
        headers=served_by(trace),
    )


def _job(
    body: schemas.ChatCompletionRequest | schemas.CompletionRequest,
    request: Request,
    max_tokens: int | None,
    *,
    prompt: str | None = None,
    messages: tuple[ChatMessage, ...] | None = None,
) -> Job:
    model = ModelName(body.model)
    text = prompt if prompt is not None else "".join(m.content for m in messages or ())
    _check_model(model, text, max_tokens, request.app.state.registry)
    sampling = SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_sequences(),
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
    )
    return Job(
        model=model,
        sampling=sampling,
        prompt=prompt,
        messages=messages,
        tenant=request.state.tenant,
        session=body.session_key(),
        policy=_policy_override(body, request),
        hedge=_wants_hedge(body, request),
    )


def _wants_hedge(
    body: schemas.ChatCompletionRequest | schemas.CompletionRequest, request: Request
) -> bool:
    asked = body.inferswarm.hedge if body.inferswarm else None
    return bool(request.app.state.settings.hedge if asked is None else asked)


def _policy_override(
    body: schemas.ChatCompletionRequest | schemas.CompletionRequest, request: Request
) -> Policy | None:
    name = body.inferswarm.policy if body.inferswarm else None
    if name is None:
        return None
    if not request.state.is_admin:
        raise PermissionDenied(
            "Only admin keys may choose the scheduling policy per request; drop inferswarm.policy.",
            param="inferswarm.policy",
            code="admin_only",
        )
    try:
        return Policy(name)
    except ValueError:
        valid = ", ".join(p.value for p in Policy)
        raise InvalidRequest(
            f"Unknown policy {name!r}; choose one of: {valid}.",
            param="inferswarm.policy",
            code="invalid_request",
        ) from None


def _check_model(
    model: ModelName, job_text: str, max_tokens: int | None, registry: MinerRegistry
) -> None:
    served = registry.served_models()
    if model not in served:
        available = ", ".join(sorted(served)) or "none (no miner is connected)"
        raise NotFound(
            f"The model '{model}' is not served by any live miner. Available models: {available}.",
            param="model",
            code="model_not_found",
        )
    largest_context = max(
        o.context_length for c in served[model] for o in c.info.models if o.name == model
    )
    if max_tokens is not None and max_tokens >= largest_context:
        raise InvalidRequest(
            f"max_tokens is {max_tokens}, but the largest context window serving '{model}' is "
            f"{largest_context} tokens, which must hold the prompt too. Lower max_tokens.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    at_least = min_prompt_tokens(job_text)
    if at_least + (max_tokens or 1) > largest_context:
        raise InvalidRequest(
            f"The prompt has at least {at_least} tokens; with max_tokens {max_tokens or 1} it cannot "
            f"fit the largest context window serving '{model}' ({largest_context} tokens). "
            "Shorten the prompt or lower max_tokens.",
            param="messages",
            code="context_length_exceeded",
        )


def _measured(
    request: Request, job: Job, trace: Trace
) -> AsyncGenerator[TaskChunk | TaskDone, None]:
    """The dispatcher's events, with the request's latency, tokens and outcome recorded."""
    metrics: RouterMetrics = request.app.state.metrics
    return metrics.measured(_dispatcher(request), job, trace)


def served_by(trace: Trace) -> dict[str, str]:
    """Response headers naming the miner that served the request (the last
    one, if the stream moved), for clients and the dashboard playground."""
    if trace.miner_id is None:
        return {}
    name = trace.miner_name or trace.miner_id
    if not (name.isascii() and name.isprintable()):
        name = trace.miner_id
    return {"x-inferswarm-miner-id": trace.miner_id, "x-inferswarm-miner": name}


def _dispatcher(request: Request) -> Dispatcher:
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


async def _collect(job: Job, request: Request, trace: Trace) -> tuple[str, TaskDone]:
    parts: list[str] = []
    async with aclosing(_measured(request, job, trace)) as events:
        async for event in events:
            if isinstance(event, TaskChunk):
                parts.append(event.text)
            else:
                return "".join(parts), event
    raise AssertionError("the dispatcher ended without a TaskDone")


SseRenderer = Callable[[TaskChunk | TaskDone, str, str, int], list[dict[str, Any]]]


async def _stream(
    job: Job,
    request: Request,
    body: schemas.ChatCompletionRequest | schemas.CompletionRequest,
    request_id: str,
    render: SseRenderer,
) -> Response:
    trace = Trace()
    events = _measured(request, job, trace)
    # Wait for the first event before answering, so an error that happens
    # before any output still gets its proper HTTP status.
    try:
        first = await anext(events)
    except BaseException:
        await events.aclose()
        raise
    created = int(time.time())
    obj = (
        "chat.completion.chunk"
        if isinstance(body, schemas.ChatCompletionRequest)
        else "text_completion"
    )

    async def sse() -> AsyncIterator[str]:
        async with aclosing(events):
            if isinstance(body, schemas.ChatCompletionRequest):
                yield _sse(
                    schemas.chat_chunk(
                        request_id, body.model, created, {"role": "assistant", "content": ""}
                    )
                )
            event: TaskChunk | TaskDone = first
            try:
                while True:
                    for payload in render(event, request_id, body.model, created):
                        yield _sse(payload)
                    if isinstance(event, TaskDone):
                        break
                    event = await anext(events)
            except APIError as exc:
                yield _sse(exc.body())
                return
            if body.wants_usage_in_stream():
                usage = schemas.usage(event.prompt_tokens, event.completion_tokens)
                yield _sse(schemas.usage_chunk(request_id, body.model, created, obj, usage))
            yield "data: [DONE]\n\n"

    return StreamingResponse(
        sse(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", **served_by(trace)},
    )


def _chat_sse(
    event: TaskChunk | TaskDone, request_id: str, model: str, created: int
) -> list[dict[str, Any]]:
    if isinstance(event, TaskChunk):
        return [schemas.chat_chunk(request_id, model, created, {"content": event.text})]
    return [schemas.chat_chunk(request_id, model, created, {}, event.finish_reason)]


def _text_sse(
    event: TaskChunk | TaskDone, request_id: str, model: str, created: int
) -> list[dict[str, Any]]:
    if isinstance(event, TaskChunk):
        return [schemas.text_chunk(request_id, model, created, event.text)]
    return [schemas.text_chunk(request_id, model, created, "", event.finish_reason)]


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"

"""OpenAI completion requests as jobs, and jobs' results as OpenAI responses.

Shared by the HTTP endpoints and the batch runner, so a batch line is served
exactly as the same request sent on its own would be.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass

from inferswarm.openai_compat import schemas
from inferswarm.openai_compat.errors import InvalidRequest, NotFound, PermissionDenied
from inferswarm.protocol import ChatMessage, ModelName, SamplingParams, TaskChunk, TaskDone
from inferswarm.protocol.variants import UnknownPrecision, resolve_variants
from inferswarm.router.affinity import min_prompt_tokens
from inferswarm.router.dispatch import Job
from inferswarm.router.registry import MinerRegistry
from inferswarm.router.schedule import Policy
from inferswarm.router.segment.fanout import Choice, plan_choices

COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""OpenAI's default for the legacy completions endpoint."""

AnyRequest = schemas.ChatCompletionRequest | schemas.CompletionRequest
Runner = Callable[[Job], AsyncGenerator[TaskChunk | TaskDone, None]]


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the tenant for fair queueing, and whether it may
    use admin-only options."""

    tenant: str
    is_admin: bool
    hedge_default: bool = False


@dataclass(frozen=True)
class Plan:
    """A request cut into tasks: ``jobs[i]`` fills ``choices[i]``."""

    jobs: list[Job]
    choices: list[Choice]


def plan_chat(body: schemas.ChatCompletionRequest, caller: Caller, registry: MinerRegistry) -> Plan:
    messages = tuple(ChatMessage(role=m.role, content=m.text()) for m in body.messages)
    check_model(
        ModelName(body.model),
        "".join(m.content for m in messages),
        body.max_tokens,
        registry,
        _min_precision(body),
    )
    choices = plan_choices(1, body.n, body.seed)
    jobs = [_job(body, caller, body.max_tokens, c.seed, messages=messages) for c in choices]
    return Plan(jobs, choices)


def plan_completion(
    body: schemas.CompletionRequest, caller: Caller, registry: MinerRegistry
) -> Plan:
    max_tokens = body.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS
    prompts = body.prompts()
    check_model(
        ModelName(body.model), max(prompts, key=len), max_tokens, registry, _min_precision(body)
    )
    choices = plan_choices(len(prompts), body.n, body.seed)
    jobs = [_job(body, caller, max_tokens, c.seed, prompt=prompts[c.prompt_index]) for c in choices]
    return Plan(jobs, choices)


def _job(
    body: AnyRequest,
    caller: Caller,
    max_tokens: int | None,
    seed: int | None,
    *,
    prompt: str | None = None,
    messages: tuple[ChatMessage, ...] | None = None,
) -> Job:
    sampling = SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_sequences(),
        seed=seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
    )
    asked_hedge = body.inferswarm.hedge if body.inferswarm else None
    return Job(
        model=ModelName(body.model),
        sampling=sampling,
        prompt=prompt,
        messages=messages,
        tenant=caller.tenant,
        session=body.session_key(),
        policy=_policy_override(body, caller),
        hedge=bool(caller.hedge_default if asked_hedge is None else asked_hedge),
        min_precision=_min_precision(body),
    )


def _min_precision(body: AnyRequest) -> str | None:
    return body.inferswarm.min_precision if body.inferswarm else None


def _policy_override(body: AnyRequest, caller: Caller) -> Policy | None:
    name = body.inferswarm.policy if body.inferswarm else None
    if name is None:
        return None
    if not caller.is_admin:
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


def check_model(
    model: ModelName,
    job_text: str,
    max_tokens: int | None,
    registry: MinerRegistry,
    min_precision: str | None = None,
) -> None:
    """Refuse, with what to change, a request no live miner could serve.

    ``model`` may name a family (any variant serves it) or one variant.
    """
    served = registry.served_models()
    try:
        resolution = resolve_variants(model, served, min_precision)
    except UnknownPrecision as exc:
        raise InvalidRequest(
            f"{exc}.", param="inferswarm.min_precision", code="invalid_request"
        ) from None
    if resolution.too_imprecise:
        raise NotFound(
            f"No live miner serves '{model}' at {min_precision} precision or better; served "
            f"variants: {', '.join(resolution.too_imprecise)}. Lower min_precision or start a "
            "miner with a more precise variant.",
            param="inferswarm.min_precision",
            code="model_not_found",
        )
    if not resolution.variants and registry.coming(model, min_precision):
        return  # the request waits while the autoscaler has a miner load the model
    if not resolution.variants:
        available = ", ".join(sorted(served)) or "none (no miner is connected)"
        raise NotFound(
            f"The model '{model}' is not served by any live miner. Available models: {available}. "
            "Ask for a family (e.g. 'smollm2-135m-instruct') to take any of its variants.",
            param="model",
            code="model_not_found",
        )
    largest_context = max(
        o.context_length
        for name in resolution.variants
        for c in served[name]
        for o in c.info.models
        if o.name == name
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


async def collect(events: AsyncGenerator[TaskChunk | TaskDone, None]) -> tuple[str, TaskDone]:
    """A task's whole text and its ``TaskDone``."""
    parts: list[str] = []
    async with aclosing(events) as stream:
        async for event in stream:
            if isinstance(event, TaskChunk):
                parts.append(event.text)
            else:
                return "".join(parts), event
    raise AssertionError("the dispatcher ended without a TaskDone")


async def collect_all(plan: Plan, run: Runner) -> list[tuple[str, TaskDone]]:
    """Every task of the plan at once; the first failure cancels the rest and
    is raised as it is (not wrapped in a group), so it keeps its HTTP status."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(collect(run(job))) for job in plan.jobs]
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


def plan_usage(plan: Plan, results: list[TaskDone]) -> dict[str, int]:
    """Usage of the whole request: each distinct prompt counted once, as OpenAI does."""
    prompt_tokens: dict[int, int] = {}
    for choice, done in zip(plan.choices, results, strict=True):
        prompt_tokens.setdefault(choice.prompt_index, done.prompt_tokens)
    completion_tokens = sum(done.completion_tokens for done in results)
    return schemas.usage(sum(prompt_tokens.values()), completion_tokens)


def chat_response(
    request_id: str,
    body: schemas.ChatCompletionRequest,
    plan: Plan,
    results: list[tuple[str, TaskDone]],
) -> dict[str, object]:
    answers = [(text, done.finish_reason) for text, done in results]
    usage = plan_usage(plan, [done for _, done in results])
    return schemas.chat_completion(request_id, body.model, answers, usage)


def completion_response(
    request_id: str,
    body: schemas.CompletionRequest,
    plan: Plan,
    results: list[tuple[str, TaskDone]],
) -> dict[str, object]:
    prompts = body.prompts()
    answers = [
        ((prompts[choice.prompt_index] if body.echo else "") + text, done.finish_reason)
        for choice, (text, done) in zip(plan.choices, results, strict=True)
    ]
    usage = plan_usage(plan, [done for _, done in results])
    return schemas.text_completion(request_id, body.model, answers, usage)

"""What a request may ask for: the key's model scope, the router's size
limits, and the key's rate limits and quota (reserved here, settled when the
request ends)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from fastapi import Request

from inferswarm.openai_compat.errors import InvalidRequest, PermissionDenied
from inferswarm.router.completion import Plan
from inferswarm.router.settings import RouterSettings
from inferswarm.router.usage_limits import Reservation, UsageLimiter
from inferswarm.storage import ApiKeyRecord

log = logging.getLogger(__name__)

CHARS_PER_TOKEN_ESTIMATE = 4
"""For reservations only: the real count replaces the estimate when the request ends."""
RESERVE_WITHOUT_MAX_TOKENS = 256
"""Tokens reserved per task that sets no max_tokens (settled with the real count)."""


def check_scope(request: Request, model: str) -> None:
    key: ApiKeyRecord | None = request.state.key
    if key is not None and not key.allows(model):
        allowed = ", ".join(key.models)
        raise PermissionDenied(
            f"This API key may not use the model '{model}'; it may use: {allowed}. "
            "Ask the operator for a key with this model.",
            param="model",
            code="model_not_allowed",
        )


def check_size(settings: RouterSettings, plan: Plan) -> None:
    """Refuse a request beyond the router's limits on prompt and output length."""
    longest = max(len(job.prompt_text()) for job in plan.jobs)
    at_least = longest // 6  # never more tokens than this (see affinity.min_prompt_tokens)
    if settings.max_prompt_tokens is not None and at_least > settings.max_prompt_tokens:
        raise InvalidRequest(
            f"The prompt has at least {at_least} tokens; this router accepts prompts of at "
            f"most {settings.max_prompt_tokens} tokens. Shorten the prompt.",
            param="messages",
            code="prompt_too_long",
        )
    max_tokens = plan.jobs[0].sampling.max_tokens
    limit = settings.max_tokens_limit
    if limit is not None and max_tokens is not None and max_tokens > limit:
        raise InvalidRequest(
            f"max_tokens is {max_tokens}; this router allows at most {limit}. Lower max_tokens.",
            param="max_tokens",
            code="max_tokens_too_large",
        )


def estimate_tokens(plan: Plan) -> int:
    prompts = {job.prompt_text() for job in plan.jobs}
    prompt_tokens = sum(len(p) // CHARS_PER_TOKEN_ESTIMATE + 1 for p in prompts)
    output = sum(job.sampling.max_tokens or RESERVE_WITHOUT_MAX_TOKENS for job in plan.jobs)
    return prompt_tokens + output


async def admit(request: Request, plan: Plan, stream: bool) -> Reservation | None:
    """Check the router's limits and reserve the key's capacity (429 when spent)."""
    settings: RouterSettings = request.app.state.settings
    check_size(settings, plan)
    if settings.log_prompts:
        log.info("request from %s: %r", request.state.tenant, [j.prompt_text() for j in plan.jobs])
    key: ApiKeyRecord | None = request.state.key
    if key is None:
        return None
    limiter: UsageLimiter = request.app.state.limiter
    return await limiter.admit(key, estimate_tokens(plan), stream)


async def settle(request: Request, reservation: Reservation | None) -> None:
    if reservation is not None:
        limiter: UsageLimiter = request.app.state.limiter
        await limiter.settle(reservation)


async def admit_job(request: Request, models: Iterable[str]) -> None:
    """A batch or map-reduce job: the key's scope holds for every model it uses,
    its creation counts against the key's requests per minute, and keys with
    token limits are refused (a job's tokens are not known up front and are not
    metered yet)."""
    for model in set(models):
        check_scope(request, model)
    key: ApiKeyRecord | None = request.state.key
    if key is None:
        return
    if key.tpm is not None or key.quota_tokens is not None:
        raise PermissionDenied(
            "This API key has token limits (tpm or quota), and batches and map-reduce jobs "
            "are not metered by tokens yet. Send the requests one by one, or use a key "
            "without --tpm/--quota-tokens.",
            code="token_limited_key",
        )
    limiter: UsageLimiter = request.app.state.limiter
    await limiter.settle(await limiter.admit(key, 0, stream=False))


def batch_line_models(bodies: Iterable[str]) -> list[str]:
    """The models the valid lines of a batch ask for."""
    models = []
    for body in bodies:
        try:
            model = json.loads(body).get("model")
        except (ValueError, AttributeError):
            continue
        if isinstance(model, str):
            models.append(model)
    return models

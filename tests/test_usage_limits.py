"""Rate limits and quotas: the pure decision, and the limiter on a real SQLite
store under concurrent admissions and across a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from inferswarm.openai_compat.errors import RateLimited
from inferswarm.router.usage_limits import UsageLimiter, Used, decide
from inferswarm.storage import ApiKeyRecord
from inferswarm.storage.sql import open_store


def key(**limits: int) -> ApiKeyRecord:
    return ApiKeyRecord("key_1", "test", "d", "isk-x", 0, **limits)  # type: ignore[arg-type]


def test_decide_names_the_limit_and_when_to_retry() -> None:
    assert decide(key(rpm=5), Used(requests=4), 10, False, None, now=30.0) is None
    rpm = decide(key(rpm=5), Used(requests=5), 10, False, None, now=30.0)
    assert rpm is not None and rpm.code == "rate_limit_exceeded" and rpm.retry_after_s == 30
    tpm = decide(key(tpm=100), Used(window_tokens=95), 10, False, None, now=59.5)
    assert tpm is not None and tpm.code == "tokens_rate_limit_exceeded" and tpm.retry_after_s == 1
    alone = decide(key(tpm=100), Used(), 150, False, None, now=0.0)
    assert alone is not None and "Lower max_tokens" in alone.message
    quota = decide(key(quota_tokens=100), Used(total_tokens=90), 20, False, None, now=0.0)
    assert (
        quota is not None and quota.code == "insufficient_quota" and "10 are left" in quota.message
    )
    streams = decide(key(), Used(streams=2), 1, True, 2, now=0.0)
    assert streams is not None and streams.code == "too_many_streams"
    assert decide(key(), Used(streams=2), 1, False, 2, now=0.0) is None  # only streams count


async def test_concurrent_requests_get_exactly_the_rpm(tmp_path: Path) -> None:
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'db'}")
    limiter = UsageLimiter(store, None, clock=lambda: 1000.0)
    outcomes = await asyncio.gather(
        *(limiter.admit(key(rpm=5), 10, False) for _ in range(20)), return_exceptions=True
    )
    refused = [o for o in outcomes if isinstance(o, RateLimited)]
    assert len(outcomes) - len(refused) == 5 and len(refused) == 15
    assert refused[0].headers["Retry-After"] == "20"
    await store.close()


async def test_tokens_are_reserved_then_settled_and_survive_a_restart(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'db'}"
    store = await open_store(url)
    limiter = UsageLimiter(store, None, clock=lambda: 1000.0)
    quota = key(quota_tokens=100)
    first = await limiter.admit(quota, 60, False)
    with pytest.raises(RateLimited):  # 60 reserved + 60 > 100
        await limiter.admit(quota, 60, False)
    first.add_tokens(20)
    await limiter.settle(first)
    await limiter.settle(first)  # idempotent
    assert await store.usage("key_1", "quota", 0) == 20
    await store.close()

    store = await open_store(url)  # a restarted router
    limiter = UsageLimiter(store, None, clock=lambda: 1000.0)
    await limiter.admit(quota, 60, False)
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(quota, 60, False)
    assert refused.value.code == "insufficient_quota"
    await store.close()


async def test_streams_are_released_when_settled(tmp_path: Path) -> None:
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'db'}")
    limiter = UsageLimiter(store, 1)
    held = await limiter.admit(key(), 1, True)
    with pytest.raises(RateLimited):
        await limiter.admit(key(), 1, True)
    await limiter.settle(held)
    await limiter.settle(await limiter.admit(key(), 1, True))
    await store.close()


def test_a_family_scope_covers_its_variants_and_a_variant_scope_only_itself() -> None:
    family = ApiKeyRecord("k", "t", "d", "isk-x", 0, models=("smollm2-135m-instruct",))
    assert family.allows("smollm2-135m-instruct")
    assert family.allows("smollm2-135m-instruct:q8_0")
    assert not family.allows("gemma-3-270m:q4_k_m")
    variant = ApiKeyRecord("k", "t", "d", "isk-x", 0, models=("smollm2-135m-instruct:q8_0",))
    assert variant.allows("smollm2-135m-instruct:q8_0")
    assert not variant.allows("smollm2-135m-instruct:q4_1")
    assert not variant.allows("smollm2-135m-instruct")  # any variant could answer that
    assert ApiKeyRecord("k", "t", "d", "isk-x", 0).allows("anything:q2_k")

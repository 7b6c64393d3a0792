"""Router-wide verification settings: per-tier spot-check rates, and which jobs
claim log-probabilities for the teacher-forced check."""

from __future__ import annotations

import time
from typing import Any

import pytest

from inferswarm.protocol import ModelName, SamplingParams
from inferswarm.router.admission import WaitQueue
from inferswarm.router.dispatch import Dispatcher, DispatchLimits, Job
from inferswarm.router.registry import MinerRegistry
from inferswarm.router.schedule import Policy
from inferswarm.router.verify.options import SpotCheckStrategy, VerifySettings, parse_tier_rates
from inferswarm.router.verify.service import Verifier


def test_tier_rates_parse_and_replace_the_router_rate_for_their_tier() -> None:
    rates = parse_tier_rates(["T1=0.2", "t3=0", "2=0.05", "T1=0.3"])
    assert rates == ((1, 0.3), (2, 0.05), (3, 0.0))  # the last word on a tier wins
    settings = VerifySettings(spot_check_rate=0.01, spot_check_tier_rates=rates)
    assert settings.spot_check_rate_for(1) == 0.3
    assert settings.spot_check_rate_for(3) == 0.0
    assert settings.spot_check_rate_for(5) == 0.01
    assert settings.spot_check_rate_for(None) == 0.01
    assert settings.spot_checks_on()
    assert VerifySettings(spot_check_tier_rates=((1, 0.2),)).spot_checks_on()
    assert not VerifySettings(spot_check_tier_rates=((1, 0.0),)).spot_checks_on()


@pytest.mark.parametrize("spec", ["T6=0.1", "T1", "T1=2", "fast=0.1", "T1=x", "=0.1"])
def test_a_bad_tier_rate_says_what_is_expected(spec: str) -> None:
    with pytest.raises(ValueError, match=r"TIER=RATE with a tier T1\.\.T5 and a rate from 0 to 1"):
        parse_tier_rates([spec])


async def test_jobs_claim_log_probabilities_only_where_a_teacher_check_may_judge_them() -> None:
    registry = MinerRegistry(time.monotonic, 60, time.time)
    dispatcher = Dispatcher(registry, Policy.CAPACITY_AWARE, DispatchLimits(), WaitQueue(10, 10))
    job = Job(model=ModelName("m"), sampling=SamplingParams(temperature=0.8))

    def claims(**settings: Any) -> bool:
        verifier = Verifier(registry, dispatcher, VerifySettings(**settings))
        return verifier.prepared(job).logprobs

    assert claims(spot_check_rate=0.1, spot_check_strategy=SpotCheckStrategy.TEACHER)
    assert claims(spot_check_tier_rates=((1, 0.5),), spot_check_strategy=SpotCheckStrategy.MIXED)
    assert not claims(spot_check_rate=0.1, spot_check_strategy=SpotCheckStrategy.REDUNDANT)
    assert not claims(spot_check_rate=0.0, spot_check_strategy=SpotCheckStrategy.TEACHER)

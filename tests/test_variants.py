"""Model resolution: a family goes to any variant, a full name pins one, and
min_precision keeps the precise ones; the scheduler routes on the result."""

from __future__ import annotations

import pytest

from inferswarm.protocol import MinerId, ModelName, split_model_name
from inferswarm.protocol.variants import UnknownPrecision, resolve_variants, variant_on
from inferswarm.router.schedule import (
    MinerState,
    MinerView,
    Policy,
    Snapshot,
    TaskNeeds,
    choose_miner,
)

Q4 = ModelName("smollm2-135m-instruct:q4_1")
Q8 = ModelName("smollm2-135m-instruct:q8_0")
Q3 = ModelName("smollm2-135m-instruct:q3_k_m")
GEMMA = ModelName("gemma-3-270m:q4_k_m")
FAKE = ModelName("fake-model")
SERVED = {Q4, Q8, Q3, GEMMA, FAKE}


def test_names_split_into_family_and_variant() -> None:
    assert split_model_name(Q8) == ("smollm2-135m-instruct", "q8_0")
    assert split_model_name("fake-model") == ("fake-model", "")


def test_a_family_resolves_to_every_variant_most_precise_first() -> None:
    assert resolve_variants("smollm2-135m-instruct", SERVED).variants == (Q8, Q4, Q3)
    assert resolve_variants("gemma-3-270m", SERVED).variants == (GEMMA,)


def test_a_full_name_pins_its_variant() -> None:
    assert resolve_variants(Q4, SERVED).variants == (Q4,)
    assert resolve_variants("fake-model", SERVED).variants == (FAKE,)
    missing = resolve_variants("smollm2-135m-instruct:q6_k", SERVED)
    assert missing.variants == ()
    assert "q6_k" in missing.why_none


def test_min_precision_keeps_variants_at_least_as_precise() -> None:
    assert resolve_variants("smollm2-135m-instruct", SERVED, "q4_0").variants == (Q8, Q4)
    assert resolve_variants("smollm2-135m-instruct", SERVED, "q8_0").variants == (Q8,)
    refused = resolve_variants("gemma-3-270m", SERVED, "q8_0")
    assert refused.variants == ()
    assert refused.too_imprecise == (GEMMA,)
    assert resolve_variants(Q4, SERVED, "q8_0").variants == ()
    # A model with no known precision cannot prove it meets a floor.
    assert resolve_variants("fake-model", SERVED, "q2_k").variants == ()


def test_an_unknown_precision_is_refused_with_the_known_ones() -> None:
    with pytest.raises(UnknownPrecision, match="q8_0"):
        resolve_variants("smollm2-135m-instruct", SERVED, "q9_9")


def test_the_variant_on_a_miner_is_its_most_precise_that_fits() -> None:
    windows = {Q4: 4096, Q8: 512}
    assert variant_on((Q8, Q4), windows, 300) == Q8
    assert variant_on((Q8, Q4), windows, 1000) == Q4
    assert variant_on((Q8,), windows, 1000) is None


def view(name: str, *models: ModelName, busy: int = 0) -> MinerView:
    return MinerView(
        miner_id=MinerId(name),
        state=MinerState.LIVE,
        context_lengths=dict.fromkeys(models, 2048),
        slots=2,
        busy=busy,
    )


def test_the_scheduler_serves_a_family_from_any_variant_and_names_it() -> None:
    snapshot = Snapshot.of([view("low", Q4, busy=1), view("high", Q8)])
    decision = choose_miner(
        TaskNeeds(model=ModelName("smollm2-135m-instruct")), snapshot, Policy.LEAST_LOADED
    )
    assert (decision.miner_id, decision.model) == ("high", Q8)
    busy_high = Snapshot.of([view("low", Q4), view("high", Q8, busy=2)])
    decision = choose_miner(
        TaskNeeds(model=ModelName("smollm2-135m-instruct")), busy_high, Policy.LEAST_LOADED
    )
    assert (decision.miner_id, decision.model) == ("low", Q4)


def test_the_scheduler_honours_min_precision_and_pinning() -> None:
    snapshot = Snapshot.of([view("low", Q4), view("high", Q8, busy=2), view("g", GEMMA)])
    precise = TaskNeeds(model=ModelName("smollm2-135m-instruct"), min_precision="q8_0")
    assert choose_miner(precise, snapshot, Policy.LEAST_LOADED).miner_id == "high"
    pinned = TaskNeeds(model=Q4)
    assert choose_miner(pinned, snapshot, Policy.LEAST_LOADED).model == Q4
    pinned_too_low = TaskNeeds(model=Q4, min_precision="q8_0")
    assert choose_miner(pinned_too_low, snapshot, Policy.LEAST_LOADED).miner_id is None
    none = choose_miner(
        TaskNeeds(model=ModelName("gemma-3-270m"), min_precision="q8_0"),
        snapshot,
        Policy.LEAST_LOADED,
    )
    assert none.miner_id is None
    assert "q8_0" in none.reason


def test_a_miner_with_two_variants_is_considered_once() -> None:
    snapshot = Snapshot.of([view("both", Q4, Q8), view("other", GEMMA)])
    task = TaskNeeds(model=ModelName("smollm2-135m-instruct"))
    decision = choose_miner(task, snapshot, Policy.ROUND_ROBIN)
    assert (decision.miner_id, decision.model) == ("both", Q8)

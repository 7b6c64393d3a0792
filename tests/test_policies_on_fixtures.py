"""Every policy on recorded miner registrations: an ARM board, a laptop CPU,
a consumer GPU and a datacenter GPU, as the router sees them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from inferswarm.protocol import MinerId, ModelName, Register
from inferswarm.router.capacity import claimed_speed
from inferswarm.router.schedule import (
    MinerState,
    MinerView,
    Policy,
    Snapshot,
    TaskNeeds,
    choose_miner,
    tier_for,
)

FIXTURES = Path(__file__).parent / "fixtures" / "miners"
MODEL = ModelName("smollm2-135m-instruct:q4_1")


def load(name: str) -> Register:
    return Register.model_validate_json((FIXTURES / f"{name}.json").read_text())


def view(info: Register, busy: int = 0) -> MinerView:
    offer = info.models[0]
    return MinerView(
        miner_id=info.miner_id,
        state=MinerState.LIVE,
        context_lengths={offer.name: offer.context_length},
        slots=info.slots,
        busy=busy,
        speed=claimed_speed(offer.capability, info.claimed_tokens_per_s),
    )


@pytest.fixture
def fleet() -> dict[str, MinerView]:
    return {
        name: view(load(name))
        for name in ("arm_board", "laptop_cpu", "consumer_gpu", "datacenter_gpu")
    }


def full(miner: MinerView, remaining_per_task: int = 300, queued_per_slot: int = 2) -> MinerView:
    """Every slot busy and the miner's own queue at its limit, each task with
    work left, as the registry reports it."""
    busy = miner.slots * (1 + queued_per_slot)
    return replace(miner, busy=busy, queued_tokens=busy * remaining_per_task)


def choose(fleet: dict[str, MinerView], policy: Policy, **needs: object) -> MinerId | None:
    task = TaskNeeds(model=MODEL, **needs)  # type: ignore[arg-type]
    return choose_miner(task, Snapshot.of(list(fleet.values())), policy).miner_id


def test_fixtures_span_the_tiers(fleet: dict[str, MinerView]) -> None:
    tiers = {
        name: tier_for(v.speed.aggregate(v.slots) if v.speed else None) for name, v in fleet.items()
    }
    assert tiers == {"arm_board": 1, "laptop_cpu": 3, "consumer_gpu": 5, "datacenter_gpu": 5}


def test_capacity_aware_sends_long_work_to_the_datacenter_gpu(fleet: dict[str, MinerView]) -> None:
    assert choose(fleet, Policy.CAPACITY_AWARE, prompt_tokens=800, max_tokens=500) == "m-h100"


def test_capacity_aware_moves_on_as_the_big_gpu_fills(fleet: dict[str, MinerView]) -> None:
    fleet["datacenter_gpu"] = full(fleet["datacenter_gpu"])
    assert choose(fleet, Policy.CAPACITY_AWARE, max_tokens=200) == "m-rtx4070"


def test_capacity_aware_queues_on_a_fast_miner_only_while_that_is_quicker(
    fleet: dict[str, MinerView],
) -> None:
    fleet["consumer_gpu"] = full(fleet["consumer_gpu"])
    # Slots busy, one task queued per slot: starting on the H100 after ~0.02 s
    # beats 1.8 s on the idle laptop.
    fleet["datacenter_gpu"] = full(
        fleet["datacenter_gpu"], remaining_per_task=20, queued_per_slot=1
    )
    assert choose(fleet, Policy.CAPACITY_AWARE, max_tokens=200) == "m-h100"
    # Deep backlog on the H100: the idle laptop is quicker.
    fleet["datacenter_gpu"] = full(
        fleet["datacenter_gpu"], remaining_per_task=3000, queued_per_slot=1
    )
    assert choose(fleet, Policy.CAPACITY_AWARE, max_tokens=200) == "m-laptop-i7"
    # Baselines ignore speed: least_loaded picks the emptiest.
    assert choose(fleet, Policy.LEAST_LOADED, max_tokens=200) in {"m-laptop-i7", "m-arm-rpi5"}


def test_the_arm_board_cannot_take_a_prompt_beyond_its_context(fleet: dict[str, MinerView]) -> None:
    for name in ("laptop_cpu", "consumer_gpu", "datacenter_gpu"):
        fleet[name] = full(fleet[name])
    task = TaskNeeds(model=MODEL, prompt_tokens=3000, max_tokens=100)
    decision = choose_miner(task, Snapshot.of(list(fleet.values())), Policy.CAPACITY_AWARE)
    assert decision.miner_id is None and decision.saturated  # wait for a big miner, do not fail


def test_least_loaded_ignores_speed_and_picks_the_emptiest_share(
    fleet: dict[str, MinerView],
) -> None:
    fleet["datacenter_gpu"] = replace(fleet["datacenter_gpu"], busy=1)
    fleet["consumer_gpu"] = replace(fleet["consumer_gpu"], busy=1)
    fleet["laptop_cpu"] = replace(fleet["laptop_cpu"], busy=1)
    assert choose(fleet, Policy.LEAST_LOADED, max_tokens=100) == "m-arm-rpi5"


def test_round_robin_visits_every_miner(fleet: dict[str, MinerView]) -> None:
    picks = {choose(fleet, Policy.ROUND_ROBIN, sequence=n) for n in range(4)}
    assert picks == {v.miner_id for v in fleet.values()}


def test_power_of_two_never_picks_a_full_miner(fleet: dict[str, MinerView]) -> None:
    fleet["datacenter_gpu"] = full(fleet["datacenter_gpu"])
    picks = {choose(fleet, Policy.POWER_OF_TWO, seed=s) for s in range(50)}
    assert "m-h100" not in picks and len(picks) >= 2


def test_cache_aware_weighs_a_warm_cache_against_raw_speed(fleet: dict[str, MinerView]) -> None:
    fleet["datacenter_gpu"] = full(fleet["datacenter_gpu"])
    snapshot = Snapshot.of(list(fleet.values()), prefixes={7: frozenset({MinerId("m-laptop-i7")})})

    def task(cached: int) -> TaskNeeds:
        return TaskNeeds(
            model=MODEL, prompt_tokens=3000, max_tokens=5, prefix_blocks=(7,), block_tokens=cached
        )

    # 1,000 warm tokens leave the laptop 2.2 s of prompt work; the GPU needs 0.25 s for all of it.
    assert choose_miner(task(1000), snapshot, Policy.CACHE_AWARE).miner_id == "m-rtx4070"
    # 2,950 warm tokens leave the laptop 0.06 s: now the warm cache wins.
    assert choose_miner(task(2950), snapshot, Policy.CACHE_AWARE).miner_id == "m-laptop-i7"
    # capacity_aware does not know about caches.
    assert choose_miner(task(2950), snapshot, Policy.CAPACITY_AWARE).miner_id == "m-rtx4070"

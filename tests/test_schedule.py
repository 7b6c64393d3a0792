from __future__ import annotations

from dataclasses import replace

from inferswarm.protocol import MinerId, ModelName
from inferswarm.router.schedule import (
    SAMPLE_SIZE,
    MinerState,
    MinerView,
    Policy,
    Snapshot,
    Speed,
    TaskNeeds,
    choose_miner,
    tier_for,
)

MODEL = ModelName("smollm2-135m-instruct:q4_1")


def miner(
    name: str,
    busy: int = 0,
    slots: int = 2,
    *,
    models: tuple[str, ...] = (MODEL,),
    state: MinerState = MinerState.LIVE,
    context: int = 2048,
    speed: float | None = None,
    queued: int = 0,
    quarantined: bool = False,
) -> MinerView:
    return MinerView(
        miner_id=MinerId(name),
        state=state,
        context_lengths={ModelName(m): context for m in models},
        slots=slots,
        busy=busy,
        speed=None if speed is None else Speed(prompt=speed * 20, generation=speed),
        queued_tokens=queued,
        quarantined=quarantined,
    )


def decide(*miners: MinerView, policy: Policy = Policy.LEAST_LOADED, **needs: object):  # type: ignore[no-untyped-def]
    task = TaskNeeds(model=MODEL, **needs)  # type: ignore[arg-type]
    return choose_miner(task, Snapshot.of(miners), policy)


def pick(
    *miners: MinerView, policy: Policy = Policy.LEAST_LOADED, **needs: object
) -> MinerId | None:
    decision = decide(*miners, policy=policy, **needs)
    return decision.miner_id  # type: ignore[no-any-return]


def test_least_loaded_picks_the_lowest_share_of_busy_slots() -> None:
    assert pick(miner("a", busy=1, slots=2), miner("b", busy=1, slots=4)) == "b"
    assert pick(miner("a", busy=0), miner("b", busy=1)) == "a"


def test_equally_loaded_miners_take_turns() -> None:
    miners = (miner("b"), miner("a"), miner("c", busy=1))
    assert [pick(*miners, sequence=n) for n in range(4)] == ["a", "b", "a", "b"]


def test_miners_without_the_model_are_never_chosen() -> None:
    assert pick(miner("a", models=("other",)), miner("b", busy=1)) == "b"


def test_draining_excluded_and_quarantined_miners_are_skipped() -> None:
    assert pick(miner("a", state=MinerState.DRAINING), miner("b", busy=1)) == "b"
    assert pick(miner("a"), miner("b", busy=1), exclude=frozenset({MinerId("a")})) == "b"
    assert pick(miner("a", quarantined=True), miner("b", busy=1)) == "b"


def test_context_window_must_hold_prompt_and_max_tokens() -> None:
    small, big = miner("small", context=512), miner("big", context=4096, busy=1)
    assert pick(small, big, max_tokens=1000) == "big"
    assert pick(small, big, prompt_tokens=500, max_tokens=100) == "big"


def test_no_candidate_explains_why() -> None:
    assert "no connected miner serves" in decide().reason
    decision = decide(miner("a"), exclude=frozenset({MinerId("a")}))
    assert decision.miner_id is None and not decision.saturated
    assert "already tried" in decision.reason


def test_busy_miners_take_a_short_queue_then_the_router_waits() -> None:
    # 2 slots each: up to 2 running and 4 queued on the miner.
    assert pick(miner("a", busy=5), miner("b", busy=4)) == "b"
    decision = decide(miner("a", busy=6), miner("b", busy=6))
    assert decision.miner_id is None
    assert decision.saturated
    assert "full" in decision.reason


def test_round_robin_rotates_by_sequence() -> None:
    miners = (miner("c"), miner("a"), miner("b"))
    picks = [pick(*miners, policy=Policy.ROUND_ROBIN, sequence=n) for n in range(4)]
    assert picks == ["a", "b", "c", "a"]


def test_power_of_two_takes_the_lighter_of_its_sample_and_repeats_per_seed() -> None:
    miners = tuple(miner(f"m{i}", busy=i % 2) for i in range(10))
    first = [pick(*miners, policy=Policy.POWER_OF_TWO, seed=s) for s in range(30)]
    again = [pick(*miners, policy=Policy.POWER_OF_TWO, seed=s) for s in range(30)]
    assert first == again
    assert len(set(first)) > 2  # it spreads


def test_capacity_aware_prefers_the_faster_miner_until_its_queue_is_long() -> None:
    slow, fast = miner("slow", speed=10, slots=4), miner("fast", speed=100, slots=4)
    assert pick(slow, fast, policy=Policy.CAPACITY_AWARE, max_tokens=100) == "fast"
    # 2 queued behind 4 running, 100 tokens each left: ~2 s wait + 1 s of work beats 10 s.
    queued = MinerView(
        miner_id=MinerId("fast"),
        state=MinerState.LIVE,
        context_lengths={MODEL: 2048},
        slots=4,
        busy=6,
        speed=Speed(prompt=2000, generation=100),
        queued_tokens=600,
    )
    assert pick(slow, queued, policy=Policy.CAPACITY_AWARE, max_tokens=100) == "fast"
    # With 1,000 tokens left per task the wait grows past 10 s: the idle slow miner wins.
    backlogged = replace(queued, busy=8, queued_tokens=8000)
    assert pick(slow, backlogged, policy=Policy.CAPACITY_AWARE, max_tokens=100) == "slow"


def test_capacity_aware_counts_contention_on_a_batched_miner() -> None:
    # 4 slots sharing 100 tok/s in total: with 3 running, a 4th gets 25 tok/s.
    shared = MinerView(
        miner_id=MinerId("shared"),
        state=MinerState.LIVE,
        context_lengths={MODEL: 2048},
        slots=4,
        busy=3,
        speed=Speed(prompt=1000, generation=100, batched_sequences=4, batched_generation=100),
    )
    idle = miner("idle", speed=40)
    assert pick(shared, idle, policy=Policy.CAPACITY_AWARE, max_tokens=100) == "idle"


def test_unmeasured_miners_are_assumed_typical() -> None:
    # An unmeasured miner counts as the median of the others: it gets work
    # over slower miners (and is measured), but not over faster ones.
    slow, typical = miner("k1", speed=10), miner("k2", speed=20)
    newcomer = miner("a-new")
    assert pick(slow, typical, newcomer, policy=Policy.CAPACITY_AWARE, max_tokens=50) == "a-new"
    fast = miner("k3", speed=30)
    assert pick(slow, typical, fast, newcomer, policy=Policy.CAPACITY_AWARE, max_tokens=50) == "k3"


def test_cache_aware_goes_where_the_prefix_is_warm() -> None:
    blocks = (11, 22, 33)
    warm, cold = miner("warm", speed=50), miner("cold", speed=50)
    snapshot = Snapshot.of(
        (cold, warm), prefixes={11: frozenset({MinerId("warm")}), 22: frozenset({MinerId("warm")})}
    )
    task = TaskNeeds(
        model=MODEL, prompt_tokens=600, max_tokens=20, prefix_blocks=blocks, block_tokens=200
    )
    decision = choose_miner(task, snapshot, Policy.CACHE_AWARE)
    assert decision.miner_id == "warm"
    assert "400 prefix tokens cached" in decision.reason


def test_cache_affinity_yields_to_the_load_guard() -> None:
    warm, cold = miner("warm", speed=50, busy=3, slots=4), miner("cold", speed=50)
    snapshot = Snapshot.of((cold, warm), prefixes={11: frozenset({MinerId("warm")})})
    task = TaskNeeds(
        model=MODEL, prompt_tokens=600, max_tokens=20, prefix_blocks=(11,), block_tokens=200
    )
    assert choose_miner(task, snapshot, Policy.CACHE_AWARE).miner_id == "cold"


def test_session_affinity_sticks_and_falls_back_when_the_miner_is_gone() -> None:
    a, b = miner("a", speed=10), miner("b", speed=50)
    sticky = Snapshot.of((a, b), sessions={"alice": MinerId("a")})
    task = TaskNeeds(model=MODEL, max_tokens=10, session="alice")
    assert choose_miner(task, sticky, Policy.SESSION_AFFINITY).miner_id == "a"
    gone = Snapshot.of((b,), sessions={"alice": MinerId("a")})
    assert choose_miner(task, gone, Policy.SESSION_AFFINITY).miner_id == "b"


def test_large_pools_are_sampled_but_still_find_the_only_free_miner() -> None:
    pool = [miner(f"m{i:05}", busy=6) for i in range(SAMPLE_SIZE * 20)]
    pool.append(miner("free"))
    assert pick(*pool, policy=Policy.CAPACITY_AWARE, seed=3) == "free"


def test_same_input_same_decision() -> None:
    miners = (miner("a", busy=1), miner("b", busy=1), miner("c", busy=2))
    assert {pick(*miners, sequence=7) for _ in range(20)} == {"b"}


def test_tiers_rise_with_speed() -> None:
    assert [tier_for(s) for s in (None, 5, 50, 200, 1000, 5000)] == [1, 1, 2, 3, 4, 5]


def test_speed_curve_interpolates_and_flattens() -> None:
    speed = Speed(prompt=1000, generation=50, batched_sequences=5, batched_generation=150)
    assert speed.aggregate(1) == 50
    assert speed.aggregate(3) == 100
    assert speed.aggregate(9) == 150
    assert speed.per_sequence(5) == 30
    assert Speed(prompt=100, generation=10).aggregate(4) == 40  # unmeasured batch: no contention


def test_banned_miners_are_avoided_but_used_when_nobody_else_can_serve() -> None:
    banned = replace(miner("a", speed=100), banned=True)
    assert pick(banned, miner("b", speed=10), policy=Policy.CAPACITY_AWARE, max_tokens=10) == "b"
    assert pick(banned, policy=Policy.CAPACITY_AWARE, max_tokens=10) == "a"

from __future__ import annotations

from inferswarm.protocol import MinerId, ModelName
from inferswarm.router.schedule import (
    MinerState,
    MinerView,
    Policy,
    Snapshot,
    TaskNeeds,
    choose_miner,
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
) -> MinerView:
    return MinerView(
        miner_id=MinerId(name),
        state=state,
        context_lengths={ModelName(m): context for m in models},
        slots=slots,
        busy=busy,
        tokens_per_s=speed,
    )


def pick(
    *miners: MinerView, policy: Policy = Policy.LEAST_LOADED, **needs: object
) -> MinerId | None:
    task = TaskNeeds(model=MODEL, **needs)  # type: ignore[arg-type]
    return choose_miner(task, Snapshot(miners), policy).miner_id


def test_least_loaded_picks_the_lowest_share_of_busy_slots() -> None:
    assert pick(miner("a", busy=1, slots=2), miner("b", busy=1, slots=4)) == "b"
    assert pick(miner("a", busy=0), miner("b", busy=1)) == "a"


def test_equally_loaded_miners_take_turns() -> None:
    miners = (miner("b"), miner("a"), miner("c", busy=1))
    assert [pick(*miners, sequence=n) for n in range(4)] == ["a", "b", "a", "b"]


def test_miners_without_the_model_are_never_chosen() -> None:
    assert pick(miner("a", models=("other",)), miner("b", busy=2)) == "b"


def test_draining_and_excluded_miners_are_skipped() -> None:
    assert pick(miner("a", state=MinerState.DRAINING), miner("b", busy=1)) == "b"
    assert pick(miner("a"), miner("b", busy=1), exclude=frozenset({MinerId("a")})) == "b"


def test_context_window_must_exceed_max_tokens() -> None:
    assert (
        pick(miner("small", context=512), miner("big", context=4096, busy=1), max_tokens=1000)
        == "big"
    )


def test_no_candidate_explains_why() -> None:
    task = TaskNeeds(model=MODEL)
    assert (
        "no connected miner serves" in choose_miner(task, Snapshot(()), Policy.LEAST_LOADED).reason
    )
    tried = TaskNeeds(model=MODEL, exclude=frozenset({MinerId("a")}))
    decision = choose_miner(tried, Snapshot((miner("a"),)), Policy.LEAST_LOADED)
    assert decision.miner_id is None
    assert "already tried" in decision.reason


def test_round_robin_rotates_by_sequence() -> None:
    miners = (miner("c"), miner("a"), miner("b"))
    picks = [pick(*miners, policy=Policy.ROUND_ROBIN, sequence=n) for n in range(4)]
    assert picks == ["a", "b", "c", "a"]


def test_same_input_same_decision() -> None:
    miners = (miner("a", busy=1), miner("b", busy=1), miner("c", busy=2))
    assert {pick(*miners, sequence=7) for _ in range(20)} == {"b"}

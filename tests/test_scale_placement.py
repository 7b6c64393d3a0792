"""Placing models nobody serves onto standby miners: the pure decision."""

from __future__ import annotations

from inferswarm.router.scale.placement import Candidate, Load, place, spare_loaders

A = "fam-a:q4_0"


def miner(name: str, **fields: object) -> Candidate:
    defaults: dict[str, object] = {
        "parked": False,
        "busy_slots": 0,
        "tokens_per_s": 50.0,
        "serves": ("other:q4_0",),
    }
    return Candidate(miner_id=f"id-{name}", name=name, **{**defaults, **fields})  # type: ignore[arg-type]


def test_a_parked_miner_loads_the_model_before_a_live_one_and_a_busy_one() -> None:
    miners = [
        miner("busy", busy_slots=2, loadable=(A,)),
        miner("idle", loadable=(A,)),
        miner("parked", parked=True, loadable=(A,), tokens_per_s=10),
    ]
    loads, unplaced = place({A: 3}, miners)
    assert [(load.miner_name, load.variant) for load in loads] == [("parked", A)]
    assert unplaced == []
    assert "3 request(s) in flight for fam-a:q4_0 and no miner serves it" in loads[0].reason
    assert "parked (parked) can load fam-a:q4_0" in loads[0].reason
    loads, _ = place({A: 3}, miners[:2])
    assert [load.miner_name for load in loads] == ["idle"]
    loads, _ = place(
        {A: 3}, [miner("slow", loadable=(A,), tokens_per_s=5), miner("fast", loadable=(A,))]
    )
    assert [load.miner_name for load in loads] == ["fast"]  # among equals, the fastest


def test_a_family_request_gets_the_most_precise_variant_the_miner_can_load() -> None:
    loads, _ = place({"fam-a": 1}, [miner("m", loadable=("fam-a:q4_0", "fam-a:q8_0", "x:f16"))])
    assert loads == [Load("fam-a", "fam-a:q8_0", "id-m", "m", loads[0].reason)]


def test_nothing_is_placed_for_a_served_model_or_without_demand() -> None:
    able = miner("spare", parked=True, loadable=(A,))
    assert place({A: 2}, [miner("server", serves=(A,)), able]) == ([], [])
    # A parked miner serving it counts too: activating it is the scaling's business.
    assert place({A: 2}, [miner("asleep", parked=True, serves=(A,)), able]) == ([], [])
    assert place({A: 0}, [able]) == ([], [])


def test_one_miner_per_model_and_one_model_per_miner_at_a_time() -> None:
    b = "fam-b:q4_0"
    both = miner("both", parked=True, loadable=(A, b))
    only_b = miner("only-b", loadable=(b,))
    loads, unplaced = place({A: 5, b: 2}, [both, only_b])
    # The model most in demand picks first; the other one goes to the miner left.
    assert [(load.model, load.miner_name) for load in loads] == [(A, "both"), (b, "only-b")]
    assert unplaced == []
    loads, unplaced = place({A: 5, b: 2}, [both])
    assert [load.model for load in loads] == [A]
    assert [u.model for u in unplaced] == [b]
    assert "could load fam-b:q4_0 but are loading another model" in unplaced[0].reason


def test_a_model_already_loading_is_not_asked_for_again() -> None:
    loading = miner("loader", loading=(A,))
    loads, unplaced = place({A: 4}, [loading, miner("spare", parked=True, loadable=(A,))])
    assert loads == []
    assert [u.reason for u in unplaced] == ["fam-a:q4_0 is loading on loader"]
    # And a miner loading something is not given a second load.
    loads, _ = place({"fam-b": 1}, [miner("loader", loading=(A,), loadable=("fam-b:q4_0",))])
    assert loads == []


def test_a_failed_pair_is_avoided_and_demand_nobody_can_load_says_so() -> None:
    miners = [miner("flaky", parked=True, loadable=(A,)), miner("steady", loadable=(A,))]
    loads, _ = place({A: 1}, miners, avoid={("id-flaky", A)})
    assert [load.miner_name for load in loads] == ["steady"]
    loads, unplaced = place({"nowhere": 1}, miners)
    assert loads == []
    assert "no connected miner serves nowhere or can load it" in unplaced[0].reason


def test_more_miners_for_a_served_model_load_it_on_parked_and_idle_miners_only() -> None:
    miners = [
        miner("server", serves=(A,), loadable=()),
        miner("busy", busy_slots=1, loadable=(A,)),
        miner("idle", loadable=(A,), tokens_per_s=10),
        miner("parked", parked=True, loadable=(A,)),
        miner("loader", loading=("fam-b:q4_0",), loadable=(A,)),
        miner("failed", loadable=(A,)),
    ]
    avoid = {("id-failed", A)}
    assert spare_loaders(A, miners, avoid) == 2
    loads, unplaced = place({A: 4}, miners, avoid, more={A: 2})
    assert [(load.miner_name, load.variant) for load in loads] == [("parked", A), ("idle", A)]
    assert unplaced == []
    assert "scaling wants 2 more miner(s) for fam-a:q4_0" in loads[0].reason
    loads, unplaced = place({}, miners, avoid, more={A: 3})
    assert len(loads) == 2
    assert [u.model for u in unplaced] == [A]
    assert "2 parked or idle miner(s) can load it now" in unplaced[0].reason


def test_a_model_nobody_serves_is_placed_before_more_miners_for_a_served_one() -> None:
    b = "fam-b:q4_0"
    miners = [miner("server", serves=(A,)), miner("spare", parked=True, loadable=(A, b))]
    loads, unplaced = place({b: 1}, miners, more={A: 1})
    assert [(load.model, load.miner_name) for load in loads] == [(b, "spare")]
    assert [u.model for u in unplaced] == [A], "one load at a time per miner"
    # A model the autoscaler scales that nobody serves yet gets one load, not two.
    loads, _ = place({b: 1}, [*miners, miner("idle", loadable=(b,))], more={b: 1})
    assert [load.model for load in loads] == [b]

"""Which miners leave a model's pool on a scale-down: the pure choice over
every model each miner serves."""

from __future__ import annotations

from inferswarm.router.scale.removal import Removal, Server, plan_removals

A, B = "fam-a:q4_0", "fam-b:q4_0"


def server(name: str, *serves: str, busy: int = 0, at: float = 0.0) -> Server:
    return Server(miner_id=f"id-{name}", name=name, serves=serves, busy_slots=busy, connected_at=at)


def chosen(removals: list[Removal]) -> list[tuple[str, str, str]]:
    return [(r.model, r.miner_name, r.way.value) for r in removals]


def test_a_miner_serving_only_the_cold_model_goes_first_then_the_idlest_and_newest() -> None:
    servers = [
        server("old", A, at=1),
        server("new", A, at=2),
        server("busy", A, busy=1, at=3),
        server("both", A, B, at=4),
    ]
    removals = plan_removals({A: 2}, servers)
    assert chosen(removals) == [(A, "new", "drain"), (A, "old", "drain")]
    assert removals[0].reason == "new: it serves nothing else"


def test_a_miner_another_model_still_needs_is_not_drained_but_unloads_the_cold_model() -> None:
    # The newest and idlest, so the first to go were only fam-a looked at.
    servers = [server("a-only", A, busy=2, at=1), server("shared", A, B, at=9)]
    removals = plan_removals({A: 1}, servers)
    assert chosen(removals) == [(A, "a-only", "drain")]
    removals = plan_removals({A: 2}, servers)
    assert chosen(removals) == [(A, "a-only", "drain"), (A, "shared", "unload")]
    assert removals[1].reason == f"shared: still needed for {B}: unloading {A} only"
    # An unload that failed lately is not asked again: the miner stays as it is.
    assert chosen(plan_removals({A: 2}, servers, avoid={("id-shared", A)})) == [
        (A, "a-only", "drain")
    ]


def test_a_shared_miner_is_drained_when_all_its_models_can_spare_it_and_counts_for_each() -> None:
    servers = [server("shared", A, B, at=1), server("b-only", B, at=9)]
    removals = plan_removals({A: 1, B: 1}, servers)
    # fam-a takes the shared miner away whole; that is fam-b's one miner less too.
    assert chosen(removals) == [(A, "shared", "drain")]
    assert removals[0].reason == f"shared: its other models ({B}) can spare it too"


def test_a_model_gets_fewer_removals_when_every_miner_left_is_needed_elsewhere() -> None:
    servers = [server("shared", A, B)]
    removals = plan_removals({A: 3, B: 0}, servers, avoid={("id-shared", A)})
    assert removals == []

"""Choosing the miners of a redundant task: distinct operators, then tiers."""

from __future__ import annotations

from inferswarm.protocol import MinerId
from inferswarm.router.verify.diversity import Candidate, choose_diverse
from netutil import Network
from test_verification_network import ask, client, states


def candidate(name: str, operator: str = "", tier: int = 0) -> Candidate:
    return Candidate(MinerId(name), operator, tier)


def test_distinct_operators_come_before_preference_order() -> None:
    pool = [candidate("a1", "alice"), candidate("a2", "alice"), candidate("b1", "bob")]
    assert choose_diverse(pool, 2) == ["a1", "b1"]


def test_distinct_tiers_break_ties_between_new_operators() -> None:
    pool = [
        candidate("a", "alice", tier=1),
        candidate("b", "bob", tier=1),
        candidate("c", "carol", tier=2),
    ]
    assert choose_diverse(pool, 2) == ["a", "c"]


def test_a_new_operator_outranks_a_new_tier() -> None:
    pool = [candidate("a1", "alice", 1), candidate("a2", "alice", 2), candidate("b", "bob", 1)]
    assert choose_diverse(pool, 2) == ["a1", "b"]


def test_undeclared_miners_count_as_distinct_operators() -> None:
    pool = [candidate("a1", "alice"), candidate("a2", "alice"), candidate("x"), candidate("y")]
    assert choose_diverse(pool, 3) == ["a1", "x", "y"]


def test_falls_back_to_repeats_when_too_few_operators() -> None:
    pool = [candidate("a1", "alice", 1), candidate("a2", "alice", 1), candidate("a3", "alice", 2)]
    assert choose_diverse(pool, 3) == ["a1", "a3", "a2"]
    assert choose_diverse(pool, 5) == ["a1", "a3", "a2"]
    assert choose_diverse([], 2) == []


def test_redundant_runs_go_to_distinct_operators_on_a_real_network(net: Network) -> None:
    net.start_router()
    net.start_miner("alice-1", "--operator", "alice")
    net.start_miner("alice-2", "--operator", "alice")
    net.start_miner("alice-3", "--operator", "alice")
    net.start_miner("bob-1", "--operator", "bob")
    net.wait_miners(4)
    miners = states(net)
    assert {m["operator"] for m in miners.values()} == {"alice", "bob"}
    bob = miners["bob-1"]["id"]
    with client(net) as api:
        for _ in range(4):
            report = ask(api, redundancy=2).http_response.json()["inferswarm"]["verification"][0]
            assert bob in report["agreed"] and len(report["agreed"]) == 2

"""Choosing the miners of a redundant task: distinct operators, then tiers;
miners connecting from one network count as one operator."""

from __future__ import annotations

import time

import pytest

from inferswarm.protocol import (
    PROTOCOL_VERSION,
    HardwareProfile,
    MinerId,
    ModelName,
    ModelOffer,
    Register,
    SamplingParams,
    TaskId,
)
from inferswarm.router.admission import WaitQueue
from inferswarm.router.dispatch import Dispatcher, DispatchLimits, Job
from inferswarm.router.registry import MinerRegistry
from inferswarm.router.schedule import Policy
from inferswarm.router.verify.diversity import (
    Candidate,
    checkers_to_avoid,
    choose_diverse,
    network_of,
    operator_groups,
)
from inferswarm.router.verify.options import VerifySettings
from inferswarm.router.verify.service import Run, Verifier
from netutil import Network
from test_verification_network import ask, client, states


def candidate(name: str, operator: str = "", tier: int = 0, network: str = "") -> Candidate:
    return Candidate(MinerId(name), operator, tier, network)


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


@pytest.mark.parametrize(
    ("address", "v4", "v6", "network"),
    [
        ("203.0.113.7", 32, 64, "203.0.113.7/32"),
        ("203.0.113.7", 24, 64, "203.0.113.0/24"),
        ("::ffff:203.0.113.7", 24, 64, "203.0.113.0/24"),  # IPv4 through a dual-stack socket
        ("2001:db8:1:2:aaaa::1", 32, 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:aaaa::1", 32, 48, "2001:db8:1::/48"),
        ("127.0.0.1", 32, 64, ""),  # loopback: the router's own machine groups nothing
        ("127.3.2.1", 8, 64, ""),
        ("::1", 32, 64, ""),
        ("testclient", 32, 64, ""),  # not an address
        ("", 32, 64, ""),
    ],
)
def test_network_of(address: str, v4: int, v6: int, network: str) -> None:
    assert network_of(address, v4, v6) == network


def test_miners_of_one_network_are_one_operator_whatever_they_declare() -> None:
    pool = [
        candidate("sybil1", "alice", network="203.0.113.7/32"),
        candidate("sybil2", "bob", network="203.0.113.7/32"),
        candidate("sybil3", network="203.0.113.7/32"),
        candidate("other", network="198.51.100.1/32"),
    ]
    assert choose_diverse(pool, 2) == ["sybil1", "other"]
    assert choose_diverse(pool, 3) == ["sybil1", "other", "sybil2"]


def test_groups_join_through_shared_operators_and_networks() -> None:
    pool = [
        candidate("a", "alice", network="net1"),
        candidate("b", "bob", network="net1"),  # alice's network
        candidate("c", "bob", network="net2"),  # bob's name elsewhere
        candidate("d", network="net2"),  # bob's other network
        candidate("e", "carol", network="net3"),
        candidate("f"),  # no network known: its own operator
        candidate("g", "carol"),
    ]
    groups = operator_groups(pool)
    assert len({groups[i] for i in range(4)}) == 1
    assert groups[4] == groups[6]
    assert len(set(groups)) == 3


async def test_redundant_copies_group_miners_by_the_address_they_connect_from() -> None:
    registry = MinerRegistry(time.monotonic, 60, time.time)

    async def ignore(_: str) -> None:
        return None

    joined = [  # in order of preference (by id, all else equal)
        ("a-sybil", "alice", "203.0.113.7"),
        ("b-sybil", "bob", "203.0.113.7"),
        ("neighbour", "carol", "203.0.113.99"),
        ("z-local", "", "127.0.0.1"),
    ]
    for name, operator, address in joined:
        await registry.add(_register(name, operator), ignore, ignore, address=address)
    job = Job(model=MODEL, sampling=SamplingParams(), model_hash="h")

    def chosen(k: int, v4: int) -> list[str]:
        verifier = Verifier(registry, _dispatcher(registry), VerifySettings(diversity_prefix_v4=v4))
        return [str(m) for m in verifier._diverse(job, k)]

    # By declarations alone the sybils would be the first two of three.
    assert chosen(3, 32) == ["a-sybil", "neighbour", "z-local"]
    # Its /24 makes the neighbour one of them; loopback is its own.
    assert chosen(3, 24) == ["a-sybil", "z-local", "b-sybil"]


MODEL = ModelName("fake-model")


def test_a_check_avoids_the_checked_miners_group_unless_nobody_else_could() -> None:
    pool = [
        candidate("sybil-1", "alice", network="203.0.113.7/32"),
        candidate("sybil-2", "bob", network="203.0.113.7/32"),  # alice's address
        candidate("stranger", "carol", network="198.51.100.1/32"),
    ]
    assert checkers_to_avoid(pool, MinerId("sybil-1")) == {"sybil-1", "sybil-2"}
    assert checkers_to_avoid(pool, MinerId("stranger")) == {"stranger"}
    # Only colleagues could check it: better a colleague than no check at all.
    assert checkers_to_avoid(pool[:2], MinerId("sybil-1")) == {"sybil-1"}
    assert checkers_to_avoid(pool, MinerId("unknown")) == {"unknown"}


async def test_spot_checks_skip_miners_of_the_checked_miners_network() -> None:
    registry = MinerRegistry(time.monotonic, 60, time.time)

    async def ignore(_: str) -> None:
        return None

    for name, operator, address in (
        ("a-sybil", "alice", "203.0.113.7"),
        ("b-sybil", "bob", "203.0.113.7"),
        ("neighbour", "carol", "203.0.113.99"),
    ):
        await registry.add(_register(name, operator), ignore, ignore, address=address)

    def avoided(v4: int) -> set[str]:
        verifier = Verifier(registry, _dispatcher(registry), VerifySettings(diversity_prefix_v4=v4))
        run = Run(MinerId("a-sybil"), TaskId("t"), "h")
        return {str(m) for m in verifier._not_to_check(run)}

    assert avoided(32) == {"a-sybil", "b-sybil"}
    assert avoided(24) == {"a-sybil"}  # one /24 for all three: nobody else could check it


def _register(name: str, operator: str) -> Register:
    return Register(
        protocol_version=PROTOCOL_VERSION,
        miner_id=MinerId(name),
        public_key="00" * 32,
        name=name,
        engine="fake",
        hardware=HardwareProfile(cpu_model="c", cpu_cores=1, ram_bytes=1),
        models=(ModelOffer(name=MODEL, context_length=100, file_hash="h"),),
        slots=1,
        operator=operator,
    )


def _dispatcher(registry: MinerRegistry) -> Dispatcher:
    return Dispatcher(registry, Policy.CAPACITY_AWARE, DispatchLimits(), WaitQueue(10, 10))


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

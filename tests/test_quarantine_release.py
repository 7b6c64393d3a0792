"""Quarantine and release end to end, with real router and miner processes
(fake engine): spot checks quarantine a corrupting miner; from then on it gets
only canaries, even across a router restart (quarantine and canaries are in
the store); its operator fixes it (the same key, restarted without the fault);
it passes its canaries, is released, and serves client requests again."""

from __future__ import annotations

import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai

from netutil import Network
from test_verification_network import HONEST, ask, client, states

ROUTER_ARGS = ("--spot-check-rate", "1.0")


def wait_for(what: str, condition: Any, net: Network, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout} s: {states(net)}"
        time.sleep(0.2)


def ledger(net: Network, query: str, *args: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(net.workdir / "router" / "router.db") as db:
        return db.execute(query, args).fetchall()


def served_by(api: openai.OpenAI) -> str:
    raw = ask(api)
    assert raw.parse().choices[0].message.content == HONEST
    return str(raw.headers["x-inferswarm-miner-id"])


def test_a_quarantined_miner_gets_only_canaries_and_earns_its_way_back(net: Network) -> None:
    net.start_router(*ROUTER_ARGS)
    for name in ("honest1", "honest2", "honest3"):
        net.start_miner(name)
    key_dir = net.workdir / "cheat-data"
    cheat = net.start_miner("cheat", "--data-dir", str(key_dir), "--fault", "corrupt")
    net.wait_miners(4)
    cheat_id = states(net)["cheat"]["id"]

    with client(net) as api:
        deadline = time.monotonic() + 60
        while states(net)["cheat"]["state"] != "quarantined":
            assert time.monotonic() < deadline, states(net)
            ask(api)
        # Quarantined: client work goes elsewhere; the cheat gets canaries and fails them.
        for _ in range(10):
            assert served_by(api) != cheat_id
        wait_for(
            "a failed canary",
            lambda: ledger(
                net, "SELECT 1 FROM canary_runs WHERE miner_id = ? AND passed = 0", cheat_id
            ),
            net,
        )
    assert states(net)["cheat"]["state"] == "quarantined"
    requests_before = _requests_served(net, cheat_id)

    # The router restarts; the cheat comes back with the same key and no fault.
    cheat.stop()
    assert net.router is not None
    net.router.stop()
    net.start_router(*ROUTER_ARGS)
    net.wait_miners(3)
    net.start_miner("fixed", "--data-dir", str(key_dir))
    net.wait_miners(4)
    assert states(net)["fixed"]["id"] == cheat_id
    assert states(net)["fixed"]["state"] == "quarantined"

    # With no client traffic at all, the canaries kept in the store release it.
    wait_for("release", lambda: states(net)["fixed"]["state"] == "live", net)
    passed = ledger(net, "SELECT passed FROM canary_runs WHERE miner_id = ? ORDER BY at", cheat_id)
    assert [p for (p,) in passed[-5:]] == [1] * 5
    assert _requests_served(net, cheat_id) == requests_before  # only canaries meanwhile

    # Back on probation, it serves client requests again.
    with client(net) as api, ThreadPoolExecutor(8) as pool:
        deadline = time.monotonic() + 60
        while cheat_id not in set(pool.map(lambda _: served_by(api), range(8))):
            assert time.monotonic() < deadline, states(net)
    miners = states(net)
    assert {m["state"] for m in miners.values()} == {"live"}
    assert all(miners[n]["verification"]["failed"] == 0 for n in ("honest1", "honest2", "honest3"))


def _requests_served(net: Network, miner_id: str) -> int:
    """The miner's results in the ledger that were not canaries."""
    rows = ledger(
        net, "SELECT COUNT(*) FROM results WHERE miner_id = ? AND purpose != 'canary'", miner_id
    )
    return int(rows[0][0])

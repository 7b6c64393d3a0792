"""Miners die at random while requests run: no request may fail or be corrupted."""

from __future__ import annotations

from chaos import Killer, run_requests, start_chaos_miners
from netutil import Network


def test_kill_9_miners_at_random_under_load_loses_nothing(net: Network) -> None:
    net.start_router()
    miner_args = start_chaos_miners(net, 4)
    with Killer(net, miner_args, interval_s=1.5, seed=3) as killer:
        results = run_requests(net, count=300, concurrency=12)
    failed = [r for r in results if not r.ok]
    assert killer.kills >= 3, "the driver must actually have killed miners during the run"
    assert failed == [], failed[:5]

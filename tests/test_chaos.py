"""Miners die at random while requests run: no request may fail or be corrupted."""

from __future__ import annotations

from chaos import Killer, run_requests
from netutil import Network


def test_kill_9_miners_at_random_under_load_loses_nothing(net: Network) -> None:
    net.start_router()
    miner_args = {
        f"chaos-{i}": (
            "--fake-speed",
            "100",
            "--slots",
            "4",
            "--fake-output-tokens",
            "1000",
            "--data-dir",
            str(net.workdir / f"miner-{i}"),
        )
        for i in range(4)
    }
    for name, args in miner_args.items():
        net.start_miner(name, *args)
    net.wait_miners(4)
    with Killer(net, miner_args, interval_s=1.5, seed=3) as killer:
        results = run_requests(net, count=300, concurrency=12)
    failed = [r for r in results if not r.ok]
    assert killer.kills >= 3, "the driver must actually have killed miners during the run"
    assert failed == [], failed[:5]

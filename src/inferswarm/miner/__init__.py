"""The miner: dials routers, runs inference tasks on a local engine."""

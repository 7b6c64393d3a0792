"""Measured capability: how fast this miner really is with its model.

The engine benchmarks itself once (prompt processing, generation alone and
with all slots busy); the result is cached on disk keyed by what determines
it — model file hash, device, engine version, slots, threads — so a restart
does not re-run it (``--rebenchmark`` forces it).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from pydantic import ValidationError

from inferswarm.miner.engines.base import Engine
from inferswarm.protocol import Capability

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "inferswarm"


class CapabilityCache:
    """A JSON file of capability by benchmark key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, key: str) -> Capability | None:
        entry = self._load().get(key)
        if entry is None:
            return None
        try:
            return Capability.model_validate(entry)
        except ValidationError:
            return None

    def put(self, key: str, capability: Capability) -> None:
        entries = self._load()
        entries[key] = capability.model_dump()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries, indent=2))
        tmp.replace(self.path)  # atomic: two miners starting at once never see half a file

    def _load(self) -> dict[str, object]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


def cache_key(parts: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


async def establish_capability(
    engine: Engine, cache: CapabilityCache, rebenchmark: bool
) -> Capability | None:
    """Benchmark the engine, or reuse the cached result for the same setup."""
    identity = engine.benchmark_identity()
    if identity is None:  # fake (configured speed) or an upstream we cannot time alone
        return await engine.benchmark()
    key = cache_key(identity)
    if not rebenchmark:
        cached = cache.get(key)
        if cached is not None:
            log.info("using cached benchmark %s from %s", key, cache.path)
            return cached
    log.info("benchmarking %s (once; cached in %s)", engine.name, cache.path)
    capability = await engine.benchmark()
    if capability is not None:
        cache.put(key, capability)
    return capability

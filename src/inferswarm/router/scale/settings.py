"""How the router scales its miner pool: which provider, within what bounds."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from enum import StrEnum

from inferswarm.router.scale.policy import ScalePolicy


class ProviderKind(StrEnum):
    LOCAL = "local"
    COMMAND = "command"
    STANDBY = "standby"


@dataclass(frozen=True, slots=True)
class LocalBudget:
    """What miner processes on the router's machine may take in all."""

    cpus: float
    memory_bytes: int
    miner_cpus: float = 1.0
    miner_memory_bytes: int = 512 * 2**20

    def miners(self) -> int:
        """How many miners fit."""
        by_cpu = int(self.cpus / self.miner_cpus) if self.miner_cpus > 0 else 10**6
        by_memory = (
            self.memory_bytes // self.miner_memory_bytes if self.miner_memory_bytes else 10**6
        )
        return max(0, min(by_cpu, by_memory))


@dataclass(frozen=True, slots=True)
class ScaledModel:
    """A model scaled even before any miner serves it (``--scale-model``)."""

    name: str
    miner_args: tuple[str, ...] = ()
    """``local``: flags its miners start with, after ``--scale-miner-args``."""

    @classmethod
    def parse(cls, spec: str) -> ScaledModel:
        """``NAME`` or ``NAME=MINER FLAGS``."""
        name, _, flags = spec.partition("=")
        if not name.strip():
            raise ValueError(
                f"--scale-model {spec!r} names no model; give NAME or NAME=MINER FLAGS, "
                "e.g. 'smollm2-135m-instruct:q8_0=--model /models/smollm2-q8_0.gguf'"
            )
        return cls(name.strip(), tuple(shlex.split(flags)))


@dataclass(frozen=True, slots=True)
class ScaleSettings:
    provider: ProviderKind
    policy: ScalePolicy = field(default_factory=ScalePolicy)
    interval_s: float = 5.0
    drain_timeout_s: float = 60.0
    """A miner scaled down gets this long to finish its tasks before it is stopped anyway."""
    start_timeout_s: float = 60.0
    """A miner asked for that has not joined by then no longer counts as starting."""
    miner_args: tuple[str, ...] = ()
    """``local``: flags its ``inferswarm miner`` processes start with."""
    router_scheme: str = "http"
    """``local``: how its miners dial this router (https when it serves TLS)."""
    budget: LocalBudget | None = None
    """``local``: default, the machine's cores and 80% of its available memory."""
    command: str = ""
    """``command``: run with ``{model}`` and ``{count}`` (and ``{miners}``, the names
    drained for a scale-down) filled in, also given as environment variables."""
    models: tuple[ScaledModel, ...] = ()
    """Models to keep at ``min_miners`` even before any miner serves them; ``local``
    scales each with its own miner flags (without any, its miners serve one model)."""
    standby_heartbeat_s: float = 5.0
    """``standby``: how often a parked miner heartbeats."""

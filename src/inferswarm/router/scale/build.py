"""Putting an autoscaler together from the router's settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psutil

from inferswarm.router.access import AccessControl
from inferswarm.router.metrics import RouterMetrics
from inferswarm.router.registry import MinerRegistry
from inferswarm.router.scale.autoscaler import Autoscaler, ScaleMetrics
from inferswarm.router.scale.providers import (
    CommandProvider,
    LocalProvider,
    Provider,
    StandbyProvider,
)
from inferswarm.router.scale.settings import LocalBudget, ProviderKind, ScaleSettings
from inferswarm.router.scale.signals import SignalReader
from inferswarm.router.settings import RouterSettings

MEMORY_SHARE = 0.8
"""Of the memory available at start, what local miners may take (20% buffer)."""


@dataclass
class JoinTokens:
    """The join token ``local`` miners join with: issued when the first starts,
    revoked when the router stops. None while the router takes any miner
    (``--open-join``)."""

    access: Callable[[], AccessControl | None]
    """Read when needed: the access control exists once the app has started."""
    _token: str | None = None
    _token_id: str | None = None

    async def token(self) -> str | None:
        access = self.access()
        if access is None:
            return None
        if self._token is None:
            self._token, record = await access.create_token("autoscale local", None, "autoscaler")
            self._token_id = record.id
        return self._token

    async def revoke(self) -> None:
        access = self.access()
        if access is not None and self._token_id is not None:
            await access.revoke_token(self._token_id, "autoscaler")
            self._token = self._token_id = None


def build_autoscaler(
    settings: RouterSettings,
    registry: MinerRegistry,
    metrics: RouterMetrics,
    clock: Callable[[], float],
    wall_clock: Callable[[], float],
    tokens: JoinTokens,
) -> Autoscaler | None:
    scale = settings.autoscale
    if scale is None:
        return None
    return Autoscaler(
        scale.policy,
        _provider(settings, scale, registry, clock, tokens),
        registry,
        SignalReader(metrics),
        ScaleMetrics(metrics.registry),
        interval_s=scale.interval_s,
        drain_timeout_s=scale.drain_timeout_s,
        clock=clock,
        wall_clock=wall_clock,
        heartbeat_s=settings.heartbeat_interval_s,
    )


def _provider(
    settings: RouterSettings,
    scale: ScaleSettings,
    registry: MinerRegistry,
    clock: Callable[[], float],
    tokens: JoinTokens,
) -> Provider:
    if scale.provider is ProviderKind.LOCAL:
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        return LocalProvider(
            f"{scale.router_scheme}://{host}:{settings.port}",
            scale.miner_args,
            tokens,
            settings.data_dir / "autoscale",
            scale.budget or default_budget(),
            registry,
            scale.start_timeout_s,
            clock,
            scale.models,
        )
    if scale.provider is ProviderKind.COMMAND:
        names = tuple(m.name for m in scale.models)
        return CommandProvider(scale.command, names, registry, scale.start_timeout_s)
    return StandbyProvider(registry, scale.standby_heartbeat_s, settings.heartbeat_interval_s)


def default_budget() -> LocalBudget:
    """The machine's cores, and most of the memory available now."""
    memory = int(psutil.virtual_memory().available * MEMORY_SHARE)
    return LocalBudget(cpus=float(psutil.cpu_count() or 1), memory_bytes=memory)

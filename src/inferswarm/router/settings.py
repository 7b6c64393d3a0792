"""Router settings, passed in explicitly (no global config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from inferswarm.router.dispatch import DispatchLimits
from inferswarm.router.schedule import Policy


@dataclass(frozen=True)
class RouterSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    policy: Policy = Policy.CAPACITY_AWARE
    data_dir: Path = Path("data/router")
    api_keys: frozenset[str] = frozenset()
    admin_keys: frozenset[str] = frozenset()
    max_queue: int = 256
    hedge: bool = False
    queue_timeout_s: float = 60.0
    heartbeat_interval_s: float = 1.0
    heartbeat_timeout_s: float = 5.0
    register_timeout_s: float = 10.0
    max_body_bytes: int = 4 * 2**20
    limits: DispatchLimits = field(default_factory=DispatchLimits)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys or self.admin_keys)

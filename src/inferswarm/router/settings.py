"""Router settings, passed in explicitly (no global config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from platformdirs import user_data_path

from inferswarm.router.dispatch import DispatchLimits
from inferswarm.router.scale.settings import ScaleSettings
from inferswarm.router.schedule import Policy
from inferswarm.router.segment.batch import BatchShare


def default_data_dir() -> Path:
    """``~/.local/share/inferswarm/router`` on Linux, the platform's equivalent elsewhere."""
    return user_data_path("inferswarm") / "router"


@dataclass(frozen=True)
class RouterSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    policy: Policy = Policy.CAPACITY_AWARE
    data_dir: Path = field(default_factory=default_data_dir)
    store_url: str | None = None
    """SQLAlchemy URL of the store; default: SQLite in ``data_dir``."""
    auth: bool = True
    """Client API keys required; off (``--no-auth``) only for local experiments."""
    api_keys: frozenset[str] = frozenset()
    """Bootstrap client keys from the command line (no limits, every model)."""
    admin_keys: frozenset[str] = frozenset()
    """Bootstrap admin keys from the command line."""
    open_join: bool = False
    """Miners join without a join token (local and test networks only)."""
    log_prompts: bool = False
    """Log each request's prompt (debugging only: prompts are the clients' data)."""
    max_prompt_tokens: int | None = None
    max_tokens_limit: int | None = None
    """Largest ``max_tokens`` a request may ask for."""
    max_streams_per_key: int | None = 64
    ws_max_bytes: int = 16 * 2**20
    """Largest WebSocket message a miner may send."""
    max_queue: int = 256
    hedge: bool = False
    queue_timeout_s: float = 60.0
    heartbeat_interval_s: float = 1.0
    heartbeat_timeout_s: float = 5.0
    register_timeout_s: float = 10.0
    max_body_bytes: int = 4 * 2**20
    max_file_bytes: int = 200 * 2**20
    """Largest file upload (OpenAI's limit for batch input is 200 MB)."""
    batch_share: BatchShare = field(default_factory=BatchShare)
    task_retry_delay_s: float = 1.0
    """Before a failed batch task is tried again; doubles with each attempt."""
    task_max_attempts: int = 5
    limits: DispatchLimits = field(default_factory=DispatchLimits)
    autoscale: ScaleSettings | None = None
    """None: the miner pool is whatever joins."""

    def database_url(self) -> str:
        return self.store_url or f"sqlite+aiosqlite:///{self.data_dir / 'router.db'}"

    @property
    def auth_enabled(self) -> bool:
        return self.auth

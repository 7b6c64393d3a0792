"""The storage interface the router codes against."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from inferswarm.storage.records import (
    ApiKeyRecord,
    AuditEntry,
    BatchRecord,
    BatchStatus,
    BatchTask,
    CanaryRecord,
    CanaryRun,
    FileRecord,
    JobRecord,
    JobTask,
    JoinTokenRecord,
    MinerBanRecord,
    ReputationRecord,
    ResultRecord,
    TaskState,
)


class Store(Protocol):
    """Durable router state. Every write is committed before it returns, so
    whatever the API acknowledged survives a crash of the router."""

    async def close(self) -> None: ...

    # files
    async def add_file(self, record: FileRecord) -> None: ...
    async def get_file(self, file_id: str) -> FileRecord | None: ...
    async def list_files(self, owner: str, purpose: str | None) -> list[FileRecord]: ...
    async def delete_file(self, file_id: str) -> None: ...

    # batches
    async def add_batch(self, batch: BatchRecord, tasks: Sequence[BatchTask]) -> None:
        """The batch and all its tasks, in one transaction."""

    async def get_batch(self, batch_id: str) -> BatchRecord | None: ...
    async def list_batches(
        self, owner: str, limit: int, after: str | None
    ) -> list[BatchRecord]: ...
    async def active_batches(self) -> list[BatchRecord]: ...
    async def set_batch_status(
        self, batch_id: str, status: BatchStatus, at: int, **fields: Any
    ) -> None: ...
    async def finalize_batch(
        self,
        batch_id: str,
        status: BatchStatus,
        at: int,
        result_files: Sequence[FileRecord],
        output_file_id: str | None,
        error_file_id: str | None,
    ) -> None:
        """Record the result files and the final status in one transaction."""

    async def batch_counts(self, batch_id: str) -> dict[TaskState, int]: ...
    async def pending_batch_tasks(self, batch_id: str) -> list[BatchTask]: ...
    async def finish_batch_task(
        self, batch_id: str, line: int, state: TaskState, result: str, attempts: int
    ) -> None: ...
    def batch_results(self, batch_id: str, state: TaskState) -> AsyncIterator[str]:
        """The result lines of tasks in ``state``, in input order."""
        ...

    # jobs
    async def add_job(self, job: JobRecord) -> None: ...
    async def get_job(self, job_id: str) -> JobRecord | None: ...
    async def active_jobs(self) -> list[JobRecord]: ...
    async def set_job_status(self, job_id: str, status: str) -> None: ...
    async def finish_job(
        self,
        job_id: str,
        status: str,
        at: int,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None,
    ) -> None: ...
    async def add_job_tasks(self, tasks: Sequence[JobTask]) -> None:
        """Tasks already present (same job and key) are kept as they are."""

    async def job_tasks(self, job_id: str) -> list[JobTask]: ...
    async def finish_job_task(
        self, job_id: str, key: str, state: TaskState, output: str, attempts: int
    ) -> None: ...

    # verification: the result ledger and the reputation book
    async def record_result(self, record: ResultRecord) -> None: ...
    async def set_result_verdict(self, task_id: str, verdict: str) -> None: ...
    async def get_result(self, task_id: str) -> ResultRecord | None: ...
    async def count_results(self) -> dict[str, int]:
        """How many results the ledger holds, by purpose."""

    async def save_reputation(self, record: ReputationRecord) -> None:
        """Insert or replace the miner's row."""

    async def load_reputations(self) -> list[ReputationRecord]: ...
    async def add_canary(self, canary: CanaryRecord, keep: int) -> None:
        """Add a canary; keep only the newest ``keep`` of its model file."""

    async def canaries(self) -> list[CanaryRecord]:
        """Every canary, oldest first."""

    async def record_canary_run(self, run: CanaryRun) -> None:
        """Insert or replace (by task id) one canary given to a miner."""

    async def canary_runs(self, miner_id: str) -> list[CanaryRun]:
        """The canaries given to a miner, oldest first."""

    # api keys
    async def add_api_key(self, record: ApiKeyRecord) -> None: ...
    async def api_key_by_digest(self, digest: str) -> ApiKeyRecord | None: ...
    async def api_key(self, key_id: str) -> ApiKeyRecord | None: ...
    async def list_api_keys(self) -> list[ApiKeyRecord]: ...
    async def revoke_api_key(self, key_id: str, at: int) -> bool:
        """False when no such key exists or it was already revoked."""

    # usage counters (rate limits and quotas)
    async def add_usage(self, key_id: str, counter: str, window: int, amount: int) -> int:
        """Add ``amount`` (may be negative) to a counter and return its new value."""

    async def usage(self, key_id: str, counter: str, window: int) -> int: ...

    # join tokens
    async def add_join_token(self, record: JoinTokenRecord) -> None: ...
    async def join_token_by_digest(self, digest: str) -> JoinTokenRecord | None: ...
    async def list_join_tokens(self) -> list[JoinTokenRecord]: ...
    async def revoke_join_token(self, token_id: str, at: int) -> bool: ...

    # miner bans
    async def ban_miner(self, ban: MinerBanRecord) -> None:
        """Ban (or re-ban, replacing the reason) a miner id."""

    async def unban_miner(self, miner_id: str) -> bool: ...
    async def miner_ban(self, miner_id: str) -> MinerBanRecord | None: ...
    async def list_miner_bans(self) -> list[MinerBanRecord]: ...

    # audit log
    async def audit(self, entry: AuditEntry) -> None: ...
    async def audit_log(self, limit: int) -> list[AuditEntry]:
        """The newest ``limit`` entries, newest first."""

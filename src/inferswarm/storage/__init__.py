"""Durable state: what must survive a router restart (files, batch jobs and
their tasks, map-reduce jobs), behind one interface (``Store``) with an SQL
implementation (``inferswarm.storage.sql``) — SQLite in WAL mode by default,
PostgreSQL by URL. The SQL stack is imported only by those who open a store."""

from inferswarm.storage.blobs import BlobDir
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
    ResultPurpose,
    ResultRecord,
    TaskState,
)
from inferswarm.storage.store import Store

__all__ = [
    "ApiKeyRecord",
    "AuditEntry",
    "BatchRecord",
    "BatchStatus",
    "BatchTask",
    "BlobDir",
    "CanaryRecord",
    "CanaryRun",
    "FileRecord",
    "JobRecord",
    "JobTask",
    "JoinTokenRecord",
    "MinerBanRecord",
    "ReputationRecord",
    "ResultPurpose",
    "ResultRecord",
    "Store",
    "TaskState",
]

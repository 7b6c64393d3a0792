"""The rows the store keeps, as plain frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from inferswarm.protocol.variants import split_model_name


class BatchStatus(StrEnum):
    """OpenAI's batch lifecycle."""

    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def is_active(self) -> bool:
        return self in ACTIVE_BATCH_STATUSES


ACTIVE_BATCH_STATUSES = frozenset(
    {
        BatchStatus.VALIDATING,
        BatchStatus.IN_PROGRESS,
        BatchStatus.FINALIZING,
        BatchStatus.CANCELLING,
    }
)


class ResultPurpose(StrEnum):
    """Why a miner ran the task whose result the ledger holds."""

    REQUEST = "request"
    """A client's request, batch line or map-reduce task, run once."""
    REDUNDANT = "redundant"
    """One of the k copies of a task run with consensus."""
    SPOT_CHECK = "spot_check"
    """A re-run of a finished task on another miner, to check it."""
    REFEREE = "referee"
    """A third run when a spot check disagreed with the checked result."""
    CANARY = "canary"
    """A task of known answer given to a suspect or quarantined miner."""


class TaskState(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class FileRecord:
    id: str
    owner: str
    purpose: str
    filename: str
    bytes: int
    created_at: int


@dataclass(frozen=True)
class BatchRecord:
    id: str
    owner: str
    input_file_id: str
    endpoint: str
    completion_window: str
    status: BatchStatus
    created_at: int
    expires_at: int
    metadata: dict[str, str] | None = None
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    times: dict[str, int] = field(default_factory=dict)
    """When the batch entered each status after ``validating`` (OpenAI's ``*_at`` fields)."""


@dataclass(frozen=True)
class BatchTask:
    """One line of a batch's input file."""

    batch_id: str
    line: int
    custom_id: str | None
    body: str
    """The request body as JSON (validated), or the raw line when invalid."""
    state: TaskState = TaskState.PENDING
    attempts: int = 0
    result: str | None = None
    """The line for the output file (done) or the error file (failed)."""


@dataclass(frozen=True)
class JobRecord:
    """A map-reduce job (or another multi-stage job)."""

    id: str
    owner: str
    type: str
    status: str
    created_at: int
    params: dict[str, Any]
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    finished_at: int | None = None


@dataclass(frozen=True)
class JobTask:
    """One task of a job, keyed by its place in the job (``map:3``, ``reduce:1:0``)."""

    job_id: str
    key: str
    input: str
    state: TaskState = TaskState.PENDING
    attempts: int = 0
    output: str | None = None


@dataclass(frozen=True)
class ResultRecord:
    """One signed result in the ledger: who produced what, for which task, on
    which model file. The signature lets anyone re-check the attribution."""

    task_id: str
    miner_id: str
    model: str
    model_hash: str
    output_sha256: str
    signature: str
    public_key: str
    created_at: int
    purpose: str = ResultPurpose.REQUEST.value
    """A ``ResultPurpose`` value."""
    verdict: str | None = None


@dataclass(frozen=True)
class ReputationRecord:
    """A miner's reputation evidence, as the router last saved it."""

    miner_id: str
    good: float
    bad: float
    updated_at: float
    quarantined: bool
    canary_passes: int
    passes: int
    fails: int
    suspicion: float = 0.0


@dataclass(frozen=True)
class CanaryRecord:
    """A task whose answer verification established, kept to test quarantined
    miners. ``request`` is the task as the miner saw it (model, prompt or
    messages, sampling), as JSON; ``sources`` the miners whose agreeing results
    made the answer, who must never get it as a canary (they could remember it)."""

    id: str
    model: str
    model_hash: str
    request: str
    answer: str
    sources: tuple[str, ...]
    created_at: int


@dataclass(frozen=True)
class CanaryRun:
    """One canary given to one miner, and whether its answer matched."""

    task_id: str
    canary_id: str
    miner_id: str
    at: int
    passed: bool | None = None
    """None until the miner answered (or while it never did)."""


@dataclass(frozen=True)
class ApiKeyRecord:
    """A client API key. Only ``digest`` (a keyed hash) is kept, never the key;
    ``prefix`` (the key's first characters) lets an operator tell keys apart."""

    id: str
    name: str
    digest: str
    prefix: str
    created_at: int
    models: tuple[str, ...] = ()
    """Models the key may use; empty: all."""
    rpm: int | None = None
    tpm: int | None = None
    quota_tokens: int | None = None
    """Tokens the key may use in all (prompt + completion), over its lifetime."""
    is_admin: bool = False
    revoked_at: int | None = None

    def allows(self, model: str) -> bool:
        """A key scoped to a family (``smollm2-135m-instruct``) may use any of its
        variants, pinned or not; one scoped to a variant may use only that one."""
        family = split_model_name(model).family
        return not self.models or model in self.models or family in self.models


@dataclass(frozen=True)
class JoinTokenRecord:
    """A token that lets a miner join the network; kept as a keyed hash."""

    id: str
    name: str
    digest: str
    prefix: str
    created_at: int
    expires_at: int | None = None
    revoked_at: int | None = None

    def valid_at(self, now: int) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True)
class MinerBanRecord:
    """An operator's ban of a miner id (not the scheduler's short penalties)."""

    miner_id: str
    reason: str
    created_at: int
    created_by: str


@dataclass(frozen=True)
class AuditEntry:
    """An admin operation: who did what to which object, and when."""

    at: int
    actor: str
    action: str
    target: str
    details: dict[str, Any] = field(default_factory=dict)

"""``Store`` on SQLAlchemy Core: SQLite (WAL) by default, PostgreSQL by URL
(``postgresql+asyncpg://…``) for several routers sharing state."""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import AsyncIterator, Callable, Sequence
from enum import Enum
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from inferswarm.storage.records import (
    ACTIVE_BATCH_STATUSES,
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

INSERT_CHUNK = 500
"""Rows per INSERT statement when a batch's tasks are recorded."""

metadata = MetaData()

files = Table(
    "files",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(128), nullable=False, index=True),
    Column("purpose", String(32), nullable=False),
    Column("filename", Text, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

batches = Table(
    "batches",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(128), nullable=False, index=True),
    Column("input_file_id", String(64), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("completion_window", String(16), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("metadata", JSON),
    Column("errors", JSON),
    Column("output_file_id", String(64)),
    Column("error_file_id", String(64)),
    Column("times", JSON, nullable=False),
)

batch_tasks = Table(
    "batch_tasks",
    metadata,
    Column("batch_id", String(64), primary_key=True),
    Column("line", Integer, primary_key=True),
    Column("custom_id", Text),
    Column("body", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("result", Text),
    Index("batch_tasks_by_state", "batch_id", "state"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(128), nullable=False),
    Column("type", String(32), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("created_at", BigInteger, nullable=False),
    Column("finished_at", BigInteger),
    Column("params", JSON, nullable=False),
    Column("result", JSON),
    Column("error", JSON),
)

job_tasks = Table(
    "job_tasks",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("input", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("output", Text),
)

results = Table(
    "results",
    metadata,
    Column("task_id", String(64), primary_key=True),
    Column("miner_id", String(64), nullable=False, index=True),
    Column("model", String(256), nullable=False),
    Column("model_hash", String(64), nullable=False),
    Column("output_sha256", String(64), nullable=False),
    Column("signature", String(128), nullable=False),
    Column("public_key", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("purpose", String(16), nullable=False),
    Column("verdict", String(16)),
)

reputations = Table(
    "reputations",
    metadata,
    Column("miner_id", String(64), primary_key=True),
    Column("good", Float, nullable=False),
    Column("bad", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("quarantined", Boolean, nullable=False),
    Column("canary_passes", Integer, nullable=False),
    Column("passes", Integer, nullable=False),
    Column("fails", Integer, nullable=False),
    Column("suspicion", Float, nullable=False, server_default="0"),
)

canaries = Table(
    "canaries",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("model", String(256), nullable=False),
    Column("model_hash", String(64), nullable=False, index=True),
    Column("request", Text, nullable=False),
    Column("answer", Text, nullable=False),
    Column("sources", JSON, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

canary_runs = Table(
    "canary_runs",
    metadata,
    Column("task_id", String(64), primary_key=True),
    Column("canary_id", String(64), nullable=False),
    Column("miner_id", String(64), nullable=False, index=True),
    Column("at", BigInteger, nullable=False),
    Column("passed", Boolean),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    Column("digest", String(128), nullable=False, unique=True),
    Column("prefix", String(32), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("models", JSON, nullable=False),
    Column("rpm", Integer),
    Column("tpm", BigInteger),
    Column("quota_tokens", BigInteger),
    Column("is_admin", Boolean, nullable=False),
    Column("revoked_at", BigInteger),
)

key_usage = Table(
    "key_usage",
    metadata,
    Column("key_id", String(64), primary_key=True),
    Column("counter", String(16), primary_key=True),
    Column("window", BigInteger, primary_key=True),
    Column("amount", BigInteger, nullable=False),
)

join_tokens = Table(
    "join_tokens",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    Column("digest", String(128), nullable=False, unique=True),
    Column("prefix", String(32), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger),
    Column("revoked_at", BigInteger),
)

miner_bans = Table(
    "miner_bans",
    metadata,
    Column("miner_id", String(128), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("created_by", String(128), nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("at", BigInteger, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", Text, nullable=False),
    Column("details", JSON, nullable=False),
)

ACTIVE_JOB_STATUSES = ("queued", "running")


async def open_store(url: str) -> SqlStore:
    """Connect and create the tables if they are missing."""
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.run_sync(_add_missing_columns)
    return SqlStore(engine)


def _add_missing_columns(conn: Any) -> None:
    """Columns added to an existing table since a store was created (each with a
    server default), so a router upgraded in place opens its old database."""
    inspector = inspect(conn)
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present and column.server_default is not None:
                kind = column.type.compile(dialect=conn.dialect)
                default = column.server_default.arg  # type: ignore[attr-defined]
                conn.execute(
                    text(
                        f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind} '
                        f"NOT NULL DEFAULT {default}"
                    )
                )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers never block the writer; NORMAL sync is durable across a
    # process crash (kill -9), which is what a router restart must survive.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class SqlStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def close(self) -> None:
        await self.engine.dispose()

    # files

    async def add_file(self, record: FileRecord) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(files).values(**_plain_row(record)))

    async def get_file(self, file_id: str) -> FileRecord | None:
        return await self._one(FileRecord, select(files).where(files.c.id == file_id))

    async def list_files(self, owner: str, purpose: str | None) -> list[FileRecord]:
        query = select(files).where(files.c.owner == owner).order_by(files.c.created_at.desc())
        if purpose is not None:
            query = query.where(files.c.purpose == purpose)
        return await self._all(FileRecord, query)

    async def delete_file(self, file_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(files.delete().where(files.c.id == file_id))

    # batches

    async def add_batch(self, batch: BatchRecord, tasks: Sequence[BatchTask]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(batches).values(**_plain_row(batch)))
            rows = [_plain_row(t) for t in tasks]
            for start in range(0, len(rows), INSERT_CHUNK):
                await conn.execute(insert(batch_tasks), rows[start : start + INSERT_CHUNK])

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        return await self._one(BatchRecord, select(batches).where(batches.c.id == batch_id))

    async def list_batches(self, owner: str, limit: int, after: str | None) -> list[BatchRecord]:
        query = select(batches).where(batches.c.owner == owner)
        if after is not None:
            async with self.engine.connect() as conn:
                anchor = (
                    await conn.execute(select(batches.c.created_at).where(batches.c.id == after))
                ).scalar()
            if anchor is not None:
                query = query.where(
                    (batches.c.created_at < anchor)
                    | and_(batches.c.created_at == anchor, batches.c.id < after)
                )
        query = query.order_by(batches.c.created_at.desc(), batches.c.id.desc()).limit(limit)
        return await self._all(BatchRecord, query)

    async def active_batches(self) -> list[BatchRecord]:
        query = (
            select(batches)
            .where(batches.c.status.in_([s.value for s in ACTIVE_BATCH_STATUSES]))
            .order_by(batches.c.created_at, batches.c.id)
        )
        return await self._all(BatchRecord, query)

    async def set_batch_status(
        self, batch_id: str, status: BatchStatus, at: int, **fields: Any
    ) -> None:
        async with self.engine.begin() as conn:
            await self._set_status(conn, batch_id, status, at, fields)

    async def _set_status(
        self, conn: Any, batch_id: str, status: BatchStatus, at: int, fields: dict[str, Any]
    ) -> None:
        times = (
            await conn.execute(select(batches.c.times).where(batches.c.id == batch_id))
        ).scalar_one()
        times = {**times, f"{status.value}_at": at}
        await conn.execute(
            update(batches)
            .where(batches.c.id == batch_id)
            .values(status=status.value, times=times, **fields)
        )

    async def finalize_batch(
        self,
        batch_id: str,
        status: BatchStatus,
        at: int,
        result_files: Sequence[FileRecord],
        output_file_id: str | None,
        error_file_id: str | None,
    ) -> None:
        async with self.engine.begin() as conn:
            for record in result_files:
                await conn.execute(files.delete().where(files.c.id == record.id))
                await conn.execute(insert(files).values(**_plain_row(record)))
            fields = {"output_file_id": output_file_id, "error_file_id": error_file_id}
            await self._set_status(conn, batch_id, status, at, fields)

    async def batch_counts(self, batch_id: str) -> dict[TaskState, int]:
        query = (
            select(batch_tasks.c.state, func.count())
            .where(batch_tasks.c.batch_id == batch_id)
            .group_by(batch_tasks.c.state)
        )
        async with self.engine.connect() as conn:
            counts = {TaskState(state): count for state, count in await conn.execute(query)}
        return {state: counts.get(state, 0) for state in TaskState}

    async def pending_batch_tasks(self, batch_id: str) -> list[BatchTask]:
        query = (
            select(batch_tasks)
            .where(
                batch_tasks.c.batch_id == batch_id,
                batch_tasks.c.state == TaskState.PENDING.value,
            )
            .order_by(batch_tasks.c.line)
        )
        return await self._all(BatchTask, query)

    async def finish_batch_task(
        self, batch_id: str, line: int, state: TaskState, result: str, attempts: int
    ) -> None:
        where = (batch_tasks.c.batch_id == batch_id, batch_tasks.c.line == line)
        await self._finish_pending(batch_tasks, where, state, attempts, result=result)

    async def batch_results(self, batch_id: str, state: TaskState) -> AsyncIterator[str]:
        query = (
            select(batch_tasks.c.result)
            .where(batch_tasks.c.batch_id == batch_id, batch_tasks.c.state == state.value)
            .order_by(batch_tasks.c.line)
        )
        async with self.engine.connect() as conn:
            async for row in await conn.stream(query):
                yield row.result

    # jobs

    async def add_job(self, job: JobRecord) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(jobs).values(**_plain_row(job)))

    async def get_job(self, job_id: str) -> JobRecord | None:
        return await self._one(JobRecord, select(jobs).where(jobs.c.id == job_id))

    async def active_jobs(self) -> list[JobRecord]:
        query = (
            select(jobs)
            .where(jobs.c.status.in_(ACTIVE_JOB_STATUSES))
            .order_by(jobs.c.created_at, jobs.c.id)
        )
        return await self._all(JobRecord, query)

    async def set_job_status(self, job_id: str, status: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(jobs).where(jobs.c.id == job_id).values(status=status))

    async def finish_job(
        self,
        job_id: str,
        status: str,
        at: int,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None,
    ) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(status=status, finished_at=at, result=result, error=error)
            )

    async def add_job_tasks(self, tasks: Sequence[JobTask]) -> None:
        if not tasks:
            return
        async with self.engine.begin() as conn:
            keys = {
                row.key
                for row in await conn.execute(
                    select(job_tasks.c.key).where(job_tasks.c.job_id == tasks[0].job_id)
                )
            }
            rows = [_plain_row(t) for t in tasks if t.key not in keys]
            if rows:
                await conn.execute(insert(job_tasks), rows)

    async def job_tasks(self, job_id: str) -> list[JobTask]:
        query = select(job_tasks).where(job_tasks.c.job_id == job_id)
        return await self._all(JobTask, query)

    async def finish_job_task(
        self, job_id: str, key: str, state: TaskState, output: str, attempts: int
    ) -> None:
        where = (job_tasks.c.job_id == job_id, job_tasks.c.key == key)
        await self._finish_pending(job_tasks, where, state, attempts, output=output)

    # verification

    async def record_result(self, record: ResultRecord) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(results).values(**_plain_row(record)))

    async def set_result_verdict(self, task_id: str, verdict: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(results).where(results.c.task_id == task_id).values(verdict=verdict)
            )

    async def get_result(self, task_id: str) -> ResultRecord | None:
        return await self._one(ResultRecord, select(results).where(results.c.task_id == task_id))

    async def count_results(self) -> dict[str, int]:
        query = select(results.c.purpose, func.count()).group_by(results.c.purpose)
        async with self.engine.connect() as conn:
            return {purpose: count for purpose, count in await conn.execute(query)}

    async def save_reputation(self, record: ReputationRecord) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                reputations.delete().where(reputations.c.miner_id == record.miner_id)
            )
            await conn.execute(insert(reputations).values(**_plain_row(record)))

    async def load_reputations(self) -> list[ReputationRecord]:
        return await self._all(ReputationRecord, select(reputations))

    async def add_canary(self, canary: CanaryRecord, keep: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(canaries).values(**_plain_row(canary)))
            same_file = canaries.c.model_hash == canary.model_hash
            newest = (
                select(canaries.c.id)
                .where(same_file)
                .order_by(canaries.c.created_at.desc(), canaries.c.id.desc())
                .limit(keep)
            )
            await conn.execute(
                canaries.delete().where(same_file, canaries.c.id.not_in(newest.scalar_subquery()))
            )

    async def canaries(self) -> list[CanaryRecord]:
        query = select(canaries).order_by(canaries.c.created_at, canaries.c.id)
        return await self._all(CanaryRecord, query)

    async def record_canary_run(self, run: CanaryRun) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(canary_runs.delete().where(canary_runs.c.task_id == run.task_id))
            await conn.execute(insert(canary_runs).values(**_plain_row(run)))

    async def canary_runs(self, miner_id: str) -> list[CanaryRun]:
        query = (
            select(canary_runs)
            .where(canary_runs.c.miner_id == miner_id)
            .order_by(canary_runs.c.at, canary_runs.c.task_id)
        )
        return await self._all(CanaryRun, query)

    # api keys

    async def add_api_key(self, record: ApiKeyRecord) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(api_keys).values(**_plain_row(record)))

    async def api_key_by_digest(self, digest: str) -> ApiKeyRecord | None:
        return await self._one(ApiKeyRecord, select(api_keys).where(api_keys.c.digest == digest))

    async def api_key(self, key_id: str) -> ApiKeyRecord | None:
        return await self._one(ApiKeyRecord, select(api_keys).where(api_keys.c.id == key_id))

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        return await self._all(ApiKeyRecord, query)

    async def revoke_api_key(self, key_id: str, at: int) -> bool:
        return await self._revoke(api_keys, key_id, at)

    # usage counters

    async def add_usage(self, key_id: str, counter: str, window: int, amount: int) -> int:
        where = and_(
            key_usage.c.key_id == key_id,
            key_usage.c.counter == counter,
            key_usage.c.window == window,
        )
        async with self.engine.begin() as conn:
            changed = await conn.execute(
                update(key_usage).where(where).values(amount=key_usage.c.amount + amount)
            )
            if changed.rowcount == 0:
                row = {"key_id": key_id, "counter": counter, "window": window, "amount": amount}
                await conn.execute(insert(key_usage).values(**row))
            value: int = (await conn.execute(select(key_usage.c.amount).where(where))).scalar_one()
            # Older windows of the same counter are no longer read.
            await conn.execute(
                key_usage.delete().where(
                    key_usage.c.key_id == key_id,
                    key_usage.c.counter == counter,
                    key_usage.c.window < window - 1,
                )
            )
        return value

    async def usage(self, key_id: str, counter: str, window: int) -> int:
        query = select(key_usage.c.amount).where(
            key_usage.c.key_id == key_id,
            key_usage.c.counter == counter,
            key_usage.c.window == window,
        )
        async with self.engine.connect() as conn:
            value = (await conn.execute(query)).scalar()
        return int(value or 0)

    # join tokens

    async def add_join_token(self, record: JoinTokenRecord) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(join_tokens).values(**_plain_row(record)))

    async def join_token_by_digest(self, digest: str) -> JoinTokenRecord | None:
        query = select(join_tokens).where(join_tokens.c.digest == digest)
        return await self._one(JoinTokenRecord, query)

    async def list_join_tokens(self) -> list[JoinTokenRecord]:
        query = select(join_tokens).order_by(join_tokens.c.created_at, join_tokens.c.id)
        return await self._all(JoinTokenRecord, query)

    async def revoke_join_token(self, token_id: str, at: int) -> bool:
        return await self._revoke(join_tokens, token_id, at)

    # miner bans

    async def ban_miner(self, ban: MinerBanRecord) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(miner_bans.delete().where(miner_bans.c.miner_id == ban.miner_id))
            await conn.execute(insert(miner_bans).values(**_plain_row(ban)))

    async def unban_miner(self, miner_id: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                miner_bans.delete().where(miner_bans.c.miner_id == miner_id)
            )
        return bool(result.rowcount)

    async def miner_ban(self, miner_id: str) -> MinerBanRecord | None:
        query = select(miner_bans).where(miner_bans.c.miner_id == miner_id)
        return await self._one(MinerBanRecord, query)

    async def list_miner_bans(self) -> list[MinerBanRecord]:
        query = select(miner_bans).order_by(miner_bans.c.created_at)
        return await self._all(MinerBanRecord, query)

    # audit log

    async def audit(self, entry: AuditEntry) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(audit_log).values(**_plain_row(entry)))

    async def audit_log(self, limit: int) -> list[AuditEntry]:
        query = select(audit_log).order_by(audit_log.c.seq.desc()).limit(limit)
        return await self._all(AuditEntry, query)

    # helpers for the plain records above

    async def _one(self, cls: type[R], query: Any) -> R | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _plain(cls, row) if row else None

    async def _all(self, cls: type[R], query: Any) -> list[R]:
        async with self.engine.connect() as conn:
            return [_plain(cls, row) for row in await conn.execute(query)]

    async def _finish_pending(
        self, table: Table, where: tuple[Any, ...], state: TaskState, attempts: int, **out: str
    ) -> None:
        # Only a pending task can finish: a task finished twice (a late
        # duplicate) keeps its first result, so each one appears once.
        pending = table.c.state == TaskState.PENDING.value
        async with self.engine.begin() as conn:
            await conn.execute(
                update(table)
                .where(*where, pending)
                .values(state=state.value, attempts=attempts, **out)
            )

    async def _revoke(self, table: Table, row_id: str, at: int) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(table)
                .where(table.c.id == row_id, table.c.revoked_at.is_(None))
                .values(revoked_at=at)
            )
        return bool(result.rowcount)


R = TypeVar("R")


def _plain_row(record: Any) -> dict[str, Any]:
    """A record as its table's row: enums by value, tuples as JSON lists."""
    return {f.name: _column_value(getattr(record, f.name)) for f in dataclasses.fields(record)}


def _column_value(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    return list(value) if isinstance(value, tuple) else value


def _plain(cls: type[R], row: Row[Any]) -> R:
    """A record whose fields are its table's columns, each turned back into its
    field's type where the column cannot hold it (enums, tuples)."""
    record_type: type = cls  # a class is hashable, whatever its instances are
    converters, names = _converters(record_type), _field_names(record_type)
    values = {
        name: converters[name](value) if value is not None and name in converters else value
        for name, value in row._mapping.items()
        if name in names
    }
    return cls(**values)


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


@functools.cache
def _converters(cls: type) -> dict[str, Callable[[Any], Any]]:
    converters: dict[str, Callable[[Any], Any]] = {}
    for name, hint in typing.get_type_hints(cls).items():
        if isinstance(hint, type) and issubclass(hint, Enum):
            converters[name] = hint
        elif typing.get_origin(hint) is tuple:
            converters[name] = tuple
    return converters

"""``Store`` on SQLAlchemy Core: SQLite (WAL) by default, PostgreSQL by URL
(``postgresql+asyncpg://…``) for several routers sharing state."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
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
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from inferswarm.storage.records import (
    ACTIVE_BATCH_STATUSES,
    BatchRecord,
    BatchStatus,
    BatchTask,
    FileRecord,
    JobRecord,
    JobTask,
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

ACTIVE_JOB_STATUSES = ("queued", "running")


async def open_store(url: str) -> SqlStore:
    """Connect and create the tables if they are missing."""
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    return SqlStore(engine)


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
            await conn.execute(insert(files).values(**_file_row(record)))

    async def get_file(self, file_id: str) -> FileRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(files).where(files.c.id == file_id))).first()
        return _file(row) if row else None

    async def list_files(self, owner: str, purpose: str | None) -> list[FileRecord]:
        query = select(files).where(files.c.owner == owner).order_by(files.c.created_at.desc())
        if purpose is not None:
            query = query.where(files.c.purpose == purpose)
        async with self.engine.connect() as conn:
            return [_file(row) for row in await conn.execute(query)]

    async def delete_file(self, file_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(files.delete().where(files.c.id == file_id))

    # batches

    async def add_batch(self, batch: BatchRecord, tasks: Sequence[BatchTask]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(batches).values(**_batch_row(batch)))
            rows = [_batch_task_row(t) for t in tasks]
            for start in range(0, len(rows), INSERT_CHUNK):
                await conn.execute(insert(batch_tasks), rows[start : start + INSERT_CHUNK])

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(batches).where(batches.c.id == batch_id))).first()
        return _batch(row) if row else None

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
        async with self.engine.connect() as conn:
            return [_batch(row) for row in await conn.execute(query)]

    async def active_batches(self) -> list[BatchRecord]:
        query = (
            select(batches)
            .where(batches.c.status.in_([s.value for s in ACTIVE_BATCH_STATUSES]))
            .order_by(batches.c.created_at, batches.c.id)
        )
        async with self.engine.connect() as conn:
            return [_batch(row) for row in await conn.execute(query)]

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
                await conn.execute(insert(files).values(**_file_row(record)))
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
        async with self.engine.connect() as conn:
            return [_batch_task(row) for row in await conn.execute(query)]

    async def finish_batch_task(
        self, batch_id: str, line: int, state: TaskState, result: str, attempts: int
    ) -> None:
        async with self.engine.begin() as conn:
            # Only a pending task can finish: a task finished twice (a late
            # duplicate) keeps its first result, so each line appears once.
            await conn.execute(
                update(batch_tasks)
                .where(
                    batch_tasks.c.batch_id == batch_id,
                    batch_tasks.c.line == line,
                    batch_tasks.c.state == TaskState.PENDING.value,
                )
                .values(state=state.value, result=result, attempts=attempts)
            )

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
            await conn.execute(insert(jobs).values(**_job_row(job)))

    async def get_job(self, job_id: str) -> JobRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
        return _job(row) if row else None

    async def active_jobs(self) -> list[JobRecord]:
        query = (
            select(jobs)
            .where(jobs.c.status.in_(ACTIVE_JOB_STATUSES))
            .order_by(jobs.c.created_at, jobs.c.id)
        )
        async with self.engine.connect() as conn:
            return [_job(row) for row in await conn.execute(query)]

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
            rows = [_job_task_row(t) for t in tasks if t.key not in keys]
            if rows:
                await conn.execute(insert(job_tasks), rows)

    async def job_tasks(self, job_id: str) -> list[JobTask]:
        query = select(job_tasks).where(job_tasks.c.job_id == job_id)
        async with self.engine.connect() as conn:
            return [_job_task(row) for row in await conn.execute(query)]

    async def finish_job_task(
        self, job_id: str, key: str, state: TaskState, output: str, attempts: int
    ) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(job_tasks)
                .where(
                    job_tasks.c.job_id == job_id,
                    job_tasks.c.key == key,
                    job_tasks.c.state == TaskState.PENDING.value,
                )
                .values(state=state.value, output=output, attempts=attempts)
            )


def _file_row(record: FileRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "owner": record.owner,
        "purpose": record.purpose,
        "filename": record.filename,
        "bytes": record.bytes,
        "created_at": record.created_at,
    }


def _file(row: Row[Any]) -> FileRecord:
    return FileRecord(
        id=row.id,
        owner=row.owner,
        purpose=row.purpose,
        filename=row.filename,
        bytes=row.bytes,
        created_at=row.created_at,
    )


def _batch_row(batch: BatchRecord) -> dict[str, Any]:
    return {
        "id": batch.id,
        "owner": batch.owner,
        "input_file_id": batch.input_file_id,
        "endpoint": batch.endpoint,
        "completion_window": batch.completion_window,
        "status": batch.status.value,
        "created_at": batch.created_at,
        "expires_at": batch.expires_at,
        "metadata": batch.metadata,
        "errors": batch.errors,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "times": batch.times,
    }


def _batch(row: Row[Any]) -> BatchRecord:
    return BatchRecord(
        id=row.id,
        owner=row.owner,
        input_file_id=row.input_file_id,
        endpoint=row.endpoint,
        completion_window=row.completion_window,
        status=BatchStatus(row.status),
        created_at=row.created_at,
        expires_at=row.expires_at,
        metadata=row.metadata,
        errors=row.errors,
        output_file_id=row.output_file_id,
        error_file_id=row.error_file_id,
        times=dict(row.times or {}),
    )


def _batch_task_row(task: BatchTask) -> dict[str, Any]:
    return {
        "batch_id": task.batch_id,
        "line": task.line,
        "custom_id": task.custom_id,
        "body": task.body,
        "state": task.state.value,
        "attempts": task.attempts,
        "result": task.result,
    }


def _batch_task(row: Row[Any]) -> BatchTask:
    return BatchTask(
        batch_id=row.batch_id,
        line=row.line,
        custom_id=row.custom_id,
        body=row.body,
        state=TaskState(row.state),
        attempts=row.attempts,
        result=row.result,
    )


def _job_row(job: JobRecord) -> dict[str, Any]:
    return {
        "id": job.id,
        "owner": job.owner,
        "type": job.type,
        "status": job.status,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "params": job.params,
        "result": job.result,
        "error": job.error,
    }


def _job(row: Row[Any]) -> JobRecord:
    return JobRecord(
        id=row.id,
        owner=row.owner,
        type=row.type,
        status=row.status,
        created_at=row.created_at,
        finished_at=row.finished_at,
        params=row.params,
        result=row.result,
        error=row.error,
    )


def _job_task_row(task: JobTask) -> dict[str, Any]:
    return {
        "job_id": task.job_id,
        "key": task.key,
        "input": task.input,
        "state": task.state.value,
        "attempts": task.attempts,
        "output": task.output,
    }


def _job_task(row: Row[Any]) -> JobTask:
    return JobTask(
        job_id=row.job_id,
        key=row.key,
        input=row.input,
        state=TaskState(row.state),
        attempts=row.attempts,
        output=row.output,
    )

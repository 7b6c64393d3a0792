"""Verification state in the store: canaries and who got them, reputations
written in order, and an older database upgraded in place."""

from __future__ import annotations

import random
import sqlite3
from collections import Counter
from pathlib import Path

from inferswarm.protocol import MinerId, ModelName, SamplingParams, TaskId
from inferswarm.protocol.messages import ChatMessage
from inferswarm.router.dispatch import Job
from inferswarm.router.verify.book import ReputationBook
from inferswarm.router.verify.canaries import CanaryBook
from inferswarm.router.verify.reputation import Outcome
from inferswarm.storage import ResultRecord
from inferswarm.storage.sql import SqlStore, open_store

MODEL = ModelName("m")
FILES = {MODEL: "hash-a"}
A, B, C = MinerId("a"), MinerId("b"), MinerId("c")


async def store_at(path: Path) -> SqlStore:
    return await open_store(f"sqlite+aiosqlite:///{path / 'router.db'}")


def job(question: str) -> Job:
    return Job(
        model=MODEL,
        sampling=SamplingParams(max_tokens=8, temperature=0.0, seed=7, stop=("\n",)),
        messages=(ChatMessage(role="user", content=question),),
    )


async def test_canaries_and_their_runs_survive_a_restart(tmp_path: Path) -> None:
    store = await store_at(tmp_path)
    writes = []
    book = CanaryBook(random.Random(1))
    await book.attach(store, writes.append)
    book.remember(job("sky?"), "hash-a", "blue", [A, B])
    book.remember(job("grass?"), "hash-a", "green", [A])
    canary = await book.pick(C, FILES)
    assert canary is not None
    book.given(canary, C, TaskId("task-1"))
    book.judged(canary, C, TaskId("task-1"), passed=False)
    for write in writes:
        await write
    await store.close()

    store = await store_at(tmp_path)
    again = CanaryBook(random.Random(1))
    await again.attach(store, lambda write: write.close())
    assert len(again) == 2
    # The same task as the client sent it: its messages and sampling, greedy.
    kept = {c.answer: c for c in [await again.pick(MinerId("d"), FILES) for _ in range(30)] if c}
    assert kept["blue"].job.messages == job("sky?").messages
    assert kept["blue"].job.sampling == job("sky?").sampling
    assert kept["blue"].job.model_hash == ""  # sent unpinned, like client tasks
    # C has seen one canary already: it gets the other one first.
    assert (await again.pick(C, FILES)) is not None
    assert (await again.pick(C, FILES)).id != canary.id  # type: ignore[union-attr]
    (run,) = await store.canary_runs(C)
    assert (run.canary_id, run.passed) == (canary.id, False)
    await store.close()


async def test_a_miner_never_gets_a_canary_it_helped_make(tmp_path: Path) -> None:
    book = CanaryBook(random.Random(2))
    book.remember(job("sky?"), "hash-a", "blue", [A, B])
    assert await book.pick(A, FILES) is None
    assert await book.pick(C, FILES) is not None
    assert await book.pick(C, {MODEL: "hash-b"}) is None  # another model file


async def test_only_the_newest_canaries_of_a_file_are_kept(tmp_path: Path) -> None:
    store = await store_at(tmp_path)
    book = CanaryBook(random.Random(3), clock=iter(range(100)).__next__, keep=3)
    writes = []
    await book.attach(store, writes.append)
    for n in range(5):
        book.remember(job(f"q{n}"), "hash-a", f"a{n}", [A])
    for write in writes:
        await write
    assert len(book) == 3
    assert [c.answer for c in await store.canaries()] == ["a2", "a3", "a4"]
    picks = [await book.pick(C, FILES) for _ in range(30)]
    given = Counter(c.answer for c in picks if c)
    assert set(given) == {"a2", "a3", "a4"}
    await store.close()


async def test_the_stored_standing_is_the_latest_after_a_burst(tmp_path: Path) -> None:
    store = await store_at(tmp_path)
    book = ReputationBook()
    await book.attach(store)
    for _ in range(6):
        book.record(A, Outcome.FAIL)
    assert book.is_quarantined(A)
    await book.flush()
    reloaded = ReputationBook()
    await reloaded.attach(store)
    assert reloaded.standing(A) == book.standing(A)
    await store.close()


async def test_an_older_database_gains_the_new_columns(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "router.db") as db:
        db.execute(
            "CREATE TABLE reputations (miner_id VARCHAR(64) PRIMARY KEY, good FLOAT NOT NULL, "
            "bad FLOAT NOT NULL, updated_at FLOAT NOT NULL, quarantined BOOLEAN NOT NULL, "
            "canary_passes INTEGER NOT NULL, passes INTEGER NOT NULL, fails INTEGER NOT NULL)"
        )
        db.execute("INSERT INTO reputations VALUES ('a', 1, 2, 3, 1, 0, 1, 1)")
    store = await store_at(tmp_path)
    (row,) = await store.load_reputations()
    assert (row.quarantined, row.suspicion) == (True, 0.0)
    await store.close()


async def test_results_are_counted_by_purpose(tmp_path: Path) -> None:
    store = await store_at(tmp_path)
    purposes = ["request", "request", "redundant", "spot_check", "referee", "canary"]
    for i, purpose in enumerate(purposes):
        await store.record_result(_result(f"task-{i}", purpose))
    assert await store.count_results() == Counter(purposes)
    await store.close()


def _result(task_id: str, purpose: str) -> ResultRecord:
    return ResultRecord(
        task_id=task_id,
        miner_id="m",
        model="m",
        model_hash="h",
        output_sha256="0" * 64,
        signature="0" * 128,
        public_key="0" * 64,
        created_at=0,
        purpose=purpose,
    )

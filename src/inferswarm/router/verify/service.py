"""Verification at run time: redundant execution with consensus, spot checks,
canaries for quarantined miners, and the ledger of signed results.

The verdicts are pure (``consensus``, ``reputation``); this module does the
I/O around them: it runs tasks through the dispatcher, feeds outcomes to the
reputation book and writes the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any

from inferswarm.openai_compat.errors import (
    APIError,
    InvalidRequest,
    ServiceUnavailable,
    UpstreamFailed,
)
from inferswarm.protocol import MinerId, ModelName, TaskChunk, TaskDone, TaskId
from inferswarm.router.completion import collect
from inferswarm.router.dispatch import Dispatcher, Job
from inferswarm.router.registry import MinerConnection, MinerRegistry
from inferswarm.router.schedule import DEFAULT_EXPECTED_OUTPUT_TOKENS, MinerState
from inferswarm.router.verify.canaries import Canary, CanaryBook
from inferswarm.router.verify.consensus import (
    Consensus,
    Status,
    Verdict,
    cosine_similarity,
    decide,
    exact_similarity,
)
from inferswarm.router.verify.diversity import (
    Candidate,
    checkers_to_avoid,
    choose_diverse,
    network_of,
)
from inferswarm.router.verify.embeddings import Embedder, MiniLMEmbedder, missing_extra
from inferswarm.router.verify.options import SpotCheckStrategy, VerifySettings
from inferswarm.router.verify.reputation import Outcome, check_rate
from inferswarm.router.verify.teacher_check import Checked, TeacherChecker
from inferswarm.storage import ResultPurpose, ResultRecord, Store

log = logging.getLogger(__name__)

VERIFY_SEED = 0
"""Seed of redundant and spot-check runs that did not bring one: every miner must
sample identically for exact consensus."""
RECENT_RESULTS = 4096
CANARY_TIMEOUT_S = 60.0
PROBATION_INTERVAL_S = 1.0
VERIFICATION_TENANT = "inferswarm-verification"
LEDGER_FLUSH_S = 5.0
"""On shutdown, how long queued ledger writes may take to finish."""


@dataclass(frozen=True)
class Run:
    """One miner's signed result for a task."""

    miner_id: MinerId
    task_id: TaskId
    model_hash: str


@dataclass(frozen=True)
class Report:
    """What the client is told about the verification of one answer."""

    consensus: Consensus
    verdict: Verdict
    miners: tuple[MinerId, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "consensus": self.consensus.value,
            "verdict": self.verdict.status.value,
            "redundancy": len(self.miners),
            "agreed": list(self.verdict.agreeing),
            "disagreed": list(self.verdict.disagreeing),
            "similarity": dict(
                zip(self.miners, (round(s, 4) for s in self.verdict.similarity), strict=True)
            ),
        }

    def header(self) -> str:
        agreed = len(self.verdict.agreeing)
        return f"{self.verdict.status.value}; consensus={self.consensus.value}; agreed={agreed}/{len(self.miners)}"


Reports = dict[int, Report]
"""Verification reports by the id of the job they verified."""


def verification_body(reports: Reports, jobs: Sequence[Job]) -> dict[str, Any]:
    """The ``inferswarm`` member of a response body (a request's or a batch
    line's): the report of each verified job, in the order of ``jobs``."""
    return {"verification": [reports[id(job)].as_dict() for job in jobs if id(job) in reports]}


VerdictListener = Callable[[str, Consensus, Verdict], None]
"""Told (purpose, consensus, verdict) of every verification (metrics, events)."""


class Verifier:
    def __init__(
        self,
        registry: MinerRegistry,
        dispatcher: Dispatcher,
        settings: VerifySettings,
        embedder: Embedder | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._registry = registry
        self._dispatcher = dispatcher
        self.settings = settings
        self._embedder = embedder
        self._embedder_lock = asyncio.Lock()
        self._rng = rng or random.Random()
        self._store: Store | None = None
        self._runs: OrderedDict[TaskId, Run] = OrderedDict()
        self.results_by_purpose: Counter[str] = Counter()
        """Results in the ledger by purpose: as stored when the router started,
        plus those recorded since (by this router)."""
        self.canaries = CanaryBook(self._rng)
        self._background: set[asyncio.Task[None]] = set()
        self._listeners: list[VerdictListener] = []
        # Ledger writes in order (a verdict after its result), by one writer.
        self._ledger: asyncio.Queue[Coroutine[Any, Any, None]] = asyncio.Queue()
        self.spot_checks = 0
        self.teacher = TeacherChecker(registry, mark=self._mark_result, rng=self._rng)
        registry.on_result(self._on_result)

    def on_verdict(self, listener: VerdictListener) -> None:
        self._listeners.append(listener)

    def summary(self) -> dict[str, Any]:
        """Spot checks run since start and the ledger's results by purpose
        (``ResultPurpose``), for ``/v1/network``."""
        by_purpose = {p.value: self.results_by_purpose[p.value] for p in ResultPurpose}
        return {"spot_checks": self.spot_checks, "results_by_purpose": by_purpose}

    async def start(self, store: Store) -> None:
        self._store = store
        self.results_by_purpose.update(await store.count_results())
        await self._registry.book.attach(store)
        await self.canaries.attach(store, self._ledger.put_nowait)
        self._spawn(self._probation())
        self._spawn(self._write_ledger())

    async def stop(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ledger.join(), LEDGER_FLUSH_S)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        while not self._ledger.empty():  # not written in time: dropped, never left unawaited
            self._ledger.get_nowait().close()
        await self._registry.book.flush()

    # the ledger

    async def _write_ledger(self) -> None:
        while True:
            write = await self._ledger.get()
            try:
                await write
            except Exception:
                log.exception("a ledger write failed; the result stays unrecorded")
            finally:
                self._ledger.task_done()

    def _on_result(self, conn: MinerConnection, done: TaskDone, purpose: ResultPurpose) -> None:
        self._runs[done.task_id] = Run(conn.miner_id, done.task_id, done.model_hash)
        while len(self._runs) > RECENT_RESULTS:
            self._runs.popitem(last=False)
        if self._store is None:
            return
        record = ResultRecord(
            task_id=done.task_id,
            miner_id=conn.miner_id,
            model=next((o.name for o in conn.info.models if o.file_hash == done.model_hash), ""),
            model_hash=done.model_hash,
            output_sha256=done.output_sha256,
            signature=done.signature,
            public_key=conn.info.public_key,
            created_at=int(time.time()),
            purpose=purpose.value,
        )
        self.results_by_purpose[purpose.value] += 1
        self._ledger.put_nowait(self._store.record_result(record))

    def _mark_result(self, task_id: TaskId, label: str) -> None:
        if self._store is not None:
            self._ledger.put_nowait(self._store.set_result_verdict(task_id, label))

    def _mark(self, runs: list[Run], verdict: Verdict) -> None:
        if self._store is None:
            return
        for run in runs:
            agreed = run.miner_id in verdict.agreeing and verdict.trusted
            label = "agreed" if agreed else verdict.status.value
            if verdict.trusted and run.miner_id in verdict.disagreeing:
                label = "rejected"
            self._ledger.put_nowait(self._store.set_result_verdict(run.task_id, label))

    # redundant execution

    def options(self, redundancy: int | None, consensus: str | None) -> tuple[int, Consensus]:
        """The request's choice, else the router's defaults; refused with what to change."""
        k = redundancy or self.settings.redundancy
        try:
            chosen = Consensus(consensus) if consensus else self.settings.consensus
        except ValueError:
            raise InvalidRequest(
                f"Unknown consensus {consensus!r}; choose exact or semantic.",
                param="inferswarm.consensus",
            ) from None
        why_not = missing_extra() if chosen is Consensus.SEMANTIC and k > 1 else None
        if why_not is not None and self._embedder is None:
            raise InvalidRequest(
                f"This router cannot do semantic consensus: {why_not}.",
                param="inferswarm.consensus",
                code="semantic_unavailable",
            )
        return k, chosen

    async def embedder(self) -> Embedder:
        """The sentence-embedding model, loaded once (in a thread: it takes seconds)."""
        async with self._embedder_lock:
            if self._embedder is None:
                self._embedder = await asyncio.to_thread(MiniLMEmbedder.load)
            return self._embedder

    async def run_redundant(
        self, job: Job, k: int, consensus: Consensus
    ) -> tuple[str, TaskDone, Report]:
        """Run ``job`` on ``k`` distinct miners of one model file and return the
        consensus answer. Without consensus nothing is returned: the client
        asked for a verified answer and none could be verified."""
        asked = job
        model_hash = self._pin(job.model, k)
        job = replace(
            _verifiable(job, consensus),
            claimed=set(),
            model_hash=model_hash,
            purpose=ResultPurpose.REDUNDANT,
        )
        chosen = self._diverse(job, k)
        outputs = await asyncio.gather(*(self._run_on(job, m, chosen) for m in chosen))
        runs = [self._run_of(done) for _, done in outputs]
        verdict = await self._decide(
            [r.miner_id for r in runs], [text for text, _ in outputs], consensus
        )
        self._judge("redundant", consensus, runs, verdict)
        if verdict.answer is None:
            raise UpstreamFailed(
                f"The {k} miners that ran this request did not agree ({consensus.value} consensus), "
                "so no verified answer can be given. Retry; persistent disagreement means "
                "untrustworthy miners, which the router now trusts less.",
                code="verification_failed",
            )
        text, done = outputs[verdict.answer]
        self._remember_canary(job, text, verdict, asked)
        return text, done, Report(consensus, verdict, tuple(r.miner_id for r in runs))

    def _pin(self, model: ModelName, k: int) -> str:
        """The model file most trusted miners serve; there must be k of them."""
        counts: dict[str, int] = {}
        for conn in self._registry.connections():
            if conn.state is MinerState.LIVE and not self._registry.book.is_quarantined(
                conn.miner_id
            ):
                file_hash = conn.model_hash(model)
                if any(o.name == model for o in conn.info.models):
                    counts[file_hash] = counts.get(file_hash, 0) + 1
        best = max(counts.items(), key=lambda item: item[1], default=("", 0))
        if best[1] < k:
            raise ServiceUnavailable(
                f"Redundancy {k} needs {k} trusted miners serving '{model}' with the same model "
                f"file; {best[1]} are connected. Lower inferswarm.redundancy or start more miners.",
                code="not_enough_miners",
                headers={"Retry-After": "5"},
            )
        return best[0]

    def redundant_runner(
        self, k: int, consensus: Consensus, reports: Reports | None = None
    ) -> Callable[[Job], AsyncGenerator[TaskChunk | TaskDone, None]]:
        """Each job run on k miners, as the events of its consensus answer;
        its report goes into ``reports``."""

        async def run(job: Job) -> AsyncGenerator[TaskChunk | TaskDone, None]:
            text, done, report = await self.run_redundant(job, k, consensus)
            if reports is not None:
                reports[id(job)] = report
            if text:
                yield TaskChunk(task_id=done.task_id, text=text, tokens=done.completion_tokens)
            yield done

        return run

    def _diverse(self, job: Job, k: int) -> list[MinerId]:
        """k trusted miners of the pinned file, of distinct operators and tiers
        where possible; the most reputable and least busy preferred."""
        book = self._registry.book
        fitting = [
            conn
            for conn in self._registry.connections()
            if conn.state is MinerState.LIVE
            and not book.is_quarantined(conn.miner_id)
            and not self._registry.is_banned(conn.miner_id)
            and conn.model_hash(job.model) == job.model_hash
        ]
        fitting.sort(key=lambda c: (-book.score(c.miner_id), len(c.tasks), c.miner_id))
        return choose_diverse([self._candidate(c) for c in fitting], k)

    def _candidate(self, conn: MinerConnection) -> Candidate:
        v4, v6 = self.settings.diversity_prefix_v4, self.settings.diversity_prefix_v6
        return Candidate(
            conn.miner_id, conn.info.operator, conn.tier, network_of(conn.address, v4, v6)
        )

    def _not_to_check(self, run: Run) -> frozenset[MinerId]:
        """The checked miner and the others of its operator group, unless nobody
        else serves the file (``diversity.checkers_to_avoid``)."""
        book = self._registry.book
        able = [
            self._candidate(conn)
            for conn in self._registry.connections()
            if conn.state is MinerState.LIVE
            and any(offer.file_hash == run.model_hash for offer in conn.info.models)
            and (conn.miner_id == run.miner_id or not book.is_quarantined(conn.miner_id))
        ]
        return checkers_to_avoid(able, run.miner_id)

    async def _run_on(
        self, job: Job, miner_id: MinerId, chosen: list[MinerId]
    ) -> tuple[str, TaskDone]:
        """One redundant copy on the miner chosen for it; when that miner cannot
        take it, on another that no copy chose or used."""
        others = frozenset(c.miner_id for c in self._registry.connections()) - {miner_id}
        try:
            return await collect(self._dispatcher.run(replace(job, avoid=others)))
        except APIError as exc:
            log.info("redundant copy on %s failed (%s); trying another miner", miner_id, exc)
        return await collect(self._dispatcher.run(replace(job, avoid=frozenset(chosen))))

    def _run_of(self, done: TaskDone) -> Run:
        run = self._runs.get(done.task_id)
        if run is None:  # a stream that migrated: no single miner produced it
            raise UpstreamFailed(
                "a redundant run moved between miners and cannot be attributed; retry",
                code="verification_failed",
            )
        return run

    async def _decide(
        self, miners: list[MinerId], texts: list[str], consensus: Consensus
    ) -> Verdict:
        if consensus is Consensus.EXACT:
            return decide(miners, exact_similarity(texts), 1.0)
        embedder = await self.embedder()
        vectors = await asyncio.to_thread(embedder.embed, texts)
        return decide(miners, cosine_similarity(vectors), self.settings.semantic_threshold)

    def _judge(
        self,
        purpose: str,
        consensus: Consensus,
        runs: list[Run],
        verdict: Verdict,
        *,
        canary: bool = False,
    ) -> None:
        if verdict.trusted:
            for run in runs:
                passed = run.miner_id in verdict.agreeing
                outcome = Outcome.PASS if passed else Outcome.FAIL
                self._registry.book.record(run.miner_id, outcome, canary=canary)
        self._mark(runs, verdict)
        for listener in self._listeners:
            listener(purpose, consensus, verdict)

    # spot checks

    def after_task(self, job: Job, done: TaskDone, text: str) -> None:
        """With the miner's spot-check rate, re-run the finished task
        elsewhere, later, and judge its miner by the outcome."""
        run = self._runs.get(done.task_id)
        if not self._picked(job, run):
            return
        assert run is not None
        if self._teacher_forced(job):
            self._spawn(self._teacher_check(job, run, done, text))
        else:
            self._spawn(self._spot_check(job, run, text, done))

    def prepared(self, job: Job) -> Job:
        """A job a teacher-forced check may judge asks its miner to claim each
        token's log-probability, so the check compares those claims too (a miner
        cannot tell whether it will be checked: every such job asks)."""
        teacher_checks = self.settings.spot_check_strategy is not SpotCheckStrategy.REDUNDANT
        if teacher_checks and self.settings.spot_checks_on():
            return replace(job, logprobs=True)
        return job

    def _teacher_forced(self, job: Job) -> bool:
        strategy = self.settings.spot_check_strategy
        if strategy is SpotCheckStrategy.MIXED:
            return not _deterministic(job) or self._rng.random() < 0.5
        return strategy is SpotCheckStrategy.TEACHER

    async def _teacher_check(self, job: Job, run: Run, done: TaskDone, text: str) -> None:
        checked = Checked(run.miner_id, run.task_id, run.model_hash)
        try:
            if await self.teacher.check(job, checked, done, text, self._not_to_check(run)):
                self.spot_checks += 1
        except Exception:
            log.exception("the teacher-forced check of %s failed to run", run.task_id)

    async def checked(
        self, job: Job, events: AsyncGenerator[TaskChunk | TaskDone, None]
    ) -> AsyncGenerator[TaskChunk | TaskDone, None]:
        """For work no client watches arrive (batch lines, map-reduce tasks): a
        task picked for a spot check waits for its check, and one that fails it
        is answered by the majority that outvoted it (the checker and referee
        re-ran it elsewhere and agree), so a result that failed verification is
        never handed out. Without a majority the task fails as retryable (502)."""
        text, done = await collect(events)
        run = self._runs.get(done.task_id)
        # Only a rerun gives an answer to hand out instead: the teacher check does not.
        if self._picked(job, run) and _deterministic(job):
            assert run is not None
            checked = await self._spot_check(job, run, text, done)
            if checked is not None:
                verdict, texts, dones = checked
                if verdict.answer is None:
                    raise UpstreamFailed(
                        "a spot check of this task found no two miners agreeing; it will be retried",
                        code="verification_failed",
                    )
                text, done = texts[verdict.answer], dones[verdict.answer]
        if text:
            yield TaskChunk(task_id=done.task_id, text=text, tokens=done.completion_tokens)
        yield done

    def _picked(self, job: Job, run: Run | None) -> bool:
        """Whether to spot-check this task: only what a rerun can reproduce
        (greedy tasks) unless teacher-forced checks may judge it, never a check
        itself, at the rate the miner's standing calls for."""
        redundant_only = self.settings.spot_check_strategy is SpotCheckStrategy.REDUNDANT
        if run is None or job.tenant == VERIFICATION_TENANT:
            return False
        if redundant_only and not _deterministic(job):
            return False
        book = self._registry.book
        conn = self._registry.get(run.miner_id)
        base = self.settings.spot_check_rate_for(conn.tier if conn else None)
        rate = check_rate(book.standing(run.miner_id), base, book.policy)
        return rate > 0 and self._rng.random() < rate

    async def _spot_check(
        self, job: Job, run: Run, text: str, done: TaskDone
    ) -> tuple[Verdict, list[str], list[TaskDone]] | None:
        """One checker; on disagreement a referee, and the majority of three
        decides. The verdict, texts and results by run (the checked one first),
        or None when no check could run."""
        consensus = Consensus.EXACT
        check = replace(
            job,
            tenant=VERIFICATION_TENANT,
            avoid=self._not_to_check(run),
            claimed=set(),
            model_hash=run.model_hash,
            hedge=False,
        )
        runs, texts, dones = [run], [text], [done]
        try:
            for purpose in (ResultPurpose.SPOT_CHECK, ResultPurpose.REFEREE):
                run_as = replace(check, purpose=purpose)
                other, other_done = await collect(self._dispatcher.run(run_as))
                runs.append(self._run_of(other_done))
                texts.append(other)
                dones.append(other_done)
                verdict = await self._decide([r.miner_id for r in runs], texts, consensus)
                if verdict.status is Status.AGREED:
                    break
        except Exception as exc:
            log.info("spot check of %s could not run: %s", run.task_id, exc)
            return None
        self.spot_checks += 1
        self._judge("spot_check", consensus, runs, verdict)
        self._remember_canary(check, texts[verdict.answer or 0], verdict)
        return verdict, texts, dones

    # canaries

    def _remember_canary(
        self, job: Job, answer: str, verdict: Verdict, asked: Job | None = None
    ) -> None:
        """Keep a task two or more miners agreed on as a canary, with the
        sampling the client asked for (``asked``), decoded greedily."""
        if verdict.status is Status.NO_CONSENSUS or len(verdict.agreeing) < 2:
            return
        if not _deterministic(job):
            return
        sampling = job.sampling
        if asked is not None:
            sampling = asked.sampling.model_copy(update={"temperature": 0.0})
        self.canaries.remember(
            replace(job, sampling=sampling), job.model_hash, answer, verdict.agreeing
        )

    async def _probation(self) -> None:
        """Quarantined miners get only canaries; passing enough of them releases
        them. Suspects (a failed check not yet outweighed) get canaries too when
        idle, so they are confirmed or cleared without waiting for client
        traffic, which the scheduler sends them less of."""
        book = self._registry.book
        while True:
            await asyncio.sleep(PROBATION_INTERVAL_S)
            for conn in self._registry.connections():
                suspect = book.is_quarantined(conn.miner_id) or book.is_suspect(conn.miner_id)
                if suspect and not conn.tasks:
                    files = {o.name: o.file_hash for o in conn.info.models}
                    canary = await self.canaries.pick(conn.miner_id, files)
                    if canary is not None:
                        try:
                            await self._run_canary(conn, canary)
                        except Exception:
                            log.exception("a canary for %s failed to run", conn.miner_id)

    async def _run_canary(self, conn: MinerConnection, canary: Canary) -> None:
        # Sent as any client task is: an ordinary id, no pinned model file
        # (the result reports the file it ran), the client's sampling.
        task = canary.job.assign(TaskId(f"task-{uuid.uuid4().hex}"))
        expected = task.sampling.max_tokens or DEFAULT_EXPECTED_OUTPUT_TOKENS
        events = await self._registry.start_task(
            conn.miner_id, task, expected_tokens=expected, purpose=ResultPurpose.CANARY
        )
        self.canaries.given(canary, conn.miner_id, task.task_id)
        await self._judge_canary(conn, canary, task.task_id, events)

    async def _judge_canary(
        self,
        conn: MinerConnection,
        canary: Canary,
        task_id: TaskId,
        events: asyncio.Queue[Any],
    ) -> None:
        parts: list[str] = []
        try:
            while True:
                event = await asyncio.wait_for(events.get(), CANARY_TIMEOUT_S)
                if isinstance(event, TaskChunk):
                    parts.append(event.text)
                    continue
                break
        except TimeoutError:
            self._registry.cancel_task(conn.miner_id, task_id)
            self._registry.book.record(conn.miner_id, Outcome.TIMEOUT, canary=True)
            return
        if not isinstance(event, TaskDone):
            return  # lost or failed: reputation already counted it
        run = Run(conn.miner_id, task_id, event.model_hash)
        passed = "".join(parts) == canary.answer and event.model_hash == canary.model_hash
        self.canaries.judged(canary, conn.miner_id, task_id, passed)
        verdict = Verdict(
            status=Status.AGREED if passed else Status.MAJORITY,
            answer=0,
            agreeing=(conn.miner_id,) if passed else (),
            disagreeing=() if passed else (conn.miner_id,),
            similarity=(1.0 if passed else 0.0,),
        )
        self._judge("canary", Consensus.EXACT, [run], verdict, canary=True)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _deterministic(job: Job) -> bool:
    return job.sampling.temperature == 0


def _verifiable(job: Job, consensus: Consensus) -> Job:
    """Redundant runs decode greedily with one seed, for both strategies.

    Measured on SmolLM2-135M (bench/verification_rates.py): two honest answers
    sampled at temperature 0.8 have a mean cosine of 0.41 with different seeds,
    and differ in 4 of 12 prompts even with the same seed, so consensus over
    samples would blame honest miners. Greedy answers matched 12 of 12.
    Semantic consensus then tolerates what exact does not: numeric differences
    between hardware or builds that change a token without changing the meaning.
    """
    update = {"seed": job.sampling.seed or VERIFY_SEED, "temperature": 0.0}
    return replace(job, sampling=job.sampling.model_copy(update=update))

"""Spot checks by teacher forcing: a trusted miner with the same model file
scores a finished result in one prefill, and the pure verdict
(``teacher.judge``) decides.

The checker is the least busy of the miners whose reputation is at least
``min_checker_score`` (verification is background work; it goes where there
is spare capacity). A failed check is confirmed by a second checker (the
referee) when there is one: a single lying or broken checker cannot get an
honest miner quarantined, and a referee's pass clears the result.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from inferswarm.protocol import MinerId, ModelName, TaskDone, TaskId, VerifyAssign, VerifyResult
from inferswarm.router.dispatch import Job
from inferswarm.router.registry import MinerConnection, MinerRegistry
from inferswarm.router.schedule import MinerState
from inferswarm.router.verify.reputation import Outcome
from inferswarm.router.verify.teacher import Claim, TeacherPolicy, TeacherVerdict, judge

log = logging.getLogger(__name__)

SCORE_TIMEOUT_S = 120.0
MIN_CHECKER_SCORE = 0.75
"""A new miner starts at 0.8: trusted enough to check until it fails a check itself."""


@dataclass(frozen=True)
class Checked:
    """A finished result to check: who produced it, for which task, from which file."""

    miner_id: MinerId
    task_id: TaskId
    model_hash: str


TeacherListener = Callable[[MinerId, TeacherVerdict], None]
"""Told (checked miner, verdict) of every teacher-forced check that reached one."""
LedgerMark = Callable[[TaskId, str], None]


class TeacherChecker:
    def __init__(
        self,
        registry: MinerRegistry,
        policy: TeacherPolicy | None = None,
        mark: LedgerMark | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._registry = registry
        self.policy = policy or TeacherPolicy()
        self._mark = mark
        self._rng = rng or random.Random()
        self._listeners: list[TeacherListener] = []

    def on_verdict(self, listener: TeacherListener) -> None:
        self._listeners.append(listener)

    async def check(
        self,
        job: Job,
        checked: Checked,
        done: TaskDone,
        text: str,
        avoid: frozenset[MinerId] = frozenset(),
    ) -> bool:
        """Check one result on a miner not in ``avoid`` (nor the checked one) and
        record the outcome; False when no checker could."""
        claim = Claim(
            finish_reason=done.finish_reason,
            completion_tokens=done.completion_tokens,
            stop_sequences=bool(job.sampling.stop),
            token_logprobs=done.token_logprobs,
            temperature=job.sampling.temperature,
            penalized=bool(job.sampling.frequency_penalty or job.sampling.presence_penalty),
        )
        tried = {checked.miner_id, *avoid}
        verdict: TeacherVerdict | None = None
        for _ in range(2):  # a checker, then a referee if it failed the result
            conn = self.checker_for(checked.model_hash, tried)
            if conn is None:
                break
            tried.add(conn.miner_id)
            scores = await self._score(conn, job, checked, text)
            if scores is not None:
                verdict = judge(scores, claim, self.policy)
                if verdict.passed:
                    break
        if verdict is None:
            return False
        self._record(checked, verdict)
        return True

    def checker_for(self, model_hash: str, avoid: set[MinerId]) -> MinerConnection | None:
        """The least busy trusted miner serving this model file, not in ``avoid``."""
        book = self._registry.book
        candidates = [
            conn
            for conn in self._registry.connections()
            if conn.state is MinerState.LIVE
            and conn.miner_id not in avoid
            and any(offer.file_hash == model_hash for offer in conn.info.models)
            and not book.is_quarantined(conn.miner_id)
            and book.score(conn.miner_id) >= MIN_CHECKER_SCORE
        ]
        if not candidates:
            return None
        self._rng.shuffle(candidates)  # among equally idle ones, no fixed checker to collude with
        return min(candidates, key=lambda c: (len(c.tasks) + len(c.checks)) / c.info.slots)

    async def _score(
        self, conn: MinerConnection, job: Job, checked: Checked, text: str
    ) -> VerifyResult | None:
        model = next(o.name for o in conn.info.models if o.file_hash == checked.model_hash)
        request = VerifyAssign(
            verify_id=TaskId(f"verify-{uuid.uuid4().hex}"),
            model=ModelName(model),
            model_hash=checked.model_hash,
            prompt=job.prompt,
            messages=job.messages,
            output=text,
        )
        try:
            scores = await self._registry.score(conn.miner_id, request, SCORE_TIMEOUT_S)
        except (TimeoutError, ConnectionError) as exc:
            log.info("checker %s did not score %s: %r", conn.miner_id, checked.task_id, exc)
            return None
        if scores.error:
            log.info(
                "checker %s could not score %s: %s", conn.miner_id, checked.task_id, scores.error
            )
            return None
        return scores

    def _record(self, checked: Checked, verdict: TeacherVerdict) -> None:
        outcome = Outcome.PASS if verdict.passed else Outcome.FAIL
        self._registry.book.record(checked.miner_id, outcome)
        if not verdict.passed:
            log.warning(
                "teacher-forced check failed %s of miner %s: %s",
                checked.task_id,
                checked.miner_id,
                verdict.reason,
            )
        if self._mark is not None:
            self._mark(checked.task_id, "passed" if verdict.passed else "rejected")
        for listener in self._listeners:
            listener(checked.miner_id, verdict)

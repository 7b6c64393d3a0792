"""The pure verdict and reputation logic, with simulated outcomes."""

from __future__ import annotations

import random

import pytest

from inferswarm.protocol import MinerId
from inferswarm.router.verify.consensus import (
    Status,
    cosine_similarity,
    decide,
    exact_similarity,
)
from inferswarm.router.verify.reputation import (
    Outcome,
    ReputationPolicy,
    Standing,
    check_rate,
    record,
)

POLICY = ReputationPolicy()
A, B, C = MinerId("a"), MinerId("b"), MinerId("c")


def test_exact_consensus_outvotes_one_corrupt_output() -> None:
    verdict = decide([A, B, C], exact_similarity(["x", "wrong", "x"]), 1.0)
    assert verdict.status is Status.MAJORITY
    assert verdict.answer in (0, 2)
    assert verdict.disagreeing == (B,)


def test_two_different_outputs_are_no_consensus() -> None:
    verdict = decide([A, B], exact_similarity(["x", "y"]), 1.0)
    assert verdict.status is Status.NO_CONSENSUS and verdict.answer is None


def test_semantic_consensus_picks_the_medoid() -> None:
    vectors = [[1.0, 0.0], [0.98, 0.2], [0.0, 1.0]]
    verdict = decide([A, B, C], cosine_similarity(vectors), 0.85)
    assert verdict.answer in (0, 1)
    assert verdict.disagreeing == (C,)
    assert verdict.similarity[2] < 0.85


def _tasks_until_quarantine(
    cheat_rate: float,
    base_rate: float,
    rng: random.Random,
    limit: int = 10_000,
    false_verdicts: float = 0.0,
    standing: Standing | None = None,
) -> int | None:
    """Tasks until quarantine, each spot-checked at the rate the policy asks for."""
    standing = standing or Standing()
    for task in range(1, limit + 1):
        cheated = rng.random() < cheat_rate
        standing = record(standing, Outcome.COMPLETED, float(task), POLICY)
        if rng.random() < check_rate(standing, base_rate, POLICY):
            failed = cheated or rng.random() < false_verdicts
            standing = record(
                standing, Outcome.FAIL if failed else Outcome.PASS, float(task), POLICY
            )
        if standing.quarantined:
            return task
    return None


def test_a_miner_corrupting_every_task_is_quarantined_within_20_tasks_on_average() -> None:
    rng = random.Random(1)
    runs = [_tasks_until_quarantine(1.0, 0.2, rng) for _ in range(200)]
    assert all(r is not None for r in runs)
    assert sum(r or 0 for r in runs) / len(runs) <= 20


def test_a_miner_corrupting_one_task_in_ten_is_quarantined() -> None:
    rng = random.Random(2)
    runs = [_tasks_until_quarantine(0.1, 0.2, rng) for _ in range(50)]
    assert all(r is not None for r in runs)


def test_one_failed_check_never_quarantines_even_a_new_miner() -> None:
    standing = record(Standing(), Outcome.FAIL, 0.0, POLICY)
    assert not standing.quarantined
    assert standing.score(0.0, POLICY) < Standing().score(0.0, POLICY)  # trusted less
    assert check_rate(standing, 0.05, POLICY) == POLICY.suspect_check_rate  # checked more


def test_failed_checks_in_a_row_quarantine() -> None:
    standing = Standing()
    fails = 0
    while not standing.quarantined:
        standing = record(standing, Outcome.FAIL, 0.0, POLICY)
        fails += 1
    assert fails == 6


def test_an_honest_miner_is_never_quarantined_over_1000_tasks_despite_false_verdicts() -> None:
    """Honest but imperfect: 2 % of tasks time out, 1 % error, and 1 % of its
    checks wrongly fail it; checked at p = 0.2 (more while suspected)."""
    rng = random.Random(3)
    for _ in range(50):  # bench/verification.py measures over more
        standing = Standing()
        for task in range(1, 1001):
            roll = rng.random()
            outcome = Outcome.TIMEOUT if roll < 0.02 else Outcome.ERROR if roll < 0.03 else None
            standing = record(standing, outcome or Outcome.COMPLETED, float(task), POLICY)
            if outcome is None and rng.random() < check_rate(standing, 0.2, POLICY):
                verdict = Outcome.FAIL if rng.random() < 0.01 else Outcome.PASS
                standing = record(standing, verdict, float(task), POLICY)
            assert not standing.quarantined


def test_a_long_honest_history_buys_no_licence_to_cheat() -> None:
    standing = Standing()
    for task in range(2000):
        standing = record(standing, Outcome.PASS, float(task), POLICY)
    assert standing.score(2000.0, POLICY) > 0.99
    caught = _tasks_until_quarantine(1.0, 0.2, random.Random(4), standing=standing)
    assert caught is not None and caught <= 40


def test_suspicion_fades_with_time() -> None:
    standing = record(Standing(), Outcome.FAIL, 0.0, POLICY)
    later = standing.decayed(10 * POLICY.half_life_s, POLICY)
    assert later.suspicion < standing.suspicion / 1000


def test_a_forged_result_quarantines_at_once() -> None:
    assert record(Standing(), Outcome.FORGED, 0.0, POLICY).quarantined


def test_quarantine_ends_only_through_canaries() -> None:
    standing = record(Standing(), Outcome.FORGED, 0.0, POLICY)
    assert standing.quarantined
    waited = record(standing, Outcome.COMPLETED, 10 * POLICY.half_life_s, POLICY)
    assert waited.quarantined  # time alone does not release it
    for step in range(POLICY.canaries_to_release):
        assert standing.quarantined
        standing = record(standing, Outcome.PASS, float(step), POLICY, canary=True)
    assert not standing.quarantined
    assert standing.score(float(step), POLICY) >= POLICY.release_at - 1e-9
    assert record(standing, Outcome.FAIL, float(step), POLICY).quarantined  # on probation
    for _ in range(20):  # probation wears off with passed checks
        standing = record(standing, Outcome.PASS, float(step), POLICY)
    assert not record(standing, Outcome.FAIL, float(step), POLICY).quarantined


def test_a_failed_canary_restarts_the_count() -> None:
    standing = record(Standing(), Outcome.FORGED, 0.0, POLICY)
    for _ in range(POLICY.canaries_to_release - 1):
        standing = record(standing, Outcome.PASS, 0.0, POLICY, canary=True)
    standing = record(standing, Outcome.FAIL, 0.0, POLICY, canary=True)
    assert standing.quarantined and standing.canary_passes == 0


def test_spot_checks_stay_off_when_the_router_has_them_off() -> None:
    suspect = record(Standing(), Outcome.FAIL, 0.0, POLICY)
    assert check_rate(suspect, 0.0, POLICY) == 0.0
    assert check_rate(Standing(), 0.2, POLICY) == 0.2


def test_semantic_consensus_without_the_extra_is_refused_with_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from inferswarm.openai_compat.errors import InvalidRequest
    from inferswarm.router.verify import service

    monkeypatch.setattr(service, "missing_extra", lambda: "install 'inferswarm[verify]'")
    verifier = service.Verifier.__new__(service.Verifier)
    verifier.settings = service.VerifySettings()
    verifier._embedder = None
    with pytest.raises(InvalidRequest, match=r"inferswarm\[verify\]"):
        verifier.options(3, "semantic")
    assert verifier.options(3, "exact") == (3, service.Consensus.EXACT)
    with pytest.raises(InvalidRequest, match="choose exact or semantic"):
        verifier.options(3, "vibes")

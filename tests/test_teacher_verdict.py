"""The teacher-forced check's pure verdict (``router.verify.teacher``)."""

from __future__ import annotations

import pytest

from inferswarm.protocol import TaskId, TokenScore, VerifyResult
from inferswarm.router.verify.teacher import Claim, TeacherPolicy, judge, logprob_mismatches

POLICY = TeacherPolicy()
LIKELY = TokenScore(rank=0, logprob=-0.2, top_logprob=-0.2)
SAMPLED = TokenScore(rank=3, logprob=-2.7, top_logprob=-0.2)
OUTSIDE = TokenScore(rank=900, logprob=-11.0, top_logprob=-0.3)


def scores(*tokens: TokenScore, eos_rank: int = 0) -> VerifyResult:
    return VerifyResult(
        verify_id=TaskId("v"), tokens=tokens, eos_rank=eos_rank, eos_logprob=-0.1 - eos_rank
    )


def claim(tokens: int, finish: str = "length", **fields: object) -> Claim:
    return Claim(finish_reason=finish, completion_tokens=tokens, **fields)  # type: ignore[arg-type]


def test_greedy_output_the_model_would_produce_passes() -> None:
    verdict = judge(scores(*[LIKELY] * 20), claim(20), POLICY)
    assert verdict.passed and verdict.reason == "ok"
    assert verdict.outside_share == 0 and verdict.mean_gap == pytest.approx(0)


def test_text_from_elsewhere_fails_on_tokens_outside_the_top_k() -> None:
    verdict = judge(scores(*[LIKELY] * 14, *[OUTSIDE] * 6), claim(20), POLICY)
    assert not verdict.passed
    assert verdict.reason == "30% of its tokens are outside the model's top 40"


def test_a_few_odd_tokens_never_fail_a_short_or_long_answer() -> None:
    # Retokenizing honest text can split a word otherwise than the sampler did.
    assert judge(scores(LIKELY, OUTSIDE, OUTSIDE), claim(3), POLICY).passed
    assert judge(scores(*[LIKELY] * 60, *[OUTSIDE] * 4), claim(64), POLICY).passed
    assert not judge(scores(LIKELY, OUTSIDE, OUTSIDE, OUTSIDE), claim(4), POLICY).passed


def test_unlikely_tokens_inside_the_top_k_fail_unless_sampled_hot() -> None:
    unlikely = TokenScore(rank=30, logprob=-4.0, top_logprob=-0.5)
    tokens = [unlikely] * 20
    verdict = judge(scores(*tokens), claim(20, temperature=0.8), POLICY)
    assert not verdict.passed
    assert "3.50 nats less likely" in verdict.reason
    assert judge(scores(*tokens), claim(20, temperature=1.5), POLICY).passed
    assert judge(scores(*tokens), claim(20, temperature=0.8, penalized=True), POLICY).passed


def test_honest_samples_at_temperature_one_pass() -> None:
    tokens = [LIKELY, SAMPLED] * 10  # mean gap 1.25 nats
    assert judge(scores(*tokens), claim(20, temperature=1.0), POLICY).passed


def test_an_answer_that_claims_to_end_must_end_where_the_model_would() -> None:
    tokens = [LIKELY] * 10
    assert judge(scores(*tokens, eos_rank=1), claim(10, "stop"), POLICY).passed
    cut = judge(scores(*tokens, eos_rank=5000), claim(10, "stop"), POLICY)
    assert not cut.passed
    assert cut.reason == "it claims to have ended where the model ranks the end 5000"
    # A stop sequence, or the token limit, ends text anywhere.
    assert judge(
        scores(*tokens, eos_rank=5000), claim(10, "stop", stop_sequences=True), POLICY
    ).passed
    assert judge(scores(*tokens, eos_rank=5000), claim(10, "length"), POLICY).passed


def test_a_truncated_answer_fails_on_the_tokens_it_claims() -> None:
    verdict = judge(scores(*[LIKELY] * 12), claim(48), POLICY)
    assert not verdict.passed
    assert verdict.reason == "it claims 48 tokens; its text has 12"
    assert judge(scores(*[LIKELY] * 46), claim(48), POLICY).passed


def test_claimed_logprobs_must_match_the_recomputed_ones() -> None:
    tokens = [LIKELY, SAMPLED] * 10
    honest = tuple(t.logprob + 0.3 for t in tokens)  # decode vs prefill noise
    assert judge(scores(*tokens), claim(20, token_logprobs=honest), POLICY).passed
    invented = tuple(-0.05 for _ in tokens)
    verdict = judge(scores(*tokens), claim(20, token_logprobs=invented), POLICY)
    assert not verdict.passed
    assert verdict.reason == "50% of its claimed log-probabilities are wrong"


def test_a_few_misaligned_logprobs_never_fail_a_short_answer() -> None:
    # Measured: "Il Coriobella, Italy." retokenized into other pieces of the
    # same count, and three positions compared unlike tokens.
    recomputed = (-1.69, -1.3, -6.91, -13.29, -3.17, -1.15, -1.66, -1.63)
    claimed = (-1.69, -1.3, -0.95, -0.87, -0.4, -0.8, -1.59, -1.32)
    tokens = [
        TokenScore(rank=0 if lp > -5 else 500, logprob=lp, top_logprob=max(lp, -1.0))
        for lp in recomputed
    ]
    assert judge(scores(*tokens), claim(8, token_logprobs=claimed), POLICY).passed


def test_logprobs_of_a_differently_tokenized_text_compare_by_their_mean() -> None:
    assert logprob_mismatches([-1.0, -2.0, -3.0], [-2.1, -1.9], 0.5) == 0
    assert logprob_mismatches([-0.1, -0.1, -0.1], [-2.1, -1.9], 0.5) == 3
    assert logprob_mismatches([], [], 0.5) == 0
    assert logprob_mismatches([], [-1.0], 0.5) == 0
    assert logprob_mismatches([-1.0], [], 0.5) == 1

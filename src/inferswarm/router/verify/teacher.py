"""The teacher-forced check's verdict: pure.

A checker with the same model file scored the claimed output position by
position (``VerifyResult``): each token's rank in the model's distribution,
its log-probability and the top choice's, and how likely the end of sequence
was after the last token. The claim passes when it reads like something the
model produced:

- few tokens fall outside the top ``top_k`` (the miners' sampler never picks
  outside its top 40, so honest sampled output stays inside, and greedy output
  sits at rank 0; text from elsewhere does not). A few are allowed, whatever
  the length: retokenizing the text can split a word otherwise than the
  sampler did, and the odd piece then ranks low;
- over the tokens inside the top ``top_k``, the mean gap between the top
  choice and the claimed token is small (not checked above temperature 1,
  where honest samples stray further);
- an output that claims to have ended (``stop`` with no stop sequences) ends
  where the model would plausibly end, and one that claims to have hit its
  token limit has about the tokens it claims (a truncated answer does not);
- claimed per-token log-probabilities, when the result carried them, match
  the recomputed ones within the numeric noise between two llama.cpp runs.

Thresholds are calibrated on real llama.cpp runs of the shipped model with
honest greedy and temperature 0.7-1.0 output (bench/teacher_rates.py; figures
beside each default). Frequency and presence penalties change what the
sampler ranks, so for penalized tasks only the end, length and log-probability
rules apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from inferswarm.protocol import FinishReason, VerifyResult


@dataclass(frozen=True)
class TeacherPolicy:
    top_k: int = 40
    """A token ranked this or worse is "outside": the miners' sampler top-k."""
    max_outside_share: float = 0.1
    """Measured: honest at most 5 % (sampled), corrupt at least 14 %."""
    outside_allowed: int = 2
    """Outside tokens always allowed, so one odd piece cannot fail a short answer."""
    max_mean_gap: float = 3.0
    """Mean of (top log-probability - claimed token's) over the tokens inside
    the top ``top_k``, in nats. Measured (over all tokens):
    honest greedy at most 0.01, sampled at temperature 1 at most 2.06;
    corrupt at least 2.56."""
    end_max_rank: int = 40
    """An output that stopped by itself must end where EOS ranks better than
    this. Measured: honest at most 4."""
    min_length_share: float = 0.7
    """A result must hold at least this share of the tokens it claims.
    Measured: honest at least 0.97 (retokenized text)."""
    logprob_tolerance: float = 0.5
    """A claimed log-probability further than this (nats) from the recomputed
    one is wrong. Measured: honest at most 0.33 (decode against prefill)."""
    max_logprob_mismatch_share: float = 0.1
    logprob_mismatches_allowed: int = 3
    """Wrong claims always allowed: where retokenizing the text split a word
    otherwise than the sampler did, a few positions compare unlike tokens
    (measured: 3 of 8 in one honest greedy answer of 24)."""


@dataclass(frozen=True)
class Claim:
    """What the checked miner said about its result, besides the text."""

    finish_reason: FinishReason
    completion_tokens: int
    stop_sequences: bool = False
    """The task had stop sequences: a ``stop`` may be one of them, not EOS."""
    token_logprobs: tuple[float, ...] | None = None
    temperature: float = 0.0
    penalized: bool = False
    """The task had frequency or presence penalties."""


@dataclass(frozen=True)
class TeacherVerdict:
    passed: bool
    reason: str
    """Why it failed (or ``ok``), in words for logs and events."""
    outside_share: float = 0.0
    mean_gap: float = 0.0


def judge(scores: VerifyResult, claim: Claim, policy: TeacherPolicy) -> TeacherVerdict:
    """Pass or fail one claimed output from its teacher-forced scores."""
    tokens = scores.tokens
    count = len(tokens)
    outside_count = sum(t.rank >= policy.top_k for t in tokens)
    outside = outside_count / count if count else 0.0
    inside = [t for t in tokens if t.rank < policy.top_k]  # the rest is judged above
    gap = sum(t.top_logprob - t.logprob for t in inside) / len(inside) if inside else 0.0

    def failed(reason: str) -> TeacherVerdict:
        return TeacherVerdict(False, reason, outside, gap)

    too_many = max(policy.outside_allowed, policy.max_outside_share * count)
    if not claim.penalized and outside_count > too_many:
        return failed(f"{outside:.0%} of its tokens are outside the model's top {policy.top_k}")
    sampled_hot = claim.temperature > 1.0
    if not (claim.penalized or sampled_hot) and gap > policy.max_mean_gap:
        return failed(f"its tokens are {gap:.2f} nats less likely than the model's choices")
    if count < policy.min_length_share * claim.completion_tokens:
        return failed(f"it claims {claim.completion_tokens} tokens; its text has {count}")
    ended = claim.finish_reason == "stop" and not claim.stop_sequences
    if ended and scores.eos_rank >= policy.end_max_rank:
        return failed(f"it claims to have ended where the model ranks the end {scores.eos_rank}")
    if claim.token_logprobs is not None:
        recomputed = [t.logprob for t in tokens]
        wrong = logprob_mismatches(claim.token_logprobs, recomputed, policy.logprob_tolerance)
        claimed = len(claim.token_logprobs)
        allowed = max(
            policy.logprob_mismatches_allowed, policy.max_logprob_mismatch_share * claimed
        )
        if wrong > allowed:
            return failed(f"{wrong / claimed:.0%} of its claimed log-probabilities are wrong")
    return TeacherVerdict(True, "ok", outside, gap)


def logprob_mismatches(
    claimed: Sequence[float], recomputed: Sequence[float], tolerance: float
) -> int:
    """How many claimed log-probabilities are off by more than ``tolerance``.

    Position by position when the checker's tokens line up with the claim;
    when retokenizing the text gave another count, only the means can be
    compared, and a mean off by more than ``tolerance`` counts as all wrong.
    """
    if len(claimed) != len(recomputed):
        if not claimed or not recomputed:
            return len(claimed)
        mean_gap = abs(sum(claimed) / len(claimed) - sum(recomputed) / len(recomputed))
        return len(claimed) if mean_gap > tolerance else 0
    return sum(abs(a - b) > tolerance for a, b in zip(claimed, recomputed, strict=True))

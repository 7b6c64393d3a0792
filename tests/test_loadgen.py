"""The pure parts of ``inferswarm bench``: length distributions, the plan, arrivals, summaries."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest

from inferswarm.loadgen.distributions import (
    DistributionSyntaxError,
    Fixed,
    Normal,
    Uniform,
    parse_distribution,
)
from inferswarm.loadgen.driver import model_ids
from inferswarm.loadgen.stats import Distribution, RequestRecord, summarise
from inferswarm.loadgen.target import BenchError, Endpoint, Target, api_root, error_message
from inferswarm.loadgen.workload import (
    WORDS,
    PlannedRequest,
    plan_requests,
    poisson_arrivals,
    within,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("128", Fixed(128)),
        (" fixed:7 ", Fixed(7)),
        ("uniform:64,256", Uniform(64, 256)),
        ("Uniform:5, 5", Uniform(5, 5)),
        ("normal:128,32", Normal(128, 32)),
        ("normal:10.5,0", Normal(10.5, 0)),
    ],
)
def test_distributions_parse(text: str, expected: object) -> None:
    assert parse_distribution(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "not a number"),
        ("lots", "not a number"),
        ("0", "at least 1"),
        ("1.5", "whole numbers"),
        ("uniform:64", "uniform:LOW,HIGH"),
        ("uniform:256,64", "above the high end"),
        ("normal:0,3", "mean must be at least 1"),
        ("normal:10,-1", "sd not negative"),
        ("gamma:2,3", "cannot read"),
        ("fixed:1,2", "cannot read"),
    ],
)
def test_bad_distributions_say_what_is_accepted(text: str, says: str) -> None:
    with pytest.raises(DistributionSyntaxError, match=says):
        parse_distribution(text)


def test_distributions_stay_in_range_and_render_back() -> None:
    rng = random.Random(1)
    uniform = [Uniform(3, 6).sample(rng) for _ in range(2000)]
    assert set(uniform) == {3, 4, 5, 6}
    normal = [Normal(2, 5).sample(rng) for _ in range(2000)]
    assert min(normal) == 1  # clipped, never zero or negative
    wide = [Normal(500, 20).sample(rng) for _ in range(5000)]
    assert statistics.fmean(wide) == pytest.approx(500, abs=2)
    assert statistics.stdev(wide) == pytest.approx(20, rel=0.1)
    for text in ("128", "uniform:64,256", "normal:128,32"):
        assert str(parse_distribution(text)) == text


def test_the_plan_is_reproducible_from_its_seed() -> None:
    def take(seed: int) -> list[PlannedRequest]:
        return list(itertools.islice(plan_requests(seed, Uniform(1, 50), Normal(20, 5)), 50))

    first, again, other = take(7), take(7), take(8)
    assert first == again
    assert first != other
    assert [r.index for r in first] == list(range(50))
    for r in first:
        words = r.prompt.split()
        assert len(words) == r.prompt_words and 1 <= r.prompt_words <= 50
        assert set(words) <= set(WORDS)
        assert r.max_tokens >= 1


def test_poisson_arrivals_start_at_zero_and_have_the_asked_rate() -> None:
    arrivals = list(itertools.islice(poisson_arrivals(20.0, seed=3), 20_000))
    assert arrivals[0] == 0.0
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(gap > 0 for gap in gaps)
    assert statistics.fmean(gaps) == pytest.approx(1 / 20, rel=0.03)
    # exponential gaps: the standard deviation equals the mean
    assert statistics.stdev(gaps) == pytest.approx(1 / 20, rel=0.05)
    assert list(itertools.islice(poisson_arrivals(20.0, seed=3), 100)) == arrivals[:100]
    with pytest.raises(ValueError, match="positive"):
        next(poisson_arrivals(0, seed=1))


def test_arrivals_are_cut_by_duration_and_by_count() -> None:
    by_time = list(within(poisson_arrivals(10, seed=1), duration_s=5, count=None))
    assert by_time and max(by_time) < 5
    assert len(by_time) == pytest.approx(50, abs=20)
    assert len(list(within(poisson_arrivals(10, seed=1), None, 7))) == 7
    assert len(list(within(poisson_arrivals(10, seed=1), 1000, 7))) == 7
    both = list(within(poisson_arrivals(10, seed=1), 0.5, 1000))
    assert both == [t for t in by_time if t < 0.5]


def test_percentiles_interpolate_like_numpy_linear() -> None:
    dist = Distribution.of([4.0, 1.0, 3.0, 2.0])
    assert dist.count == 4 and dist.mean == 2.5
    assert dist.percentiles[50] == 2.5
    assert dist.percentiles[90] == pytest.approx(3.7)
    hundred = Distribution.of([float(v) for v in range(1, 101)])
    assert hundred.percentiles == {
        50: 50.5,
        90: pytest.approx(90.1),
        95: pytest.approx(95.05),
        99: pytest.approx(99.01),
    }
    empty = Distribution.of([])
    assert empty.count == 0 and empty.mean is None and set(empty.percentiles.values()) == {None}
    assert Distribution.of([5.0]).as_dict() == {
        "count": 1,
        "mean": 5.0,
        "p50": 5.0,
        "p90": 5.0,
        "p95": 5.0,
        "p99": 5.0,
    }


def record(index: int, start: float, end: float, **fields: object) -> RequestRecord:
    r = RequestRecord(index, prompt_words=8, max_tokens=10, start_s=start, **fields)  # type: ignore[arg-type]
    r.end_s = end
    return r


def test_summary_of_a_run_with_failures() -> None:
    records = [
        record(0, 0.0, 1.0, ttft_s=0.1, output_tokens=10, prompt_tokens=12, chunk_gaps_s=[0.1] * 9),
        record(1, 0.5, 2.0, ttft_s=0.3, output_tokens=4, prompt_tokens=12, chunk_gaps_s=[0.4] * 3),
        record(2, 1.0, 1.2, error_kind="http_429", error_message="slow down"),
        record(3, 1.5, 1.6, error_kind="http_429", error_message="later"),
        record(4, 1.9, 3.0, error_kind="timeout", error_message="no answer"),
    ]
    summary = summarise(records, client_cpu_s=0.03)
    assert (summary.requests, summary.succeeded, summary.failed) == (5, 2, 3)
    assert summary.elapsed_s == 3.0
    assert summary.request_throughput == pytest.approx(2 / 3)
    assert summary.output_tokens == 14
    assert summary.output_token_throughput == pytest.approx(14 / 3)
    assert summary.prompt_tokens == 24
    assert summary.errors == {"http_429": 2, "timeout": 1}
    assert summary.first_errors == {"http_429": "slow down", "timeout": "no answer"}
    assert summary.e2e.percentiles[50] == pytest.approx(1.25)
    assert summary.ttft.mean == pytest.approx(0.2)
    assert summary.itl.count == 12
    # time per output token: (1.0 - 0.1) / 9 and (1.5 - 0.3) / 3
    assert summary.tpot.mean == pytest.approx((0.1 + 0.4) / 2)
    assert summary.client_cpu_per_request_ms == pytest.approx(6.0)
    assert summary.client_cpu_share == pytest.approx(0.01)
    assert summary.as_dict()["e2e"]["p50"] == pytest.approx(1.25)  # type: ignore[index]


def test_summary_without_server_token_counts_or_requests() -> None:
    counted = summarise([record(0, 0, 1, ttft_s=0.5, output_tokens=1)], 0.0)
    assert counted.prompt_tokens is None
    assert counted.tpot.count == 0  # one token has no time per output token
    nothing = summarise([], 0.0)
    assert nothing.requests == 0 and nothing.request_throughput == 0.0
    assert nothing.client_cpu_per_request_ms is None


@pytest.mark.parametrize(
    "given",
    ["http://h:8000", "http://h:8000/", "http://h:8000/v1", " http://h:8000/v1/ "],
)
def test_base_urls_name_the_same_api_root(given: str) -> None:
    assert api_root(given) == "http://h:8000/v1"


def test_a_base_url_without_a_scheme_is_refused() -> None:
    with pytest.raises(BenchError, match="needs a scheme"):
        api_root("localhost:8000")


def test_request_bodies_stream_and_ask_for_usage() -> None:
    planned = PlannedRequest(0, "a b c", 3, 9)
    chat = Target("http://h/v1", "m", Endpoint.CHAT, api_key="k")
    assert chat.url() == "http://h/v1/chat/completions"
    assert chat.headers() == {"Authorization": "Bearer k"}
    assert chat.body(planned) == {
        "model": "m",
        "max_tokens": 9,
        "stream": True,
        "temperature": 0,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "a b c"}],
    }
    plain = Target("http://h/v1", "m", Endpoint.COMPLETIONS, ask_usage=False)
    assert plain.url() == "http://h/v1/completions"
    assert plain.headers() == {}
    body = plain.body(planned)
    assert body["prompt"] == "a b c" and "stream_options" not in body


def testerror_messages_come_from_the_openai_envelope() -> None:
    assert error_message('{"error": {"message": "bad key", "type": "x"}}') == "bad key"
    assert error_message('{"detail": "Not Found"}') == "Not Found"
    assert error_message("<html>oops</html>") == "<html>oops</html>"


def test_model_lists_are_read_or_refused() -> None:
    assert model_ids('{"object": "list", "data": [{"id": "a"}, {"id": "b"}]}') == ["a", "b"]
    assert model_ids("<html>welcome</html>") is None
    assert model_ids('{"models": []}') is None
    assert model_ids('{"data": [{"name": "a"}]}') is None

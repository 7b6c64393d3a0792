"""The per-second ring buffer behind /v1/network and the miner's tokens/s."""

from __future__ import annotations

import pytest

from inferswarm.router.events import EventKind, EventLog
from inferswarm.telemetry.timeline import Timeline, percentile


def test_percentile_is_nearest_rank() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 0.5) == 3.0
    assert percentile(values, 0.95) == 5.0
    assert percentile(values, 0.0) == 1.0
    assert percentile([], 0.5) is None


def test_counts_add_up_within_a_second_and_empty_seconds_are_filled() -> None:
    timeline = Timeline(seconds=10)
    timeline.count(100.2, "tokens", 5)
    timeline.count(100.9, "tokens", 3)
    timeline.count(102.5, "tokens", 4)
    points = timeline.series(102.7, 3, ["tokens"], [], [])
    assert [(p["t"], p["tokens"]) for p in points] == [(100, 8), (101, 0), (102, 4)]
    assert timeline.rate(102.7, "tokens", 3) == pytest.approx(4.0)


def test_old_seconds_fall_out_of_the_ring() -> None:
    timeline = Timeline(seconds=3)
    for t in range(10):
        timeline.count(t, "requests")
    assert timeline.rate(9, "requests", 100) == 1.0  # only the last 3 seconds remain
    assert [p["t"] for p in timeline.series(9, 100, ["requests"], [], [])] == [7, 8, 9]
    assert timeline.series(20, 3, ["requests"], [], [])[-1]["requests"] == 0


def test_latency_percentiles_per_second_and_over_the_window() -> None:
    timeline = Timeline()
    for value in (0.1, 0.2, 0.3, 0.4):
        timeline.observe(50.0, "ttft", value)
    timeline.observe(51.0, "ttft", 1.0)
    points = timeline.series(51.5, 2, [], ["ttft"], [])
    assert points[0]["ttft_p50"] == 0.2 and points[0]["ttft_p95"] == 0.4
    assert points[1]["ttft_p50"] == 1.0
    summary = timeline.summary(51.5, 60, ["tokens"], ["ttft", "e2e"])
    assert summary["ttft_p95"] == 1.0
    assert summary["e2e_p50"] is None
    assert summary["tokens_per_s"] == 0


def test_samples_per_second_are_capped() -> None:
    timeline = Timeline(max_samples=3)
    for value in range(10):
        timeline.observe(7.0, "e2e", value)
    assert timeline.window(7.0, 1)[0].samples["e2e"] == [0, 1, 2]


def test_gauges_keep_the_last_value_and_are_none_when_not_sampled() -> None:
    timeline = Timeline()
    timeline.gauge(10.1, "queue_depth", 4)
    timeline.gauge(10.8, "queue_depth", 2)
    points = timeline.series(11.0, 2, [], [], ["queue_depth"])
    assert [p["queue_depth"] for p in points] == [2, None]


def test_a_clock_that_steps_back_adds_to_the_newest_second() -> None:
    timeline = Timeline()
    timeline.count(10.0, "requests")
    timeline.count(9.0, "requests")
    assert timeline.window(10.0, 1)[0].counts["requests"] == 2


def test_event_log_keeps_the_newest_and_totals_everything() -> None:
    clock = iter(range(100))
    log = EventLog(lambda: float(next(clock)), keep=2)
    log.record(EventKind.JOIN, "a", "m1", "joined")
    log.record(EventKind.BAN, "a", "m1", "banned")
    log.record(EventKind.LEAVE, "a", "m1", "left")
    assert [e.kind for e in log.recent()] == [EventKind.LEAVE, EventKind.BAN]
    assert [e.seq for e in log.recent(after_seq=2)] == [3]
    assert log.totals[EventKind.JOIN] == 1 and log.last_seq == 3

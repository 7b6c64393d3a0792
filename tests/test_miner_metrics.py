"""The miner's own figures: tokens/s over a window, outcomes, host utilisation."""

from __future__ import annotations

import sys
import types

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from inferswarm.miner.metrics import SPEED_WINDOW_S, LoadSource, MinerStats
from inferswarm.miner.metrics_server import create_metrics_app
from inferswarm.miner.usage import HostMonitor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_tokens_per_second_counts_whole_seconds_of_the_window() -> None:
    clock = Clock()
    stats = MinerStats(clock)
    for _ in range(SPEED_WINDOW_S):
        stats.generated("m", 30)
        clock.now += 1
    assert stats.tokens_per_s() == pytest.approx(30.0)
    clock.now += SPEED_WINDOW_S  # a quiet window
    assert stats.tokens_per_s() == 0


def test_host_monitor_reuses_a_sample_taken_moments_ago() -> None:
    clock = Clock()
    monitor = HostMonitor(clock)
    first = monitor.sample()
    assert monitor.sample() is first
    clock.now += 1
    fresh = monitor.sample()
    assert 0 < fresh.ram_percent <= 100 and fresh.ram_used_bytes > 0
    assert fresh.gpus == ()  # no NVML here


def test_exposition_has_tasks_slots_and_host_figures() -> None:
    stats = MinerStats()
    stats.generated("m", 7)
    stats.finished("m", "ok", prompt_tokens=11)
    stats.finished("m", "cancelled")
    create_metrics_app(stats, LoadSource(4, lambda: 3, lambda: 1, lambda: True), HostMonitor())
    samples = {
        s.name + str(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(generate_latest(stats.registry).decode())
        for s in family.samples
    }
    assert samples["inferswarm_engine_tasks_total[('model', 'm'), ('outcome', 'ok')]"] == 1
    assert samples["inferswarm_engine_tasks_total[('model', 'm'), ('outcome', 'cancelled')]"] == 1
    assert samples["inferswarm_engine_prompt_tokens_total[('model', 'm')]"] == 11
    assert samples["inferswarm_engine_generation_tokens_total[('model', 'm')]"] == 7
    assert samples["inferswarm_engine_slots[]"] == 4
    assert samples["inferswarm_engine_slots_busy[]"] == 3
    assert samples["inferswarm_engine_tasks_queued[]"] == 1
    assert samples["inferswarm_engine_router_connected[]"] == 1
    assert "inferswarm_host_cpu_percent[]" in samples


class FakeNvml(types.ModuleType):
    """The part of NVML's Python binding (``pynvml``) the monitor calls: two GPUs."""

    def __init__(self) -> None:
        super().__init__("pynvml")
        self.broken = False

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        if self.broken:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(used=(handle + 1) * 2**30, total=80 * 2**30)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(gpu=40 + handle * 50, memory=10)


def test_gpus_are_read_through_nvml_when_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    clock = Clock()
    monitor = HostMonitor(clock)
    gpus = monitor.sample().gpus
    assert [(g.index, g.utilization_percent, g.memory_used_bytes) for g in gpus] == [
        (0, 40.0, 2**30),
        (1, 90.0, 2 * 2**30),
    ]
    assert all(g.memory_total_bytes == 80 * 2**30 for g in gpus)
    nvml.broken = True  # a driver that goes away: no GPUs reported, and no crash
    clock.now += 1
    assert monitor.sample().gpus == ()

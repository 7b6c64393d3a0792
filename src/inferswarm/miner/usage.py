"""How busy the miner's machine is: CPU and RAM from psutil, GPUs from NVML
when ``nvidia-ml-py`` is installed and a driver answers (optional: a CPU
miner needs neither)."""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import psutil

from inferswarm.protocol import GpuUsage

log = logging.getLogger(__name__)

MIN_SAMPLE_INTERVAL_S = 0.5
"""psutil's CPU figure is the average since the previous call: sampling more
often than this gives noise, so callers in between get the last sample."""


@dataclass(frozen=True)
class HostUsage:
    cpu_percent: float
    ram_percent: float
    ram_used_bytes: int
    gpus: tuple[GpuUsage, ...] = ()


class HostMonitor:
    """Samples the machine's utilisation; heartbeats and ``/metrics`` share it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._nvml = _load_nvml()
        self._latest: HostUsage | None = None
        self._sampled_at = 0.0
        psutil.cpu_percent(interval=None)  # the first call only starts the measurement

    def sample(self) -> HostUsage:
        now = self._clock()
        if self._latest is None or now - self._sampled_at >= MIN_SAMPLE_INTERVAL_S:
            memory = psutil.virtual_memory()
            self._latest = HostUsage(
                cpu_percent=psutil.cpu_percent(interval=None),
                ram_percent=memory.percent,
                ram_used_bytes=memory.total - memory.available,
                gpus=self._gpus(),
            )
            self._sampled_at = now
        return self._latest

    def _gpus(self) -> tuple[GpuUsage, ...]:
        if self._nvml is None:
            return ()
        nvml = self._nvml
        try:
            cards = []
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory: Any = nvml.nvmlDeviceGetMemoryInfo(handle)
                rates: Any = nvml.nvmlDeviceGetUtilizationRates(handle)
                cards.append(
                    GpuUsage(
                        index=index,
                        utilization_percent=float(rates.gpu),
                        memory_used_bytes=int(memory.used),
                        memory_total_bytes=int(memory.total),
                    )
                )
            return tuple(cards)
        except Exception as exc:  # a driver that went away: stop asking
            log.warning("NVML stopped answering (%s); GPU utilisation is no longer reported", exc)
            self._nvml = None
            return ()


def _load_nvml() -> ModuleType | None:
    """NVML through ``nvidia-ml-py`` (module ``pynvml``) when it and a driver exist."""
    try:
        nvml = importlib.import_module("pynvml")
        nvml.nvmlInit()
    except Exception:
        return None
    return nvml

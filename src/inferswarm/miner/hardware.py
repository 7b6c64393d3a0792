"""Probing what the miner runs on: CPU, memory, GPUs."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import psutil

from inferswarm.protocol import GpuInfo, HardwareProfile


def probe_hardware() -> HardwareProfile:
    return HardwareProfile(
        cpu_model=_cpu_model(),
        cpu_cores=psutil.cpu_count(logical=True) or 1,
        ram_bytes=psutil.virtual_memory().total,
        available_ram_bytes=psutil.virtual_memory().available,
        gpus=tuple(_nvidia_gpus()),
        platform=f"{platform.system()} {platform.machine()}",
    )


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Model") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _nvidia_gpus() -> list[GpuInfo]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, _, mib = line.rpartition(",")
        if name and mib.strip().isdigit():
            gpus.append(GpuInfo(name=name.strip(), memory_bytes=int(mib) * 2**20))
    return gpus

"""Which model variants a miner loads: a pure function of its hardware.

``plan_placement`` takes the hardware snapshot, the catalog's variants and
the operator's limits, and returns what to load: per family, the most
precise variant that fits the memory left after a safety margin (Cortensor
keeps 20 %) and still meets a minimum generation speed. With GPUs, a
variant is offloaded to them as far as free VRAM allows: all layers when it
fits, otherwise the share of layers that does. No I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from inferswarm.miner.catalog import CatalogEntry
from inferswarm.protocol import Capability, HardwareProfile, precision_bits

SAFETY_MARGIN = 0.20
"""Share of memory (RAM and VRAM) kept free for the OS, other work and spikes."""


@dataclass(frozen=True)
class SpeedReference:
    """One measured speed: generation on CPU is bound by memory bandwidth, so a
    variant's speed is estimated as this one scaled by the weights' size."""

    file_bytes: int
    generation_tokens_per_s: float

    def estimate(self, file_bytes: int) -> float:
        return self.generation_tokens_per_s * self.file_bytes / max(1, file_bytes)


def speed_reference(file_bytes: int, capability: Capability | None) -> SpeedReference | None:
    """The reference from one measured model: its file size and generation speed."""
    if capability is None or file_bytes <= 0 or capability.generation_tokens_per_s <= 0:
        return None
    return SpeedReference(file_bytes, capability.generation_tokens_per_s)


@dataclass(frozen=True)
class PlacementLimits:
    context_length: int = 2048
    slots: int = 1
    memory_limit_bytes: int | None = None
    """At most this much memory for models (default: the RAM available now)."""
    min_tokens_per_s: float = 0.0
    margin: float = SAFETY_MARGIN


@dataclass(frozen=True)
class PlacedModel:
    entry: CatalogEntry
    memory_bytes: int
    gpu_layers: int
    estimated_tokens_per_s: float | None

    def load_plan(self) -> LoadPlan:
        vram = _gpu_share(self)
        return LoadPlan(self.gpu_layers, self.memory_bytes - vram, vram)


@dataclass(frozen=True)
class Placement:
    """What to load, and for every variant left out, why."""

    models: tuple[PlacedModel, ...]
    ram_budget_bytes: int
    vram_budget_bytes: int
    skipped: tuple[tuple[str, str], ...]


def plan_placement(
    hardware: HardwareProfile,
    candidates: Sequence[CatalogEntry],
    limits: PlacementLimits,
    reference: SpeedReference | None = None,
) -> Placement:
    """Per family (in the order first seen), the most precise variant that fits
    what memory is left and meets ``limits.min_tokens_per_s``; if none is
    fast enough, the fastest that fits. With GPUs, variants that fit wholly
    in VRAM come first."""
    ram_left = memory_budget(hardware, limits)
    vram_left = int(sum(gpu.memory_bytes for gpu in hardware.gpus) * (1 - limits.margin))
    budgets = (ram_left, vram_left)
    placed: list[PlacedModel] = []
    skipped: list[tuple[str, str]] = []
    for family in dict.fromkeys(entry.family for entry in candidates):
        variants = sorted(
            (e for e in candidates if e.family == family), key=lambda e: -_bits(e.variant)
        )
        choice = _choose_variant(variants, limits, ram_left, vram_left, reference)
        for entry, reason in choice.rejected:
            skipped.append((entry.name, reason))
        if choice.model is not None:
            placed.append(choice.model)
            on_gpu = _gpu_share(choice.model)
            vram_left -= on_gpu
            ram_left -= choice.model.memory_bytes - on_gpu
    return Placement(tuple(placed), budgets[0], budgets[1], tuple(skipped))


@dataclass(frozen=True)
class _Choice:
    model: PlacedModel | None
    rejected: tuple[tuple[CatalogEntry, str], ...]


def _choose_variant(
    variants: Sequence[CatalogEntry],
    limits: PlacementLimits,
    ram_left: int,
    vram_left: int,
    reference: SpeedReference | None,
) -> _Choice:
    fitting: list[PlacedModel] = []
    rejected: list[tuple[CatalogEntry, str]] = []
    for entry in variants:
        need = entry.memory_bytes(limits.context_length, limits.slots)
        layers = _gpu_layers(entry.layers, need, vram_left)
        in_ram = need - _share(need, layers, entry.layers)
        if in_ram > ram_left:
            rejected.append((entry, f"needs {_mib(in_ram)} of RAM, {_mib(max(0, ram_left))} left"))
            continue
        speed = _speed(entry, layers, reference)
        fitting.append(PlacedModel(entry, need, layers, speed))
    # A variant wholly in VRAM beats a more precise one split with the CPU,
    # which runs at the CPU's pace.
    on_gpu = [m for m in fitting if m.gpu_layers and m.gpu_layers == m.entry.layers]
    if on_gpu:
        fitting = on_gpu + [m for m in fitting if m not in on_gpu]
    for model in fitting:  # most precise first
        if model.estimated_tokens_per_s is None or (
            model.estimated_tokens_per_s >= limits.min_tokens_per_s
        ):
            others = [(m.entry, _why_not(m, model, fitting)) for m in fitting if m is not model]
            return _Choice(model, (*rejected, *others))
    if not fitting:
        return _Choice(None, tuple(rejected))
    fastest = max(fitting, key=lambda m: m.estimated_tokens_per_s or 0.0)
    slower = [(m.entry, "below the minimum speed") for m in fitting if m is not fastest]
    return _Choice(fastest, (*rejected, *slower))


def memory_budget(hardware: HardwareProfile, limits: PlacementLimits) -> int:
    """RAM the miner's models may take together: the memory limit (or the RAM
    available) less the safety margin."""
    return int(_ram_for_models(hardware, limits) * (1 - limits.margin))


@dataclass(frozen=True)
class LoadPlan:
    """Where one served or loading variant's memory is: its layers on the GPUs
    and the bytes it takes of RAM and of VRAM."""

    gpu_layers: int
    ram_bytes: int
    vram_bytes: int = 0


def plan_load(
    name: str, need_bytes: int, layers: int, ram_free: int, vram_free: int = 0
) -> LoadPlan | str:
    """Where a variant loaded on request goes: as many of its ``layers`` on the
    GPUs as their free VRAM holds, the rest in RAM. A string says why it does
    not fit."""
    gpu_layers = _gpu_layers(layers, need_bytes, vram_free)
    vram = _share(need_bytes, gpu_layers, layers)
    ram = need_bytes - vram
    if ram <= ram_free:
        return LoadPlan(gpu_layers, ram, vram)
    beside = f" beside {_mib(vram)} on the GPU" if vram else ""
    return (
        f"{name} needs ~{_mib(ram)} of RAM{beside} and only {_mib(max(0, ram_free))} of this "
        "miner's model memory is free; unload a model first, or restart the miner with a "
        "larger --memory-limit"
    )


def _why_not(model: PlacedModel, chosen: PlacedModel, fitting: list[PlacedModel]) -> str:
    if fitting.index(model) > fitting.index(chosen):
        return "a more precise variant fits"
    return f"below the minimum speed (~{model.estimated_tokens_per_s or 0:.1f} tokens/s estimated)"


def _ram_for_models(hardware: HardwareProfile, limits: PlacementLimits) -> int:
    available = hardware.available_ram_bytes or hardware.ram_bytes
    if limits.memory_limit_bytes is None:
        return available
    return min(limits.memory_limit_bytes, available)


def _gpu_layers(layers: int, need: int, vram_left: int) -> int:
    """All layers when the variant fits the free VRAM, else the share that does."""
    if vram_left <= 0 or layers <= 0:
        return 0
    if need <= vram_left:
        return layers
    return layers * vram_left // need


def _share(need: int, gpu_layers: int, layers: int) -> int:
    return need * gpu_layers // layers if layers else 0


def _gpu_share(model: PlacedModel) -> int:
    return _share(model.memory_bytes, model.gpu_layers, model.entry.layers)


def _speed(entry: CatalogEntry, gpu_layers: int, reference: SpeedReference | None) -> float | None:
    """Estimated from the CPU reference; unknown (None) once layers go to a GPU."""
    if reference is None or gpu_layers:
        return None
    return reference.estimate(entry.file_bytes)


def _bits(variant: str) -> float:
    return precision_bits(variant) or 0.0


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(text: str) -> int:
    """``300MB`` -> 300_000_000, ``2GiB`` -> 2 * 2**30 (decimal unless ``i``)."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"cannot read {text!r} as a size; write e.g. 300MB, 2GiB or 8G")
    number, unit = float(match[1]), match[2].lower()
    binary = "i" in unit and unit[0] in "kmgt"
    scale = 2 ** (10 * "kmgt".index(unit[0]) + 10) if binary else _UNITS[unit.strip("ib")]
    return int(number * scale)

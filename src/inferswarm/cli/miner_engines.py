"""What a miner serves at start and what it may load later, from its options:
the engine (fake, upstream, one llama.cpp file, or the variants placement
chooses) and the ``LoadOption`` for every variant the router may ask it to load."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from inferswarm.miner.engines.base import Engine
from inferswarm.miner.engines.multi import MultiModelEngine
from inferswarm.miner.hardware import probe_hardware
from inferswarm.miner.loading import LoadOption, MemoryBudget
from inferswarm.miner.models import ModelNotFound
from inferswarm.miner.placement import (
    LoadPlan,
    PlacementLimits,
    SpeedReference,
    memory_budget,
    parse_size,
    speed_reference,
)
from inferswarm.miner.probe import CapabilityCache, default_cache_dir, establish_capability
from inferswarm.protocol import Capability, ModelName

if TYPE_CHECKING:
    from inferswarm.miner.catalog import CatalogEntry
    from inferswarm.miner.engines.llamacpp import LlamaConfig

log = logging.getLogger("inferswarm.miner")


@dataclass(frozen=True)
class EngineOptions:
    model: Path | None
    model_name: str | None
    slots: int | None
    ctx: int
    threads: int | None
    fake_speed: float
    fake_latency: float
    fake_failure_rate: float
    upstream: str | None
    upstream_key: str | None
    fake_prompt_speed: float = 0.0
    fake_claim_speed: float | None = None
    fake_output_tokens: int = 24
    fake_stall_after: int | None = None
    fake_echo_tag: str | None = None
    models: str | None = None
    model_dirs: tuple[Path, ...] = ()
    memory_limit: int | None = None
    cache_dir: Path | None = None
    min_speed: float = 0.0
    fake_loadable: tuple[tuple[str, int], ...] = ()
    fake_load_s: float = 0.0


@dataclass(frozen=True)
class MinerModels:
    """The engine serving at start, and what the router may ask to load later."""

    engine: Engine
    options: tuple[LoadOption, ...] = ()
    budget: MemoryBudget = dataclasses.field(default_factory=lambda: MemoryBudget(0))
    """Memory the models may use together (the limit less the safety margin)."""
    placed: dict[ModelName, LoadPlan] = dataclasses.field(default_factory=dict)
    """Where the models served at start sit, when some are on a GPU."""


class EngineKind(StrEnum):
    LLAMACPP = "llamacpp"
    LLAMA_SEQUENTIAL = "llama-sequential"
    FAKE = "fake"
    OPENAI = "openai"


async def build_engine(kind: EngineKind, o: EngineOptions) -> MinerModels:
    if kind is EngineKind.FAKE:
        return _fake_models(o)
    if kind is EngineKind.OPENAI:
        from inferswarm.miner.engines.upstream import UpstreamEngine

        if not o.upstream:
            raise ValueError("--engine openai needs --upstream URL (an OpenAI-compatible server)")
        engine = await UpstreamEngine.discover(
            o.upstream, context_length=o.ctx, slots=o.slots or 1, api_key=o.upstream_key
        )
        return MinerModels(engine)
    return await asyncio.to_thread(_llama_models, o, batched=kind is EngineKind.LLAMACPP)


def parse_fake_loadable(spec: str) -> tuple[str, int]:
    """``fake-b=200MB`` -> ("fake-b", 200_000_000)."""
    name, _, size = spec.partition("=")
    if not name.strip():
        raise ValueError(f"{spec!r} names no model; write NAME or NAME=SIZE, e.g. fake-b=200MB")
    return name.strip(), parse_size(size) if size else 0


def _fake_models(o: EngineOptions) -> MinerModels:
    from inferswarm.miner.engines.fake import (
        FAKE_MODEL,
        FakeEngine,
        FakeEngineConfig,
        fake_load_option,
    )

    config = FakeEngineConfig(
        model=o.model_name or FAKE_MODEL,
        tokens_per_s=o.fake_speed,
        prompt_tokens_per_s=o.fake_prompt_speed,
        claimed_tokens_per_s=o.fake_claim_speed,
        natural_length=o.fake_output_tokens,
        stall_after=o.fake_stall_after,
        latency_s=o.fake_latency,
        failure_rate=o.fake_failure_rate,
        echo_tag=o.fake_echo_tag,
        context_length=o.ctx,
        slots=o.slots or 1,
    )
    engine = FakeEngine(config)
    if not o.fake_loadable:
        return MinerModels(engine)
    others = (
        fake_load_option(dataclasses.replace(config, model=name, memory_bytes=size), o.fake_load_s)
        for name, size in o.fake_loadable
    )
    options = (fake_load_option(config), *others)  # the served one too: it may come back
    return MinerModels(MultiModelEngine([engine]), options, _ram_budget(o))


def _llama_models(o: EngineOptions, *, batched: bool) -> MinerModels:
    from inferswarm.miner.catalog import Catalog, CatalogError, find_gguf_files
    from inferswarm.miner.engines.llamacpp import LlamaConfig
    from inferswarm.miner.models import default_model_path

    if o.models is not None:
        return _placed_models(o, batched=batched)
    try:
        path = o.model or default_model_path()
    except ModelNotFound as exc:
        raise ValueError(str(exc)) from None
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist; pass --model PATH.gguf")
    assert o.cache_dir is not None
    catalog = Catalog(o.cache_dir / "catalog.json")
    slots = o.slots or (0 if batched else 1)
    try:
        entry = catalog.entry(path)
    except CatalogError as exc:  # llama.cpp may still read what the gguf package cannot
        log.warning("%s; serving it without catalog fields (family, memory)", exc)
        config = LlamaConfig(path, o.ctx, slots, o.threads, model_name=o.model_name)
        return MinerModels(_llama_engine(config, batched=batched))
    engine = _llama_engine(
        _llama_config(o, entry, slots=slots, model_name=o.model_name), batched=batched
    )
    if not o.model_dirs:
        return MinerModels(engine)
    # Files in --model-dir (and this one, to load again after an unload) may be loaded on request.
    others = catalog.entries(p for p in find_gguf_files(o.model_dirs) if p != entry.path)
    options = (
        _llama_option(o, entry, batched=batched, model_name=o.model_name),
        *(_llama_option(o, e, batched=batched) for e in _unique_names(others)),
    )
    return MinerModels(MultiModelEngine([engine]), options, _ram_budget(o))


def _placed_models(o: EngineOptions, *, batched: bool) -> MinerModels:
    """Load what ``plan_placement`` chooses among ``--models`` for this machine;
    the other candidates may be loaded on request."""
    from inferswarm.miner.catalog import Catalog, find_gguf_files
    from inferswarm.miner.models import shipped_model_paths
    from inferswarm.miner.placement import plan_placement

    assert o.models is not None and o.cache_dir is not None
    models_dir = o.cache_dir / "models"
    catalog = Catalog(o.cache_dir / "catalog.json")
    if o.models.strip().lower() == "auto":
        paths = shipped_model_paths(models_dir) + find_gguf_files((models_dir, *o.model_dirs))
        extra: list[Path] = []
    else:  # a given list is placed; --model-dir files are only offered for loading
        paths = [Path(p.strip()) for p in o.models.split(",") if p.strip()]
        extra = find_gguf_files(o.model_dirs)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"model file(s) not found: {', '.join(missing)}")
    entries = catalog.entries(dict.fromkeys(p.resolve() for p in paths))
    # Placement sizes the KV cache, so slots are fixed here (default 1), not chosen later.
    slots = o.slots or 1
    limits = PlacementLimits(
        context_length=o.ctx,
        slots=slots,
        memory_limit_bytes=o.memory_limit,
        min_tokens_per_s=o.min_speed,
    )
    hardware = probe_hardware()
    placement = plan_placement(hardware, entries, limits, _speed_reference(o, entries))
    for name, why in placement.skipped:
        log.info("not loading %s: %s", name, why)
    if not placement.models:
        raise ValueError(
            f"no model fits {placement.ram_budget_bytes / 2**20:.0f} MiB (the memory limit less "
            "20 %); raise --memory-limit, lower --ctx or --slots, or quantise a smaller variant "
            "with 'inferswarm quantize'"
        )
    engines: list[Engine] = []
    for model in placement.models:
        log.info(
            "loading %s (~%.0f MiB, %d layers on GPU)",
            model.entry.name,
            model.memory_bytes / 2**20,
            model.gpu_layers,
        )
        config = _llama_config(o, model.entry, slots=slots, gpu_layers=model.gpu_layers)
        engines.append(_llama_engine(config, batched=batched))
    on_disk = entries + catalog.entries(p for p in extra if p not in {e.path for e in entries})
    options = tuple(_llama_option(o, e, batched=batched) for e in _unique_names(on_disk))
    budget = MemoryBudget(placement.ram_budget_bytes, placement.vram_budget_bytes)
    placed = {m.entry.name: m.load_plan() for m in placement.models}
    return MinerModels(MultiModelEngine(engines), options, budget, placed)


def _ram_budget(o: EngineOptions) -> MemoryBudget:
    """RAM only: a miner that did not place its models keeps loads off its GPUs."""
    return MemoryBudget(
        memory_budget(probe_hardware(), PlacementLimits(memory_limit_bytes=o.memory_limit))
    )


def _llama_config(
    o: EngineOptions,
    entry: CatalogEntry,
    *,
    slots: int,
    gpu_layers: int = 0,
    model_name: str | None = None,
) -> LlamaConfig:
    from inferswarm.miner.engines.llamacpp import LlamaConfig

    return LlamaConfig(
        model_path=entry.path,
        context_length=o.ctx,
        slots=slots,
        threads=o.threads,
        model_name=model_name,
        gpu_layers=gpu_layers,
        entry=entry,
    )


def _llama_engine(config: LlamaConfig, *, batched: bool) -> Engine:
    from inferswarm.miner.engines.llamacpp import LlamaCppEngine
    from inferswarm.miner.engines.llamacpp_batched import BatchedLlamaEngine

    return BatchedLlamaEngine(config) if batched else LlamaCppEngine(config)


def _llama_option(
    o: EngineOptions, entry: CatalogEntry, *, batched: bool, model_name: str | None = None
) -> LoadOption:
    """A file the router may ask the miner to load (on the CPU, ``--slots`` or 1 slot)."""
    from inferswarm.miner.engines.llamacpp import catalog_offer

    config = _llama_config(o, entry, slots=o.slots or 1, model_name=model_name)

    def build(gpu_layers: int) -> Engine:
        return _llama_engine(dataclasses.replace(config, gpu_layers=gpu_layers), batched=batched)

    return LoadOption(catalog_offer(config), build, entry.layers)


def _unique_names(entries: list[CatalogEntry]) -> list[CatalogEntry]:
    """One file per variant name (the first found): the router knows variants by name."""
    first: dict[str, CatalogEntry] = {}
    for entry in entries:
        first.setdefault(entry.name, entry)
    return list(first.values())


def _speed_reference(o: EngineOptions, entries: list[CatalogEntry]) -> SpeedReference | None:
    """The measured speed placement scales by file size: a cached benchmark of the
    smallest candidate, measured now when there is none (only with --min-speed)."""
    if not o.min_speed or not entries:
        return None
    smallest = min(entries, key=lambda e: e.file_bytes)
    cache = CapabilityCache((o.cache_dir or default_cache_dir()) / "capability.json")

    async def measure() -> Capability | None:
        engine = _llama_engine(_llama_config(o, smallest, slots=1), batched=True)
        try:
            return await establish_capability(engine, cache, rebenchmark=False)
        finally:
            await engine.close()

    reference = speed_reference(smallest.file_bytes, asyncio.run(measure()))
    if reference is not None:
        log.info(
            "--min-speed %g: speeds estimated from %s at %.1f tokens/s, scaled by file size",
            o.min_speed,
            smallest.name,
            reference.generation_tokens_per_s,
        )
    return reference

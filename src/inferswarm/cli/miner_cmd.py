"""``inferswarm miner``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import random
import signal
import socket
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import uvicorn

from inferswarm.cli.common import setup_logging
from inferswarm.miner.agent import AgentSettings, MinerAgent, MinerRefused
from inferswarm.miner.catalog import CatalogError
from inferswarm.miner.engines.base import Engine, TaskRejected
from inferswarm.miner.engines.multi import MultiModelEngine
from inferswarm.miner.faults import Fault, FaultyEngine
from inferswarm.miner.hardware import probe_hardware
from inferswarm.miner.identity import load_or_create_identity
from inferswarm.miner.loading import LoadOption, ModelLoader
from inferswarm.miner.models import ModelNotFound
from inferswarm.miner.placement import (
    PlacementLimits,
    SpeedReference,
    memory_budget,
    parse_size,
    speed_reference,
)
from inferswarm.miner.probe import CapabilityCache, default_cache_dir, establish_capability
from inferswarm.protocol import Capability

if TYPE_CHECKING:
    from inferswarm.miner.catalog import CatalogEntry
    from inferswarm.miner.engines.llamacpp import LlamaConfig

log = logging.getLogger("inferswarm.miner")

DRAIN_TIMEOUT_S = 30.0
"""On SIGTERM, how long running tasks may take to finish before the miner exits."""


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
    budget_bytes: int = 0
    """Memory the models may use together (the limit less the safety margin)."""


class EngineKind(StrEnum):
    LLAMACPP = "llamacpp"
    LLAMA_SEQUENTIAL = "llama-sequential"
    FAKE = "fake"
    OPENAI = "openai"


def miner(
    router: Annotated[
        str,
        typer.Option(
            help="Router to serve, e.g. http://10.0.0.5:8000.", envvar="INFERSWARM_ROUTER"
        ),
    ] = "http://127.0.0.1:8000",
    engine: Annotated[
        EngineKind,
        typer.Option(
            help="llamacpp runs a GGUF model with continuous batching; llama-sequential runs it "
            "one context per slot (the older engine); openai fronts --upstream; fake is for tests only.",
            envvar="INFERSWARM_ENGINE",
        ),
    ] = EngineKind.LLAMACPP,
    model: Annotated[
        Path | None,
        typer.Option(
            help="GGUF file to serve (default: the shipped SmolLM2-135M-Instruct Q4_1).",
            envvar="INFERSWARM_MODEL",
        ),
    ] = None,
    model_name: Annotated[
        str | None,
        typer.Option(
            help="Name to serve the model under (default: from the file name, e.g. smollm2-135m-instruct:q4_1)."
        ),
    ] = None,
    models: Annotated[
        str | None,
        typer.Option(
            help="Serve several variants: 'auto' picks, per model family, the most precise "
            "variant that fits memory (shipped models, the quantize cache and --model-dir), "
            "or a comma-separated list of GGUF files to place the same way.",
            envvar="INFERSWARM_MODELS",
        ),
    ] = None,
    model_dir: Annotated[
        list[Path] | None,
        typer.Option(
            help="Look for GGUF files here (repeatable): with --models auto they are candidates "
            "to place; the variants not loaded are offered to the router, which may ask the "
            "miner to load them (inferswarm models load).",
        ),
    ] = None,
    min_speed: Annotated[
        float,
        typer.Option(
            min=0,
            metavar="TOKENS_PER_S",
            help="With --models auto: per family, the most precise variant that still "
            "generates this many tokens/s (estimated from the measured speed of a loaded "
            "model, scaled by file size); if none does, the fastest that fits.",
            envvar="INFERSWARM_MIN_SPEED",
        ),
    ] = 0.0,
    memory_limit: Annotated[
        str | None,
        typer.Option(
            help="Memory the models may use, e.g. 300MB or 2GiB (default: available RAM); "
            "20 % of it is kept free.",
            envvar="INFERSWARM_MEMORY_LIMIT",
        ),
    ] = None,
    slots: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Tasks run at once (default: llamacpp picks from the model's KV size and free "
            "memory, at most 8; the other engines run 1).",
            envvar="INFERSWARM_SLOTS",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="Human-readable miner name (default: host name).", envvar="INFERSWARM_MINER_NAME"
        ),
    ] = None,
    ctx: Annotated[int, typer.Option(min=64, help="Context window in tokens (llamacpp).")] = 2048,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="CPU threads for llama.cpp (default: all cores; llama-sequential: cores / slots).",
        ),
    ] = None,
    fake_speed: Annotated[
        float, typer.Option(min=0, help="Fake engine tokens/s (0: instant).")
    ] = 0.0,
    fake_latency: Annotated[
        float, typer.Option(min=0, help="Fake engine seconds before the first token.")
    ] = 0.0,
    fake_failure_rate: Annotated[
        float, typer.Option(min=0, max=1, help="Share of fake tasks that fail.")
    ] = 0.0,
    upstream: Annotated[
        str | None,
        typer.Option(
            help="OpenAI-compatible base URL for --engine openai, e.g. http://127.0.0.1:11434."
        ),
    ] = None,
    upstream_key: Annotated[
        str | None, typer.Option(help="API key for --upstream.", envvar="INFERSWARM_UPSTREAM_KEY")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Keeps the miner's ed25519 key (its identity) across restarts.",
            envvar="INFERSWARM_MINER_DATA_DIR",
        ),
    ] = None,
    rebenchmark: Annotated[
        bool,
        typer.Option("--rebenchmark", help="Measure speed again even if a cached result exists."),
    ] = False,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where benchmark results are cached (default: ~/.cache/inferswarm).",
            envvar="INFERSWARM_CACHE_DIR",
        ),
    ] = None,
    fake_stall_after: Annotated[
        int | None,
        typer.Option(
            min=0, help="Fake engine hangs after this many tokens (tests stall detection)."
        ),
    ] = None,
    fake_output_tokens: Annotated[
        int, typer.Option(min=1, help="Fake engine answer length when max_tokens allows.")
    ] = 24,
    fake_claim_speed: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Fake engine reports this speed instead of its real one (tests a lying miner).",
        ),
    ] = None,
    fake_prompt_speed: Annotated[
        float, typer.Option(min=0, help="Fake engine prompt tokens/s (0: instant).")
    ] = 0.0,
    fake_loadable: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME[=SIZE]",
            help="Fake engine: a model the router may ask this miner to load, with the memory "
            "it takes (e.g. fake-b=200MB; default 0). Repeatable.",
        ),
    ] = None,
    fake_load_s: Annotated[
        float, typer.Option(min=0, help="Fake engine: seconds a requested load takes.")
    ] = 0.0,
    fake_echo: Annotated[
        bool,
        typer.Option(
            help="Fake engine starts each answer with [miner name:last prompt word:seed], "
            "so tests see which task ran where."
        ),
    ] = False,
    http_port: Annotated[
        int | None,
        typer.Option(
            help="Also serve the engine directly on this port (for benchmarks and health checks)."
        ),
    ] = None,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            help="Misbehave on purpose, for tests and demos of verification only: "
            "KIND[:PROBABILITY] with KIND corrupt, random, lazy or slow. Repeatable.",
            envvar="INFERSWARM_FAULT",
        ),
    ] = None,
    join_token: Annotated[
        str | None,
        typer.Option(
            help="Join token from the router's operator (`inferswarm tokens create`).",
            envvar="INFERSWARM_JOIN_TOKEN",
            show_default=False,
        ),
    ] = None,
    ca_cert: Annotated[
        Path | None,
        typer.Option(
            help="CA certificate that signed the router's TLS certificate "
            "(for https:// routers with a private CA; default: the system's CAs).",
            envvar="INFERSWARM_CA_CERT",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve Prometheus /metrics (tasks, tokens, tokens/s, slots, CPU/RAM/GPU use) on this port.",
            envvar="INFERSWARM_METRICS_PORT",
        ),
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(
            help="Address for --metrics-port; 0.0.0.0 lets a Prometheus on another machine scrape it.",
            envvar="INFERSWARM_METRICS_HOST",
        ),
    ] = "127.0.0.1",
    log_level: Annotated[
        str, typer.Option(help="debug, info, warning or error.", envvar="INFERSWARM_LOG_LEVEL")
    ] = "info",
) -> None:
    """Run a miner: serve a model to a router over a WebSocket the miner dials (no open port needed)."""
    setup_logging(log_level)
    try:
        limit = parse_size(memory_limit) if memory_limit else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--memory-limit") from None
    try:
        fake_models = tuple(_fake_loadable(spec) for spec in fake_loadable or ())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--fake-loadable") from None
    options = EngineOptions(
        model,
        model_name,
        slots,
        ctx,
        threads,
        fake_speed,
        fake_latency,
        fake_failure_rate,
        upstream,
        upstream_key,
        fake_prompt_speed,
        fake_claim_speed,
        fake_output_tokens,
        fake_stall_after,
        (name or socket.gethostname()) if fake_echo else None,
        models,
        tuple(model_dir or ()),
        limit,
        cache_dir or default_cache_dir(),
        min_speed,
        fake_models,
        fake_load_s,
    )
    cache = CapabilityCache((cache_dir or default_cache_dir()) / "capability.json")
    try:
        faults = tuple(Fault.parse(spec) for spec in fault or ())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--fault") from None
    try:
        asyncio.run(
            _serve(
                router,
                engine,
                options,
                name or socket.gethostname(),
                data_dir,
                http_port,
                cache,
                rebenchmark,
                faults,
                join_token,
                ca_cert,
                (metrics_host, metrics_port) if metrics_port is not None else None,
            )
        )
    except MinerRefused as exc:
        typer.echo(f"The router refused this miner: {exc}", err=True)
        raise typer.Exit(2) from None
    except (TaskRejected, FileNotFoundError, ValueError, ModelNotFound, CatalogError) as exc:
        typer.echo(f"Cannot start the miner: {exc}", err=True)
        raise typer.Exit(2) from None


async def _serve(
    router: str,
    kind: EngineKind,
    options: EngineOptions,
    name: str,
    data_dir: Path | None,
    http_port: int | None,
    cache: CapabilityCache,
    rebenchmark: bool,
    faults: tuple[Fault, ...],
    join_token: str | None,
    ca_cert: Path | None,
    metrics_at: tuple[str, int] | None = None,
) -> None:
    served = await _build_engine(kind, options)
    engine = served.engine

    async def measure(part: Engine) -> None:
        part.capability = await establish_capability(part, cache, rebenchmark)
        if part.capability is not None:
            log.info("capability of %s: %s", part.offers()[0].name, part.capability)

    parts = engine.parts if isinstance(engine, MultiModelEngine) else (engine,)
    for part in parts:
        await measure(part)
    loader = None
    if isinstance(engine, MultiModelEngine):
        loader = ModelLoader(engine, served.options, served.budget_bytes, prepare=measure)
        loadable = ", ".join(o.name for o in loader.loadable())
        log.info(
            "the router may ask this miner to load: %s", loadable or "nothing (no memory free)"
        )
    if faults:  # after the benchmark: a faulty miner measures its speed honestly
        log.warning(
            "fault injection on: %s", ", ".join(f"{f.kind}:{f.probability}" for f in faults)
        )
        engine = FaultyEngine(engine, faults, random.Random())
    agent = MinerAgent(
        AgentSettings(
            router_url=router,
            identity=load_or_create_identity(data_dir),
            name=name,
            join_token=join_token,
            ca_cert=ca_cert,
        ),
        engine,
        probe_hardware(),
        models=loader,
    )
    main = asyncio.current_task()
    assert main is not None
    background: set[asyncio.Task[None]] = set()

    def graceful_stop() -> None:
        async def drain_then_stop() -> None:
            await agent.drain(DRAIN_TIMEOUT_S)
            main.cancel()

        background.add(asyncio.create_task(drain_then_stop()))

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, graceful_stop)
    offers = ", ".join(o.name for o in engine.offers())
    log.info(
        "miner %s serving %s with %d slots on %s engine; dialling %s",
        name,
        offers,
        engine.slots,
        engine.name,
        router,
    )
    tasks = [asyncio.create_task(agent.run_forever())]
    if http_port is not None:
        tasks.append(asyncio.create_task(_serve_direct(engine, http_port)))
    if metrics_at is not None:
        tasks.append(asyncio.create_task(_serve_metrics(agent, engine, *metrics_at)))
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # re-raises MinerRefused with the router's reason
    except asyncio.CancelledError:
        log.info("miner stopping")
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await engine.close()


async def _serve_direct(engine: Engine, port: int) -> None:
    from inferswarm.miner.direct import create_direct_app

    config = uvicorn.Config(
        create_direct_app(engine),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
    )
    await uvicorn.Server(config).serve()


async def _serve_metrics(agent: MinerAgent, engine: Engine, host: str, port: int) -> None:
    from inferswarm.miner.metrics import LoadSource
    from inferswarm.miner.metrics_server import create_metrics_app

    load = LoadSource(
        engine.slots, lambda: agent.busy, lambda: agent.queued, agent.connected.is_set
    )
    app = create_metrics_app(agent.stats, load, agent.host)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    await uvicorn.Server(config).serve()


async def _build_engine(kind: EngineKind, o: EngineOptions) -> MinerModels:
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


def _fake_loadable(spec: str) -> tuple[str, int]:
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
    budget = memory_budget(probe_hardware(), PlacementLimits(memory_limit_bytes=o.memory_limit))
    return MinerModels(MultiModelEngine([engine]), options, budget)


def _llama_models(o: EngineOptions, *, batched: bool) -> MinerModels:
    from inferswarm.miner.catalog import Catalog, find_gguf_files
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
    entry = catalog.entry(path)
    slots = o.slots or (0 if batched else 1)
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
    budget = memory_budget(probe_hardware(), PlacementLimits(memory_limit_bytes=o.memory_limit))
    return MinerModels(MultiModelEngine([engine]), options, budget)


def _placed_models(o: EngineOptions, *, batched: bool) -> MinerModels:
    """Load what ``plan_placement`` chooses among ``--models`` for this machine;
    the other candidates may be loaded on request."""
    from inferswarm.miner.catalog import Catalog, find_gguf_files
    from inferswarm.miner.models import shipped_model_paths
    from inferswarm.miner.placement import plan_placement

    assert o.models is not None and o.cache_dir is not None
    models_dir = o.cache_dir / "models"
    if o.models.strip().lower() == "auto":
        paths = shipped_model_paths(models_dir) + find_gguf_files((models_dir, *o.model_dirs))
    else:
        paths = [Path(p.strip()) for p in o.models.split(",") if p.strip()]
        paths += find_gguf_files(o.model_dirs)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"model file(s) not found: {', '.join(missing)}")
    entries = Catalog(o.cache_dir / "catalog.json").entries(
        dict.fromkeys(p.resolve() for p in paths)
    )
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
    options = tuple(_llama_option(o, e, batched=batched) for e in _unique_names(entries))
    return MinerModels(MultiModelEngine(engines), options, placement.ram_budget_bytes)


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
    build = functools.partial(_llama_engine, config, batched=batched)
    return LoadOption(catalog_offer(config), build)


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

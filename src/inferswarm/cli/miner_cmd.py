"""``inferswarm miner``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import socket
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from inferswarm.cli.common import setup_logging
from inferswarm.cli.lifetime import exit_with
from inferswarm.cli.miner_engines import (
    EngineKind,
    EngineOptions,
    build_engine,
    parse_fake_loadable,
)
from inferswarm.miner.agent import AgentSettings, MinerAgent, MinerRefused
from inferswarm.miner.catalog import CatalogError
from inferswarm.miner.engines.base import Engine, TaskRejected
from inferswarm.miner.engines.multi import MultiModelEngine
from inferswarm.miner.faults import Fault, FaultyEngine
from inferswarm.miner.hardware import probe_hardware
from inferswarm.miner.identity import load_or_create_identity
from inferswarm.miner.loading import ModelLoader
from inferswarm.miner.models import ModelNotFound
from inferswarm.miner.placement import parse_size
from inferswarm.miner.probe import CapabilityCache, default_cache_dir, establish_capability

log = logging.getLogger("inferswarm.miner")

MAX_OPERATOR_CHARS = 128
"""As the protocol's ``Register.operator`` allows."""
DRAIN_TIMEOUT_S = 30.0
"""On SIGTERM, how long running tasks may take to finish before the miner exits."""


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
    operator: Annotated[
        str,
        typer.Option(
            help="Who runs this miner (a person, company or pool). Declare one name on all your "
            "miners: redundant verification then prefers miners of other operators, so your "
            "miners never vouch for each other. Undeclared miners count as distinct operators, "
            "unless they connect from one network (the router's --diversity-prefix).",
            envvar="INFERSWARM_OPERATOR",
        ),
    ] = "",
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
            "KIND[:PROBABILITY] with KIND corrupt, random, lazy, slow or fabricate-logprobs. "
            "Repeatable.",
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
    parent_pid: Annotated[
        int | None,
        typer.Option(
            help="Stop when the process with this id exits (the router's local autoscaler and "
            "`inferswarm up` set it, so their miners never outlive them).",
        ),
    ] = None,
    log_level: Annotated[
        str, typer.Option(help="debug, info, warning or error.", envvar="INFERSWARM_LOG_LEVEL")
    ] = "info",
) -> None:
    """Run a miner: serve a model to a router over a WebSocket the miner dials (no open port needed)."""
    setup_logging(log_level)
    if len(operator) > MAX_OPERATOR_CHARS:
        raise typer.BadParameter(
            f"at most {MAX_OPERATOR_CHARS} characters", param_hint="--operator"
        )
    if parent_pid is not None:
        exit_with(parent_pid)
    try:
        limit = parse_size(memory_limit) if memory_limit else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--memory-limit") from None
    try:
        fake_models = tuple(parse_fake_loadable(spec) for spec in fake_loadable or ())
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
                operator,
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
    operator: str = "",
) -> None:
    served = await build_engine(kind, options)
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
        loader = ModelLoader(
            engine, served.options, served.budget, prepare=measure, placed=served.placed
        )
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
            operator=operator,
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

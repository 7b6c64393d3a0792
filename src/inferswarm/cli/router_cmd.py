"""``inferswarm router``."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated

import typer

from inferswarm.cli.common import setup_logging
from inferswarm.cli.lifetime import exit_with
from inferswarm.router.dispatch import DispatchLimits
from inferswarm.router.scale.policy import ScalePolicy
from inferswarm.router.scale.settings import (
    LocalBudget,
    ProviderKind,
    ScaledModel,
    ScaleSettings,
)
from inferswarm.router.schedule import Policy
from inferswarm.router.segment.batch import BatchShare
from inferswarm.router.settings import RouterSettings, default_data_dir
from inferswarm.router.verify.consensus import DEFAULT_SEMANTIC_THRESHOLD, Consensus
from inferswarm.router.verify.options import SpotCheckStrategy, VerifySettings, parse_tier_rates

SCALE_PANEL = "Autoscaling"


def router(
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on (0.0.0.0 to accept other machines).",
            envvar="INFERSWARM_HOST",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="Port for the API and the miner gateway.", envvar="INFERSWARM_PORT")
    ] = 8000,
    policy: Annotated[
        Policy,
        typer.Option(
            help="How tasks are allocated: capacity_aware (fastest expected finish), "
            "cache_aware (also warm prompt caches), session_affinity, or the baselines "
            "least_loaded, power_of_two, round_robin.",
            envvar="INFERSWARM_POLICY",
        ),
    ] = Policy.CAPACITY_AWARE,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the router keeps its database and files "
            "(default: ~/.local/share/inferswarm/router).",
            envvar="INFERSWARM_DATA_DIR",
        ),
    ] = None,
    store_url: Annotated[
        str | None,
        typer.Option(
            help="SQLAlchemy URL of the store, e.g. postgresql+asyncpg://... for routers "
            "sharing state (default: SQLite in --data-dir).",
            envvar="INFERSWARM_STORE_URL",
        ),
    ] = None,
    max_file_mb: Annotated[
        float, typer.Option(min=0.001, help="Largest file upload (batch input), in MiB.")
    ] = 200.0,
    batch_reserve: Annotated[
        float,
        typer.Option(
            min=0,
            max=1,
            help="Share of all slots batches leave free while interactive requests are about.",
        ),
    ] = 0.25,
    task_retry_delay: Annotated[
        float,
        typer.Option(
            min=0, help="Seconds before a failed batch task is retried (doubling each time)."
        ),
    ] = 1.0,
    task_max_attempts: Annotated[
        int,
        typer.Option(min=1, help="Attempts per batch task before it goes to the error file."),
    ] = 5,
    batch_floor: Annotated[
        float,
        typer.Option(min=0, max=1, help="Share of all slots batches always get, under any load."),
    ] = 0.1,
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            "--api-key",
            help="Also accept this client API key (repeatable; no limits, every model). "
            "Keys with limits: `inferswarm keys create`.",
            envvar="INFERSWARM_API_KEYS",
            show_default=False,
        ),
    ] = None,
    admin_key: Annotated[
        list[str] | None,
        typer.Option(
            "--admin-key",
            help="An admin key (repeatable): may use the admin API (keys, tokens, bans) and "
            "override the policy per request.",
            envvar="INFERSWARM_ADMIN_KEYS",
            show_default=False,
        ),
    ] = None,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth",
            help="Serve the client and admin APIs without API keys (local experiments only).",
        ),
    ] = False,
    open_join: Annotated[
        bool,
        typer.Option(
            "--open-join",
            help="Let miners join without a join token (local and test networks only).",
        ),
    ] = False,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            help="TLS certificate (PEM) for the API and the miner gateway.",
            envvar="INFERSWARM_TLS_CERT",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(help="Private key (PEM) of --tls-cert.", envvar="INFERSWARM_TLS_KEY"),
    ] = None,
    max_prompt_tokens: Annotated[
        int | None,
        typer.Option(
            min=1, help="Longest prompt accepted, in tokens (default: any that fits a miner)."
        ),
    ] = None,
    max_tokens_limit: Annotated[
        int | None, typer.Option(min=1, help="Largest max_tokens a request may ask for.")
    ] = None,
    max_streams_per_key: Annotated[
        int, typer.Option(min=1, help="Streaming requests one API key may have open at once.")
    ] = 64,
    ws_max_mb: Annotated[
        float, typer.Option(min=0.01, help="Largest WebSocket message a miner may send, in MiB.")
    ] = 16.0,
    log_prompts: Annotated[
        bool,
        typer.Option(
            "--log-prompts",
            help="Log every request's prompt (debugging only; prompts are never logged otherwise).",
        ),
    ] = False,
    max_queue: Annotated[
        int,
        typer.Option(min=0, help="Requests that may wait when every miner is busy; beyond: 429."),
    ] = 256,
    queue_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a request may wait for a free miner; then 429.")
    ] = 60.0,
    heartbeat_timeout: Annotated[
        float, typer.Option(help="Seconds without a heartbeat before a miner is dropped.")
    ] = 5.0,
    first_token_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for a miner's first token before trying another.")
    ] = 120.0,
    idle_timeout: Annotated[
        float, typer.Option(help="Seconds to wait between tokens before failing the request.")
    ] = 60.0,
    max_attempts: Annotated[
        int, typer.Option(help="Miners tried per request before giving up.")
    ] = 3,
    hedge: Annotated[
        bool,
        typer.Option(
            "--hedge/--no-hedge",
            help="Duplicate a task on another miner when its first token is later than its tier's p95 TTFT "
            "(per request: extra_body={'inferswarm': {'hedge': true}}).",
        ),
    ] = False,
    hedge_delay: Annotated[
        float, typer.Option(min=0.01, help="Hedging delay until a tier has enough TTFT samples.")
    ] = 2.0,
    redundancy: Annotated[
        int,
        typer.Option(
            min=1,
            help="Run every task on this many distinct miners and answer with their consensus "
            "(per request: extra_body={'inferswarm': {'redundancy': 3}}).",
            envvar="INFERSWARM_REDUNDANCY",
        ),
    ] = 1,
    diversity_prefix: Annotated[
        int,
        typer.Option(
            min=0,
            max=32,
            help="Redundant copies count miners connecting from one IPv4 network of this prefix "
            "length as one operator, whatever they declare (32: one address; 24: its /24). "
            "Loopback miners never group.",
            envvar="INFERSWARM_DIVERSITY_PREFIX",
        ),
    ] = VerifySettings.diversity_prefix_v4,
    diversity_prefix_v6: Annotated[
        int,
        typer.Option(
            min=0,
            max=128,
            help="As --diversity-prefix, for IPv6 (64: one subscriber's network).",
            envvar="INFERSWARM_DIVERSITY_PREFIX_V6",
        ),
    ] = VerifySettings.diversity_prefix_v6,
    consensus: Annotated[
        Consensus,
        typer.Option(
            help="exact: greedy, fixed seed, identical text; semantic: sentence-embedding "
            "similarity (needs the 'verify' extra).",
            envvar="INFERSWARM_CONSENSUS",
        ),
    ] = Consensus.EXACT,
    semantic_threshold: Annotated[
        float,
        typer.Option(min=0, max=1, help="Cosine similarity below which an output disagrees."),
    ] = DEFAULT_SEMANTIC_THRESHOLD,
    spot_check_rate: Annotated[
        float,
        typer.Option(
            min=0,
            max=1,
            help="Share of finished tasks checked afterwards on another miner "
            "(--spot-check-strategy says how).",
            envvar="INFERSWARM_SPOT_CHECK_RATE",
        ),
    ] = 0.0,
    spot_check_tier_rate: Annotated[
        list[str] | None,
        typer.Option(
            metavar="TIER=RATE",
            help="Spot-check rate for miners of one capability tier, replacing "
            "--spot-check-rate for them (repeatable), e.g. T1=0.2 to check the slowest, least "
            "proven class of device more often.",
            envvar="INFERSWARM_SPOT_CHECK_TIER_RATES",
        ),
    ] = None,
    spot_check_strategy: Annotated[
        SpotCheckStrategy,
        typer.Option(
            help="redundant: re-run greedy tasks, exact consensus, a referee on disagreement; "
            "teacher: score any task (sampled too) with one teacher-forced prefill on a trusted "
            "miner with the same model file; mixed: either at random per check.",
            envvar="INFERSWARM_SPOT_CHECK_STRATEGY",
        ),
    ] = SpotCheckStrategy.REDUNDANT,
    drain_timeout: Annotated[
        float,
        typer.Option(min=0, help="On SIGTERM, seconds in-flight requests may take to finish."),
    ] = 30.0,
    autoscale: Annotated[
        ProviderKind | None,
        typer.Option(
            help="Scale the miner pool with demand: local starts and stops miner processes on "
            "this machine, command runs --scale-command, standby parks and activates connected "
            "miners. With any of them, a request for a model no miner serves waits while a "
            "parked or idle miner that can load it (its loadable list) does. Default: off.",
            envvar="INFERSWARM_AUTOSCALE",
            rich_help_panel=SCALE_PANEL,
        ),
    ] = None,
    min_miners: Annotated[
        int, typer.Option(min=1, help="Fewest miners per model.", rich_help_panel=SCALE_PANEL)
    ] = 1,
    max_miners: Annotated[
        int, typer.Option(min=1, help="Most miners per model.", rich_help_panel=SCALE_PANEL)
    ] = 4,
    scale_interval: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds between evaluations.", rich_help_panel=SCALE_PANEL),
    ] = 5.0,
    ttft_slo: Annotated[
        float,
        typer.Option(
            min=0.01,
            help="p95 time to first token (and queue wait) in seconds above which one more "
            "miner is added.",
            rich_help_panel=SCALE_PANEL,
        ),
    ] = 2.0,
    target_utilization: Annotated[
        float,
        typer.Option(
            min=0.05,
            max=1.0,
            help="Share of a miner's slots it should keep busy at steady state.",
            rich_help_panel=SCALE_PANEL,
        ),
    ] = 0.7,
    scale_down_delay: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds demand must stay low, and must have passed since the last change, "
            "before a miner is removed (one at a time).",
            rich_help_panel=SCALE_PANEL,
        ),
    ] = 30.0,
    scale_miner_args: Annotated[
        str,
        typer.Option(
            help='local: flags for the miners it starts, e.g. "--engine fake --fake-speed 50"; '
            "{model} is replaced by the model a miner is started for (see --scale-model).",
            rich_help_panel=SCALE_PANEL,
        ),
    ] = "",
    scale_cpus: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            help="local: cores its miners may use in all (default: all).",
            rich_help_panel=SCALE_PANEL,
        ),
    ] = None,
    scale_memory_mb: Annotated[
        float | None,
        typer.Option(
            min=1,
            help="local: MiB its miners may use in all (default: 80% of what is available).",
            rich_help_panel=SCALE_PANEL,
        ),
    ] = None,
    scale_miner_cpus: Annotated[
        float,
        typer.Option(min=0.01, help="local: cores one miner takes.", rich_help_panel=SCALE_PANEL),
    ] = 1.0,
    scale_miner_memory_mb: Annotated[
        float,
        typer.Option(min=1, help="local: MiB one miner takes.", rich_help_panel=SCALE_PANEL),
    ] = 512.0,
    scale_command: Annotated[
        str,
        typer.Option(
            help="command: run by the shell to set a model's miner count, with {model}, {count} "
            "and {miners} (names drained for a scale-down) filled in, e.g. "
            '"kubectl scale deploy/miners --replicas={count}".',
            rich_help_panel=SCALE_PANEL,
        ),
    ] = "",
    scale_model: Annotated[
        list[str] | None,
        typer.Option(
            help="A model to scale, kept at --min-miners even before any miner serves it "
            "(repeatable). local scales each one named on its own, starting its miners with "
            "--scale-miner-args and, given as NAME=FLAGS, flags of its own, e.g. "
            "'smollm2-135m-instruct:q8_0=--model /models/smollm2-q8_0.gguf'. Without it, local's "
            "miners all serve the one model --scale-miner-args gives.",
            metavar="NAME[=FLAGS]",
            rich_help_panel=SCALE_PANEL,
        ),
    ] = None,
    standby_heartbeat: Annotated[
        float,
        typer.Option(
            min=0.5,
            help="standby: seconds between a parked miner's heartbeats.",
            rich_help_panel=SCALE_PANEL,
        ),
    ] = 5.0,
    parent_pid: Annotated[
        int | None,
        typer.Option(
            help="Stop (draining) when the process with this id exits (`inferswarm up` sets it).",
        ),
    ] = None,
    log_level: Annotated[
        str, typer.Option(help="debug, info, warning or error.", envvar="INFERSWARM_LOG_LEVEL")
    ] = "info",
) -> None:
    """Run a router: the OpenAI-compatible API for clients and the gateway miners dial."""
    setup_logging(log_level)
    if parent_pid is not None:
        exit_with(parent_pid)
    keys = _split_keys(api_key)
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("give both --tls-cert and --tls-key, or neither")
    settings = RouterSettings(
        host=host,
        port=port,
        policy=policy,
        data_dir=data_dir or default_data_dir(),
        store_url=store_url,
        max_file_bytes=int(max_file_mb * 2**20),
        batch_share=BatchShare(reserve=batch_reserve, floor=batch_floor),
        task_retry_delay_s=task_retry_delay,
        task_max_attempts=task_max_attempts,
        api_keys=keys,
        admin_keys=_split_keys(admin_key),
        auth=not no_auth,
        open_join=open_join,
        log_prompts=log_prompts,
        max_prompt_tokens=max_prompt_tokens,
        max_tokens_limit=max_tokens_limit,
        max_streams_per_key=max_streams_per_key,
        ws_max_bytes=int(ws_max_mb * 2**20),
        max_queue=max_queue,
        hedge=hedge,
        queue_timeout_s=queue_timeout,
        heartbeat_timeout_s=heartbeat_timeout,
        verify=VerifySettings(
            redundancy=redundancy,
            diversity_prefix_v4=diversity_prefix,
            diversity_prefix_v6=diversity_prefix_v6,
            consensus=consensus,
            semantic_threshold=semantic_threshold,
            spot_check_rate=spot_check_rate,
            spot_check_tier_rates=_tier_rates(spot_check_tier_rate or []),
            spot_check_strategy=spot_check_strategy,
        ),
        limits=DispatchLimits(
            max_attempts=max_attempts,
            first_token_timeout_s=first_token_timeout,
            idle_timeout_s=idle_timeout,
            hedge_delay_s=hedge_delay,
        ),
        autoscale=None
        if autoscale is None
        else ScaleSettings(
            provider=autoscale,
            policy=_policy(min_miners, max_miners, ttft_slo, target_utilization, scale_down_delay),
            interval_s=scale_interval,
            miner_args=tuple(shlex.split(scale_miner_args))
            + (("--ca-cert", str(tls_cert)) if tls_cert else ()),
            router_scheme="https" if tls_cert else "http",
            budget=_budget(scale_cpus, scale_memory_mb, scale_miner_cpus, scale_miner_memory_mb),
            command=_command(autoscale, scale_command),
            models=_scaled_models(scale_model or [], scale_miner_args),
            standby_heartbeat_s=standby_heartbeat,
        ),
    )
    from inferswarm.cli.serve import serve  # the web and database stack, only when serving

    serve(settings, log_level, drain_timeout, tls_cert, tls_key)


def _policy(
    min_miners: int, max_miners: int, slo: float, utilization: float, down_delay: float
) -> ScalePolicy:
    try:
        return ScalePolicy(
            min_miners=min_miners,
            max_miners=max_miners,
            ttft_slo_s=slo,
            target_utilization=utilization,
            scale_down_window_s=down_delay,
            scale_down_cooldown_s=down_delay,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _budget(
    cpus: float | None, memory_mb: float | None, miner_cpus: float, miner_memory_mb: float
) -> LocalBudget | None:
    if cpus is None and memory_mb is None and miner_cpus == 1.0 and miner_memory_mb == 512.0:
        return None  # the machine's own, measured when the router starts
    import psutil

    available = int(psutil.virtual_memory().available * 0.8)
    return LocalBudget(
        cpus=cpus if cpus is not None else float(os.cpu_count() or 1),
        memory_bytes=int(memory_mb * 2**20) if memory_mb is not None else available,
        miner_cpus=miner_cpus,
        miner_memory_bytes=int(miner_memory_mb * 2**20),
    )


def _scaled_models(specs: list[str], miner_args: str) -> tuple[ScaledModel, ...]:
    try:
        models = tuple(ScaledModel.parse(spec) for spec in specs)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scale-model") from exc
    if "{model}" in miner_args and not models:
        raise typer.BadParameter(
            "{model} in --scale-miner-args needs the models named: add --scale-model NAME "
            "for each model to scale",
            param_hint="--scale-miner-args",
        )
    return models


def _command(kind: ProviderKind, command: str) -> str:
    if kind is ProviderKind.COMMAND and not command:
        raise typer.BadParameter(
            '--autoscale command needs --scale-command, e.g. "./scale.sh {model} {count}"',
            param_hint="--scale-command",
        )
    return command


def _split_keys(values: list[str] | None) -> frozenset[str]:
    """Keys from repeated flags or a comma-separated environment variable."""
    return frozenset(k.strip() for value in values or [] for k in value.split(",") if k.strip())


def _tier_rates(specs: list[str]) -> tuple[tuple[int, float], ...]:
    try:
        return parse_tier_rates(specs)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--spot-check-tier-rate") from exc

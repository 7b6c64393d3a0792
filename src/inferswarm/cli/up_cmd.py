"""``inferswarm up``: a whole local network — one router and N miners — in one command."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.panel import Panel

from inferswarm.cli.miner_engines import EngineKind
from inferswarm.router.access import AccessControl, load_or_create_secret
from inferswarm.router.settings import RouterSettings

console = Console()


def up(
    miners: Annotated[int, typer.Option(min=1, help="How many miners to start.")] = 2,
    port: Annotated[int, typer.Option(help="Router port.", envvar="INFERSWARM_PORT")] = 8000,
    engine: Annotated[
        EngineKind, typer.Option(help="Engine for the miners (fake is for tests only).")
    ] = EngineKind.LLAMACPP,
    model: Annotated[
        Path | None,
        typer.Option(help="GGUF file for the miners (default: the shipped SmolLM2-135M)."),
    ] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Serve without an API key (local experiments only).")
    ] = False,
    data_dir: Annotated[Path, typer.Option(help="State for the router and miners.")] = Path("data"),
    ready_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the network to come up.")
    ] = 120.0,
) -> None:
    """Start a router and miners on this machine; Ctrl-C stops them all."""
    api_key = None if no_auth else f"isk-{secrets.token_urlsafe(24)}"
    base = f"http://127.0.0.1:{port}"
    threads = max(1, (os.cpu_count() or 1) // miners)
    # The miners get a join token, never the client key.
    miner_env = {k: v for k, v in os.environ.items() if k != "INFERSWARM_API_KEYS"}
    miner_env["INFERSWARM_JOIN_TOKEN"] = asyncio.run(_join_token(data_dir / "router"))
    env = dict(os.environ)
    if api_key:
        env["INFERSWARM_API_KEYS"] = api_key
    router_args = ["--no-auth"] if no_auth else []
    procs = [
        _spawn(
            [
                "router",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir / "router"),
                "--log-level",
                "warning",
                *router_args,
            ],
            env,
        )
    ]
    for index in range(miners):
        args = [
            "miner",
            "--router",
            base,
            "--engine",
            engine.value,
            "--name",
            f"local-{index + 1}",
            "--data-dir",
            str(data_dir / f"miner-{index + 1}"),
            "--threads",
            str(threads),
            "--log-level",
            "warning",
        ]
        if model is not None:
            args += ["--model", str(model)]
        procs.append(_spawn(args, miner_env))
    try:
        _wait_ready(base, api_key, miners, procs, ready_timeout)
        _print_welcome(base, api_key, miners, no_auth)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        console.print("[red]A process of the network exited; stopping the rest.[/red]")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        console.print("\nStopping the network…")
    finally:
        _stop(procs)


async def _join_token(router_dir: Path) -> str:
    """A join token for this network's miners, issued in the router's store."""
    from inferswarm.storage.sql import open_store  # the database stack, only here

    secret = load_or_create_secret(router_dir)  # creates the directory too
    store = await open_store(RouterSettings(data_dir=router_dir).database_url())
    try:
        access = AccessControl(store, secret)
        token, _ = await access.create_token("inferswarm up", None, "inferswarm up")
    finally:
        await store.close()
    return token


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Own process group, so Ctrl-C reaches only `up`, which then stops children in order;
    # --parent-pid stops them too should `up` be killed outright.
    return subprocess.Popen(
        [sys.executable, "-m", "inferswarm", *args, "--parent-pid", str(os.getpid())],
        env=env,
        start_new_session=True,
    )


def _wait_ready(
    base: str,
    api_key: str | None,
    miners: int,
    procs: list[subprocess.Popen[bytes]],
    timeout: float,
) -> None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout
    with console.status(f"Starting a router and {miners} miner(s)…"):
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                raise typer.Exit(_died(procs))
            try:
                joined = len(
                    httpx.get(f"{base}/v1/miners", headers=headers, timeout=2).json()["data"]
                )
                if joined >= miners:
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.3)
    console.print(f"[red]The network did not come up within {timeout:g} s.[/red]")
    raise typer.Exit(1)


def _died(procs: list[subprocess.Popen[bytes]]) -> int:
    dead = [p for p in procs if p.poll() is not None]
    console.print(
        f"[red]{len(dead)} process(es) exited during start-up (see the messages above); is port in use?[/red]"
    )
    return 1


def _print_welcome(base: str, api_key: str | None, miners: int, no_auth: bool) -> None:
    key = api_key or "none"
    models = httpx.get(
        f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5
    ).json()["data"]
    model = models[0]["id"] if models else "MODEL"
    curl = (
        f"curl {base}/v1/chat/completions -H 'Content-Type: application/json' "
        + (f"-H 'Authorization: Bearer {api_key}' " if api_key else "")
        + f"""-d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'"""
    )
    python = (
        "from openai import OpenAI\n"
        f'client = OpenAI(base_url="{base}/v1", api_key="{key}")\n'
        f'reply = client.chat.completions.create(model="{model}", messages=[{{"role": "user", "content": "Hello!"}}])\n'
        "print(reply.choices[0].message.content)"
    )
    header = [
        f"[bold green]inferswarm is up[/bold green]: 1 router, {miners} miner(s) serving [bold]{model}[/bold]",
        f"Base URL:  [bold]{base}/v1[/bold]",
        f"Dashboard: [bold]{base}/dashboard[/bold]"
        + (" (enter the API key in its key field)" if api_key else ""),
        f"API key:   [bold]{api_key}[/bold]"
        if api_key
        else "API key:   none ([yellow]--no-auth: anyone on this machine can use it[/yellow])",
    ]
    console.print(Panel("\n".join(header), expand=False))
    # Examples go out unwrapped so they copy and paste as they are.
    status = f"inferswarm status --watch --router {base}" + (
        f" --api-key {api_key}" if api_key else ""
    )
    print(f"\n# curl\n{curl}\n\n# Python (openai)\n{python}\n\n# Miners\n{status}\n")
    console.print("Press Ctrl-C to stop.")
    if no_auth:
        console.print("[yellow]Warning: auth is off.[/yellow]")


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):  # miners first, then the router
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

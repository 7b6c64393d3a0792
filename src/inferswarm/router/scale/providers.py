"""Providers carry out the autoscaler's decisions.

All three answer to ``Provider``: ``grow`` adds miners for a model,
``release`` lets go of miners the autoscaler already drained (no tasks left),
``starting`` says how many asked-for miners have not joined yet, and ``owns``
which connected miners the provider may scale down.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shlex
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from inferswarm.router.registry import MinerConnection, MinerRegistry
from inferswarm.router.scale.settings import LocalBudget, ScaledModel
from inferswarm.router.scale.tokens import TokenSource
from inferswarm.router.schedule import MinerState

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 15.0
OUTPUT_SHOWN = 1500
"""Characters of a failed miner's or command's output put in the log."""


class Provider(Protocol):
    name: str

    def owns(self, conn: MinerConnection) -> bool: ...

    def starting(self, model: str, now: float) -> int: ...

    def headroom(self, model: str) -> int | None:
        """How many more miners ``grow`` could add now; None: no known limit."""
        ...

    def models(self) -> set[str]:
        """Models to scale even when no miner serves them yet."""
        ...

    async def start(self, count: int) -> None:
        """Bring up the first ``count`` miners, before any model is known (called
        again while no model is known, e.g. when the first miners crashed)."""
        ...

    async def grow(self, model: str, count: int, now: float) -> str: ...

    async def release(self, model: str, conns: list[MinerConnection]) -> str: ...

    async def close(self) -> None: ...


def serves(conn: MinerConnection, model: str) -> bool:
    return any(offer.name == model for offer in conn.info.models)


@dataclass
class _Process:
    name: str
    proc: asyncio.subprocess.Process
    log: Path
    started_at: float
    model: str | None
    """What it was started for; None until the first miner of one-model mode joins."""
    joined: bool = False


class LocalProvider:
    """Starts and stops ``inferswarm miner`` processes on the router's machine.

    With ``models`` named (``--scale-model``), each is scaled on its own: its
    miners start with ``miner_args`` (``{model}`` replaced by its name) and its
    own flags. With none, every miner starts with the same ``miner_args``, so
    they all serve one model, learned from the first that joins. A miner's own
    SIGTERM handling drains it too, but by then the autoscaler has already
    drained it here.
    """

    name = "local"

    def __init__(
        self,
        router_url: str,
        miner_args: tuple[str, ...],
        tokens: TokenSource,
        workdir: Path,
        budget: LocalBudget,
        registry: MinerRegistry,
        start_timeout_s: float,
        clock: Callable[[], float],
        models: tuple[ScaledModel, ...] = (),
    ) -> None:
        self._router_url = router_url
        self._args = miner_args
        self._tokens = tokens
        self._workdir = workdir
        self._budget = budget
        self._registry = registry
        self._start_timeout_s = start_timeout_s
        self._clock = clock
        self._models = {m.name: m for m in models}
        self._procs: dict[str, _Process] = {}
        self._numbers = itertools.count(1)
        self.model: str | None = None
        """One-model mode: the model its miners turned out to serve."""

    def owns(self, conn: MinerConnection) -> bool:
        return conn.info.name in self._procs

    def models(self) -> set[str]:
        self._notice_joins()
        if self._models:
            return set(self._models)
        return {self.model} if self.model else set()

    def starting(self, model: str, now: float) -> int:
        self._notice_joins()
        return sum(
            p.model == model and not p.joined and now - p.started_at < self._start_timeout_s
            for p in self._procs.values()
        )

    def headroom(self, model: str) -> int | None:
        self._reap()
        if self._models and model not in self._models:
            return 0  # e.g. loaded onto one of ours by placement: no flags to start more
        return max(0, self._budget.miners() - len(self._procs))

    async def start(self, count: int) -> None:
        self._reap()
        if not self._models:
            await self._spawn(None, count - len(self._procs))
            return
        for model in self._models:
            have = sum(p.model == model for p in self._procs.values())
            await self._spawn(model, count - have)

    async def grow(self, model: str, count: int, now: float) -> str:
        if self._models and model not in self._models:
            named = ", ".join(self._models)
            return (
                f"cannot start miners for {model}: local starts only {named}; "
                f"add --scale-model '{model}=MINER FLAGS'"
            )
        return await self._spawn(model if self._models else self.model, count)

    async def release(self, model: str, conns: list[MinerConnection]) -> str:
        names = [c.info.name for c in conns if c.info.name in self._procs]
        await asyncio.gather(*(self._stop(self._procs.pop(name)) for name in names))
        return f"stopped {', '.join(names)}"

    async def close(self) -> None:
        procs, self._procs = list(self._procs.values()), {}
        await asyncio.gather(*(self._stop(p) for p in procs))
        await self._tokens.revoke()

    async def _spawn(self, model: str | None, count: int) -> str:
        if count <= 0:
            return ""
        self._reap()
        room = self._budget.miners() - len(self._procs)
        if room < count:
            log.warning(
                "the local budget fits %d more miner(s), not %d; raise --scale-cpus or "
                "--scale-memory-mb, or lower --scale-miner-cpus / --scale-miner-memory-mb",
                max(room, 0),
                count,
            )
        started = [await self._spawn_one(model) for _ in range(max(0, min(count, room)))]
        return f"started {', '.join(started)}" if started else "no room in the local budget"

    def _miner_args(self, model: str | None) -> tuple[str, ...]:
        scaled = self._models.get(model or "")
        if scaled is None:
            return self._args
        return (*(a.replace("{model}", scaled.name) for a in self._args), *scaled.miner_args)

    async def _spawn_one(self, model: str | None) -> str:
        number = next(self._numbers)
        name = f"autoscale-{os.getpid()}-{number}"
        self._workdir.mkdir(parents=True, exist_ok=True)
        log_path = self._workdir / f"{name}.log"
        args = (
            *("-m", "inferswarm", "miner", "--router", self._router_url, "--name", name),
            *("--data-dir", str(self._workdir / name)),
            # Dies with this router, even one killed outright (kill -9, the OOM killer).
            *("--parent-pid", str(os.getpid())),
            *self._miner_args(model),
        )
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        token = await self._tokens.token()
        if token:  # in the environment, not the command line, where `ps` would show it
            env["INFERSWARM_JOIN_TOKEN"] = token
        with log_path.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *args,
                stdout=sink,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._procs[name] = _Process(name, proc, log_path, self._clock(), model)
        log.info(
            "started miner %s (pid %d) for %s, output in %s",
            name,
            proc.pid,
            model or "the model its flags give",
            log_path,
        )
        return name

    def _notice_joins(self) -> None:
        for conn in self._registry.connections():
            process = self._procs.get(conn.info.name)
            if process is None or process.joined:
                continue
            process.joined = True
            if process.model is None:  # one-model mode: learn it from the first to join
                self.model = self.model or conn.info.models[0].name
                for waiting in self._procs.values():
                    waiting.model = waiting.model or self.model
            elif not serves(conn, process.model):
                offered = ", ".join(o.name for o in conn.info.models)
                log.warning(
                    "miner %s was started for %s but serves %s; check --scale-model "
                    "'%s=MINER FLAGS' and {model} in --scale-miner-args",
                    conn.info.name,
                    process.model,
                    offered,
                    process.model,
                )
        self._reap()

    def _reap(self) -> None:
        """Forget miners that exited on their own, saying why."""
        for name, process in list(self._procs.items()):
            if process.proc.returncode is None:
                continue
            del self._procs[name]
            tail = process.log.read_text(errors="replace")[-OUTPUT_SHOWN:]
            log.warning(
                "miner %s exited with code %s; its last output:\n%s",
                name,
                process.proc.returncode,
                tail,
            )

    async def _stop(self, process: _Process) -> None:
        if process.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning(
                "miner %s did not stop within %g s; killing it", process.name, STOP_TIMEOUT_S
            )
            with contextlib.suppress(ProcessLookupError):
                process.proc.kill()
            await process.proc.wait()


class CommandProvider:
    """Runs an operator's command with the count wanted, for any infrastructure.

    The command is run by the shell with ``{model}``, ``{count}`` and
    ``{miners}`` (names of the miners drained for a scale-down, comma
    separated) filled in, quoted, and also set as ``INFERSWARM_SCALE_MODEL``,
    ``INFERSWARM_SCALE_COUNT`` and ``INFERSWARM_SCALE_MINERS``.
    """

    name = "command"

    def __init__(
        self,
        command: str,
        models: tuple[str, ...],
        registry: MinerRegistry,
        start_timeout_s: float,
    ) -> None:
        self._command = command
        self._models = set(models)
        self._registry = registry
        self._start_timeout_s = start_timeout_s
        self._asked: dict[str, tuple[int, float]] = {}
        """Per model: the count last asked for, and when."""

    def owns(self, conn: MinerConnection) -> bool:
        return True

    def models(self) -> set[str]:
        return set(self._models)

    def starting(self, model: str, now: float) -> int:
        asked = self._asked.get(model)
        if asked is None or now - asked[1] >= self._start_timeout_s:
            return 0
        live = sum(
            serves(c, model) and c.state is MinerState.LIVE for c in self._registry.connections()
        )
        return max(0, asked[0] - live)

    def headroom(self, model: str) -> int | None:
        return None

    async def start(self, count: int) -> None:
        # Nothing yet: the first evaluation brings each model up to the minimum, and
        # miners already running (a router restart) are counted before any command runs.
        return None

    async def grow(self, model: str, count: int, now: float) -> str:
        live = sum(
            serves(c, model) and c.state is MinerState.LIVE for c in self._registry.connections()
        )
        total = live + self.starting(model, now) + count
        self._asked[model] = (total, now)
        return await self._run(model, total, [])

    async def release(self, model: str, conns: list[MinerConnection]) -> str:
        live = sum(
            serves(c, model) and c.state is MinerState.LIVE for c in self._registry.connections()
        )
        self._asked.pop(model, None)
        return await self._run(model, live, [c.info.name for c in conns])

    async def close(self) -> None:
        return None

    async def _run(self, model: str, count: int, miners: list[str]) -> str:
        names = ",".join(miners)
        command = self._command.format(
            model=shlex.quote(model), count=count, miners=shlex.quote(names)
        )
        env = {
            **os.environ,
            "INFERSWARM_SCALE_MODEL": model,
            "INFERSWARM_SCALE_COUNT": str(count),
            "INFERSWARM_SCALE_MINERS": names,
        }
        proc = await asyncio.create_subprocess_shell(
            command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
        )
        output, _ = await proc.communicate()
        text = output.decode(errors="replace")[-OUTPUT_SHOWN:]
        if proc.returncode:
            log.warning("scale command %r exited with %d:\n%s", command, proc.returncode, text)
            return f"command exited with {proc.returncode}"
        log.info("scale command %r done", command)
        return f"ran {command!r}"


class StandbyProvider:
    """Activates and parks miners that stay connected: for volunteer networks,
    where the router cannot start machines. A parked miner gets no tasks and
    heartbeats slowly."""

    name = "standby"

    def __init__(self, registry: MinerRegistry, parked_heartbeat_s: float, heartbeat_s: float):
        self._registry = registry
        self._parked_heartbeat_s = parked_heartbeat_s
        self._heartbeat_s = heartbeat_s

    def owns(self, conn: MinerConnection) -> bool:
        return True

    def models(self) -> set[str]:
        return {
            offer.name
            for conn in self._registry.connections()
            if conn.state is MinerState.PARKED
            for offer in conn.info.models
        }

    def starting(self, model: str, now: float) -> int:
        return 0

    def headroom(self, model: str) -> int | None:
        return len(self._parked(model))

    def _parked(self, model: str) -> list[MinerConnection]:
        return [
            c
            for c in self._registry.connections()
            if c.state is MinerState.PARKED and serves(c, model)
        ]

    async def start(self, count: int) -> None:
        return None

    async def grow(self, model: str, count: int, now: float) -> str:
        chosen = sorted(self._parked(model), key=lambda c: -(c.tokens_per_s or 0.0))[:count]
        for conn in chosen:
            await self._registry.activate(conn, self._heartbeat_s)
        names = ", ".join(c.info.name for c in chosen) or "none"
        short = f" (only {len(chosen)} parked)" if len(chosen) < count else ""
        return f"activated {names}{short}"

    async def release(self, model: str, conns: list[MinerConnection]) -> str:
        for conn in conns:
            await self._registry.park(conn, self._parked_heartbeat_s)
        return f"parked {', '.join(c.info.name for c in conns)}"

    async def close(self) -> None:
        return None

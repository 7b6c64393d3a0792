"""A chaos driver shared by the chaos test and bench/chaos.py: miners are
killed with SIGKILL at random and restarted, while requests run."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Self

import openai

from netutil import Network, Proc

MODEL = "fake-model"
FAKE_MINER = ("--fake-speed", "100", "--slots", "4", "--fake-output-tokens", "1000")
"""Every chaos miner: deterministic answers as long as max_tokens asks."""


def start_chaos_miners(net: Network, count: int, *extra: str) -> dict[str, tuple[str, ...]]:
    """Start ``count`` fake miners, each with a data dir so a restart keeps its id;
    returns their arguments, for restarts."""
    miner_args = {
        f"chaos-{i}": (*FAKE_MINER, "--data-dir", str(net.workdir / f"miner-{i}"), *extra)
        for i in range(count)
    }
    for name, args in miner_args.items():
        net.start_miner(name, *args)
    net.wait_miners(count)
    return miner_args


@dataclass
class Result:
    index: int
    stream: bool
    ok: bool
    latency_s: float
    error: str = ""


class _Periodic:
    """Runs ``strike`` in a thread every ``interval_s`` (jittered +-50%) until exit."""

    def __init__(self, interval_s: float, seed: int) -> None:
        self.interval_s = interval_s
        self.rng = random.Random(seed)
        self.strikes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s * self.rng.uniform(0.5, 1.5)):
            self.strike()
            self.strikes += 1

    def pause(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def strike(self) -> None:
        raise NotImplementedError


class Killer(_Periodic):
    """Kills one random miner with SIGKILL and restarts it, again and again."""

    def __init__(
        self, net: Network, miner_args: dict[str, tuple[str, ...]], interval_s: float, seed: int = 0
    ) -> None:
        super().__init__(interval_s, seed)
        self.net = net
        self.miner_args = miner_args

    @property
    def kills(self) -> int:
        return self.strikes

    def strike(self) -> None:
        name = self.rng.choice(sorted(self.miner_args))
        for proc in self.live(name):
            proc.stop(signal.SIGKILL)
        self.net.start_miner(name, *self.miner_args[name])

    def live(self, name: str) -> list[Proc]:
        return [p for p in self.net.procs if p.name == name and p.popen.poll() is None]


def expected_text(max_tokens: int) -> str:
    """What the fake engine answers, whichever miners produce it."""
    return "".join(f" w{i}" for i in range(max_tokens))


def one_request(api: openai.OpenAI, index: int, stream: bool) -> Result:
    max_tokens = 5 + index % 37
    prompt = f"request {index}"
    started = time.perf_counter()
    try:
        if stream:
            chunks = api.completions.create(
                model=MODEL, prompt=prompt, max_tokens=max_tokens, stream=True
            )
            text = "".join(c.choices[0].text for c in chunks if c.choices)
        else:
            reply = api.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens
            )
            text = reply.choices[0].message.content or ""
            if reply.usage is None or reply.usage.completion_tokens != max_tokens:
                return Result(
                    index, stream, False, time.perf_counter() - started, f"usage {reply.usage}"
                )
    except openai.APIError as exc:
        return Result(index, stream, False, time.perf_counter() - started, str(exc))
    ok = text == expected_text(max_tokens)
    return Result(index, stream, ok, time.perf_counter() - started, "" if ok else f"text {text!r}")


def run_requests(net: Network, count: int, concurrency: int) -> list[Result]:
    with (
        openai.OpenAI(
            base_url=net.base_url + "/v1", api_key="none", max_retries=0, timeout=120
        ) as api,
        ThreadPoolExecutor(concurrency) as pool,
    ):
        futures = [pool.submit(one_request, api, i, i % 2 == 0) for i in range(count)]
        return [f.result() for f in futures]


class LinkCutter(_Periodic):
    """Cuts a link (no socket is closed) for ``down_s``, then restores it, again and again."""

    def __init__(
        self,
        cut: Callable[[], None],
        restore: Callable[[], None],
        interval_s: float,
        down_s: float,
        seed: int = 0,
    ) -> None:
        super().__init__(interval_s, seed)
        self.cut, self.restore, self.down_s = cut, restore, down_s

    @property
    def cuts(self) -> int:
        return self.strikes

    def strike(self) -> None:
        self.cut()
        self.pause(self.down_s)
        self.restore()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.restore()

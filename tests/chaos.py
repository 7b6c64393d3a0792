"""A chaos driver shared by the chaos test and bench/chaos.py: miners are
killed with SIGKILL at random and restarted, while requests run."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import openai

from netutil import Network, Proc

MODEL = "fake-model"


@dataclass
class Result:
    index: int
    stream: bool
    ok: bool
    latency_s: float
    error: str = ""


@dataclass
class Killer:
    """Kills one random miner every ``interval_s`` (jittered) and restarts it."""

    net: Network
    miner_args: dict[str, tuple[str, ...]]
    interval_s: float
    seed: int = 0
    kills: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Killer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)

    def _run(self) -> None:
        rng = random.Random(self.seed)
        while not self._stop.wait(self.interval_s * rng.uniform(0.5, 1.5)):
            name = rng.choice(sorted(self.miner_args))
            for proc in self.live(name):
                proc.stop(signal.SIGKILL)
            self.kills += 1
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


@dataclass
class LinkCutter:
    """Cuts a namespace's link (no socket is closed) for ``down_s`` every
    ``interval_s`` (jittered), then restores it."""

    cut: Callable[[], None]
    restore: Callable[[], None]
    interval_s: float
    down_s: float
    seed: int = 0
    cuts: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> LinkCutter:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)
        self.restore()

    def _run(self) -> None:
        rng = random.Random(self.seed)
        while not self._stop.wait(self.interval_s * rng.uniform(0.5, 1.5)):
            self.cut()
            self.cuts += 1
            self._stop.wait(self.down_s)
            self.restore()

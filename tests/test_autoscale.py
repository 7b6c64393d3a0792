"""Autoscaling with the ``local`` provider: a real router starting and stopping
real fake-engine miner processes under a low -> high -> low load step."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import psutil

from netutil import Network

MODEL = "fake-model"
INTERVAL_S = 1.0
DOWN_DELAY_S = 5.0
MINER_ARGS = "--engine fake --fake-speed 50 --slots 1"


def autoscale(net: Network) -> dict[str, Any]:
    response = httpx.get(net.base_url + "/v1/autoscale", params={"limit": 100}, timeout=5)
    response.raise_for_status()
    state: dict[str, Any] = response.json()
    return state


def events(net: Network) -> list[dict[str, Any]]:
    response = httpx.get(net.base_url + "/v1/network", timeout=5)
    response.raise_for_status()
    found: list[dict[str, Any]] = response.json()["events"]
    return found[::-1]  # oldest first


class Load:
    """``clients`` threads sending chat completions back to back until stopped."""

    def __init__(self, net: Network, model: str = MODEL) -> None:
        self._model = model
        self._client = openai.OpenAI(
            base_url=net.base_url + "/v1", api_key="none", max_retries=0, timeout=60
        )
        self._stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()

    def one(self) -> None:
        try:
            answer = self._client.chat.completions.create(
                model=self._model,
                messages=[{"role": "user", "content": "hello there"}],
                max_tokens=25,
            )
            assert answer.choices[0].message.content
            with self._lock:
                self.ok += 1
        except Exception as exc:  # every failure is reported by the test
            with self._lock:
                self.failures.append(f"{type(exc).__name__}: {exc}")

    @contextmanager
    def running(self, clients: int) -> Iterator[None]:
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                self.one()

        with ThreadPoolExecutor(clients) as pool:
            for _ in range(clients):
                pool.submit(loop)
            try:
                yield
            finally:
                stop.set()


def wait_for(what: str, check: Any, timeout: float, net: Network) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(
        f"{what} not within {timeout} s; autoscaler: {autoscale(net)['decisions'][-5:]}"
    )


@contextmanager
def reaping_children(net: Network) -> Iterator[None]:
    """Miners the router started must not outlive the test, whatever happens."""
    children: dict[int, psutil.Process] = {}
    try:
        yield
    finally:
        if net.router is not None and net.router.popen.poll() is None:
            for child in psutil.Process(net.router.popen.pid).children(recursive=True):
                children[child.pid] = child
        net.close()
        _, alive = psutil.wait_procs(list(children.values()), timeout=20)
        for child in alive:
            child.kill()
        assert not alive, "the router left miner processes running when it stopped"


def test_local_autoscaling_follows_a_load_step_without_losing_a_request(net: Network) -> None:
    net.open_join = False  # the router issues its own miners a join token
    net.start_router(
        *("--autoscale", "local", "--min-miners", "1", "--max-miners", "3"),
        *("--scale-interval", str(INTERVAL_S), "--scale-down-delay", str(DOWN_DELAY_S)),
        *("--scale-miner-args", MINER_ARGS, "--scale-miner-cpus", "0.1"),
        *("--ttft-slo", "5", "--target-utilization", "1"),
    )
    with reaping_children(net):
        net.wait_miners(1, timeout=30)  # the minimum, started by the router itself
        load = Load(net)
        with load.running(clients=1):
            time.sleep(3)
        assert len(net.miners()) == 1, "one client at a time needs no second miner"

        with load.running(clients=6):
            step_at = autoscale(net)["evaluations"]
            wait_for("three miners", lambda: len(net.miners()) == 3, 30, net)
            time.sleep(2)  # the new miners take work
        ups = [d for d in autoscale(net)["decisions"] if d["direction"] == "up"]
        assert ups, "no scale-up decision"
        assert ups[0]["evaluation"] <= step_at + 2, ups[0]
        assert ups[0]["signals"]["waiting"] > 0 or ups[0]["signals"]["busy_slots"] > 0

        with load.running(clients=1):
            time.sleep(2)
        wait_for("back to one miner", lambda: len(net.miners()) == 1, 40, net)

        assert load.failures == [], load.failures
        assert load.ok > 20
        decisions = autoscale(net)["decisions"]
        downs = [d for d in decisions if d["direction"] == "down"]
        assert [(d["current"], d["desired"]) for d in downs] == [(3, 2), (2, 1)]
        # Removed one at a time, each after the last change plus the cooldown.
        evaluations = [d["evaluation"] for d in decisions if d["direction"] != "hold"]
        gaps = [b - a for a, b in itertools.pairwise(evaluations)]
        assert all(gap >= DOWN_DELAY_S / INTERVAL_S for gap in gaps[-2:]), evaluations

        exposition = httpx.get(net.base_url + "/metrics", timeout=5).text
        assert f'inferswarm_autoscale_desired_miners{{model="{MODEL}"}} 1.0' in exposition
        assert f"inferswarm_scale_changes_total {len(ups) + len(downs)}.0" in exposition
        assert 'inferswarm_autoscale_decisions_total{direction="down"' in exposition

        # Every removed miner was drained by the router before it left.
        log = events(net)
        kinds = [(e["kind"], e["miner_name"]) for e in log]
        assert sum(kind == "scale" for kind, _ in kinds) == len(ups) + len(downs)
        for kind, name in kinds:
            if kind == "leave":
                assert ("draining", name) in kinds[: kinds.index((kind, name))]


def test_standby_parks_an_idle_miner_and_activates_it_under_load(net: Network) -> None:
    net.start_router(
        *("--autoscale", "standby", "--min-miners", "1", "--max-miners", "2"),
        *("--scale-interval", "0.5", "--scale-down-delay", "2", "--standby-heartbeat", "2"),
        *("--target-utilization", "1"),
    )
    miners = [net.start_miner(name, "--fake-speed", "50") for name in ("s1", "s2")]
    net.wait_miners(2)

    def states() -> list[str]:
        return sorted(str(m["state"]) for m in net.miners())

    wait_for("one miner parked", lambda: states() == ["live", "parked"], 20, net)
    parked = next(m for m in net.miners() if m["state"] == "parked")
    proc = next(p for p in miners if p.name == parked["name"])
    wait_for("the miner to hear it", lambda: "parked by the router" in proc.output(), 10, net)
    time.sleep(3)  # parked, it beats every 2 s: still connected past the 5 s heartbeat timeout
    assert states() == ["live", "parked"]

    load = Load(net)
    with load.running(clients=3):
        wait_for("both miners live", lambda: states() == ["live", "live"], 20, net)
        time.sleep(1)
    assert "activated by the router" in proc.output()
    assert load.failures == [], load.failures
    assert load.ok > 0


def test_local_scales_each_named_model_on_its_own(net: Network) -> None:
    def served() -> dict[str, int]:
        counts = {"fake-a": 0, "fake-b": 0}
        for miner in net.miners():
            for model in miner["models"]:  # type: ignore[attr-defined]
                counts[model] += 1
        return counts

    net.start_router(
        *("--autoscale", "local", "--min-miners", "1", "--max-miners", "2"),
        *("--scale-interval", "0.5", "--scale-down-delay", "60", "--target-utilization", "1"),
        *("--scale-miner-args", "--engine fake --model-name {model} --slots 1"),
        *("--scale-model", "fake-a=--fake-speed 50", "--scale-model", "fake-b=--fake-speed 40"),
        "--scale-miner-cpus",
        "0.1",
    )
    with reaping_children(net):
        # The minimum of each model, before any request asked for it.
        wait_for("a miner per model", lambda: served() == {"fake-a": 1, "fake-b": 1}, 30, net)
        load = Load(net, model="fake-b")
        with load.running(clients=4):
            wait_for("a second fake-b miner", lambda: served()["fake-b"] == 2, 30, net)
            time.sleep(1)  # the new miner takes work
        assert served() == {"fake-a": 1, "fake-b": 2}, "fake-a had no demand to follow"
        assert load.failures == [], load.failures
        ups = [d for d in autoscale(net)["decisions"] if d["direction"] == "up"]
        assert [(d["model"], d["current"], d["desired"]) for d in ups] == [("fake-b", 1, 2)]
        assert net.router is not None
        assert "for fake-b" in net.router.output()  # started with fake-b's own flags


def test_local_miners_die_with_a_router_killed_outright(net: Network) -> None:
    net.start_router(
        *("--autoscale", "local", "--min-miners", "2", "--max-miners", "2"),
        *("--scale-miner-args", MINER_ARGS, "--scale-miner-cpus", "0.1"),
    )
    assert net.router is not None
    net.wait_miners(2, timeout=30)
    miners = psutil.Process(net.router.popen.pid).children(recursive=True)
    assert len(miners) == 2, miners
    net.router.popen.kill()  # SIGKILL: the router gets no chance to stop them
    net.router.popen.wait()
    _, alive = psutil.wait_procs(miners, timeout=20)
    for orphan in alive:
        orphan.kill()
    assert not alive, "miners outlived their router"


def test_a_request_for_a_model_nobody_serves_waits_while_a_standby_miner_loads_it(
    net: Network,
) -> None:
    net.start_router(
        *("--autoscale", "standby", "--min-miners", "1", "--max-miners", "2"),
        *("--scale-interval", "0.5", "--scale-down-delay", "1", "--standby-heartbeat", "2"),
    )
    net.start_miner("s1", "--fake-speed", "50")
    net.wait_miners(1)
    loadable = ("--fake-loadable", "fake-b=10MB", "--fake-load-s", "0.5")
    net.start_miner("s2", "--fake-speed", "50", *loadable)
    net.wait_miners(2)

    def state(name: str) -> str:
        return next(str(m["state"]) for m in net.miners() if m["name"] == name)

    wait_for("s2 parked", lambda: state("s2") == "parked", 20, net)
    load = Load(net, model="fake-b")
    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(load.one)
    assert load.failures == [], load.failures
    assert load.ok == 4
    assert state("s2") == "live"
    placements = autoscale(net)["placements"]
    assert [(p["variant"], p["miner_name"], p["outcome"]) for p in placements] == [
        ("fake-b", "s2", "loaded")
    ]
    assert any(
        e["kind"] == "scale" and e["detail"].startswith("placing fake-b") for e in events(net)
    )
    # A model no miner can load is refused at once, as before.
    client = openai.OpenAI(base_url=net.base_url + "/v1", api_key="none", max_retries=0)
    try:
        client.completions.create(model="fake-nowhere", prompt="hi", max_tokens=2)
        raise AssertionError("a model nobody can load was accepted")
    except openai.NotFoundError as exc:
        assert "not served by any live miner" in str(exc)


def test_standby_loads_a_hot_model_onto_a_second_miner_and_unloads_it_when_it_cools(
    net: Network,
) -> None:
    net.start_router(
        *("--autoscale", "standby", "--min-miners", "1", "--max-miners", "2"),
        *("--scale-interval", "0.5", "--scale-down-delay", "1", "--standby-heartbeat", "2"),
        *("--target-utilization", "1"),
    )
    loadable = ("--slots", "1", "--fake-loadable", "fake-a=10MB", "--fake-load-s", "0.3")
    net.start_miner("s1", "--model-name", "fake-b", *loadable)
    net.start_miner("s2", "--model-name", "fake-c", *loadable)
    net.wait_miners(2)

    def serving(model: str) -> list[str]:
        return sorted(str(m["name"]) for m in net.miners() if model in m["models"])  # type: ignore[operator]

    load = Load(net, model="fake-a")
    with load.running(clients=3):  # nobody serves fake-a: one miner loads it, then the other
        wait_for("both miners serving fake-a", lambda: serving("fake-a") == ["s1", "s2"], 20, net)
    # Cold again: each miner is the only one serving its own model, so neither is
    # drained; one unloads fake-a.
    wait_for("fake-a on one miner", lambda: len(serving("fake-a")) == 1, 20, net)
    assert load.failures == [], load.failures
    assert (serving("fake-b"), serving("fake-c")) == (["s1"], ["s2"])
    assert sorted(str(m["state"]) for m in net.miners()) == ["live", "live"]
    state = autoscale(net)
    reasons = [p["reason"] for p in state["placements"] if p["outcome"] == "loaded"]
    assert len(reasons) == 2, state["placements"]
    assert "no miner serves it" in reasons[0]
    assert "scaling wants 1 more miner(s) for fake-a" in reasons[1]
    assert [(u["model"], u["way"], u["outcome"]) for u in state["unloads"]] == [
        ("fake-a", "unload", "unloaded")
    ]


def run_router(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    command = [sys.executable, "-m", "inferswarm", "router", "--no-auth", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


def test_bad_autoscale_flags_say_what_to_change() -> None:
    crossed = run_router("--autoscale", "local", "--min-miners", "3", "--max-miners", "2")
    assert crossed.returncode == 2
    assert "--max-miners (2) is below --min-miners (3)" in crossed.stderr
    no_command = run_router("--autoscale", "command")
    assert no_command.returncode == 2
    assert "needs --scale-command" in no_command.stderr
    unnamed = run_router("--autoscale", "local", "--scale-miner-args", "--model-name {model}")
    assert unnamed.returncode == 2
    assert "add --scale-model NAME" in unnamed.stderr
    nameless = run_router("--autoscale", "local", "--scale-model", "=--engine fake")
    assert nameless.returncode == 2
    assert "names no model" in nameless.stderr


def test_a_local_miner_that_cannot_start_is_reported_in_the_router_log(net: Network) -> None:
    net.start_router(
        *("--autoscale", "local", "--scale-interval", "0.5"),
        *("--scale-miner-args", "--engine fake --no-such-flag"),
    )
    with reaping_children(net):
        deadline = time.monotonic() + 30
        assert net.router is not None
        while "exited with code 2" not in net.router.output():
            assert time.monotonic() < deadline, net.router.output()[-3000:]
            time.sleep(0.2)
        assert "No such option" in net.router.output()

"""The CLI as a user runs it: help, status, and `up` bringing a network up and down."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import psutil

from netutil import Network, free_port

CLI = [sys.executable, "-m", "inferswarm"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=env)


def test_help_names_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("up", "router", "miner", "status"):
        assert command in result.stdout


def test_status_shows_miners_as_a_table_and_as_json(net: Network) -> None:
    net.start_router()
    net.start_miner("pi-board", "--fake-speed", "30", "--slots", "3")
    net.wait_miners(1)
    served = httpx.post(
        net.base_url + "/v1/completions",
        json={"model": "fake-model", "prompt": "hi", "max_tokens": 2},
        timeout=30,
    )
    assert served.status_code == 200, served.text
    table = run_cli("status", "--router", net.base_url)
    assert table.returncode == 0, table.stderr
    assert re.search(r"ledger:\s+1\s+request", table.stdout), table.stdout
    assert "pi-board" in table.stdout and "fake-model" in table.stdout and "0/3" in table.stdout
    assert "models" in table.stdout and "recent events" in table.stdout
    assert re.search(r"join\s+│\s+pi-board", table.stdout), table.stdout
    raw = run_cli("status", "--router", net.base_url, "--json")
    miner = json.loads(raw.stdout)["miners"][0]
    assert {"id", "name", "state", "models", "slots", "busy", "tokens_per_s"} <= miner.keys()
    assert miner["slots"] == 3 and miner["state"] == "live"


def test_status_watch_refreshes_until_its_count(net: Network) -> None:
    net.start_router()
    net.start_miner("m1")
    net.wait_miners(1)
    watched = run_cli(
        "status", "--router", net.base_url, "--watch", "--interval", "0.2", "--count", "3"
    )
    assert watched.returncode == 0, watched.stderr
    assert "m1" in watched.stdout and "fake-model" in watched.stdout


def test_status_explains_an_unreachable_router() -> None:
    result = run_cli("status", "--router", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "Cannot reach the router" in result.stderr


def test_miner_with_a_missing_model_file_says_so(tmp_path: Path) -> None:
    result = run_cli("miner", "--model", str(tmp_path / "missing.gguf"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def start_up(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], list[str], int]:
    port = free_port()
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*CLI, "up", "--port", str(port), "--data-dir", str(tmp_path / "data"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Press Ctrl-C" in line:
            return proc, lines, port
    proc.kill()
    proc.wait()
    proc.stdout.close()
    raise AssertionError("up did not finish starting:\n" + "".join(lines))


def stop_up(proc: subprocess.Popen[str], port: int) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        raise AssertionError("the router still answers after up stopped")
    except httpx.ConnectError:
        pass


def api_key_from(lines: list[str]) -> str:
    match = re.search(r"API key:\s+(isk-\S+)", "".join(lines))
    assert match, "".join(lines)
    return match.group(1)


def test_up_starts_a_network_prints_how_to_use_it_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    proc, lines, port = start_up(tmp_path, "--engine", "fake", "--miners", "2")
    try:
        output = "".join(lines)
        key = api_key_from(lines)
        assert f"http://127.0.0.1:{port}/v1" in output
        assert "curl" in output and "from openai import OpenAI" in output
        assert f"http://127.0.0.1:{port}/dashboard" in output
        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0
        ) as api:
            reply = api.chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
        assert reply.choices[0].message.content == " w0 w1"
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
    finally:
        stop_up(proc, port)


def test_watch_redraws_with_each_answer_and_shows_a_lost_router() -> None:
    """The refresh loop on canned /v1/network answers (the live test above runs it for real)."""
    from rich.console import Console

    from inferswarm.cli.status_cmd import watch_network

    first = network_doc(["m1"])
    answers = iter([network_doc(["m1", "m2"]), None])

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        if answer is None:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json=answer)

    console = Console(record=True, force_terminal=True, width=200)
    client = httpx.Client(base_url="http://router", transport=httpx.MockTransport(handler))
    watch_network(client, "http://router", first, 0.01, 3, console)
    shown = console.export_text()
    assert "m2" in shown  # the second answer was drawn
    assert "Cannot reach the router" in shown  # then the third fetch failed, and it says so


def network_doc(names: list[str]) -> dict[str, object]:
    miner = {
        "id": "m-x",
        "state": "live",
        "models": ["fake-model"],
        "tier": 1,
        "slots": 1,
        "busy": 0,
        "tokens_per_s": None,
        "utilisation": {"cpu_percent": None, "ram_percent": None},
    }
    return {
        "miners": [{**miner, "name": name} for name in names],
        "models": [],
        "events": [],
        "queue": {"depth": 0, "capacity": 8},
        "in_flight": 0,
        "slots": len(names),
        "busy_slots": 0,
        "last_minute": {
            "generation_tokens_per_s": 0.0,
            "ttft_p50": None,
            "ttft_p95": None,
            "e2e_p50": None,
            "e2e_p95": None,
        },
        "totals": {},
    }


def test_up_takes_its_router_and_miners_along_when_killed_outright(tmp_path: Path) -> None:
    proc, _, _ = start_up(tmp_path, "--engine", "fake", "--miners", "1", "--no-auth")
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()  # SIGKILL: `up` gets no chance to stop them
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()
    assert len(children) == 2, children  # the router and one miner
    _, alive = psutil.wait_procs(children, timeout=30)
    for orphan in alive:
        orphan.kill()
    assert not alive, "the router or a miner outlived `inferswarm up`"

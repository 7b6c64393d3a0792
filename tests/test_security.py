"""Access control end to end, on real router and miner processes: API keys
(401/403/429, scopes, rate limits under concurrent load, quotas across a
restart, revocation), the admin API and its audit log, join tokens and bans
at the miner handshake, what miners see, TLS on both links, size limits,
and that no key, token or prompt reaches the logs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from inferswarm.protocol import (
    PROTOCOL_VERSION,
    HardwareProfile,
    MinerId,
    ModelName,
    ModelOffer,
    Register,
    TaskAssign,
    TaskChunk,
    TaskDone,
    encode,
    parse_router_message,
)
from netutil import Network, network
from tlsutil import make_certificates

MODEL = "fake-model"
LIMITS = ("--max-streams-per-key", "1", "--max-tokens-limit", "100", "--max-prompt-tokens", "100")
PROMPT = "the zebra-secret-prompt 4242 must never be logged"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "inferswarm", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def created(*args: str) -> str:
    """The key or token a `create` command printed alone on its last line."""
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def cli_json(*args: str) -> Any:
    result = cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def post(net: Network, key: str | None, **body: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    payload = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], **body}
    return httpx.post(
        net.base_url + "/v1/chat/completions", json=payload, headers=headers, timeout=30
    )


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Network, dict[str, str]]]:
    """A router with auth and join tokens; keys made with the CLI in its data dir."""
    workdir = tmp_path_factory.mktemp("secured")
    data = ("--data-dir", str(workdir / "router"))
    secrets = {
        "admin": cli_json("keys", "create", "--name", "ops", "--admin", *data)["key"],
        "scoped": created("keys", "create", "--name", "scoped", "--models", "other-model", *data),
        "rpm": created("keys", "create", "--name", "burst", "--rpm", "5", *data),
        "quota": created("keys", "create", "--name", "small", "--quota-tokens", "40", *data),
        "plain": created("keys", "create", "--name", "plain", *data),
        "token": created("tokens", "create", "--name", "lab", *data),
    }
    with network(workdir) as net:
        net.auth, net.open_join = True, False
        net.start_router(*LIMITS)
        net.start_miner(
            "m1", "--join-token", secrets["token"], "--slots", "4", "--fake-speed", "20"
        )
        net.api_key = secrets["admin"]
        net.wait_miners(1)
        yield net, secrets


def test_keys_are_stored_hashed_and_listed_without_secrets(
    secured: tuple[Network, dict[str, str]],
) -> None:
    net, secrets = secured
    database = (net.workdir / "router" / "router.db").read_bytes()
    for name in ("admin", "rpm", "token"):
        assert secrets[name].encode() not in database
    assert oct((net.workdir / "router" / "secret.key").stat().st_mode & 0o777) == "0o600"
    listed = cli("keys", "list", "--json", "--data-dir", str(net.workdir / "router"))
    names = {k["name"]: k for k in json.loads(listed.stdout)}
    assert names["burst"]["rpm"] == 5 and names["scoped"]["models"] == ["other-model"]
    assert secrets["rpm"] not in listed.stdout


def test_missing_unknown_and_out_of_scope_keys(secured: tuple[Network, dict[str, str]]) -> None:
    net, secrets = secured
    missing = post(net, None, max_tokens=1)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_api_key"
    nobody = openai.OpenAI(base_url=net.base_url + "/v1", api_key="isk-nope", max_retries=0)
    with nobody, pytest.raises(openai.AuthenticationError) as unknown:
        nobody.models.list()
    assert "unknown or revoked" in str(unknown.value)
    with openai.OpenAI(
        base_url=net.base_url + "/v1", api_key=secrets["scoped"], max_retries=0
    ) as api:
        with pytest.raises(openai.PermissionDeniedError) as scoped:
            api.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1
            )
        assert scoped.value.code == "model_not_allowed" and "other-model" in str(scoped.value)
        assert [m.id for m in api.models.list()] == []  # it sees only its models
    assert post(net, secrets["plain"], max_tokens=1).status_code == 200


def test_twenty_concurrent_requests_against_rpm_5_let_exactly_5_through(
    secured: tuple[Network, dict[str, str]],
) -> None:
    net, secrets = secured

    async def burst() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {secrets['rpm']}"}
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        async with httpx.AsyncClient(base_url=net.base_url, headers=headers, timeout=30) as http:
            return await asyncio.gather(
                *(http.post("/v1/chat/completions", json=body) for _ in range(20))
            )

    if time.time() % 60 > 50:  # limits count per clock minute: keep the burst inside one
        time.sleep(61 - time.time() % 60)
    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 5 + [429] * 15
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60


def test_quota_is_settled_with_real_usage_and_survives_a_restart(
    secured: tuple[Network, dict[str, str]],
) -> None:
    net, secrets = secured
    used: list[int] = []
    # Each request reserves ~13 prompt tokens + 3 and is settled with what it used.
    while (spent := post(net, secrets["quota"], max_tokens=3)).status_code == 200:
        used.append(spent.json()["usage"]["total_tokens"])
        assert len(used) < 10, used
    assert len(used) >= 2 and sum(used) <= 40, used
    assert spent.status_code == 429, spent.text
    assert spent.json()["error"]["code"] == "insufficient_quota"
    assert "Retry-After" in spent.headers
    assert net.router is not None
    net.router.stop()
    net.procs.remove(net.router)
    net.router.log.rename(net.workdir / "router-before-restart.log")  # kept for the log check
    admin, net.api_key = net.api_key, None  # (else it is passed as a bootstrap client key)
    net.start_router(*LIMITS)  # same data dir: the counters come back
    net.api_key = admin
    net.wait_miners(1)
    assert post(net, secrets["quota"], max_tokens=3).status_code == 429


def test_size_limits_and_streams_per_key(secured: tuple[Network, dict[str, str]]) -> None:
    net, secrets = secured
    big = post(net, secrets["plain"], max_tokens=500)
    assert big.status_code == 400 and big.json()["error"]["code"] == "max_tokens_too_large"
    long_prompt = {"messages": [{"role": "user", "content": "word " * 200}], "max_tokens": 1}
    long = post(net, secrets["plain"], **long_prompt)
    assert long.status_code == 400 and long.json()["error"]["code"] == "prompt_too_long"
    headers = {"Authorization": f"Bearer {secrets['plain']}"}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 40,
        "stream": True,
    }
    with httpx.stream(
        "POST", net.base_url + "/v1/chat/completions", json=body, headers=headers, timeout=30
    ) as first:
        assert first.status_code == 200
        second = post(net, secrets["plain"], max_tokens=40, stream=True)
        assert second.status_code == 429
        assert second.json()["error"]["code"] == "too_many_streams"
        first.read()
    assert post(net, secrets["plain"], max_tokens=1, stream=True).status_code == 200


def test_batches_keep_to_the_key_scope_and_limits(
    secured: tuple[Network, dict[str, str]],
) -> None:
    net, secrets = secured
    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    }
    for name, code in (("scoped", "model_not_allowed"), ("quota", "token_limited_key")):
        with openai.OpenAI(
            base_url=net.base_url + "/v1", api_key=secrets[name], max_retries=0
        ) as api:
            upload = api.files.create(file=("in.jsonl", json.dumps(line).encode()), purpose="batch")
            with pytest.raises(openai.PermissionDeniedError) as refused:
                api.batches.create(
                    input_file_id=upload.id,
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                )
        assert refused.value.code == code


def test_admin_api_needs_an_admin_key_and_is_audited(
    secured: tuple[Network, dict[str, str]],
) -> None:
    net, secrets = secured
    forbidden = httpx.get(
        net.base_url + "/v1/admin/keys",
        headers={"Authorization": f"Bearer {secrets['plain']}"},
    )
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "admin_only"
    remote = ("--router", net.base_url, "--admin-key", secrets["admin"])
    made = cli_json("keys", "create", "--name", "remote", *remote)
    assert post(net, made["key"], max_tokens=1).status_code == 200
    revoked = cli("keys", "revoke", made["id"], *remote)
    assert revoked.returncode == 0, revoked.stderr
    assert post(net, made["key"], max_tokens=1).status_code == 401
    again = cli("keys", "revoke", made["id"], *remote)
    assert again.returncode == 1 and "no active API key" in again.stderr
    audit = cli_json("audit", *remote)
    actions = [(e["action"], e["target"]) for e in audit]
    assert ("key.revoke", made["id"]) in actions and ("key.create", made["id"]) in actions
    assert any(a == "token.create" for a, _ in actions)
    assert all(made["key"] not in json.dumps(e) for e in audit)


def test_miners_need_a_valid_token_and_a_ban_removes_one(
    secured: tuple[Network, dict[str, str]],
) -> None:
    net, secrets = secured
    data = ("--data-dir", str(net.workdir / "router"))
    intruder = net.start_miner("intruder")
    assert intruder.popen.wait(30) == 2
    assert "needs a join token" in intruder.output()
    revoked_token = created("tokens", "create", "--name", "old", *data)
    token_id = cli_json("tokens", "list", *data)[-1]["id"]
    assert cli("tokens", "revoke", token_id, *data).returncode == 0
    stale = net.start_miner("stale", "--join-token", revoked_token)
    assert stale.popen.wait(30) == 2
    assert "revoked or has expired" in stale.output()
    assert net.router is not None and "refused miner" in net.router.output()

    miner_id = str(net.wait_miners(1)[0]["id"])
    remote = ("--router", net.base_url, "--admin-key", secrets["admin"])
    banned = cli("bans", "add", miner_id, "--reason", "wrong answers", *remote)
    assert banned.returncode == 0, banned.stderr
    m1 = next(p for p in net.procs if p.name == "m1")
    assert m1.popen.wait(30) == 2  # dropped, redialled, refused
    assert "banned" in m1.output() and "wrong answers" in m1.output()
    assert net.miners() == []
    bans = cli_json("bans", "list", *data)
    assert [b["miner_id"] for b in bans] == [miner_id]


def test_no_key_token_or_prompt_in_any_log(secured: tuple[Network, dict[str, str]]) -> None:
    net, secrets = secured
    logs = {path.name: path.read_text(errors="replace") for path in net.workdir.glob("*.log")}
    assert {"router.log", "router-before-restart.log", "m1.log", "intruder.log"} <= set(logs)
    assert "refused miner" in logs["router.log"], "the router log is not the one expected"
    for name, text in logs.items():
        for what, secret in secrets.items():
            assert secret not in text, f"the {what} secret is in the {name} log"
        assert "zebra-secret-prompt" not in text, f"a prompt is in the {name} log"


def fake_registration() -> Register:
    return Register(
        protocol_version=PROTOCOL_VERSION,
        miner_id=MinerId("spy-miner"),
        name="spy",
        engine="fake",
        hardware=HardwareProfile(cpu_model="test", cpu_cores=1, ram_bytes=2**30),
        models=(ModelOffer(name=ModelName("spy-model"), context_length=2048),),
        slots=1,
    )


def test_a_miner_sees_only_the_task(tmp_path: Path) -> None:
    """A hand-driven miner records every frame the router sends it."""
    with network(tmp_path, api_key="isk-client-secret-key") as net:
        net.start_router()
        frames: list[str] = []
        with connect(net.base_url.replace("http", "ws") + "/miner/ws") as ws:
            ws.send(encode(fake_registration()))
            frames.append(str(ws.recv(timeout=5)))

            def serve_one_task() -> None:
                while True:
                    frame = str(ws.recv(timeout=20))
                    frames.append(frame)
                    task = parse_router_message(frame)
                    if isinstance(task, TaskAssign):
                        ws.send(encode(TaskChunk(task_id=task.task_id, text="ok")))
                        done = TaskDone(
                            task_id=task.task_id,
                            finish_reason="stop",
                            prompt_tokens=3,
                            completion_tokens=1,
                        )
                        ws.send(encode(done))
                        return

            miner = threading.Thread(target=serve_one_task)
            miner.start()
            with openai.OpenAI(
                base_url=net.base_url + "/v1", api_key="isk-client-secret-key", max_retries=0
            ) as api:
                reply = api.chat.completions.create(
                    model="spy-model",
                    messages=[{"role": "user", "content": "summarise this"}],
                    user="alice@example.com",
                    extra_headers={"X-Client-Id": "client-7"},
                    max_tokens=5,
                )
            miner.join(20)
    assert reply.choices[0].message.content == "ok"
    sent = "\n".join(frames)
    assert "summarise this" in sent  # the task itself
    for private in ("isk-client-secret-key", "key-", "alice@example.com", "client-7", "127.0.0.1"):
        assert private not in sent, f"{private!r} reached the miner"
    task = json.loads(frames[-1])
    assert set(task) <= {"type", "task_id", "model", "prompt", "messages", "sampling", "resume"}


def test_tls_on_the_client_api_and_the_miner_gateway(tmp_path: Path) -> None:
    """Also: --log-prompts is the one way prompts reach the log."""
    ca, cert, key = make_certificates(tmp_path)
    with network(tmp_path) as net:
        net.tls_ca = ca
        net.start_router("--tls-cert", str(cert), "--tls-key", str(key), "--log-prompts")
        assert net.base_url.startswith("https://")
        net.start_miner("tls-miner", "--ca-cert", str(ca))
        net.wait_miners(1)
        with (
            httpx.Client(verify=net.verify()) as http,
            openai.OpenAI(
                base_url=net.base_url + "/v1", api_key="none", max_retries=0, http_client=http
            ) as api,
        ):
            reply = api.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "log me 31337"}], max_tokens=2
            )
        assert reply.choices[0].message.content == " w0 w1"
        assert net.router is not None and "log me 31337" in net.router.output()  # --log-prompts
        assert "auth is OFF" in net.router.output() and "--open-join" in net.router.output()
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(net.base_url + "/healthz")  # not trusted without the CA
        untrusting = net.start_miner("no-ca")
        deadline = time.monotonic() + 20
        while "cannot verify the TLS certificate" not in untrusting.output():
            assert time.monotonic() < deadline, untrusting.output()
            time.sleep(0.2)
        assert len(net.miners()) == 1


def test_websocket_messages_over_the_limit_are_refused(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        net.start_router("--ws-max-mb", "0.01")
        with connect(net.base_url.replace("http", "ws") + "/miner/ws", max_size=2**20) as ws:
            ws.send("x" * 20_000)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009

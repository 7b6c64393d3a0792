"""A real router and real fake-engine miner processes on loopback, driven by the
official openai client: routing, streaming, errors, failure handling."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import httpx
import openai
import pytest
from websockets.sync.client import connect

from inferswarm.protocol import PROTOCOL_VERSION, MinerId, encode, parse_router_message
from netutil import Network

MODEL = "fake-model"


def client(net: Network) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=net.base_url + "/v1", api_key=net.api_key or "none", max_retries=0, timeout=60
    )


def chat(net: Network, content: str = "hello there", **kwargs: Any) -> Any:
    with client(net) as api:
        return api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content}], **kwargs
        )


def wait_until(predicate: Any, timeout: float = 15, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def by_name(net: Network) -> dict[str, dict[str, Any]]:
    return {str(m["name"]): m for m in net.miners()}


def test_chat_and_completions_through_the_router(net: Network) -> None:
    net.start_router()
    net.start_miner("m1")
    net.wait_miners(1)
    with client(net) as api:
        reply = chat(net, max_tokens=5)
        assert reply.choices[0].message.content == " w0 w1 w2 w3 w4"
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage is not None and reply.usage.completion_tokens == 5
        assert reply.usage.prompt_tokens > 0

        natural = chat(net, max_tokens=100)
        assert natural.choices[0].finish_reason == "stop"
        assert natural.usage is not None and natural.usage.completion_tokens == 24

        text = api.completions.create(model=MODEL, prompt="one two three", max_tokens=3)
        assert text.choices[0].text == " w0 w1 w2"
        assert text.usage is not None and text.usage.prompt_tokens == 3

        assert [m.id for m in api.models.list().data] == [MODEL]


def test_streaming_chat_and_completion(net: Network) -> None:
    net.start_router()
    net.start_miner("m1", "--fake-speed", "200")
    net.wait_miners(1)
    with client(net) as api:
        stream = api.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        deltas = [
            c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
        ]
        assert deltas == [" w0", " w1", " w2", " w3"]
        finishes = [
            c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
        ]
        assert finishes == ["length"]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4

        pieces = [
            c.choices[0].text
            for c in api.completions.create(model=MODEL, prompt="x", max_tokens=2, stream=True)
        ]
        assert "".join(pieces) == " w0 w1"


def test_bad_requests_get_openai_errors(net: Network) -> None:
    net.start_router()
    net.start_miner("m1", "--ctx", "1024")
    net.wait_miners(1)
    with client(net) as api:
        with pytest.raises(openai.NotFoundError) as unknown:
            api.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
        assert unknown.value.code == "model_not_found"
        assert "Available models: fake-model" in unknown.value.message

        with pytest.raises(openai.BadRequestError) as empty:
            api.chat.completions.create(model=MODEL, messages=[])
        assert empty.value.param == "messages"

        with pytest.raises(openai.BadRequestError) as too_long:
            chat(net, max_tokens=5000)
        assert too_long.value.code == "context_length_exceeded"

        with pytest.raises(openai.BadRequestError) as prompt_too_long:
            chat(net, content="word " * 1100, max_tokens=10)
        assert prompt_too_long.value.code == "context_length_exceeded"

        for body, fragment in [
            (b"{not json", "not valid JSON"),
            (b"", "empty"),
            (b'{"model": "fake-model"}', "'messages'"),
            (b'{"model": "fake-model", "messages": "hi"}', "messages"),
            (b'{"model": 3, "messages": [{"role": "user", "content": "x"}]}', "'model'"),
            (b'{"model": "fake-model", "messages": [{"role": "wizard", "content": "x"}]}', "role"),
            (
                b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "temperature": -1}',
                "temperature",
            ),
        ]:
            response = httpx.post(net.base_url + "/v1/chat/completions", content=body)
            assert response.status_code == 400, body
            error = response.json()["error"]
            assert fragment in error["message"], (body, error)
            assert error["type"] == "invalid_request_error"

        huge = httpx.post(net.base_url + "/v1/completions", content=b"x" * (5 * 2**20))
        assert huge.status_code == 413
        assert "larger than the limit" in huge.json()["error"]["message"]

        unknown_path = httpx.get(net.base_url + "/v1/nothing")
        assert unknown_path.status_code == 404 and "error" in unknown_path.json()

        # After all of that the router still serves.
        assert chat(net, max_tokens=1).choices[0].message.content == " w0"


def test_no_miner_means_503_with_a_reason(net: Network) -> None:
    net.start_router()
    response = httpx.post(
        net.base_url + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 404  # the model is unknown while no miner serves it
    assert "no miner is connected" in response.json()["error"]["message"]


def test_load_is_spread_across_miners(net: Network) -> None:
    net.start_router()
    for name in ("m1", "m2"):
        net.start_miner(name, "--fake-speed", "40", "--slots", "2")
    net.wait_miners(2)
    threads = [
        threading.Thread(target=chat, args=(net,), kwargs={"max_tokens": 20}) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    done = {name: m["completed"] for name, m in by_name(net).items()}
    assert done == {"m1": 4, "m2": 4}


def test_a_miner_killed_before_its_first_token_fails_over(net: Network) -> None:
    net.start_router()
    doomed = net.start_miner("doomed", "--fake-latency", "30")
    net.wait_miners(1)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(reply=chat(net, max_tokens=3)))
    thread.start()
    wait_until(lambda: by_name(net)["doomed"]["busy"] == 1, what="the task to reach 'doomed'")
    net.start_miner("healthy", "--fake-speed", "10")
    net.wait_miners(2)
    doomed.stop(signal.SIGKILL)
    thread.join(30)
    assert result["reply"].choices[0].message.content == " w0 w1 w2"
    assert set(by_name(net)) == {"healthy"}


def test_a_silent_miner_is_dropped_and_its_task_moves(net: Network) -> None:
    net.start_router("--heartbeat-timeout", "2")
    frozen = net.start_miner("frozen", "--fake-latency", "30")
    net.wait_miners(1)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(reply=chat(net, max_tokens=2)))
    thread.start()
    wait_until(lambda: by_name(net)["frozen"]["busy"] == 1, what="the task to reach 'frozen'")
    net.start_miner("healthy")
    net.wait_miners(2)
    frozen.popen.send_signal(signal.SIGSTOP)  # alive but silent: no heartbeats, no close
    try:
        started = time.monotonic()
        thread.join(30)
        assert result["reply"].choices[0].message.content == " w0 w1"
        assert time.monotonic() - started < 10
        assert set(by_name(net)) == {"healthy"}
    finally:
        frozen.popen.send_signal(signal.SIGCONT)


def stream_text(
    net: Network, max_tokens: int, kill: Any = None, at_chunk: int = 2
) -> tuple[str, Any]:
    """Stream a chat answer; call ``kill`` once ``at_chunk`` chunks arrived."""
    with client(net) as api:
        stream = api.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x"}],
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
        )
        parts, usage, received = [], None, 0
        for chunk in stream:
            usage = chunk.usage or usage
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
                received += 1
                if received == at_chunk and kill is not None:
                    kill()
        return "".join(parts), usage


def test_a_stream_migrates_to_another_miner_when_its_miner_dies(net: Network) -> None:
    net.start_router()
    for name in ("first", "second"):
        net.start_miner(name, "--fake-speed", "20", "--fake-output-tokens", "1000")
    net.wait_miners(2)

    def kill_the_streaming_miner() -> None:
        streaming = busy_miner(net)
        for proc in net.procs:
            if proc.name == streaming:
                proc.stop(signal.SIGKILL)

    text, usage = stream_text(net, 30, kill=kill_the_streaming_miner)
    assert text == "".join(f" w{i}" for i in range(30))  # no token repeated, none missing
    assert usage is not None and usage.completion_tokens == 30
    assert len(net.miners()) == 1


def busy_miner(net: Network) -> str:
    busy = [str(m["name"]) for m in net.miners() if m["busy"]]
    assert len(busy) == 1, busy
    return busy[0]


def test_losing_the_only_miner_mid_stream_ends_the_stream_with_an_error(net: Network) -> None:
    net.start_router()
    miner = net.start_miner("slow", "--fake-speed", "5")
    net.wait_miners(1)
    with pytest.raises(openai.APIError) as lost:
        stream_text(net, 50, kill=lambda: miner.stop(signal.SIGKILL))
    assert "was lost" in str(lost.value) and "no miner could continue" in str(lost.value)


def test_every_miner_failing_gives_502_naming_the_attempts(net: Network) -> None:
    net.start_router()
    for name in ("bad1", "bad2"):
        net.start_miner(name, "--fake-failure-rate", "1")
    net.wait_miners(2)
    with pytest.raises(openai.InternalServerError) as failed:
        chat(net)
    assert failed.value.status_code == 502
    assert "failed on 2 miners" in failed.value.message


def test_client_disconnect_frees_the_slot(net: Network) -> None:
    net.start_router()
    net.start_miner("slow", "--fake-speed", "5")
    net.wait_miners(1)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 100,
        "stream": True,
    }
    with httpx.stream(
        "POST", net.base_url + "/v1/chat/completions", json=body, timeout=30
    ) as response:
        for line in response.iter_lines():
            if '"content":" w0"' in line:
                break
    wait_until(lambda: by_name(net)["slow"]["busy"] == 0, timeout=2, what="the slot to be freed")
    # The miner itself stopped too: its next completed request starts at once.
    assert chat(net, max_tokens=1).choices[0].message.content == " w0"


def test_miners_reconnect_after_a_router_restart(net: Network) -> None:
    router = net.start_router()
    net.start_miner("m1")
    net.wait_miners(1)
    router.stop()
    net.start_router()
    net.wait_miners(1, timeout=30)
    assert chat(net, max_tokens=2).choices[0].message.content == " w0 w1"


def test_a_miner_of_another_protocol_version_is_refused(net: Network) -> None:
    net.start_router()
    register = {
        "type": "register",
        "protocol_version": PROTOCOL_VERSION + 1,
        "miner_id": MinerId("m-future"),
        "name": "future",
        "engine": "fake",
        "hardware": {"cpu_model": "x", "cpu_cores": 1, "ram_bytes": 1},
        "models": [{"name": MODEL, "context_length": 100}],
        "slots": 1,
    }
    with connect(net.base_url.replace("http", "ws") + "/miner/ws") as ws:
        ws.send(json.dumps(register))
        reply = parse_router_message(ws.recv(timeout=5))
    assert reply.type == "refused"
    assert f"this router speaks version {PROTOCOL_VERSION}" in reply.reason
    assert net.miners() == []


def test_garbage_on_the_miner_socket_is_refused(net: Network) -> None:
    net.start_router()
    with connect(net.base_url.replace("http", "ws") + "/miner/ws") as ws:
        ws.send("hello?")
        reply = parse_router_message(ws.recv(timeout=5))
    assert reply.type == "refused"
    assert "register" in reply.reason
    assert encode(reply)  # the refusal itself is a valid protocol message


def test_api_keys_are_enforced_when_configured(tmp_path: Any) -> None:
    from netutil import network

    with network(tmp_path, api_key="secret-key") as net:
        net.start_router()
        net.start_miner("m1")
        net.wait_miners(1)
        assert chat(net, max_tokens=1).choices[0].message.content == " w0"
        anonymous = httpx.get(net.base_url + "/v1/models")
        assert anonymous.status_code == 401
        assert "Authorization: Bearer" in anonymous.json()["error"]["message"]
        wrong = httpx.get(net.base_url + "/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"


WEIRD_BODIES = [
    b"null",
    b"[]",
    b'"a string"',
    b"123",
    b'{"model": null, "messages": null}',
    b'{"model": "fake-model", "messages": [null]}',
    b'{"model": "fake-model", "messages": [{"role": "user", "content": {"a": 1}}]}',
    b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1e309}',
    b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": -5}',
    b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "stop": [1, 2]}',
    b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "stop": ["a","b","c","d","e"]}',
    b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "n": 500}',
    b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "stream": "yes please"}',
    b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "top_p": 0}',
    b'{"model": "", "messages": [{"role": "user", "content": "x"}]}',
    b"\xff\xfe\x00garbage",
    b'{"model": "fake-model", "prompt": []}',
]


def test_odd_input_is_a_4xx_in_openai_format_never_a_500(net: Network) -> None:
    net.start_router()
    net.start_miner("m1")
    net.wait_miners(1)
    for body in WEIRD_BODIES:
        for path in ("/v1/chat/completions", "/v1/completions"):
            response = httpx.post(net.base_url + path, content=body)
            assert 400 <= response.status_code < 500, (path, body, response.text)
            error = response.json()["error"]
            assert error["message"] and error["type"] == "invalid_request_error"
    assert chat(net, max_tokens=1).choices[0].message.content == " w0"


def test_content_parts_and_max_completion_tokens_are_understood(net: Network) -> None:
    net.start_router()
    net.start_miner("m1")
    net.wait_miners(1)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_completion_tokens": 2,
    }
    response = httpx.post(net.base_url + "/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == " w0 w1"


def test_the_openapi_document_describes_the_api(net: Network) -> None:
    net.start_router()
    paths = httpx.get(net.base_url + "/openapi.json").json()["paths"]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/miners"} <= paths.keys()
    body = paths["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
    assert "messages" in body["schema"]["properties"]


def test_sigterm_drains_a_miner_its_streams_finish_and_new_work_goes_elsewhere(
    net: Network,
) -> None:
    net.start_router()
    leaving = net.start_miner("leaving", "--fake-speed", "10", "--fake-output-tokens", "1000")
    net.wait_miners(1)

    def drain_the_streaming_miner() -> None:
        net.start_miner("staying", "--fake-speed", "20", "--fake-output-tokens", "1000")
        net.wait_miners(2)
        leaving.popen.send_signal(signal.SIGTERM)
        wait_until(lambda: by_name(net)["leaving"]["state"] == "draining", what="draining state")
        assert (
            chat(net, max_tokens=3).choices[0].message.content == " w0 w1 w2"
        )  # served by 'staying'

    text, usage = stream_text(net, 40, kill=drain_the_streaming_miner)
    assert text == "".join(f" w{i}" for i in range(40))
    assert leaving.popen.wait(15) == 0
    assert by_name(net)["staying"]["completed"] == 1
    assert usage is not None and usage.completion_tokens == 40


def test_a_stream_that_stops_making_progress_moves_to_another_miner(net: Network) -> None:
    net.start_router("--idle-timeout", "2")
    # The hung miner is the faster one, so capacity-aware placement picks it first.
    net.start_miner(
        "hung", "--fake-speed", "200", "--fake-stall-after", "5", "--fake-output-tokens", "1000"
    )
    net.start_miner("healthy", "--fake-speed", "20", "--fake-output-tokens", "1000")
    net.wait_miners(2)

    text, usage = stream_text(net, 12)
    assert text == "".join(f" w{i}" for i in range(12))
    assert usage is not None and usage.completion_tokens == 12
    miners = by_name(net)
    assert miners["healthy"]["completed"] == 1
    assert miners["hung"]["completed"] == 0


def test_sigterm_to_the_router_finishes_streams_refuses_new_work_then_exits(net: Network) -> None:
    router = net.start_router()
    net.start_miner("m1", "--fake-speed", "10", "--fake-output-tokens", "1000")
    net.wait_miners(1)
    refused: dict[str, Any] = {}

    def stop_the_router() -> None:
        router.popen.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
        response = httpx.post(net.base_url + "/v1/chat/completions", json=body, timeout=10)
        refused.update(
            status=response.status_code,
            body=response.json(),
            retry=response.headers.get("Retry-After"),
        )

    text, _ = stream_text(net, 20, kill=stop_the_router)
    assert text == "".join(f" w{i}" for i in range(20))
    assert refused["status"] == 503 and refused["retry"]
    assert refused["body"]["error"]["code"] == "router_draining"
    # uvicorn re-raises the signal once shut down, as a well-behaved server does.
    assert router.popen.wait(15) in (0, -signal.SIGTERM)
    assert "Traceback" not in router.output()


def test_a_hedged_request_takes_the_first_answer_and_cancels_the_other(net: Network) -> None:
    net.start_router("--hedge-delay", "0.5")
    # 'stuck' claims to be fast, so it is chosen first, then sits on the first token.
    net.start_miner("stuck", "--fake-latency", "30", "--fake-claim-speed", "100000")
    net.start_miner("quick", "--fake-speed", "100")
    net.wait_miners(2)
    started = time.monotonic()
    reply = chat(net, max_tokens=3, extra_body={"inferswarm": {"hedge": True}})
    assert reply.choices[0].message.content == " w0 w1 w2"
    assert time.monotonic() - started < 5
    wait_until(
        lambda: by_name(net)["stuck"]["busy"] == 0,
        timeout=2,
        what="the losing copy to be cancelled",
    )
    assert httpx.get(net.base_url + "/healthz").json()["hedges"] == 1

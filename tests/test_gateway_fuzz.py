"""Whatever a miner sends, the router keeps serving: malformed frames close only
that miner's connection, and frames about tasks a miner was not given are
dropped without touching anyone else's work."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from inferswarm.protocol import PROTOCOL_VERSION
from inferswarm.router.app import create_app
from inferswarm.router.settings import RouterSettings

REGISTER = {
    "type": "register",
    "protocol_version": PROTOCOL_VERSION,
    "miner_id": "m-fuzz",
    "name": "fuzz",
    "engine": "fake",
    "hardware": {"cpu_model": "x", "cpu_cores": 1, "ram_bytes": 1},
    "models": [{"name": "fake-model", "context_length": 100}],
    "slots": 1,
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
frames = st.one_of(
    st.text(max_size=200),
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(
                ["chunk", "done", "failed", "heartbeat", "register", "draining", "task"]
            )
        },
        optional={
            "task_id": st.text(max_size=10),
            "text": st.text(max_size=10),
            "tokens": st.integers(),
            "busy_slots": st.integers(),
            "queued_tasks": st.integers(),
            "finish_reason": st.text(max_size=6),
        },
    ).map(json.dumps),
)


def test_the_router_survives_any_frame(tmp_path: Path) -> None:
    app = create_app(RouterSettings(auth=False, open_join=True, data_dir=tmp_path))
    with TestClient(app) as client:

        @settings(
            max_examples=150,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(frame=frames)
        def one_frame(frame: str) -> None:
            with client.websocket_connect("/miner/ws") as ws:
                ws.send_text(json.dumps(REGISTER))
                assert json.loads(ws.receive_text())["type"] == "registered"
                ws.send_text(frame)
                ws.send_text(json.dumps({"type": "heartbeat", "busy_slots": 0, "queued_tasks": 0}))
            assert client.get("/healthz").json()["status"] == "ok"

        one_frame()


def test_frames_about_other_miners_tasks_are_ignored(tmp_path: Path) -> None:
    app = create_app(RouterSettings(auth=False, open_join=True, data_dir=tmp_path))
    with TestClient(app) as client, client.websocket_connect("/miner/ws") as ws:
        ws.send_text(json.dumps(REGISTER))
        ws.receive_text()
        for frame in (
            {"type": "chunk", "task_id": "task-not-yours", "text": "spoof", "tokens": 1},
            {
                "type": "done",
                "task_id": "task-not-yours",
                "finish_reason": "stop",
                "prompt_tokens": 1,
                "completion_tokens": 1,
            },
        ):
            ws.send_text(json.dumps(frame))
        miners: list[dict[str, Any]] = client.get("/v1/miners").json()["data"]
        assert miners[0]["completed"] == 0 and miners[0]["generated_tokens"] == 0


def test_a_bad_frame_closes_only_that_connection(tmp_path: Path) -> None:
    app = create_app(RouterSettings(auth=False, open_join=True, data_dir=tmp_path))
    with TestClient(app) as client, client.websocket_connect("/miner/ws") as good:
        good.send_text(json.dumps(REGISTER))
        good.receive_text()
        with client.websocket_connect("/miner/ws") as bad:
            bad.send_text(json.dumps({**REGISTER, "miner_id": "m-bad", "name": "bad"}))
            bad.receive_text()
            bad.send_text("{garbage")
            with contextlib.suppress(WebSocketDisconnect):
                bad.receive_text()  # the router closes it
        names = [m["name"] for m in client.get("/v1/miners").json()["data"]]
        assert names == ["fuzz"]


def test_a_miner_flooding_frames_does_not_disturb_the_router(tmp_path: Path) -> None:
    app = create_app(RouterSettings(auth=False, open_join=True, data_dir=tmp_path))
    with TestClient(app) as client, client.websocket_connect("/miner/ws") as ws:
        ws.send_text(json.dumps(REGISTER))
        ws.receive_text()
        beat = json.dumps({"type": "heartbeat", "busy_slots": 0, "queued_tasks": 0})
        spoof = json.dumps({"type": "chunk", "task_id": "nobody", "text": "x" * 1000, "tokens": 1})
        for index in range(5000):
            ws.send_text(beat if index % 2 else spoof)
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.get("/v1/miners").json()["data"][0]["generated_tokens"] == 0

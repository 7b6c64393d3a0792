"""The Batch API on a real router and fake-engine miners, driven by the
official openai client: segmentation into tasks, error lines, live counts,
cancellation, limits, and a router killed mid-batch that carries on."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inferswarm.router.segment.batch import BatchShare, batch_budget, read_batch_input
from inferswarm.storage import TaskState
from netutil import Network

MODEL = "fake-model"


def api(net: Network) -> openai.OpenAI:
    return openai.OpenAI(base_url=net.base_url + "/v1", api_key="none", max_retries=0, timeout=60)


def request_line(custom_id: str, content: str = "hi", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": content}], **body},
    }


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


def wait_batch(client: openai.OpenAI, batch_id: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.2)
    raise TimeoutError(f"batch {batch_id} did not finish: {batch}")


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines()]


# The pure parts


def test_input_lines_become_tasks_or_error_lines() -> None:
    data = jsonl(
        [
            request_line("a"),
            b"{not json",
            {**request_line("b"), "url": "/v1/completions"},
            request_line("a"),
            {**request_line("c"), "body": {"model": "nope", "messages": [{"role": "user"}]}},
            {**request_line("d"), "body": {"model": MODEL, "messages": [], "stream": True}},
            request_line("e", stream=True),
            b"",
            request_line("f", max_tokens=3),
        ]
    )
    tasks = read_batch_input("batch_x", data, "/v1/chat/completions", {MODEL})
    states = {t.line: (t.custom_id, t.state) for t in tasks}
    assert states[1] == ("a", TaskState.PENDING)
    assert states[2] == (None, TaskState.FAILED)
    assert states[3] == ("b", TaskState.FAILED)
    assert states[4] == ("a", TaskState.FAILED)
    assert states[5] == ("c", TaskState.FAILED)
    assert states[7] == ("e", TaskState.FAILED)
    assert states[9] == ("f", TaskState.PENDING)
    errors = {t.line: json.loads(t.result or "{}")["error"] for t in tasks if t.result}
    assert errors[2]["code"] == "invalid_json"
    assert "does not match the batch's endpoint" in errors[3]["message"]
    assert errors[4]["code"] == "duplicate_custom_id"
    assert errors[5]["code"] == "model_not_found"
    assert "stream" in errors[7]["message"]
    assert 8 not in states  # blank lines are not requests


def test_batches_fill_idle_slots_but_leave_room_for_interactive_work() -> None:
    share = BatchShare(reserve=0.25, floor=0.1)
    assert batch_budget(16, 0, interactive_active=False, share=share) == 48  # pipelined
    assert batch_budget(16, 0, interactive_active=True, share=share) == 12
    assert batch_budget(16, 8, interactive_active=True, share=share) == 4
    assert batch_budget(16, 16, interactive_active=True, share=share) == 1  # the floor
    assert batch_budget(0, 0, interactive_active=False, share=share) == 0


# On a real network


@pytest.fixture
def batch_net(net: Network) -> Network:
    net.start_router()
    net.start_miner("m1", "--slots", "2", "--fake-speed", "500")
    net.start_miner("m2", "--slots", "2", "--fake-speed", "500")
    net.wait_miners(2)
    return net


def test_a_batch_runs_end_to_end_with_the_openai_client(batch_net: Network) -> None:
    good = [request_line(f"req-{i}", f"question {i}", max_tokens=1 + i % 5) for i in range(40)]
    bad: list[Any] = [
        b"this is not json",
        {**request_line("wrong-url"), "url": "/v1/embeddings"},
        request_line("req-3"),  # duplicate custom_id
        {
            **request_line("unknown-model"),
            "body": {"model": "gpt-9", "messages": [{"role": "user"}]},
        },
    ]
    with api(batch_net) as client:
        upload = client.files.create(file=("input.jsonl", jsonl(good + bad)), purpose="batch")
        assert upload.purpose == "batch" and upload.bytes > 0
        assert client.files.retrieve(upload.id).filename == "input.jsonl"
        batch = client.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"purpose": "test"},
        )
        assert batch.request_counts is not None and batch.request_counts.total == 44
        done = wait_batch(client, batch.id)
        assert done.status == "completed", done
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (40, 4)
        assert done.metadata == {"purpose": "test"}
        assert done.completed_at is not None and done.in_progress_at is not None

        output = lines_of(client, done.output_file_id)
        by_id = {line["custom_id"]: line for line in output}
        assert len(output) == len(by_id) == 40
        for i in range(40):
            response = by_id[f"req-{i}"]["response"]
            assert response["status_code"] == 200
            completion = response["body"]
            assert completion["object"] == "chat.completion"
            assert completion["usage"]["completion_tokens"] == 1 + i % 5
        errors = lines_of(client, done.error_file_id)
        codes = sorted(line["error"]["code"] for line in errors)
        assert codes == ["duplicate_custom_id", "invalid_json", "invalid_url", "model_not_found"]
        assert (
            "gpt-9"
            in next(e for e in errors if e["custom_id"] == "unknown-model")["error"]["message"]
        )

        listed = client.batches.list(limit=5)
        assert [b.id for b in listed.data] == [batch.id]
    exposition = httpx.get(batch_net.base_url + "/metrics", timeout=10).text
    served = sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        if family.name == "inferswarm_requests"
        for sample in family.samples
        if sample.name == "inferswarm_requests_total" and sample.labels.get("outcome") == "ok"
    )
    assert served == 40, "batch tasks are measured like requests"


def test_a_cancelled_batch_stops_and_keeps_what_finished(net: Network) -> None:
    net.start_router()
    net.start_miner("slow", "--slots", "1", "--fake-speed", "20")
    net.wait_miners(1)
    lines = [request_line(f"r{i}", max_tokens=10) for i in range(30)]
    with api(net) as client:
        upload = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 30
        while client.batches.retrieve(batch.id).request_counts.completed < 2:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status in ("cancelling", "cancelled")
        done = wait_batch(client, batch.id)
        assert done.status == "cancelled"
        assert done.request_counts is not None
        finished = done.request_counts.completed
        assert 2 <= finished < 30
        assert len(lines_of(client, done.output_file_id)) == finished


def test_batch_api_errors_are_clear(net: Network) -> None:
    net.start_router("--max-file-mb", "0.01")
    net.start_miner("m1")
    net.wait_miners(1)
    with api(net) as client:
        with pytest.raises(openai.NotFoundError) as missing:
            client.batches.create(
                input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert missing.value.code == "file_not_found"
        with pytest.raises(openai.APIStatusError) as too_big:
            client.files.create(file=("big.jsonl", b"x" * 20_000), purpose="batch")
        assert too_big.value.status_code == 413
        with pytest.raises(openai.BadRequestError) as purpose:
            client.files.create(file=("a.jsonl", b"{}"), purpose="fine-tune")
        assert "purpose" in purpose.value.message
        upload = client.files.create(file=("a.jsonl", jsonl([request_line("x")])), purpose="batch")
        with pytest.raises(openai.BadRequestError) as endpoint:
            client.batches.create(
                input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
            )
        assert endpoint.value.code == "invalid_endpoint"
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve("batch_nope")
    missing_form = httpx.post(net.base_url + "/v1/files", data={"purpose": "batch"}, timeout=10)
    assert missing_form.status_code == 400
    assert missing_form.json()["error"]["message"]


def done_results(db: Path, batch_id: str) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT custom_id, result FROM batch_tasks WHERE batch_id = ? AND state = 'done'",
            (batch_id,),
        ).fetchall()
    return {custom_id: json.loads(result)["id"] for custom_id, result in rows}


def test_a_router_killed_mid_batch_carries_on_and_answers_each_line_once(net: Network) -> None:
    net.start_router()
    for name in ("m1", "m2"):
        net.start_miner(name, "--slots", "2", "--fake-speed", "100")
    net.wait_miners(2)
    lines = [request_line(f"r{i}", max_tokens=10) for i in range(120)]
    with api(net) as client:
        upload = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 60
        while client.batches.retrieve(batch.id).request_counts.completed < 30:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert net.router is not None
    net.router.stop(signal.SIGKILL)
    db = net.workdir / "router" / "router.db"
    before = done_results(db, batch.id)
    assert 30 <= len(before) < 120

    net.start_router()  # same port and data dir; the miners dial back in
    net.wait_miners(2)
    with api(net) as client:
        done = wait_batch(client, batch.id)
        assert done.status == "completed"
        output = lines_of(client, done.output_file_id)
    custom_ids = [line["custom_id"] for line in output]
    assert sorted(custom_ids) == sorted(f"r{i}" for i in range(120)), "each line exactly once"
    after = {line["custom_id"]: line["id"] for line in output}
    assert {cid: after[cid] for cid in before} == before, "finished tasks were not re-run"
    assert done.request_counts is not None and done.request_counts.failed == 0


def test_a_miner_dying_mid_batch_loses_no_line(net: Network) -> None:
    net.start_router()
    doomed = net.start_miner("doomed", "--slots", "2", "--fake-speed", "50")
    net.start_miner("steady", "--slots", "2", "--fake-speed", "50")
    net.wait_miners(2)
    lines = [request_line(f"r{i}", max_tokens=10) for i in range(40)]
    with api(net) as client:
        upload = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 30
        while client.batches.retrieve(batch.id).request_counts.completed < 5:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        doomed.stop(signal.SIGKILL)
        done = wait_batch(client, batch.id)
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (40, 0)
        output = lines_of(client, done.output_file_id)
    assert sorted(line["custom_id"] for line in output) == sorted(f"r{i}" for i in range(40))


def test_a_task_that_keeps_failing_ends_in_the_error_file_with_the_reason(
    net: Network,
) -> None:
    net.start_router("--task-retry-delay", "0.05", "--task-max-attempts", "3")
    net.start_miner("broken", "--fake-failure-rate", "1")
    net.wait_miners(1)
    with api(net) as client:
        upload = client.files.create(
            file=("in.jsonl", jsonl([request_line("doomed")])), purpose="batch"
        )
        batch = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = wait_batch(client, batch.id, timeout=60)
        assert done.status == "completed"
        assert done.request_counts is not None and done.request_counts.failed == 1
        (line,) = lines_of(client, done.error_file_id)
    assert line["custom_id"] == "doomed"
    assert line["response"]["status_code"] in (502, 503)
    assert line["response"]["body"]["error"]["message"]

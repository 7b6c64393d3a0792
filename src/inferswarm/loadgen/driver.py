"""Sending the planned requests to an OpenAI-compatible server and timing each chunk.

aiohttp is the client: on this kind of machine an httpx ``AsyncClient`` costs
several times more CPU per request (see DESIGN.md and
``bench/loadgen_client.py``), and a load generator that saturates its own core
measures itself rather than the server.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from inferswarm.loadgen.stats import RequestRecord
from inferswarm.loadgen.target import BenchError, Load, Target, error_message
from inferswarm.loadgen.workload import PlannedRequest, plan_requests, poisson_arrivals, within


@dataclass(frozen=True)
class RunResult:
    records: list[RequestRecord]
    client_cpu_s: float
    interrupted: bool = False


def client_session(timeout_s: float) -> aiohttp.ClientSession:
    # limit=0: no pool cap, the load mode decides how many requests are in flight.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )


async def resolve_model(root: str, model: str | None, api_key: str | None) -> str:
    """The model to load: the one asked for, checked against ``/v1/models``, else the first served."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with (
            client_session(30) as session,
            session.get(f"{root}/models", headers=headers) as response,
        ):
            status = response.status
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise BenchError(
            f"cannot reach {root}: {exc or type(exc).__name__}. "
            "Is the server running, and is --base-url right?"
        ) from exc
    if status in (401, 403):
        raise BenchError(
            f"{root}/models refused the API key ({status}: {error_message(text)}); "
            "pass --api-key or set INFERSWARM_API_KEY / OPENAI_API_KEY"
        )
    if status != 200:
        if model is not None:
            return model  # a server without /v1/models can still serve the named model
        raise BenchError(f"{root}/models answered {status}; name the model with --model")
    served = model_ids(text)
    if served is None:
        raise BenchError(
            f"{root}/models did not answer with an OpenAI model list; "
            "is --base-url an OpenAI-compatible server?"
        )
    if model is None:
        if not served:
            raise BenchError(f"{root} serves no models yet (wait for a miner to join?)")
        return str(served[0])
    if model not in served:
        raise BenchError(
            f"{root} does not serve the model {model!r}; it serves: {', '.join(served) or 'none'}"
        )
    return model


def model_ids(text: str) -> list[str] | None:
    try:
        return [str(model["id"]) for model in json.loads(text)["data"]]
    except (ValueError, TypeError, KeyError):
        return None


async def run_load(
    target: Target, load: Load, on_done: Callable[[RequestRecord], None] = lambda _: None
) -> RunResult:
    """Send the load to the target and return every request's record and the client's CPU time."""
    plan = plan_requests(load.seed, load.prompt_lengths, load.output_lengths)
    cpu_started = time.process_time()
    async with client_session(target.timeout_s) as session:
        clock = _Clock()
        records: list[RequestRecord] = []

        async def send(planned: PlannedRequest) -> None:
            record = await _send_one(session, target, planned, clock)
            records.append(record)
            on_done(record)

        if load.rate is not None:
            await _open_loop(send, plan, load, clock)
        else:
            await _closed_loop(send, plan, load, clock)
    records.sort(key=lambda r: r.index)
    return RunResult(records, time.process_time() - cpu_started)


class _Clock:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.started


async def _closed_loop(
    send: Callable[[PlannedRequest], Coroutine[Any, Any, None]],
    plan: Iterator[PlannedRequest],
    load: Load,
    clock: _Clock,
) -> None:
    """``concurrency`` workers, each sending its next request as soon as the last one ends."""
    count = load.requests
    duration = load.duration_s

    async def worker() -> None:
        for planned in plan:  # the shared iterator hands each request to one worker
            if (count is not None and planned.index >= count) or (
                duration is not None and clock.now() >= duration
            ):
                return
            await send(planned)

    await asyncio.gather(*(worker() for _ in range(load.concurrency or 1)))


async def _open_loop(
    send: Callable[[PlannedRequest], Coroutine[Any, Any, None]],
    plan: Iterator[PlannedRequest],
    load: Load,
    clock: _Clock,
) -> None:
    """Requests sent at Poisson arrival times whether or not earlier ones have finished."""
    assert load.rate is not None
    arrivals = within(poisson_arrivals(load.rate, load.seed), load.duration_s, load.requests)
    in_flight: set[asyncio.Task[None]] = set()
    for at, planned in zip(arrivals, plan, strict=False):
        delay = at - clock.now()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(send(planned))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)


async def _send_one(
    session: aiohttp.ClientSession, target: Target, planned: PlannedRequest, clock: _Clock
) -> RequestRecord:
    record = RequestRecord(planned.index, planned.prompt_words, planned.max_tokens, clock.now())
    try:
        async with session.post(
            target.url(), json=target.body(planned), headers=target.headers()
        ) as response:
            if response.status != 200:
                _fail(record, f"http_{response.status}", error_message(await response.text()))
            elif response.content_type == "text/event-stream":
                await _read_stream(response, record, clock)
            else:  # a server that ignores stream=True: the whole answer is one chunk
                _read_whole(await response.json(content_type=None), record, clock)
    except TimeoutError:
        _fail(record, "timeout", f"no complete answer within {target.timeout_s:g} s")
    except aiohttp.ClientConnectorError as exc:
        _fail(record, "connect", str(exc))
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        _fail(record, "disconnected", str(exc) or type(exc).__name__)
    except aiohttp.ClientError as exc:
        _fail(record, "client_error", f"{type(exc).__name__}: {exc}")
    except ValueError as exc:  # a body that is not JSON where JSON was due
        _fail(record, "bad_response", f"{type(exc).__name__}: {exc}")
    record.end_s = clock.now()
    return record


async def _read_stream(
    response: aiohttp.ClientResponse, record: RequestRecord, clock: _Clock
) -> None:
    last_chunk: float | None = None
    finished = False
    async for event in _sse_events(response):
        if event == "[DONE]":
            finished = True
            break
        try:
            chunk = json.loads(event)
        except json.JSONDecodeError:
            _fail(record, "bad_stream", f"not JSON in the stream: {event[:200]!r}")
            return
        if "error" in chunk:
            _fail(record, "stream_error", error_message(json.dumps(chunk)))
            return
        if _chunk_text(chunk):
            now = clock.now()
            if last_chunk is None:
                record.ttft_s = now - record.start_s
            else:
                record.chunk_gaps_s.append(now - last_chunk)
            last_chunk = now
            if record.tokens_counted_from == "chunks":
                record.output_tokens += 1
        _take_usage(chunk, record)
    if not finished:
        _fail(record, "truncated", "the stream ended without data: [DONE]")


async def _sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    async for raw in response.content:
        line = raw.decode("utf-8", errors="replace").strip()
        if line.startswith("data:"):
            yield line[5:].strip()


def _read_whole(payload: dict[str, Any], record: RequestRecord, clock: _Clock) -> None:
    if "error" in payload:
        _fail(record, "error", error_message(json.dumps(payload)))
        return
    record.ttft_s = clock.now() - record.start_s
    record.output_tokens = 1 if _chunk_text(payload) else 0
    _take_usage(payload, record)


def _chunk_text(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    if "text" in choice:
        return str(choice["text"] or "")
    part = choice.get("delta") or choice.get("message") or {}
    return str(part.get("content") or "")


def _take_usage(chunk: dict[str, Any], record: RequestRecord) -> None:
    usage = chunk.get("usage")
    if usage and usage.get("completion_tokens") is not None:
        record.output_tokens = int(usage["completion_tokens"])
        record.prompt_tokens = usage.get("prompt_tokens")
        record.tokens_counted_from = "usage"


def _fail(record: RequestRecord, kind: str, message: str) -> None:
    record.error_kind = kind
    record.error_message = message

"""Fronting an OpenAI-compatible server the miner operator already runs
(Ollama, llama.cpp's server, vLLM): tasks become streamed upstream requests."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx

from inferswarm.miner.engines.base import TaskRejected
from inferswarm.protocol import (
    Capability,
    FinishReason,
    ModelName,
    ModelOffer,
    TaskAssign,
    TaskChunk,
    TaskDone,
)


class UpstreamEngine:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        models: tuple[str, ...],
        *,
        context_length: int,
        slots: int,
        api_key: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.slots = slots
        self.capability: Capability | None = None
        self._models = models
        self._context_length = context_length
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=httpx.Timeout(600, connect=10)
        )

    @classmethod
    async def discover(
        cls, base_url: str, *, context_length: int, slots: int, api_key: str | None = None
    ) -> UpstreamEngine:
        """Ask the upstream which models it serves."""
        engine = cls(base_url, (), context_length=context_length, slots=slots, api_key=api_key)
        try:
            response = await engine._client.get("/v1/models")
            response.raise_for_status()
            engine._models = tuple(m["id"] for m in response.json()["data"])
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            await engine.close()
            raise TaskRejected(
                "model_not_loaded",
                f"could not list models at {base_url}/v1/models: {exc}",
                retryable=False,
            ) from exc
        return engine

    def offers(self) -> tuple[ModelOffer, ...]:
        return tuple(
            ModelOffer(name=ModelName(m), context_length=self._context_length) for m in self._models
        )

    def claimed_tokens_per_s(self) -> float | None:
        return None

    async def generate(self, task: TaskAssign) -> AsyncGenerator[TaskChunk | TaskDone, None]:
        path, body = _request_for(task)
        finish: FinishReason = "stop"
        usage: dict[str, int] = {}
        produced = 0
        try:
            async with self._client.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    detail = (await response.aread()).decode(errors="replace")[:500]
                    raise TaskRejected(
                        "invalid_request" if response.status_code < 500 else "engine_error",
                        f"upstream answered {response.status_code}: {detail}",
                        retryable=response.status_code >= 500,
                    )
                async for payload in _sse_payloads(response):
                    usage = payload.get("usage") or usage
                    for choice in payload.get("choices", []):
                        text = _choice_text(choice)
                        if text:
                            produced += 1
                            yield TaskChunk(task_id=task.task_id, text=text)
                        if choice.get("finish_reason") == "length":
                            finish = "length"
        except httpx.HTTPError as exc:
            raise TaskRejected(
                "engine_error", f"upstream request failed: {exc}", retryable=True
            ) from exc
        yield TaskDone(
            task_id=task.task_id,
            finish_reason=finish,
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", produced),
        )

    def benchmark_identity(self) -> dict[str, object] | None:
        return None

    async def benchmark(self) -> Capability | None:
        return None  # the upstream is shared and opaque: the router measures it in use

    async def close(self) -> None:
        await self._client.aclose()


def _request_for(task: TaskAssign) -> tuple[str, dict[str, Any]]:
    sampling = task.sampling
    body: dict[str, Any] = {
        "model": task.model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
    }
    if sampling.max_tokens is not None:
        body["max_tokens"] = sampling.max_tokens
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if task.messages is not None:
        body["messages"] = [m.model_dump() for m in task.messages]
        return "/v1/chat/completions", body
    body["prompt"] = task.prompt or ""
    return "/v1/completions", body


async def _sse_payloads(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        payload = json.loads(data)
        if "error" in payload:
            raise TaskRejected(
                "engine_error", f"upstream stream error: {payload['error']}", retryable=False
            )
        yield payload


def _choice_text(choice: dict[str, Any]) -> str:
    if "delta" in choice:
        return str(choice["delta"].get("content") or "")
    return str(choice.get("text") or "")

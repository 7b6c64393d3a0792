"""Request and response bodies of the OpenAI-compatible endpoints.

Requests validate strictly enough to catch mistakes (wrong types, empty
``messages``, out-of-range sampling values) and loosely enough to accept what
real clients send (unknown fields are ignored, as OpenAI does).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP_SEQUENCES = 4
MAX_CHOICES = 128
"""Most tasks one request may fan out into (prompts times ``n``), as OpenAI's ``n`` limit."""


class StreamOptions(BaseModel):
    include_usage: bool = False


class InferswarmOptions(BaseModel):
    """Extensions under the ``inferswarm`` key (``extra_body`` in the openai client)."""

    model_config = ConfigDict(extra="forbid")

    policy: str | None = None
    session: str | None = Field(default=None, max_length=256)
    hedge: bool | None = None
    redundancy: int | None = Field(default=None, ge=1, le=9)
    """Run each task on this many distinct miners and answer with their consensus."""
    consensus: str | None = None
    """exact (greedy, fixed seed, same tokens) or semantic (embedding similarity)."""
    min_precision: str | None = Field(default=None, max_length=32)
    """Serve only with a variant at least this precise (e.g. ``q8_0``)."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    user: str | None = Field(default=None, max_length=256)
    inferswarm: InferswarmOptions | None = None

    def session_key(self) -> str | None:
        if self.inferswarm and self.inferswarm.session:
            return self.inferswarm.session
        return self.user

    @field_validator("stop")
    @classmethod
    def _bounded_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        return stop

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return tuple(s for s in stops if s)

    def wants_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Request):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_token_limit(self) -> ChatCompletionRequest:
        # Newer clients send max_completion_tokens instead of max_tokens.
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self


class CompletionRequest(_Request):
    prompt: str | list[str]
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _some_prompts(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and not prompt:
            raise ValueError("the list of prompts is empty; send at least one prompt")
        return prompt

    @model_validator(mode="after")
    def _bounded_fan_out(self) -> CompletionRequest:
        if len(self.prompts()) * self.n > MAX_CHOICES:
            raise ValueError(
                f"{len(self.prompts())} prompts with n={self.n} asks for more than {MAX_CHOICES} "
                "completions in one request; split it, or use the Batch API (/v1/batches)"
            )
        return self

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


Answer = tuple[str, str]
"""One choice's text and finish reason."""


def chat_completion(
    request_id: str, model: str, answers: Sequence[Answer], usage_: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
            for index, (text, finish_reason) in enumerate(answers)
        ],
        "usage": usage_,
    }


def chat_chunk(
    request_id: str,
    model: str,
    created: int,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    index: int = 0,
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [
            {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        ],
    }


def text_completion(
    request_id: str, model: str, answers: Sequence[Answer], usage_: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
            for index, (text, finish_reason) in enumerate(answers)
        ],
        "usage": usage_,
    }


def text_chunk(
    request_id: str,
    model: str,
    created: int,
    text: str,
    finish_reason: str | None = None,
    index: int = 0,
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
        ],
    }


def usage_chunk(
    request_id: str, model: str, created: int, obj: str, usage_: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage_,
    }

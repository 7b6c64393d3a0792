"""An optional HTTP endpoint on the miner that serves its engine directly.

It exists to measure what the router adds (``bench/overhead.py`` sends the
same requests here and through the router) and for health checks.
"""

from __future__ import annotations

import uuid
from contextlib import aclosing
from typing import Any

from fastapi import FastAPI

from inferswarm.miner.engines.base import Engine, TaskRejected
from inferswarm.openai_compat import schemas
from inferswarm.protocol import ModelName, SamplingParams, TaskAssign, TaskChunk, TaskId


def create_direct_app(engine: Engine) -> FastAPI:
    app = FastAPI(title="inferswarm miner (direct)")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "engine": engine.name, "models": [o.name for o in engine.offers()]}

    @app.post("/v1/completions")
    async def completions(body: schemas.CompletionRequest) -> dict[str, Any]:
        task = TaskAssign(
            task_id=TaskId(uuid.uuid4().hex),
            model=ModelName(body.model),
            prompt=body.prompts()[0],
            sampling=SamplingParams(max_tokens=body.max_tokens or 16, temperature=body.temperature),
        )
        parts: list[str] = []
        try:
            async with aclosing(engine.generate(task)) as events:
                async for event in events:
                    if isinstance(event, TaskChunk):
                        parts.append(event.text)
                    else:
                        usage = schemas.usage(event.prompt_tokens, event.completion_tokens)
                        return schemas.text_completion(
                            f"cmpl-{task.task_id}",
                            body.model,
                            [("".join(parts), event.finish_reason)],
                            usage,
                        )
        except TaskRejected as exc:
            return {
                "error": {"message": exc.message, "type": "invalid_request_error", "code": exc.code}
            }
        raise RuntimeError("the engine ended without finishing the task")

    return app

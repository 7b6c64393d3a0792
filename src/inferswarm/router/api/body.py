"""Parsing request bodies ourselves: JSON whatever the Content-Type (curl's
``-d`` sends form encoding), and errors that name the field to fix."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from inferswarm.openai_compat.errors import InvalidRequest
from inferswarm.router.api.errors import describe_validation_errors

Body = TypeVar("Body", bound=BaseModel)


async def parse_body(request: Request, model: type[Body]) -> Body:
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequest(
            "The request body is empty. Send a JSON object.", code="invalid_request"
        )
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        message, param = describe_validation_errors(exc.errors())
        raise InvalidRequest(message, param=param, code="invalid_request") from None


def request_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI description of a body parsed by ``parse_body``."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }

"""Every error leaves the router in OpenAI's envelope, never as a traceback."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from inferswarm.openai_compat.errors import APIError, error_body

log = logging.getLogger(__name__)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)


def _count(request: Request, status: int, reason: str) -> None:
    """Every error answer is counted as a rejection, wherever it was raised."""
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.reject(status, reason)


def _api_error(request: Request, exc: APIError) -> JSONResponse:
    _count(request, exc.status_code, exc.code or exc.error_type)
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    message, param = describe_validation_errors(exc.errors())
    body = error_body(message, "invalid_request_error", param, "invalid_request")
    _count(request, 400, "invalid_request")
    return JSONResponse(body, status_code=400)


def describe_validation_errors(errors: Any) -> tuple[str, str | None]:
    """Turn pydantic's error list into one sentence that names the field to fix."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return (
            "The request body is not valid JSON "
            f"({first.get('ctx', {}).get('error', 'parse error')}). Send a JSON object.",
            None,
        )
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    problem = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        return f"Missing required parameter: '{param}'.", param
    if param is None:
        return f"The request body is invalid: {problem}. Send a JSON object.", None
    return f"Invalid value for '{param}': {problem}.", param


def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"Unknown path {request.url.path}; see /docs for the API."
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
    _count(
        request,
        exc.status_code,
        {404: "unknown_path", 405: "method_not_allowed"}.get(exc.status_code, "http_error"),
    )
    return JSONResponse(error_body(message, error_type), status_code=exc.status_code)


def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error serving %s %s", request.method, request.url.path)
    _count(request, 500, "internal_error")
    body = error_body(
        "The router hit an internal error; it was logged. Retry, and report it if it repeats.",
        "server_error",
    )
    return JSONResponse(body, status_code=500)

"""OpenAI's error envelope.

Every error a client can hit is an ``APIError`` (or subclass) carrying the HTTP
status, OpenAI ``type`` and ``code``, the offending ``param`` and a message that
says what was wrong and what to do. The HTTP layer renders it as::

    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    status_code = 500
    error_type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)


class InvalidRequest(APIError):
    status_code = 400
    error_type = "invalid_request_error"


class Unauthorized(APIError):
    status_code = 401
    error_type = "authentication_error"


class NotFound(APIError):
    status_code = 404
    error_type = "invalid_request_error"


class Conflict(APIError):
    status_code = 409
    error_type = "invalid_request_error"


class PermissionDenied(APIError):
    status_code = 403
    error_type = "permission_error"


class RateLimited(APIError):
    """Too much work now; ``Retry-After`` says when to come back."""

    status_code = 429
    error_type = "rate_limit_error"


class PayloadTooLarge(APIError):
    status_code = 413
    error_type = "invalid_request_error"


class ServiceUnavailable(APIError):
    """No miner can take the work now; retrying later may succeed."""

    status_code = 503
    error_type = "service_unavailable"


class UpstreamFailed(APIError):
    """Miners were tried and all failed."""

    status_code = 502
    error_type = "server_error"


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}

"""HTTP plumbing the routes share: bounded body reading, JSON, auth, and the error mapping.

Every error leaves as OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` with a
4xx for the client's mistakes; nothing here lets a traceback or a bare 500 out.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from .errors import BudgetExceeded, NoEligibleModel, RequestError
from .schemas import error_body, first_error

try:  # orjson is the 'speed' extra: about 5x faster for the bodies we write
    import orjson

    def dumps(value: Any) -> bytes:
        return orjson.dumps(value)

    def loads(data: bytes) -> Any:
        return orjson.loads(data)

except ImportError:  # pragma: no cover - exercised where orjson is absent

    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

    def loads(data: bytes) -> Any:
        return json.loads(data)


log = logging.getLogger("adaptive_router.service")

__all__ = ["JSON", "ApiError", "authorize", "dumps", "error_response", "loads", "read_json"]

JSON = "application/json"

# Where each routing constraint lives in a request body, for the error's ``param``.
_CONSTRAINT_PARAM: dict[str, str | None] = {
    "context_length": "messages",
    "max_tokens": "max_tokens",
    "capabilities": "route.capabilities",
    "allow": "route.allow",
    "deny": "route.deny",
    "max_latency_ms": "route.max_latency_ms",
    "max_ttft_ms": "route.max_ttft_ms",
    "max_cost_usd": "route.max_cost_usd",
    "available": None,
}


class ApiError(Exception):
    """An error with its HTTP status and OpenAI-shaped body, raised anywhere in a handler."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(message, param, kind, code)
        self.headers = headers or {}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(data), status_code=status, media_type=JSON, headers=headers)


def error_response(exc: Exception) -> Response:
    """The one mapping from exceptions to HTTP answers (installed as the app's handlers)."""
    if isinstance(exc, ApiError):
        return json_response(exc.body, exc.status, exc.headers)
    if isinstance(exc, ValidationError):
        param, message = first_error(exc)
        return json_response(error_body(f"{param}: {message}", param), 400)
    if isinstance(exc, RequestError):
        return json_response(error_body(str(exc), exc.field), 400)
    if isinstance(exc, NoEligibleModel):
        if exc.constraint == "budget":
            return json_response(error_body(str(exc), None, "rate_limit_error", "budget_exceeded"), 429)
        if exc.constraint == "available":
            return json_response(error_body(str(exc), None, "service_unavailable", "no_available_model"), 503)
        where = _CONSTRAINT_PARAM.get(exc.constraint, exc.constraint)
        return json_response(error_body(str(exc), where, code="no_eligible_model"), 400)
    if isinstance(exc, BudgetExceeded):
        return json_response(error_body(str(exc), None, "rate_limit_error", "budget_exceeded"), 429)
    if isinstance(exc, HTTPException):
        return json_response(
            error_body(str(exc.detail), None, _kind(exc.status_code)),
            exc.status_code,
            dict(exc.headers or {}),
        )
    log.exception("unexpected error while serving a request")
    return json_response(error_body("internal error; see the router's log", None, "server_error"), 500)


def _kind(status: int) -> str:
    return {
        401: "authentication_error",
        404: "not_found_error",
        405: "invalid_request_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
    }.get(status, "invalid_request_error")


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, refused (413) before more than ``limit`` bytes are read."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "content-length must be a number", "body")
        if int(declared) > limit:
            raise ApiError(413, f"body of {declared} bytes exceeds the limit of {limit}", "body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body exceeds the limit of {limit} bytes", "body")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise ApiError(400, "the request body is empty; send a JSON object", "body")
    try:
        data = loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", "body") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object", "body")
    return data


def authorize(request: Request, keys: Sequence[bytes]) -> str | None:
    """The caller's key when router API keys are set (constant-time compare); 401 otherwise."""
    if not keys:
        return None
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    presented = token.strip().encode()
    if scheme.lower() == "bearer" and presented:
        for key in keys:
            if hmac.compare_digest(presented, key):
                return key.decode()
    raise ApiError(
        401,
        "missing or invalid router API key (Authorization: Bearer ...)",
        None,
        "authentication_error",
        "invalid_api_key",
        {"www-authenticate": "Bearer"},
    )

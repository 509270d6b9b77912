"""HTTP plumbing the routes share: bounded body reading, JSON, auth, and the error mapping.

Every error leaves as OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` with a
4xx for the client's mistakes; nothing here lets a traceback or a bare 500 out.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ._json import dumps, loads
from .errors import (
    AllCandidatesFailed,
    ApiError,
    BudgetExceeded,
    NoEligibleModel,
    RequestError,
    RequestFailed,
    UpstreamRejected,
)
from .pipeline import Call, routing_info
from .schemas import error_body, first_error

if TYPE_CHECKING:
    from .decision import Decision
    from .execution import Result
    from .runtime import Running

log = logging.getLogger("adaptive_router.service")

__all__ = [
    "JSON",
    "answer_response",
    "authorize",
    "call_headers",
    "handle_error",
    "json_response",
    "read_call",
    "read_json",
    "router_headers",
    "running",
]

JSON = "application/json"

# Where each routing constraint lives in a request body, for the error's ``param``.
_CONSTRAINT_PARAM: dict[str, str | None] = {
    "context_length": "messages",
    "max_tokens": "max_tokens",
    "capabilities": "route.capabilities",
    "allow": "route.allow",
    "deny": "route.deny",
    "max_latency_ms": "route.max_latency_ms",
    "max_cost_usd": "route.max_cost_usd",
    "available": None,
}


def running(request: Request) -> Running:
    """The opened service, kept in the app's lifespan state."""
    state: Running = request.state.running
    return state


async def read_call(request: Request) -> tuple[Running, str | None, dict[str, Any]]:
    """The opened service, the caller's key (401 without a valid one) and the JSON body."""
    state = running(request)
    api_key = authorize(request, state.service.keys)
    return state, api_key, await read_json(request, state.service.settings.server.max_body_bytes)


def router_headers(
    decision: Decision | None,
    result: Result | None,
    upstream_mode: str,
    cache: str,
    attempts: int | None = None,
) -> dict[str, str]:
    """The ``x-router-*`` headers of an answer: what answered, after how many attempts, how fast."""
    assert decision is not None
    tried = attempts if attempts is not None else (len(result.attempts) if result else 0)
    return {
        "x-router-model": (result.model if result else None) or decision.model,
        "x-router-attempts": str(tried),
        "x-router-decision-us": f"{decision.decision_us:.1f}",
        "x-router-cache": cache,
        "x-router-request-id": decision.request_id,
        "x-router-upstream": upstream_mode,
    }


def call_headers(call: Call, upstream_mode: str, attempts: int | None = None) -> dict[str, str]:
    return router_headers(call.decision, call.result, upstream_mode, call.cache_state, attempts)


def answer_response(call: Call, routing: dict[str, Any], headers: dict[str, str]) -> Response:
    """The answer, serialised once by the pipeline, with ``routing`` appended to the object."""
    raw, answer = call.answer_json, call.answer
    if raw is None or answer is None or not answer or "routing" in answer:
        return json_response({**(answer or {}), "routing": routing}, headers=headers)
    return Response(raw[:-1] + b',"routing":' + dumps(routing) + b"}", media_type=JSON, headers=headers)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(data), status_code=status, media_type=JSON, headers=headers)


def error_response(exc: Exception) -> Response:
    """The one mapping from exceptions to HTTP answers (installed as the app's handlers)."""
    if isinstance(exc, ApiError):
        return json_response(error_body(str(exc), exc.param, exc.kind, exc.code), exc.status, exc.headers)
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


async def handle_error(request: Request, exc: Exception) -> Response:
    """Every exception a handler raises, answered (installed as the app's exception handlers)."""
    pipeline = running(request).pipeline
    if isinstance(exc, RequestFailed):
        mode = pipeline.upstream_mode
        headers = router_headers(exc.decision, exc.result, mode, "bypass")
        if isinstance(exc, UpstreamRejected):
            return Response(exc.body, status_code=exc.status, media_type=JSON, headers=headers)
        assert isinstance(exc, AllCandidatesFailed)
        kind = "all_timed_out" if exc.timed_out else "all_failed"
        body = error_body(str(exc), None, "upstream_error", kind)
        body["routing"] = routing_info(exc.decision, exc.result, False, mode)
        return json_response(body, 504 if exc.timed_out else 502, headers)
    if not (isinstance(exc, ApiError) and exc.status == 401):  # an unauthenticated caller moves nothing
        pipeline.refused("no_eligible" if isinstance(exc, NoEligibleModel) else "rejected")
    return error_response(exc)


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

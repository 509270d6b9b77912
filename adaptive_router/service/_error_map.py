"""The one map from exceptions to HTTP answers, registered as the app's exception handlers.

Every error leaves in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``, with
a 4xx for the client's mistakes; nothing lets a traceback or a bare 500 out. ``ERROR_MAP``
gives each class its (status, OpenAI error type, code), found along the exception's MRO; a few
instances say more (their own status, the constraint that emptied the set, a timeout), and
:func:`error_answer` reads that in one place.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from .._errors import (
    AllCandidatesFailed,
    ApiError,
    BudgetExceeded,
    NoEligibleModel,
    RequestError,
    RequestFailed,
    RouterError,
    UpstreamRejected,
)
from ..pipeline._pipeline import routing_info
from ._http import JSON, json_response, router_headers, running
from ._schemas import error_body, first_error

__all__ = ["ERROR_MAP", "ErrorAnswer", "error_answer", "handle_error"]

log = logging.getLogger("adaptive_router.service")
access_log = logging.getLogger("adaptive_router.access")


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    status: int
    kind: str  # OpenAI's error ``type``
    code: str | None = None


INVALID = "invalid_request_error"

ERROR_MAP: dict[type[BaseException], ErrorAnswer] = {
    ApiError: ErrorAnswer(400, INVALID),  # carries its own status, type and code
    ValidationError: ErrorAnswer(400, INVALID),
    RequestError: ErrorAnswer(400, INVALID),
    NoEligibleModel: ErrorAnswer(400, INVALID, "no_eligible_model"),
    BudgetExceeded: ErrorAnswer(429, "rate_limit_error", "budget_exceeded"),
    UpstreamRejected: ErrorAnswer(400, INVALID),  # the upstream's own status and body go back
    AllCandidatesFailed: ErrorAnswer(502, "upstream_error", "all_failed"),
    HTTPException: ErrorAnswer(400, INVALID),  # Starlette's 404/405: its own status
    RouterError: ErrorAnswer(500, "server_error"),  # a bug: logged with its traceback
    Exception: ErrorAnswer(500, "server_error"),
}

_ALL_TIMED_OUT = ErrorAnswer(504, "upstream_error", "all_timed_out")
_NO_ELIGIBLE = {
    "budget": ErrorAnswer(429, "rate_limit_error", "budget_exceeded"),
    "available": ErrorAnswer(503, "service_unavailable", "no_available_model"),
}
_STATUS_KIND = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}
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
    "budget": None,
}


def error_answer(exc: BaseException) -> ErrorAnswer:
    """(status, OpenAI error type, code) for ``exc``."""
    answer = next(ERROR_MAP[cls] for cls in type(exc).__mro__ if cls in ERROR_MAP)
    if isinstance(exc, ApiError):
        return ErrorAnswer(exc.status, exc.kind, exc.code)
    if isinstance(exc, HTTPException):
        return ErrorAnswer(exc.status_code, _STATUS_KIND.get(exc.status_code, INVALID))
    if isinstance(exc, NoEligibleModel):
        return _NO_ELIGIBLE.get(exc.constraint, answer)
    if isinstance(exc, UpstreamRejected):
        return ErrorAnswer(exc.status, answer.kind)
    if isinstance(exc, AllCandidatesFailed) and exc.timed_out:
        return _ALL_TIMED_OUT
    return answer


def _message_and_param(exc: BaseException, answer: ErrorAnswer) -> tuple[str, str | None]:
    if isinstance(exc, ValidationError):
        param, message = first_error(exc)
        return f"{param}: {message}", param
    if isinstance(exc, RequestError):
        return str(exc), exc.field
    if isinstance(exc, NoEligibleModel):
        return str(exc), _CONSTRAINT_PARAM.get(exc.constraint, exc.constraint)
    if isinstance(exc, ApiError):
        return str(exc), exc.param
    if isinstance(exc, HTTPException):
        return str(exc.detail), None
    if answer.status == 500:
        return "internal error; see the router's log", None
    return str(exc), None


def _headers(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, ApiError):
        return exc.headers
    if isinstance(exc, HTTPException):
        return dict(exc.headers or {})
    if isinstance(exc, BudgetExceeded):  # daily caps reset at midnight UTC: retrying sooner is futile
        return {"retry-after": str(_seconds_to_utc_midnight()), NO_RETRY: "false"}
    return {}


NO_RETRY = "x-should-retry"  # the official OpenAI clients honour it over their own retry rules


def _seconds_to_utc_midnight(now: float | None = None) -> int:
    now = time.time() if now is None else now
    return max(1, math.ceil(86_400 - now % 86_400))


def _log_refused(request: Request, answer: ErrorAnswer, param: str | None) -> None:
    """The access line of a request refused before any model answered: no message, no body."""
    if access_log.isEnabledFor(logging.INFO) and running(request).service.settings.server.access_log:
        fields = {
            "request_id": request.headers.get("x-request-id"),
            "path": request.url.path,
            "status": answer.status,
            "outcome": "refused",
            "error": answer.code or answer.kind,
            "param": param,
        }
        access_log.info("access", extra={"fields": fields})


def _outcome(exc: BaseException, answer: ErrorAnswer) -> str:
    """How /metrics counts a request answered with an error: a 5xx other than "no model is
    eligible" (503 when every breaker is open) is the router's own ``error``."""
    if isinstance(exc, NoEligibleModel):
        return "no_eligible"
    return "error" if answer.status >= 500 else "rejected"


async def handle_error(request: Request, exc: Exception) -> Response:
    """Answer ``exc``; count a refused request (not an unauthenticated one: it moves nothing)."""
    answer = error_answer(exc)
    pipeline = running(request).pipeline
    if isinstance(exc, RequestFailed):
        mode = pipeline.upstream_mode
        headers = router_headers(exc.decision, exc.result, mode, "bypass")
        if isinstance(exc, UpstreamRejected):
            return Response(exc.body, status_code=exc.status, media_type=JSON, headers=headers)
        body = error_body(str(exc), None, answer.kind, answer.code)
        body["routing"] = routing_info(exc.decision, exc.result, False, mode)
        # Every candidate was tried: a client retrying the same request only tries them again.
        return json_response(body, answer.status, {**headers, NO_RETRY: "false"})
    if answer.status == 500:
        log.error("unexpected error while serving a request", exc_info=exc)
    if answer.status != 401 and not isinstance(exc, HTTPException):  # no route (a favicon) is not a request
        pipeline.refused(_outcome(exc, answer))
    message, param = _message_and_param(exc, answer)
    _log_refused(request, answer, param)
    return json_response(error_body(message, param, answer.kind, answer.code), answer.status, _headers(exc))

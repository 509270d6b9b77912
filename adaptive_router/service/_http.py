"""HTTP plumbing the routes share: the lifespan state, bounded body reading, JSON, auth, and the
``x-router-*`` headers. Errors are answered in one place: :mod:`adaptive_router.service._error_map`."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from .._errors import ApiError
from .._json import dumps, loads, too_deep
from ..pipeline._pipeline import Call

if TYPE_CHECKING:
    from ..core._decision import Decision
    from ..pipeline._runtime import Running
    from ..upstream._execution import Result

log = logging.getLogger("adaptive_router.service")

__all__ = [
    "COST_HEADER",
    "JSON",
    "answer_response",
    "authorize",
    "call_headers",
    "json_response",
    "read_call",
    "read_json",
    "require_json",
    "router_headers",
    "running",
]

JSON = "application/json"
COST_HEADER = "x-router-cost-usd"


def running(request: Request) -> Running:
    """The opened service, kept in the app's lifespan state."""
    state: Running = request.state.running
    return state


async def read_call(request: Request) -> tuple[Running, str | None, dict[str, Any]]:
    """The opened service, the caller's key (401 without a valid one) and the JSON body."""
    state = running(request)
    api_key = authorize(request, state.service.keys)
    require_json(request)
    settings = state.service.settings
    body = await read_json(request, settings.server.max_body_bytes, max_depth=settings.limits.json_depth)
    return state, api_key, body


def require_json(request: Request) -> None:
    """415 unless the body is declared JSON: a web page can send ``text/plain`` (or no type)
    cross-origin without a CORS preflight, JSON only after one."""
    declared = request.headers.get("content-type", "")
    media = declared.partition(";")[0].strip().lower()
    if media != JSON and not (media.startswith("application/") and media.endswith("+json")):
        shown = f"{declared[:64]!r}" if declared else "none"
        raise ApiError(415, f"Content-Type must be application/json (got {shown})", "content-type")


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
    headers = router_headers(call.decision, call.result, upstream_mode, call.cache_state, attempts)
    if call.outcome == "ok":  # an answer in hand (a stream's cost comes in its usage chunk)
        headers[COST_HEADER] = repr(call.cost_usd)
    return headers


def answer_response(call: Call, routing: dict[str, Any], headers: dict[str, str]) -> Response:
    """The answer, serialised once by the pipeline, with ``routing`` appended to the object."""
    raw, answer = call.answer_json, call.answer
    if raw is None or answer is None or not answer or "routing" in answer:
        return json_response({**(answer or {}), "routing": routing}, headers=headers)
    return Response(raw[:-1] + b',"routing":' + dumps(routing) + b"}", media_type=JSON, headers=headers)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(data), status_code=status, media_type=JSON, headers=headers)


async def read_json(request: Request, limit: int, *, max_depth: int | None = None) -> dict[str, Any]:
    """The body as a JSON object, refused (413) before more than ``limit`` bytes are read, and
    (400 naming the field) when arrays or objects nest deeper than ``max_depth``."""
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
    if max_depth is not None and (path := too_deep(data, max_depth, raw)) is not None:
        where = ".".join(path[:4]) + (".…" if len(path) > 4 else "")
        raise ApiError(400, f"{where}: JSON nested deeper than {max_depth} levels", path[0])
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

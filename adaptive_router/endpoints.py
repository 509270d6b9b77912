"""The router's own endpoints: ``/route``, ``/complete``, ``/feedback``, the model lists, metrics,
health and readiness, and the one handler that turns exceptions into answers."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from ._http import JSON, ApiError, authorize, error_response, json_response
from .cache import redis_topology
from .errors import NoEligibleModel
from .proxy import (
    _AllFailed,
    _answer,
    _decide,
    _guarded_json,
    _headers,
    _routing,
    _service,
    _UpstreamAnswer,
)
from .schemas import (
    CompleteRequest,
    FeedbackRequest,
    Message,
    RouteQuery,
    required_capabilities,
    route_request,
)

if TYPE_CHECKING:  # the service module imports these handlers; it is only needed for types
    pass

log = logging.getLogger("adaptive_router.service")

# --- the router's own endpoints ----------------------------------------------------------------


async def route_only(request: Request) -> Response:
    service, body = await _guarded_json(request)
    query = RouteQuery.model_validate(body)
    route = _query_route(query, request)
    service.admit(route, request.state.api_key)
    service.breakers.refresh()  # type: ignore[union-attr]
    decision = _decide(service, route, query.model)
    return json_response(decision.to_dict(), headers=_headers(service, decision, None, "bypass"))


def _query_route(query: RouteQuery, request: Request) -> Any:
    messages = query.messages or [Message(role="user", content=query.prompt)]
    return route_request(
        query.model,
        query,
        messages=[m.model_dump() for m in messages],
        max_tokens=query.max_tokens,
        capabilities=required_capabilities(messages, route=query),
        request_id=request.headers.get("x-request-id"),
    )


async def complete(request: Request) -> Response:
    """The published design's shape: id, model, choices, usage, routing_decision, latency_ms, cached."""
    service, body = await _guarded_json(request)
    query = CompleteRequest.model_validate(body)
    started = time.perf_counter()
    route = _query_route(query, request)
    service.admit(route, request.state.api_key)
    service.breakers.refresh()  # type: ignore[union-attr]
    decision = _decide(service, route, query.model)
    messages = route.messages
    upstream_body: dict[str, Any] = {"model": decision.model, "messages": messages}
    if query.max_tokens is not None:
        upstream_body["max_tokens"] = query.max_tokens
    if query.temperature is not None:
        upstream_body["temperature"] = query.temperature
    timeout = service.executor.timeout_for(route.max_latency_ms)  # type: ignore[union-attr]
    result = await service.executor.complete(decision, upstream_body, timeout)  # type: ignore[union-attr]
    service.log(decision, result, route, result.completion)
    data = _answer(service, decision, result, started, request.state.api_key)
    answer = {
        "id": data.get("id"),
        "model": data["model"],
        "choices": data.get("choices", []),
        "usage": data.get("usage"),
        "routing_decision": {
            "selected_model": data["model"],
            "reason": decision.reason,
            "fallbacks": decision.fallbacks,
            "attempts": [a.as_dict() for a in result.attempts],
            "request_id": decision.request_id,
            "upstream": service.upstream_mode,
        },
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        "cached": False,
    }
    return json_response(answer, headers=_headers(service, decision, result, "bypass"))


async def feedback(request: Request) -> Response:
    service, body = await _guarded_json(request)
    item = FeedbackRequest.model_validate(body)
    if not service.router.feedback(item.request_id, item.score):
        raise ApiError(
            404,
            f"unknown or expired request_id {item.request_id!r}: feedback needs an answered "
            "request from this router (see routing.request_id)",
            "request_id",
            code="unknown_request",
        )
    if service.traffic_log is not None:
        service.traffic_log.log_feedback(item.request_id, item.score)
    return json_response({"ok": True, "request_id": item.request_id})


async def list_models_openai(request: Request) -> Response:
    service = _service(request)
    authorize(request, service.keys)
    auto = ["auto", *(f"auto:{mode}" for mode in service.router.config.modes)]
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "adaptive-router"} for m in auto]
    data += [
        {"id": i, "object": "model", "created": 0, "owned_by": i.split("/", 1)[0]}
        for i in service.router.catalogue.ids
    ]
    return json_response({"object": "list", "data": data})


async def list_models(request: Request) -> Response:
    service = _service(request)
    authorize(request, service.keys)
    mode = request.query_params.get("mode")
    modes = [mode] if mode else ["default", *service.router.config.modes]
    tables = {m: service.router.model_table(m if m != "default" else None) for m in modes}
    first = tables[modes[0]]
    models = []
    for row in first:
        entry = {
            k: v for k, v in row.items() if k not in ("rank", "mode", "score", "latency", "cost", "quality")
        }
        entry["scores"] = {
            m: next(r["score"] for r in tables[m] if r["model"] == row["model"]) for m in modes
        }
        models.append(entry)
    return json_response({"object": "list", "modes": modes, "ranked_by": modes[0], "data": models})


async def metrics_text(request: Request) -> Response:
    service = _service(request)
    authorize(request, service.keys)
    try:
        body, content_type = service.metrics.prometheus()
    except ImportError as exc:
        raise ApiError(501, str(exc), None, "server_error", "metrics_extra_missing") from None
    return Response(body, media_type=content_type)


async def metrics_json(request: Request) -> Response:
    service = _service(request)
    authorize(request, service.keys)
    return json_response(service.metrics.summary())


async def health(request: Request) -> Response:
    return json_response({"status": "ok"})


async def ready(request: Request) -> Response:
    service = _service(request)
    cache = service.cache
    redis_configured = service.settings.redis.url is not None
    body = {
        "ready": service.client is not None,
        "catalogue": {"models": len(service.router.catalogue), "source": service.router.catalogue.source},
        "upstream": {"mode": service.upstream_mode, "providers": [p.name for p in service.providers]},
        "cache": {
            "backend": cache.backend if cache is not None else None,
            "redis_configured": redis_configured,
            "redis_up": bool(getattr(cache, "redis_up", False)) if redis_configured else None,
        },
        "redis": await redis_topology(cache),  # single, sentinel or cluster; None: memory only
        "breakers": service.breakers.snapshot() if service.breakers else {},
        "policy": service.router.policy.name,
    }
    if service.shared is not None:
        stats = service.shared.stats()
        body["shared_state"] = {
            "replica_id": service.shared.replica_id,
            "redis_up": stats.redis_up,
            "last_sync_age_s": stats.last_sync_age_s,
            "replicas": stats.replicas,
            "syncs": stats.syncs,
            "failures": stats.failures,
        }
    if service.budget is not None:
        snap = service.budget.snapshot()
        body["budget"] = {
            "redis_up": snap.redis_up,
            "day": snap.day,
            "global_usd": snap.global_usd,
            "global_cap": snap.global_cap,
            "unsynced_usd": snap.unsynced_usd,
        }
    if service.simulated:
        body["warning"] = "answers come from the SIMULATED upstream: set OPENROUTER_API_KEY for real models"
    return json_response(body, 200 if body["ready"] else 503)


# --- the app -----------------------------------------------------------------------------------


async def _handle_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, _UpstreamAnswer):
        headers = _headers(request.app.state.service, exc.decision, exc.result, "bypass")
        return Response(exc.body, status_code=exc.status, media_type=JSON, headers=headers)
    if isinstance(exc, _AllFailed):
        service = request.app.state.service
        message = ("every candidate timed out" if exc.status == 504 else "every candidate failed") + (
            f" ({', '.join(f'{a.model}: {a.outcome}' for a in exc.result.attempts)})"
        )
        body = {
            "error": {
                "message": message,
                "type": "upstream_error",
                "param": None,
                "code": "all_timed_out" if exc.status == 504 else "all_failed",
            },
            "routing": _routing(service, exc.decision, exc.result, cached=False),
        }
        return json_response(body, exc.status, _headers(service, exc.decision, exc.result, "bypass"))
    if not (isinstance(exc, ApiError) and exc.status == 401):  # an unauthenticated caller moves nothing
        outcome = "no_eligible" if isinstance(exc, NoEligibleModel) else "rejected"
        request.app.state.service.metrics.request(None, outcome, 0.0, None, 0, False, False)
    return error_response(exc)

"""The router's own endpoints: ``/route``, ``/complete``, ``/feedback``, the model lists, metrics,
health and readiness. Each parses, hands the work to the pipeline or the router, and answers."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .._errors import ApiError, RedisUnavailable
from ..core._decision import RouteRequest
from ..pipeline._pipeline import Call, with_cost
from ..state._cache import redis_topology
from ..state._feedback import owner_of
from ._access import is_admin, known_model, may_score, sees_detail
from ._guards import prepare_globs
from ._http import authorize, call_headers, json_response, read_call, running
from ._schemas import (
    CompleteRequest,
    FeedbackRequest,
    Message,
    RouteQuery,
    required_capabilities,
    route_request,
)

__all__ = [
    "complete",
    "feedback",
    "health",
    "list_models",
    "list_models_openai",
    "metrics_json",
    "metrics_text",
    "ready",
    "route_only",
]


async def route_only(request: Request) -> Response:
    state, api_key, body = await read_call(request)
    query = RouteQuery.model_validate(body)
    known_model(query.model, state.service.router)
    pipeline = state.pipeline
    call = pipeline.call(_query_route(query, request), api_key=api_key, model=query.model)
    await prepare_globs(pipeline.catalogue, (*call.route.allow, *call.route.deny))
    decision = pipeline.route(call)
    return json_response(decision.to_dict(), headers=call_headers(call, pipeline.upstream_mode))


def _query_route(query: RouteQuery, request: Request) -> RouteRequest:
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
    """The published design's shape: id, model, choices, usage, routing_decision, latency_ms, cached.

    Identical cacheable requests (``temperature: 0``, or ``cache: true``) are answered from the
    same response cache as chat, with ``cached: true`` and the first answer's ``id``."""
    state, api_key, body = await read_call(request)
    query = CompleteRequest.model_validate(body)
    known_model(query.model, state.service.router)
    started = time.perf_counter()
    route = _query_route(query, request)
    upstream_body: dict[str, Any] = {"messages": route.messages}
    if query.max_tokens is not None:
        upstream_body["max_tokens"] = query.max_tokens
    if query.temperature is not None:
        upstream_body["temperature"] = query.temperature
    pipeline = state.pipeline
    call = pipeline.call(route, body=upstream_body, api_key=api_key, model=query.model)
    await prepare_globs(pipeline.catalogue, (*route.allow, *route.deny))
    options = query.model_dump(
        exclude={"messages", "prompt", "max_tokens", "temperature"}, exclude_defaults=True
    )
    pipeline.consider_cache(call, options, query.cache)
    data = await pipeline.lookup(call)
    cached = data is not None
    if data is None:
        data = await pipeline.complete(call)
    decision, result = call.decision, call.result
    answer = {
        "id": data.get("id"),
        "model": data.get("model"),
        "choices": data.get("choices", []),
        "usage": _usage(data, cached),
        "routing_decision": {
            "selected_model": data.get("model"),
            "reason": decision.reason if decision else "cached",
            "fallbacks": decision.fallbacks if decision else [],
            "attempts": [a.as_dict() for a in result.attempts] if result else [],
            "request_id": decision.request_id if decision else call.hit_id,
            "upstream": pipeline.upstream_mode,
        },
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        "cached": cached,
    }
    if cached:
        return json_response(answer, headers=_hit_headers(data, call, pipeline.upstream_mode))
    return json_response(answer, headers=call_headers(call, pipeline.upstream_mode))


def _hit_headers(data: dict[str, Any], call: Call, upstream_mode: str) -> dict[str, str]:
    return {
        "x-router-model": str(data.get("model")),
        "x-router-attempts": "0",
        "x-router-decision-us": "0",
        "x-router-cache": "hit",
        "x-router-request-id": str(call.hit_id),
        "x-router-upstream": upstream_mode,
    }


async def feedback(request: Request) -> Response:
    """A quality score for an answered request, named by ``routing.request_id`` or the answer's
    ``id``; from the key that made the request (or an admin key); the first score counts (409 after)."""
    state, api_key, body = await read_call(request)
    item = FeedbackRequest.model_validate(body)
    store = state.pipeline.feedback
    if store is None:  # a pipeline built without a store: the router's own memory
        if not state.service.router.feedback(item.request_id, item.score):
            raise _unknown(item.request_id)
        return json_response({"ok": True, "request_id": item.request_id})
    try:
        admin = is_admin(api_key, state.service.settings)
        entry = await store.resolve(item.request_id, owner_of(api_key), any_owner=admin)
    except RedisUnavailable:
        raise ApiError(
            503,
            "the feedback store (Redis) did not answer; retry shortly",
            None,
            "service_unavailable",
            "feedback_unavailable",
            {"retry-after": "1"},
        ) from None
    if entry is None or not may_score(entry, api_key, state.service.settings):
        raise _unknown(item.request_id)  # another key's request looks unknown: nothing to learn from it
    if not await store.claim(entry):
        raise ApiError(
            409,
            f"request {entry.request_id!r} was already scored; the first score counts",
            "request_id",
            code="already_scored",
        )
    state.service.router.feedback_on(entry.model, entry.cell, item.score)
    if state.pipeline.traffic_log is not None:
        state.pipeline.traffic_log.log_feedback(entry.request_id, item.score)
    return json_response({"ok": True, "request_id": entry.request_id})


def _unknown(request_id: str) -> ApiError:
    return ApiError(
        404,
        f"unknown or expired request_id {request_id!r}: feedback needs an answered request from this "
        "router and this API key (routing.request_id, or the answer's id)",
        "request_id",
        code="unknown_request",
    )


async def list_models_openai(request: Request) -> Response:
    service = running(request).service
    authorize(request, service.keys)
    auto = ["auto", *(f"auto:{mode}" for mode in service.router.config.modes)]
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "adaptive-router"} for m in auto]
    data += [
        {"id": i, "object": "model", "created": 0, "owned_by": i.split("/", 1)[0]}
        for i in service.router.catalogue.ids
    ]
    return json_response({"object": "list", "data": data})


async def list_models(request: Request) -> Response:
    service = running(request).service
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
    service = running(request).service
    authorize(request, service.keys)
    try:
        body, content_type = service.metrics.prometheus()
    except ImportError as exc:
        raise ApiError(501, str(exc), None, "server_error", "metrics_extra_missing") from None
    return Response(body, media_type=content_type)


async def metrics_json(request: Request) -> Response:
    service = running(request).service
    authorize(request, service.keys)
    return json_response(service.metrics.summary())


async def health(request: Request) -> Response:
    return json_response({"status": "ok"})


async def ready(request: Request) -> Response:
    state = running(request)
    if not sees_detail(request):  # with router keys, providers, spend and caps are for clients only
        return json_response({"ready": True})
    service, pipeline = state.service, state.pipeline
    redis_configured = service.settings.redis.url is not None
    body: dict[str, Any] = {
        "ready": True,
        "catalogue": {"models": len(service.router.catalogue), "source": service.router.catalogue.source},
        "upstream": {"mode": service.upstream_mode, "providers": [p.name for p in service.providers]},
        "cache": {
            "backend": state.cache.backend,
            "redis_configured": redis_configured,
            "redis_up": bool(getattr(state.cache, "redis_up", False)) if redis_configured else None,
        },
        "redis": await redis_topology(state.cache),  # single, sentinel or cluster; None: memory only
        "breakers": pipeline.breakers.snapshot(),
        "policy": service.router.policy.name,
    }
    if state.shared is not None:
        stats = state.shared.stats()
        body["shared_state"] = {
            "replica_id": state.shared.replica_id,
            "redis_up": stats.redis_up,
            "last_sync_age_s": stats.last_sync_age_s,
            "replicas": stats.replicas,
            "syncs": stats.syncs,
            "failures": stats.failures,
        }
    if pipeline.budget is not None:
        snap = pipeline.budget.snapshot()
        body["budget"] = {
            "redis_up": snap.redis_up,
            "day": snap.day,
            "global_usd": snap.global_usd,
            "global_cap": snap.global_cap,
            "unsynced_usd": snap.unsynced_usd,
        }
    ops = getattr(request.state, "ops", None)  # reloads, catalogue refreshes, the pool's health
    if ops is not None:
        body.update(ops.ready_info())
    if service.simulated:
        body["warning"] = "answers come from the SIMULATED upstream: set OPENROUTER_API_KEY for real models"
    return json_response(body)


def _usage(data: dict[str, Any], cached: bool) -> Any:
    """The answer's usage; a cached answer's costs nothing this time, as on /v1/chat/completions."""
    usage = data.get("usage")
    return with_cost(usage, 0.0) if cached and isinstance(usage, dict) else usage

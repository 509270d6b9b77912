"""The HTTP service: an OpenAI-compatible routing proxy, built from ``Settings`` by ``create_app``.

    app = create_app(load_settings("settings.yaml"))      # a Starlette app
    uvicorn.run(app)                                       # or: adaptive-router serve

Point any OpenAI client at ``http://host:port/v1`` and set ``model`` to ``auto``,
``auto:<mode>`` or a model id. Handlers stay thin: routing is the ``Router``'s, attempts the
``Executor``'s, bytes the ``UpstreamClient``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ._http import JSON, ApiError, authorize, dumps, error_response, json_response, read_json
from .budget import Budget, price_mask
from .cache import Cache, build_cache, is_cacheable, redis_client, request_cache_key
from .catalogue import Catalogue, load_catalogue
from .errors import NoEligibleModel, RequestError, RouterError, UpstreamError
from .execution import Breakers, Executor, Result
from .metrics import Metrics
from .router import Decision, Router
from .schemas import (
    ChatCompletionRequest,
    CompleteRequest,
    FeedbackRequest,
    Message,
    RouteQuery,
    required_capabilities,
    route_request,
)
from .settings import Settings
from .shared import Periodic, SharedState
from .trafficlog import TrafficLog
from .upstream import Provider, UpstreamClient, providers_from_settings

__all__ = ["RouterService", "create_app", "serve"]

log = logging.getLogger("adaptive_router.service")
SIMULATOR_URL_ENV = "ROUTER_SIMULATOR_URL"


@dataclass
class RouterService:
    """Everything one process serves with. Built in ``create_app``; opened in the lifespan."""

    settings: Settings
    router: Router
    providers: list[Provider]
    simulated: bool
    transport: httpx.AsyncBaseTransport | None = None
    metrics: Metrics = field(default_factory=Metrics)
    cache: Cache | None = None
    client: UpstreamClient | None = None
    executor: Executor | None = None
    breakers: Breakers | None = None
    keys: list[bytes] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    traffic_log: TrafficLog | None = None
    shared: SharedState | None = None
    budget: Budget | None = None
    cheap_mask: Any = None  # the budget's price ceiling as a row mask, built once
    _background: set[asyncio.Task[Any]] = field(default_factory=set)
    _redis_clients: list[Any] = field(default_factory=list)
    _timers: list[Periodic] = field(default_factory=list)

    @property
    def upstream_mode(self) -> str:
        return "simulated" if self.simulated else "live"

    async def open(self) -> None:
        up = self.settings.upstream
        self.cache = await build_cache(
            self.settings.redis, self.settings.cache, on_state_change=lambda s: self.metrics.set_info(cache=s)
        )
        self.client = UpstreamClient(
            self.providers,
            connect_timeout_s=up.connect_timeout_s,
            read_timeout_s=up.read_timeout_s,
            max_connections=up.max_connections,
            http_client=up.http_client,
            transport=self.transport,
        )
        self.breakers = Breakers(
            self.router, up.breaker_failures, up.breaker_cooldown_s, observer=self.metrics
        )
        self.executor = Executor(
            self.router,
            self.client,
            self.breakers,
            attempt_timeout_s=up.attempt_timeout_s,
            max_attempts=up.max_attempts,
            observer=self.metrics,
        )
        self.metrics.set_info(upstream=self.upstream_mode, cache=self.cache.backend)
        server = self.settings.server
        if server.traffic_log:
            self.traffic_log = TrafficLog(
                server.traffic_log,
                server.traffic_log_max_bytes,
                server.traffic_log_backups,
                include_prompts=server.log_prompts,
            )
        saved_at = self._load_state()
        await self._open_shared(saved_at)

    async def _open_shared(self, saved_at: float | None) -> None:
        """Replicas' shared learning and budgets, both through Redis when it is configured."""
        settings, redis = self.settings, self.settings.redis
        learning, budget = settings.learning, settings.budget
        replica = learning.replica_id or f"{socket.gethostname()}-{os.getpid()}"
        if redis.url:
            interval = learning.sync_interval_ms / 1000
            client = redis_client(
                redis.url, redis.connect_timeout_ms, max(redis.op_timeout_ms, interval * 500)
            )
            self._redis_clients.append(client)
            self.shared = SharedState(
                client,
                redis.prefix,
                replica,
                self.router.learner,
                interval,
                learning.shared_ttl_s,
                clock=self.router.clock,
                on_state_change=lambda up: self.metrics.set_info(shared="redis" if up else "local"),
            )
            await self.shared.start(local_saved_at=saved_at)
        if budget.enabled:
            client = (
                redis_client(redis.url, redis.connect_timeout_ms, max(redis.op_timeout_ms, 50.0))
                if redis.url
                else None
            )
            if client is not None:
                self._redis_clients.append(client)
            self.budget = Budget(
                client,
                redis.prefix,
                budget.global_daily_usd,
                budget.per_key_daily_usd,
                budget.near_fraction,
                budget.price_ceiling_per_mtok,
                budget.mode,
                replica_id=replica,
                api_keys=settings.server.api_keys,
            )
            self.cheap_mask = price_mask(self.router.catalogue, budget.price_ceiling_per_mtok)
            self._timers.append(Periodic(budget.refresh_interval_ms / 1000, self.budget.refresh, "budget"))

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def admit(self, route: Any, api_key: str | None) -> None:
        """Budgets: 429 at the cap (mode reject); only models under the price ceiling near it."""
        if self.budget is None:
            return
        verdict = self.budget.check(api_key)
        verdict.raise_if_blocked()
        if verdict.price_ceiling is not None:
            route.mask = self.cheap_mask

    def charge(self, api_key: str | None, usd: float) -> None:
        if self.budget is not None and usd > 0:
            self._spawn(self.budget.charge(api_key, usd))

    def log(self, decision: Decision, result: Result, route: Any, answer: Any = None) -> None:
        """One traffic-log line (enqueued; written by a background thread, never blocking)."""
        if self.traffic_log is not None:
            self.traffic_log.log_decision(decision, result.attempts, request=route, answer=answer)

    async def close(self) -> None:
        if self.traffic_log is not None:
            self.traffic_log.close()
        for timer in self._timers:
            await timer.stop()
        await asyncio.gather(*self._background, return_exceptions=True)  # charges still in flight
        if self.budget is not None:
            await self.budget.refresh()
        pushed = await self.shared.stop() if self.shared is not None else False
        if not pushed or self.settings.learning.state_path:
            self._save_state()
        for client in self._redis_clients:
            await client.aclose()
        if self.client is not None:
            await self.client.aclose()
        if self.cache is not None:
            await self.cache.close()

    def _load_state(self) -> float | None:
        """Load the saved learned state; returns when it was saved (or None)."""
        path = self.settings.learning.state_path
        if not (path and os.path.exists(path)):
            return None
        try:
            self.router.learner.merge(self.router.learner.read_state(path))
            log.info("loaded learned state from %s", path)
            return os.path.getmtime(path)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("could not load learned state from %s: %s; starting from priors", path, exc)
            return None

    def _save_state(self) -> None:
        path = self.settings.learning.state_path
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.router.learner.save(path)
            log.info("saved learned state to %s", path)


def wants_simulator(settings: Settings) -> bool:
    """Simulate when told to, or (``auto``) when no provider has a key and none is configured."""
    mode = settings.upstream.simulate
    if mode != "auto":
        return mode == "always"
    providers = providers_from_settings(settings.upstream, settings.openrouter_key())
    return not (any(p.api_key for p in providers) or settings.upstream.providers)


def build_service(
    settings: Settings,
    *,
    catalogue: Catalogue | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> RouterService:
    """Resolve the catalogue and the upstream once, at start-up: simulated when no key is set."""
    catalogue = catalogue or load_catalogue(
        settings.catalogue.source, settings.catalogue.overlay, settings.openrouter_key()
    )
    router = Router.from_settings(settings, catalogue)
    providers = providers_from_settings(settings.upstream, settings.openrouter_key())
    simulated = wants_simulator(settings)
    if simulated:
        url = settings.simulator_url or os.environ.get(SIMULATOR_URL_ENV)
        if not url:
            raise RouterError(
                "no upstream API key is set and no simulated upstream is running; use "
                "'adaptive-router serve' (which starts one) or set OPENROUTER_API_KEY"
            )
        providers = [Provider(name="simulated", base_url=url, models=("*",))]
        log.warning(
            "NO UPSTREAM API KEY: answers come from the SIMULATED upstream at %s, not from real models. "
            "Set OPENROUTER_API_KEY (or upstream.providers) for real answers.",
            url,
        )
    keys = [k.encode() for k in settings.server.api_keys]
    return RouterService(settings, router, providers, simulated, transport, keys=keys)


# --- handlers ------------------------------------------------------------------------------


def _service(request: Request) -> RouterService:
    service: RouterService = request.app.state.service
    return service


async def _guarded_json(request: Request) -> tuple[RouterService, dict[str, Any]]:
    service = _service(request)
    request.state.api_key = authorize(request, service.keys)
    return service, await read_json(request, service.settings.server.max_body_bytes)


async def chat_completions(request: Request) -> Response:
    service, body = await _guarded_json(request)
    chat = ChatCompletionRequest.model_validate(body)
    started = time.perf_counter()
    route = route_request(
        chat.model,
        chat.route,
        messages=body["messages"],
        max_tokens=chat.answer_limit(),
        capabilities=chat.capabilities(),
        request_id=request.headers.get("x-request-id"),
    )
    upstream_body = {k: v for k, v in body.items() if k != "route"}
    cache_key = _cache_key(service, body, chat)
    if cache_key is not None:
        cached = await _cached(service, cache_key, chat, started)
        if cached is not None:
            return cached
    service.admit(route, request.state.api_key)
    service.breakers.refresh()  # type: ignore[union-attr]
    decision = _decide(service, route, chat.model)
    timeout = service.executor.timeout_for(route.max_latency_ms)  # type: ignore[union-attr]
    if chat.stream:
        return await _stream(
            service,
            decision,
            upstream_body,
            timeout,
            started,
            "miss" if cache_key else "bypass",
            route,
            request.state.api_key,
        )
    result = await service.executor.complete(decision, upstream_body, timeout)  # type: ignore[union-attr]
    service.log(decision, result, route, result.completion)
    data = _answer(service, decision, result, started, request.state.api_key)
    if cache_key is not None and service.cache is not None:
        await _store(service, cache_key, data)
    data["routing"] = _routing(service, decision, result, cached=False)
    return json_response(data, headers=_headers(service, decision, result, "miss" if cache_key else "bypass"))


def _decide(service: RouterService, route: Any, model: str) -> Decision:
    try:
        return service.router.decide(route)
    except RequestError as exc:
        if exc.field == "mode":  # the mode came from "auto:<mode>" or route.priority: name that field
            raise RequestError(
                "model" if model.startswith("auto:") else "route.priority", str(exc).removeprefix("mode: ")
            ) from None
        raise


def _answer(
    service: RouterService, decision: Decision, result: Result, started: float, api_key: str | None = None
) -> dict[str, Any]:
    """The upstream's answer with ``model`` set to what answered; raises the right error otherwise."""
    metrics = service.metrics
    if result.client_fault is not None:
        fault = result.client_fault
        metrics.request(
            None,
            "client_error",
            time.perf_counter() - started,
            decision.decision_us,
            len(result.attempts),
            False,
            False,
        )
        raise _UpstreamAnswer(fault.status_code, fault.body, decision, result)
    completion = result.completion
    if completion is None:
        status = 504 if result.all_timed_out else 502
        metrics.request(
            None,
            "timeout" if status == 504 else "upstream_error",
            time.perf_counter() - started,
            decision.decision_us,
            len(result.attempts),
            False,
            False,
        )
        raise _AllFailed(status, decision, result)
    data = dict(completion.data)
    data["model"] = completion.model_id
    cost = _cost(
        service,
        completion.model_id,
        completion.prompt_tokens,
        completion.completion_tokens,
        completion.cost_usd,
    )
    metrics.usage(completion.model_id, completion.prompt_tokens or 0, completion.completion_tokens or 0, cost)
    service.charge(api_key, cost)
    metrics.request(
        completion.model_id,
        "ok",
        time.perf_counter() - started,
        decision.decision_us,
        len(result.attempts),
        False,
        False,
    )
    return data


class _UpstreamAnswer(Exception):
    """The upstream refused the request itself (400/413/422): its answer goes back as it is."""

    def __init__(self, status: int, body: bytes, decision: Decision, result: Result) -> None:
        super().__init__(status)
        self.status, self.body, self.decision, self.result = status, body, decision, result


class _AllFailed(Exception):
    def __init__(self, status: int, decision: Decision, result: Result) -> None:
        super().__init__(status)
        self.status, self.decision, self.result = status, decision, result


def _cost(
    service: RouterService, model: str, prompt: int | None, completion: int | None, reported: float | None
) -> float:
    if reported is not None:
        return reported
    catalogue = service.router.catalogue
    row = catalogue.index.get(model)
    if row is None:
        return 0.0
    return float(catalogue.price_prompt[row]) * (prompt or 0) + float(catalogue.price_completion[row]) * (
        completion or 0
    )


def _routing(
    service: RouterService, decision: Decision, result: Result | None, cached: bool
) -> dict[str, Any]:
    return {
        "request_id": decision.request_id,
        "model": result.model if result else decision.model,
        "decision": {
            "model": decision.model,
            "fallbacks": decision.fallbacks,
            "reason": decision.reason,
            "mode": decision.mode,
            "policy": decision.policy,
            "propensity": decision.propensity,
            "explored": decision.explored,
            "task": decision.profile.task,
            "from_decision_cache": decision.cached,
        },
        "attempts": [a.as_dict() for a in result.attempts] if result else [],
        "cached": cached,
        "decision_us": round(decision.decision_us, 2),
        "upstream": service.upstream_mode,
    }


def _headers(service: RouterService, decision: Decision, result: Result | None, cache: str) -> dict[str, str]:
    return {
        "x-router-model": (result.model if result else None) or decision.model,
        "x-router-attempts": str(len(result.attempts) if result else 0),
        "x-router-decision-us": f"{decision.decision_us:.1f}",
        "x-router-cache": cache,
        "x-router-request-id": decision.request_id,
        "x-router-upstream": service.upstream_mode,
    }


async def _stream(
    service: RouterService,
    decision: Decision,
    body: dict[str, Any],
    timeout: float,
    started: float,
    cache: str,
    route: Any,
    api_key: str | None,
) -> Response:
    executor = service.executor
    assert executor is not None
    result = await executor.open_stream(decision, body, timeout)
    if result.stream is None:
        service.log(decision, result, route)
        _answer(service, decision, result, started)  # raises the right error
    handle = result.stream
    assert handle is not None
    headers = _headers(service, decision, result, cache)
    headers["x-router-attempts"] = str(
        len(result.attempts) + 1
    )  # the stream's own attempt is recorded at its end

    async def events() -> AsyncIterator[bytes]:
        error: UpstreamError | None = None
        cancelled = False
        try:
            async for payload in handle.events():
                yield b"data: " + payload + b"\n\n"
        except UpstreamError as exc:  # after the first byte there is no falling back: say so in-band
            error = exc
            yield b"data: " + dumps(
                {"error": {"message": str(exc), "type": "upstream_error", "code": exc.kind}}
            )
            yield b"\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            cancelled = True
            raise
        finally:
            await handle.aclose()
            executor.finish_stream(decision, handle, error, cancelled, result)
            service.log(decision, result, route, handle.result())
            _stream_metrics(service, decision, result, handle, started, error, cancelled, api_key)

    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _stream_metrics(
    service: RouterService,
    decision: Decision,
    result: Result,
    handle: Any,
    started: float,
    error: UpstreamError | None,
    cancelled: bool,
    api_key: str | None,
) -> None:
    summary = handle.result()
    outcome = "cancelled" if cancelled else ("upstream_error" if error else "ok")
    if outcome == "ok":
        cost = _cost(
            service, handle.model_id, summary.prompt_tokens, summary.completion_tokens, summary.cost_usd
        )
        service.metrics.usage(
            handle.model_id, summary.prompt_tokens or 0, summary.completion_tokens or 0, cost
        )
        service.charge(api_key, cost)
    service.metrics.request(
        handle.model_id,
        outcome,
        time.perf_counter() - started,
        decision.decision_us,
        len(result.attempts),
        False,
        True,
    )


# --- the response cache ------------------------------------------------------------------------


def _cache_key(service: RouterService, body: dict[str, Any], chat: ChatCompletionRequest) -> str | None:
    if not service.settings.cache.enabled:
        return None
    opt_in = bool(chat.route and chat.route.cache)
    if not is_cacheable(body, opt_in):
        return None
    route = body.get("route") if isinstance(body.get("route"), dict) else None
    return request_cache_key({k: v for k, v in body.items() if k != "route"}, route)


async def _cached(
    service: RouterService, key: str, chat: ChatCompletionRequest, started: float
) -> Response | None:
    assert service.cache is not None
    raw = await service.cache.get(key)
    service.metrics.cache(raw is not None)
    if raw is None:
        return None
    data = _loads_cached(raw)
    if data is None:
        return None
    service.metrics.request(
        data.get("model"), "cache_hit", time.perf_counter() - started, None, 0, True, chat.stream
    )
    headers = {
        "x-router-model": str(data.get("model")),
        "x-router-attempts": "0",
        "x-router-decision-us": "0",
        "x-router-cache": "hit",
        "x-router-upstream": service.upstream_mode,
    }
    if chat.stream:
        include_usage = bool((chat.stream_options or {}).get("include_usage"))
        return StreamingResponse(
            _replay(data, include_usage), media_type="text/event-stream", headers=headers
        )
    data["routing"] = {
        "model": data.get("model"),
        "cached": True,
        "attempts": [],
        "decision_us": 0.0,
        "upstream": service.upstream_mode,
    }
    return json_response(data, headers=headers)


def _loads_cached(raw: bytes) -> dict[str, Any] | None:
    from ._http import loads

    try:
        data = loads(raw)
    except ValueError:
        return None  # a corrupt entry is a miss, never an error
    return data if isinstance(data, dict) else None


async def _store(service: RouterService, key: str, data: dict[str, Any]) -> None:
    assert service.cache is not None
    raw = dumps(data)
    if len(raw) <= service.settings.cache.max_value_bytes:
        await service.cache.set(key, raw, service.settings.cache.ttl_seconds)


async def _replay(data: dict[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
    """A cached completion as OpenAI's stream: role, content, finish reason, [usage,] [DONE]."""
    base = {
        "id": data.get("id", "chatcmpl-cached"),
        "object": "chat.completion.chunk",
        "created": data.get("created", int(time.time())),
        "model": data.get("model"),
    }
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    deltas = [{"role": "assistant", "content": ""}, {"content": message.get("content") or ""}]
    for delta in deltas:
        yield (
            b"data: "
            + dumps({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            + b"\n\n"
        )
    finish = {"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason", "stop")}
    yield b"data: " + dumps({**base, "choices": [finish]}) + b"\n\n"
    if include_usage and data.get("usage"):
        yield b"data: " + dumps({**base, "choices": [], "usage": data["usage"]}) + b"\n\n"
    yield b"data: [DONE]\n\n"


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


def create_app(
    settings: Settings,
    *,
    catalogue: Catalogue | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """The Starlette app for ``settings``. ``transport`` replaces the upstream's network (tests)."""
    service = build_service(settings, catalogue=catalogue, transport=transport)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.open()
        try:
            yield
        finally:
            await service.close()

    from .openapi import docs_routes

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/chat/completions", chat_completions, methods=["POST"]),
        Route("/route", route_only, methods=["POST"]),
        Route("/complete", complete, methods=["POST"]),
        Route("/feedback", feedback, methods=["POST"]),
        Route("/v1/models", list_models_openai, methods=["GET"]),
        Route("/models", list_models, methods=["GET"]),
        Route("/metrics", metrics_text, methods=["GET"]),
        Route("/metrics.json", metrics_json, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        *docs_routes(),
    ]
    # Expected errors go through Starlette's ExceptionMiddleware (answered, nothing re-raised);
    # ``Exception`` is the last resort for bugs: a JSON 500, and the traceback in the log.
    expected = (ValidationError, RouterError, ApiError, HTTPException, _UpstreamAnswer, _AllFailed)
    handlers: dict[Any, Callable[..., Any]] = {cls: _handle_error for cls in (*expected, Exception)}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.state.service = service
    return app


def app_from_environment() -> Starlette:
    """Factory for ``uvicorn --factory`` and multi-worker serving: settings from the environment."""
    from .settings import load_settings

    return create_app(load_settings())


def serve(settings: Settings) -> None:
    """Run the service with uvicorn; start the simulated upstream first when no key is set."""
    import uvicorn

    from .settings import SETTINGS_FILE_ENV  # noqa: F401  (documented: the factory reads it)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per upstream call is noise
    if wants_simulator(settings) and not settings.simulator_url:  # one running elsewhere is used as it is
        url = _start_simulator(settings)
        os.environ[SIMULATOR_URL_ENV] = url  # for worker processes, which rebuild settings
        settings = settings.model_copy(update={"simulator_url": url})
    # uvicorn re-raises SIGTERM through the previous handler once it has shut down gracefully;
    # make that handler a clean exit, so orchestrators see 0 after in-flight requests finish.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    server = settings.server
    if server.workers > 1:
        uvicorn.run(
            "adaptive_router.service:app_from_environment",
            factory=True,
            host=server.host,
            port=server.port,
            workers=server.workers,
            log_level="info",
            access_log=False,
        )
    else:
        uvicorn.run(
            create_app(settings), host=server.host, port=server.port, log_level="info", access_log=False
        )


def _start_simulator(settings: Settings) -> str:
    """The simulated upstream on a free loopback port, in a background thread of this process."""
    import socket
    import threading

    import uvicorn

    from .simulator import create_simulator_app, load_scenario, sim_models_from_catalogue

    catalogue = load_catalogue(settings.catalogue.source, settings.catalogue.overlay)
    scenario = (
        load_scenario(settings.upstream.simulator_scenario) if settings.upstream.simulator_scenario else None
    )
    app = create_simulator_app(sim_models_from_catalogue(catalogue), scenario)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="simulator").start()
    url = f"http://127.0.0.1:{port}/v1"
    log.warning("started the SIMULATED upstream at %s (%d models)", url, len(catalogue))
    return url


def complete_once(settings: Settings, route: Any, prompt: str, max_tokens: int | None, as_json: bool) -> int:
    """``adaptive-router route PROMPT`` without ``--dry-run``: one routed call, printed."""
    import json
    import sys

    if wants_simulator(settings) and not settings.simulator_url:
        settings = settings.model_copy(update={"simulator_url": _start_simulator(settings)})
    service = build_service(settings)
    body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens

    async def run() -> tuple[Decision, Result]:
        await service.open()
        try:
            decision = service.router.decide(route)
            executor = service.executor
            assert executor is not None
            return decision, await executor.complete(
                decision, body, executor.timeout_for(route.max_latency_ms)
            )
        finally:
            await service.close()

    decision, result = asyncio.run(run())
    routing = _routing(service, decision, result, cached=False)
    if result.completion is None:
        print(f"adaptive-router: no model answered: {routing['attempts']}", file=sys.stderr)
        return 1
    data = {**result.completion.data, "model": result.completion.model_id, "routing": routing}
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        content = ((data.get("choices") or [{}])[0].get("message") or {}).get("content", "")
        print(content)
        print(
            f"\n-- {result.completion.model_id} ({service.upstream_mode}), {decision.reason}", file=sys.stderr
        )
    return 0

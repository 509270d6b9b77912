"""The OpenAI-compatible proxy path: ``POST /v1/chat/completions`` (plain and streamed), the
response cache in front of it, and the helpers the other endpoints share (answer checking,
routing info, response headers).

Handlers stay thin: routing is the ``Router``'s, attempts the ``Executor``'s, bytes the
``UpstreamClient``'s; the ``RouterService`` (see :mod:`adaptive_router.service`) holds them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ._http import authorize, dumps, json_response, read_json
from .cache import is_cacheable, request_cache_key
from .errors import RequestError, UpstreamError
from .execution import Result
from .router import Decision
from .schemas import (
    ChatCompletionRequest,
    route_request,
)

if TYPE_CHECKING:  # the service module imports these handlers; it is only needed for types
    from .service import RouterService

log = logging.getLogger("adaptive_router.service")

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
            _timed(decision),
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
            _timed(decision),
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
        _timed(decision),
        len(result.attempts),
        False,
        False,
    )
    return data


def _timed(decision: Decision) -> float | None:
    """The decision time to record: none for a decision-cache hit (it was not decided now)."""
    return None if decision.cached else decision.decision_us


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
        _timed(decision),
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

"""OpenTelemetry through a real server: a request that falls back once is one trace, continued
from the client's ``traceparent``, with child spans for the cache, the decision and each upstream
attempt, and each attempt's context sent upstream. Spans are read from the SDK's in-memory exporter."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.types import ASGIApp, Receive, Scope, Send

from adaptive_router import load_settings
from adaptive_router.pipeline import SIMULATOR_URL_ENV
from adaptive_router.pipeline._tracing import tracing_wanted
from adaptive_router.service import create_app
from adaptive_router.simulator import create_simulator_app, sim_models_from_catalogue
from tests.servers import running_server
from tests.service_fixtures import FAST, MID, fail, scenario, small_catalogue, user_body

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CLIENT_SPAN = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{CLIENT_SPAN:016x}-01"
DEADLINE_S = 10.0


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """The process's tracer provider (set once per process) exporting to memory."""
    memory = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return memory


class HeaderRecorder:
    """The simulated upstream, remembering each chat request's trace headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: list[dict[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/chat/completions"):
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            self.seen.append({k: v for k, v in headers.items() if k in ("traceparent", "tracestate")})
        await self.app(scope, receive, send)


@contextlib.contextmanager
def traced_stack(
    monkeypatch: pytest.MonkeyPatch, **settings: Any
) -> Iterator[tuple[httpx.Client, HeaderRecorder]]:
    for name in list(os.environ):
        if name.startswith(("ROUTER_", "OTEL_")) or name == "OPENROUTER_API_KEY":
            monkeypatch.delenv(name)
    catalogue = small_catalogue()
    sim = HeaderRecorder(create_simulator_app(sim_models_from_catalogue(catalogue), scenario([fail(FAST)])))
    with running_server(sim) as sim_url:
        monkeypatch.setenv(SIMULATOR_URL_ENV, sim_url + "/v1")
        overrides = {"exploration": {"policy": "greedy", "seed": 0}, "tracing": {"enabled": True}, **settings}
        app = create_app(load_settings(**overrides), catalogue=catalogue)
        with running_server(app) as url, httpx.Client(base_url=url, timeout=DEADLINE_S) as http:
            yield http, sim


def spans_of_trace(exporter: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    """This test's spans, once ``count`` have ended (the server span ends after the answer is sent)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == TRACE_ID]
        if len(spans) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(0.01)


def test_fallback_once_is_one_trace_with_decision_cache_and_attempt_children(
    monkeypatch: pytest.MonkeyPatch, exporter: InMemorySpanExporter
) -> None:
    exporter.clear()
    body = user_body(route={"cache": True})
    with traced_stack(monkeypatch) as (http, sim):
        response = http.post("/v1/chat/completions", json=body, headers={"traceparent": TRACEPARENT})
        assert response.status_code == 200 and response.json()["model"] == MID
        spans = spans_of_trace(exporter, 5)
    usage = response.json()["usage"]
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    assert sorted(by_name) == ["cache lookup", "chat auto", f"chat {FAST}", f"chat {MID}", "route"]

    (request,) = by_name["chat auto"]
    assert request.kind == SpanKind.SERVER
    assert request.parent is not None and request.parent.span_id == CLIENT_SPAN  # the client's trace
    attributes = dict(request.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "auto"
    assert attributes["gen_ai.response.model"] == MID
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert attributes["gen_ai.system"] == "simulated"
    assert attributes["router.attempts"] == 2 and attributes["router.cache"] == "miss"
    assert attributes["router.mode"] == "default" and attributes["router.explored"] is False
    assert 0.0 < attributes["router.propensity"] <= 1.0
    assert attributes["router.cost_usd"] == usage["cost"]
    assert attributes["http.response.status_code"] == 200

    for span in spans:
        if span is not request:  # every other span is a direct child of the request's
            assert span.parent is not None and span.parent.span_id == request.context.span_id, span.name
    (decision,) = by_name["route"]
    assert decision.attributes is not None and decision.attributes["router.model"] == FAST
    assert tuple(decision.attributes["router.fallbacks"])[:1] == (MID,)
    (lookup,) = by_name["cache lookup"]
    assert lookup.attributes == {"router.cache": "miss"}

    (failed,) = by_name[f"chat {FAST}"]
    (answered,) = by_name[f"chat {MID}"]
    assert failed.kind == answered.kind == SpanKind.CLIENT
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes is not None and failed.attributes["http.response.status_code"] == 500
    assert failed.attributes["error.type"] == "status_error"
    assert answered.attributes is not None and answered.attributes["gen_ai.response.model"] == MID
    assert answered.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert failed.end_time is not None and answered.start_time is not None
    assert failed.end_time <= answered.start_time  # one after the other

    # Each upstream call carried its own attempt span as the parent, in the client's trace.
    sent = [h["traceparent"].split("-") for h in sim.seen]
    assert [(t, int(p, 16)) for _, t, p, _ in sent] == [
        (f"{TRACE_ID:032x}", failed.context.span_id),
        (f"{TRACE_ID:032x}", answered.context.span_id),
    ]


def test_cache_hit_is_traced_with_a_hit_and_no_attempt(
    monkeypatch: pytest.MonkeyPatch, exporter: InMemorySpanExporter
) -> None:
    body = user_body(temperature=0)
    with traced_stack(monkeypatch) as (http, _):
        assert http.post("/v1/chat/completions", json=body).status_code == 200
        exporter.clear()
        hit = http.post("/v1/chat/completions", json=body, headers={"traceparent": TRACEPARENT})
        assert hit.headers["x-router-cache"] == "hit"
        spans = spans_of_trace(exporter, 2)
    assert sorted(s.name for s in spans) == ["cache lookup", "chat auto"]
    request = next(s for s in spans if s.name == "chat auto")
    assert request.attributes is not None and request.attributes["router.cache"] == "hit"
    assert request.attributes["gen_ai.response.model"] == hit.json()["model"]


def test_streamed_request_has_its_attempt_span_end_with_the_stream(
    monkeypatch: pytest.MonkeyPatch, exporter: InMemorySpanExporter
) -> None:
    exporter.clear()
    body = user_body(stream=True, stream_options={"include_usage": True})
    with traced_stack(monkeypatch) as (http, _):
        with http.stream(
            "POST", "/v1/chat/completions", json=body, headers={"traceparent": TRACEPARENT}
        ) as r:
            assert r.status_code == 200
            assert any(line == "data: [DONE]" for line in r.iter_lines())
        spans = spans_of_trace(exporter, 4)
    answered = next(s for s in spans if s.name == f"chat {MID}")
    request = next(s for s in spans if s.name == "chat auto")
    assert answered.attributes is not None and answered.attributes["gen_ai.usage.output_tokens"] > 0
    assert request.end_time is not None and answered.end_time is not None
    assert answered.end_time <= request.end_time


def test_tracing_is_on_with_an_otlp_endpoint_and_off_without(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("ROUTER_", "OTEL_")):
            monkeypatch.delenv(name)
    assert not tracing_wanted(load_settings())
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert tracing_wanted(load_settings())
    assert not tracing_wanted(load_settings(tracing={"enabled": False}))
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not tracing_wanted(load_settings())


def test_thompson_sampling_is_traced_without_a_propensity(
    monkeypatch: pytest.MonkeyPatch, exporter: InMemorySpanExporter
) -> None:
    """Thompson sampling has no propensity: the request is answered and traced without one."""
    exporter.clear()
    with traced_stack(monkeypatch, exploration={"policy": "thompson", "seed": 0}) as (http, _):
        response = http.post("/v1/chat/completions", json=user_body(), headers={"traceparent": TRACEPARENT})
        assert response.status_code == 200, response.text
        spans = spans_of_trace(exporter, 2)
    (request,) = [s for s in spans if s.name == "chat auto"]
    attributes = dict(request.attributes or {})
    assert attributes["router.policy"] == "thompson"
    assert "router.propensity" not in attributes

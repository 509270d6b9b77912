"""OpenTelemetry traces of routed requests (the optional ``otel`` extra, imported only when on).

A request's span (opened by the HTTP layer, its parent the client's ``traceparent``) gets child
spans for the cache lookup, the decision and each upstream attempt; the attempt's context goes
upstream in ``traceparent``. Attributes follow OpenTelemetry's GenAI conventions
(``gen_ai.request.model``, ``gen_ai.usage.input_tokens``, ...) plus the router's (``router.*``).

    tracer = tracer_from_settings(settings)      # None when tracing is off
    pipeline.hooks.add(TraceHook(tracer))
    executor.tracer = AttemptTracer(tracer)

Without a tracer provider already installed (by ``opentelemetry-instrument``, or a test), one is
built from the standard ``OTEL_*`` variables: OTLP over HTTP (or gRPC by
``OTEL_EXPORTER_OTLP_PROTOCOL``), batched, ``service.name`` from ``OTEL_SERVICE_NAME``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import __version__
from .._errors import ConfigError, UpstreamError
from .._settings import Settings
from ._pipeline import Call, NoHook

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

    from ..upstream._client import Completion, StreamHandle

__all__ = [
    "INSTALL_HINT",
    "OTEL_ENV",
    "AttemptTracer",
    "TraceHook",
    "tracer_from_settings",
    "tracing_wanted",
]

log = logging.getLogger("adaptive_router.tracing")
INSTALL_HINT = "pip install 'adaptive-router[otel]'"
# Any of these set means "export traces" when tracing.enabled is auto.
OTEL_ENV = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER")
OPERATION = "chat"


def tracing_wanted(settings: Settings) -> bool:
    """On when told to, or (auto) when an OTLP endpoint or a traces exporter is named."""
    enabled = settings.tracing.enabled
    if enabled != "auto":
        return bool(enabled)
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "")
    return any(os.environ.get(name) for name in OTEL_ENV) and exporter.lower() != "none"


def tracer_from_settings(settings: Settings) -> Any | None:
    """The router's tracer, or None when tracing is off (or auto without the extra: warned)."""
    if not tracing_wanted(settings):
        return None
    try:
        from opentelemetry import trace
    except ImportError as exc:
        if settings.tracing.enabled is True:
            raise ConfigError("tracing.enabled", f"traces need OpenTelemetry: {INSTALL_HINT}") from exc
        log.warning(
            "OTEL_* variables are set but OpenTelemetry is not installed (%s): no traces", INSTALL_HINT
        )
        return None
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(_provider_from_environment())
    return trace.get_tracer("adaptive_router", __version__)


def _provider_from_environment() -> Any:
    """An SDK tracer provider exporting as the ``OTEL_*`` variables say (otlp, console or none)."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    defaults = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: "adaptive-router"}
    provider = TracerProvider(resource=Resource.create(defaults))
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")[0].strip().lower()
    if kind == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif kind == "otlp":
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
    elif kind != "none":
        raise ConfigError("OTEL_TRACES_EXPORTER", f"expected otlp, console or none, got {kind!r}")
    return provider


def _otlp_exporter() -> Any:
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    )
    # endpoint, headers, timeout: from OTEL_EXPORTER_OTLP_* themselves
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

            return Grpc()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

        return Http()
    except ImportError as exc:
        raise ConfigError("tracing", f"the OTLP exporter is not installed: {INSTALL_HINT}") from exc


def _ns_ago(seconds: float) -> int:
    return time.time_ns() - int(seconds * 1e9)


def _child(tracer: Any, name: str, start_ns: int, end_ns: int, attributes: dict[str, Any]) -> None:
    """A finished child of the current span, drawn after the fact from what was timed."""
    span = tracer.start_span(name, start_time=start_ns, attributes=attributes)
    span.end(end_time=end_ns)


class TraceHook(NoHook):
    """Names and annotates the current request span; draws the cache and decision spans."""

    def __init__(self, tracer: Any) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        self.tracer = tracer
        self._current = trace.get_current_span
        self._error = Status(StatusCode.ERROR)

    def admitted(self, call: Call) -> None:
        span = self._current()
        if not span.is_recording():
            return
        if not call.body:  # POST /route: a decision, no chat
            return
        span.update_name(f"{OPERATION} {call.model}")
        span.set_attribute("gen_ai.operation.name", OPERATION)
        span.set_attribute("gen_ai.request.model", call.model)
        span.set_attribute("router.stream", call.stream)
        if call.route.max_tokens is not None:
            span.set_attribute("gen_ai.request.max_tokens", call.route.max_tokens)
        self._cache_span(call, "miss")

    def decided(self, call: Call) -> None:
        decision = call.decision
        span = self._current()
        if decision is None or not span.is_recording():
            return
        attributes: dict[str, AttributeValue] = {
            "router.mode": decision.mode or "default",
            "router.policy": decision.policy,
            "router.explored": bool(decision.explored),
            "router.task": decision.profile.task,
            "router.request_id": decision.request_id,
        }
        if decision.propensity is not None:  # Thompson sampling has none; an attribute cannot be None
            attributes["router.propensity"] = float(decision.propensity)
        span.set_attributes(attributes)
        end = time.time_ns()  # the decision's own span: what it chose (the rest is on the request's)
        chosen = {
            "router.model": decision.model,
            "router.fallbacks": tuple(decision.fallbacks),
            "router.from_decision_cache": bool(decision.cached),
        }
        _child(self.tracer, "route", end - int(decision.decision_us * 1000), end, chosen)

    def accounted(self, call: Call) -> None:
        span = self._current()
        if not span.is_recording():
            return
        if call.outcome == "cache_hit":
            span.update_name(f"{OPERATION} {call.model}")
            span.set_attribute("gen_ai.operation.name", OPERATION)
            span.set_attribute("gen_ai.request.model", call.model)
            self._cache_span(call, "hit")
        span.set_attributes(_answer_attributes(call))
        if call.outcome not in ("ok", "cache_hit"):
            span.set_status(self._error)
            span.set_attribute("error.type", call.outcome)

    def _cache_span(self, call: Call, result: str) -> None:
        lookup = call.lookup_s
        if lookup is None:
            return
        started, ended = lookup
        now_perf, now_ns = time.perf_counter(), time.time_ns()
        start_ns = now_ns - int((now_perf - started) * 1e9)
        end_ns = now_ns - int((now_perf - ended) * 1e9)
        _child(self.tracer, "cache lookup", start_ns, end_ns, {"router.cache": result})


def _answer_attributes(call: Call) -> dict[str, Any]:
    result, completion = call.result, call.completion
    cache = "hit" if call.outcome == "cache_hit" else call.cache_state
    attributes: dict[str, Any] = {
        "router.attempts": len(result.attempts) if result is not None else 0,
        "router.cache": cache,
        "router.outcome": call.outcome,
        "router.cost_usd": call.cost_usd,
    }
    if call.outcome == "cache_hit" and call.answer is not None:
        model = call.answer.get("model")
        if isinstance(model, str):
            attributes["gen_ai.response.model"] = model
    if completion is not None and call.outcome == "ok":
        attributes.update(_completion_attributes(completion))
    return attributes


def _completion_attributes(completion: Completion) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.response.model": completion.model_id,
        "gen_ai.provider.name": completion.provider,
        "gen_ai.system": completion.provider,
    }
    if completion.prompt_tokens is not None:
        attributes["gen_ai.usage.input_tokens"] = completion.prompt_tokens
    if completion.completion_tokens is not None:
        attributes["gen_ai.usage.output_tokens"] = completion.completion_tokens
    if completion.finish_reason is not None:
        attributes["gen_ai.response.finish_reasons"] = [completion.finish_reason]
    response_id = completion.data.get("id")
    if isinstance(response_id, str):
        attributes["gen_ai.response.id"] = response_id
    return attributes


class _AttemptSpan:
    """One upstream attempt as a CLIENT span, current while it runs (so ``traceparent`` names it)."""

    def __init__(self, tracer: AttemptTracer, model: str, provider: str) -> None:
        self._owner, self._kept = tracer, False
        attributes = {
            "gen_ai.operation.name": OPERATION,
            "gen_ai.request.model": model,
            "gen_ai.provider.name": provider,
            "gen_ai.system": provider,
        }
        self.span = tracer.tracer.start_span(
            f"{OPERATION} {model}", kind=tracer.client_kind, attributes=attributes
        )

    def __enter__(self) -> _AttemptSpan:
        self._token = self._owner.attach(self._owner.set_span_in_context(self.span))
        return self

    def __exit__(self, *exc: object) -> None:
        self._owner.detach(self._token)
        if not self._kept:
            self.span.end()

    def failed(self, exc: UpstreamError) -> None:
        self.span.set_status(self._owner.error)
        self.span.set_attribute("error.type", getattr(exc, "kind", type(exc).__name__))
        status = getattr(exc, "status_code", None)
        if status is not None:
            self.span.set_attribute("http.response.status_code", status)

    def answered(self, completion: Completion) -> None:
        self.span.set_attributes(_completion_attributes(completion))

    def keep(self, handle: StreamHandle) -> None:
        """A stream that started: the span ends with the stream (:meth:`AttemptTracer.stream_ended`)."""
        self._kept = True
        self._owner.streams[id(handle)] = self


class AttemptTracer:
    """Gives the executor a span per upstream attempt, child of the request span."""

    def __init__(self, tracer: Any, provider_of: Callable[[str], str]) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.tracer, self._provider_of = tracer, provider_of
        self.client_kind = SpanKind.CLIENT
        self.error = Status(StatusCode.ERROR)
        self.attach, self.detach = context.attach, context.detach
        self.set_span_in_context = trace.set_span_in_context
        self.streams: dict[int, _AttemptSpan] = {}

    def attempt(self, model: str) -> _AttemptSpan:
        try:
            provider = self._provider_of(model)
        except UpstreamError:  # no provider serves it: the attempt fails, and says so
            provider = "none"
        return _AttemptSpan(self, model, provider)

    def stream_ended(self, handle: StreamHandle, error: UpstreamError | None, cancelled: bool) -> None:
        attempt = self.streams.pop(id(handle), None)
        if attempt is None:
            return
        if error is not None:
            attempt.failed(error)
        elif cancelled:
            attempt.span.set_attribute("error.type", "cancelled")
        else:
            attempt.answered(handle.result())
        attempt.span.end()

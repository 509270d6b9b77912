"""The request span: an ASGI middleware around the routed endpoints while tracing is on.

It continues the client's trace (W3C ``traceparent``), keeps the span current for the whole
exchange (a stream included) so the pipeline's hooks annotate it and its attempts become its
children, and records the HTTP status. Other paths (``/metrics``, ``/health``) are not traced.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["TRACED_PATHS", "TraceRequests"]

TRACED_PATHS = frozenset({"/v1/chat/completions", "/chat/completions", "/complete", "/route"})


class TraceRequests:
    """``Middleware(TraceRequests, tracer=tracer)``: a SERVER span per routed request."""

    def __init__(self, app: ASGIApp, tracer: Any) -> None:
        from opentelemetry import propagate
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.app, self.tracer = app, tracer
        self._extract = propagate.extract
        self._server = SpanKind.SERVER
        self._error = Status(StatusCode.ERROR)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in TRACED_PATHS:
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        attributes = {"http.request.method": scope["method"], "url.path": scope["path"]}
        name = f"{scope['method']} {scope['path']}"  # renamed "chat <model>" once the body is read
        with self.tracer.start_as_current_span(
            name, context=self._extract(carrier), kind=self._server, attributes=attributes
        ) as span:

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(self._error)
                await send(message)

            await self.app(scope, receive, send_traced)

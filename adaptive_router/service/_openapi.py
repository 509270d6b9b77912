"""``/openapi.json`` from the pydantic schemas, and ``/docs`` rendering it with no CDN.

The Swagger UI assets come from the ``swagger-ui-bundle`` package (the ``docs`` extra) and
are served by the app itself; without the extra ``/docs`` says how to get it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from .. import __version__
from ._http import json_response
from ._schemas import ChatCompletionRequest, CompleteRequest, FeedbackRequest, RouteQuery

__all__ = ["docs_routes", "openapi_spec"]

_ERROR = {"$ref": "#/components/schemas/Error"}
_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
            "required": ["message", "type"],
        }
    },
    "required": ["error"],
}

# path, method, summary, request model, success description
_OPERATIONS: list[tuple[str, str, str, type[BaseModel] | None, str]] = [
    (
        "/v1/chat/completions",
        "post",
        "OpenAI chat completion, routed (model: auto, auto:<mode> or an id)",
        ChatCompletionRequest,
        "the completion (or an SSE stream) with a routing object",
    ),
    (
        "/route",
        "post",
        "The routing decision alone: ranked candidates, terms, propensity, reason",
        RouteQuery,
        "the decision",
    ),
    (
        "/complete",
        "post",
        "Route and complete in one call",
        CompleteRequest,
        "id, model, choices, usage, routing_decision, latency_ms, cached",
    ),
    ("/feedback", "post", "A quality score in [0, 1] for an answered request", FeedbackRequest, "recorded"),
    ("/v1/models", "get", "The catalogue in OpenAI's list shape", None, "the models"),
    ("/models", "get", "The catalogue with learned estimates and the score per mode", None, "the models"),
    ("/metrics", "get", "Prometheus metrics", None, "Prometheus text"),
    (
        "/metrics.json",
        "get",
        "Rolling latency percentiles, per-model usage, cache hit rate",
        None,
        "the summary",
    ),
    ("/health", "get", "Liveness", None, "alive"),
    ("/ready", "get", "Readiness: catalogue, upstream, Redis", None, "ready"),
]


@lru_cache(maxsize=1)
def openapi_spec() -> dict[str, Any]:
    models = [m for *_, m, _ in _OPERATIONS if m is not None]
    _, schemas = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    paths: dict[str, Any] = {}
    for path, method, summary, model, success in _OPERATIONS:
        operation: dict[str, Any] = {
            "summary": summary,
            "responses": {
                "200": {"description": success},
                "400": {"description": "bad request", "content": {"application/json": {"schema": _ERROR}}},
                "401": {"description": "missing or wrong router API key"},
            },
        }
        if model is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
                },
            }
            operation["responses"]["413"] = {"description": "body too large"}
        if path in ("/v1/chat/completions", "/complete", "/route"):
            operation["responses"]["429"] = {
                "description": "a daily budget is spent (budget.*)",
                "content": {"application/json": {"schema": _ERROR}},
            }
            operation["responses"]["503"] = {
                "description": "every model's circuit breaker is open",
                "content": {"application/json": {"schema": _ERROR}},
            }
        if path in ("/v1/chat/completions", "/complete"):
            operation["responses"]["502"] = {"description": "every candidate failed (attempts listed)"}
            operation["responses"]["504"] = {"description": "every candidate timed out"}
        if path == "/feedback":
            operation["responses"]["404"] = {
                "description": "unknown or expired request_id",
                "content": {"application/json": {"schema": _ERROR}},
            }
        paths.setdefault(path, {})[method] = operation
    components = {**schemas.get("$defs", {}), "Error": _ERROR_SCHEMA}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "adaptive-router",
            "version": __version__,
            "description": "Routes each LLM request to the best model by latency, cost and quality.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
    }


async def openapi_json(request: Request) -> Response:
    return json_response(openapi_spec())


_DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>adaptive-router API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script>
</body></html>"""

_NO_DOCS_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>adaptive-router API</title></head>
<body><p>Interactive docs need the <code>docs</code> extra:
<code>pip install 'adaptive-router[docs]'</code>. The specification is at
<a href="/openapi.json">/openapi.json</a>.</p></body></html>"""


def docs_routes() -> list[BaseRoute]:
    routes: list[BaseRoute] = [Route("/openapi.json", openapi_json, methods=["GET"])]
    try:
        from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]
    except ImportError:
        routes.append(Route("/docs", lambda request: HTMLResponse(_NO_DOCS_PAGE), methods=["GET"]))
        return routes
    from starlette.staticfiles import StaticFiles

    routes.append(Route("/docs", lambda request: HTMLResponse(_DOCS_PAGE), methods=["GET"]))
    routes.append(Mount("/docs/assets", app=StaticFiles(directory=swagger_ui_path), name="docs-assets"))
    return routes

"""``/openapi.json`` from the pydantic schemas, and ``/docs`` rendering it with no CDN.

The Swagger UI assets come from the ``swagger-ui-bundle`` package (the ``docs`` extra) and
are served by the app itself; without the extra ``/docs`` says how to get it.

The spec is OpenAPI 3.0.3, not 3.1: the newest ``swagger-ui-bundle`` (1.1.0) ships Swagger UI
4.15.5, which renders 3.1 documents as "Unable to render this definition" (3.1 needs Swagger UI
5). pydantic writes JSON Schema 2020-12, so :func:`_to_openapi_30` rewrites the few constructs
3.0 spells differently (``null`` in a type or ``anyOf``, numeric ``exclusiveMinimum``, ``const``,
siblings of ``$ref``). ``tests/test_openapi.py`` checks the version against the bundled UI and
renders ``/docs`` in a headless Chromium.
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

__all__ = ["OPENAPI_VERSION", "REQUEST_EXAMPLES", "docs_routes", "openapi_spec"]

OPENAPI_VERSION = "3.0.3"  # what Swagger UI 4 (swagger-ui-bundle 1.1.0) renders; see the docstring

_ERROR = {"$ref": "#/components/schemas/Error"}
_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string", "nullable": True},
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
    (
        "/feedback",
        "post",
        "A quality score in [0, 1] for an answered request (routing.request_id or the answer's id)",
        FeedbackRequest,
        "recorded",
    ),
    ("/v1/models", "get", "The catalogue in OpenAI's list shape", None, "the models"),
    ("/v1/models/{model}", "get", "One model in OpenAI's shape (ids may contain '/')", None, "the model"),
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
    (
        "/ready",
        "get",
        "Readiness; catalogue, upstream, Redis and spend only with a key when keys are set",
        None,
        "ready",
    ),
    (
        "/admin/reload",
        "post",
        "Read the settings file again (behind server.admin_keys; SIGHUP does the same)",
        None,
        "the reload report: what changed, what needs a restart",
    ),
]


_CHAT_MESSAGES = [{"role": "user", "content": "Summarise the plot of Hamlet in two sentences."}]

# One request example per operation: a body for POSTs, the query parameters for GETs. Each
# body validates against its model (a test checks it), so "Try it out" works as it is.
REQUEST_EXAMPLES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "model": "auto:speed",
        "messages": _CHAT_MESSAGES,
        "max_tokens": 200,
        "temperature": 0,
        "route": {"max_latency_ms": 4000, "max_cost_usd": 0.002, "deny": ["*:free"]},
    },
    "/route": {"prompt": "Write a regex for emails", "priority": "cost", "max_latency_ms": 3000},
    "/complete": {"prompt": "Write a regex for emails", "priority": "balanced", "max_tokens": 200},
    "/feedback": {"request_id": "3f2b9c4e5d6a4b7c8d9e0f1a2b3c4d5e", "score": 0.9},
}
_QUERY_PARAMETERS: dict[str, list[dict[str, Any]]] = {
    "/models": [
        {
            "name": "mode",
            "in": "query",
            "required": False,
            "description": "rank by one priority mode: speed, cost, quality, balanced or one from settings",
            "schema": {"type": "string"},
            "example": "speed",
        }
    ],
    "/v1/models/{model}": [
        {
            "name": "model",
            "in": "path",
            "required": True,
            "description": "a catalogue id, auto or auto:<mode>",
            "schema": {"type": "string"},
            "example": "openai/gpt-4o-mini",
        }
    ],
}
_NOT_FOUND_MODEL = {
    "description": "model_not_found: the model id is not in the catalogue",
    "content": {"application/json": {"schema": _ERROR}},
}

_ADMIN_RESPONSES = {
    "401": {"description": "missing or wrong admin key (server.admin_keys)"},
    "403": {
        "description": "admin_disabled: server.admin_keys is not set",
        "content": {"application/json": {"schema": _ERROR}},
    },
    "422": {
        "description": "invalid_settings: the file does not validate; the running settings stay",
        "content": {"application/json": {"schema": _ERROR}},
    },
}


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
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{model.__name__}"},
                        "example": REQUEST_EXAMPLES[path],
                    }
                },
            }
            operation["responses"]["413"] = {"description": "body too large"}
            operation["responses"]["415"] = {
                "description": "Content-Type is not application/json",
                "content": {"application/json": {"schema": _ERROR}},
            }
        if path in _QUERY_PARAMETERS:
            operation["parameters"] = _QUERY_PARAMETERS[path]
        if path in ("/v1/chat/completions", "/complete", "/route", "/v1/models/{model}"):
            operation["responses"]["404"] = _NOT_FOUND_MODEL
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
        if path == "/admin/reload":
            operation["responses"].update(_ADMIN_RESPONSES)
            del operation["responses"]["400"]
        if path == "/feedback":
            operation["responses"]["404"] = {
                "description": "unknown or expired request_id, or another API key's request",
                "content": {"application/json": {"schema": _ERROR}},
            }
            operation["responses"]["409"] = {
                "description": "already_scored: the first score of a request counts",
                "content": {"application/json": {"schema": _ERROR}},
            }
            operation["responses"]["503"] = {
                "description": "the feedback store (Redis) did not answer; retry",
                "content": {"application/json": {"schema": _ERROR}},
            }
        paths.setdefault(path, {})[method] = operation
    components = {name: _to_openapi_30(s) for name, s in schemas.get("$defs", {}).items()}
    components["Error"] = _ERROR_SCHEMA
    return {
        "openapi": OPENAPI_VERSION,
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


def _to_openapi_30(schema: Any) -> Any:
    """A JSON Schema 2020-12 fragment (pydantic's) spelled the OpenAPI 3.0 way."""
    if isinstance(schema, list):
        return [_to_openapi_30(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _to_openapi_30(value) for key, value in schema.items()}
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if isinstance(out.get(bound), int | float) and not isinstance(out[bound], bool):
            out[bound.replace("exclusiveM", "m")] = out[bound]
            out[bound] = True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if isinstance(out.get("examples"), list):
        examples = out.pop("examples")
        if examples:
            out["example"] = examples[0]
    out = _nullable_type(_nullable_variants(out))
    if "$ref" in out and len(out) > 1:  # 3.0 ignores a $ref's siblings: wrap it
        ref = out.pop("$ref")
        out = {"allOf": [{"$ref": ref}], **out}
    return out


def _nullable_type(out: dict[str, Any]) -> dict[str, Any]:
    """``type: [X, "null"]`` becomes ``type: X, nullable: true``."""
    if not isinstance(out.get("type"), list):
        return out
    listed = out.pop("type")
    types = [t for t in listed if t != "null"]
    if len(types) < len(listed):
        out["nullable"] = True
    if len(types) == 1:
        out["type"] = types[0]
    elif types:
        out["anyOf"] = [{"type": t} for t in types]
    return out


def _nullable_variants(out: dict[str, Any]) -> dict[str, Any]:
    """``anyOf: [X, {type: null}]`` becomes X (or ``allOf: [X]`` for a reference), nullable."""
    for key in ("anyOf", "oneOf"):
        if key not in out:
            continue
        variants = [v for v in out[key] if v != {"type": "null"}]
        if len(variants) == len(out[key]):
            continue
        out["nullable"] = True
        if len(variants) == 1:
            del out[key]
            out = {"allOf": variants, **out} if "$ref" in variants[0] else {**variants[0], **out}
        else:
            out[key] = variants
    return out


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

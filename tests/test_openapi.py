"""``/openapi.json`` and ``/docs``: a spec the bundled Swagger UI can render, with an example for
every request, checked in a real headless browser (Debian's ``chromium``; .ci/run installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adaptive_router import load_settings
from adaptive_router.service import create_app
from adaptive_router.service._openapi import REQUEST_EXAMPLES, openapi_spec
from adaptive_router.service._schemas import (
    ChatCompletionRequest,
    CompleteRequest,
    FeedbackRequest,
    RouteQuery,
)
from tests.service_fixtures import Stack, service_stack

BROWSER_TIMEOUT_S = 90
MODELS = {
    "ChatCompletionRequest": ChatCompletionRequest,
    "RouteQuery": RouteQuery,
    "CompleteRequest": CompleteRequest,
    "FeedbackRequest": FeedbackRequest,
}


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, methods in spec["paths"].items() for m, op in methods.items()]


def _swagger_ui_version() -> tuple[int, ...]:
    bundle = pytest.importorskip("swagger_ui_bundle", reason="the docs extra: pip install swagger-ui-bundle")
    found = re.search(r"swagger-ui-(\d+)\.(\d+)\.(\d+)", str(bundle.swagger_ui_path))
    assert found, f"cannot read Swagger UI's version from {bundle.swagger_ui_path}"
    return tuple(int(part) for part in found.groups())


def test_openapi_version_is_one_the_bundled_swagger_ui_renders() -> None:
    ui = _swagger_ui_version()
    version = openapi_spec()["openapi"]
    if ui < (5,):  # OpenAPI 3.1 support arrived in Swagger UI 5.0
        assert version.startswith("3.0."), f"Swagger UI {ui} cannot render OpenAPI {version}"
    else:
        assert version.startswith(("3.0.", "3.1."))


def test_openapi_spec_is_a_valid_document_of_its_version() -> None:
    validator = pytest.importorskip(
        "openapi_spec_validator", reason="a test extra: pip install openapi-spec-validator"
    )
    validator.validate(openapi_spec())


def test_every_route_the_router_answers_is_described(monkeypatch: pytest.MonkeyPatch) -> None:
    """A route the app serves but the spec leaves out is missing from /docs (/admin/reload was)."""
    from starlette.routing import Route

    monkeypatch.setenv("ROUTER_SIMULATOR_URL", "http://127.0.0.1:9/v1")  # built, never started

    aliases = {"/chat/completions"}  # OpenAI clients whose base URL has no /v1; same as /v1/...
    undocumented = {"/openapi.json", "/docs"} | aliases
    served = {
        (method.lower(), route.path.replace(":path}", "}"))
        for route in create_app(load_settings()).routes
        if isinstance(route, Route) and route.path not in undocumented
        for method in route.methods or ()
        if method != "HEAD"
    }
    described = {(method, path) for method, path, _ in _operations(openapi_spec())}
    assert served == described, f"served, not described: {sorted(served - described)}"


def test_every_operation_has_a_request_example() -> None:
    for method, path, op in _operations(openapi_spec()):
        if "requestBody" in op:
            assert "example" in op["requestBody"]["content"]["application/json"], f"{method} {path}"
        else:
            bodiless = method == "get" or path == "/admin/reload"  # reload reads the settings file
            assert bodiless, f"{method} {path} has no body and is not a GET"
            for parameter in op.get("parameters", []):
                assert "example" in parameter, f"{method} {path} ?{parameter['name']}"


@pytest.mark.parametrize("path", sorted(REQUEST_EXAMPLES))
def test_request_examples_are_valid_bodies(path: str) -> None:
    op = next(op for _, p, op in _operations(openapi_spec()) if p == path)
    content = op["requestBody"]["content"]["application/json"]
    model = MODELS[content["schema"]["$ref"].rsplit("/", 1)[-1]]
    model.model_validate(content["example"])  # raises if an example would be refused


def test_request_examples_are_answered_by_a_running_router(docs_stack: Stack) -> None:
    for path in ("/v1/chat/completions", "/route", "/complete"):
        response = docs_stack.http.post(path, json=REQUEST_EXAMPLES[path])
        assert response.status_code == 200, (path, response.text)


# --- the page in a real browser -------------------------------------------------------------------


@pytest.fixture(scope="module")
def docs_stack() -> Iterator[Stack]:
    with pytest.MonkeyPatch.context() as monkeypatch, service_stack(monkeypatch) as stack:
        yield stack


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no headless browser: apt-get install -y chromium (.ci/run does)")


def dump_dom(url: str) -> str:
    """The page as the browser rendered it, after scripts ran (a virtual-time budget)."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        command = [
            chromium(),
            "--headless",
            "--no-sandbox",  # tests run as root in CI containers
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={Path(profile)}",
            "--virtual-time-budget=15000",
            "--dump-dom",
            url,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_docs_render_every_operation_in_a_headless_browser(docs_stack: Stack) -> None:
    dom = dump_dom(docs_stack.router_url + "/docs")
    assert "Unable to render this definition" not in dom
    assert 'class="swagger-ui' in dom, dom[:2000]
    rendered = set(
        re.findall(r'class="opblock opblock-(\w+)[^"]*".*?data-path="([^"]+)"', dom, flags=re.DOTALL)
    )
    expected = {(method, path) for method, path, _ in _operations(openapi_spec())}
    assert expected <= rendered, f"not rendered: {sorted(expected - rendered)}"

"""Bad input: schemathesis against ``/openapi.json``, hypothesis-generated bodies, oversized
bodies, and wrong router API keys. No 5xx, a JSON error in OpenAI's shape for every refusal.

The router and the simulated upstream each run in a real uvicorn server on 127.0.0.1 (in a
thread, for speed: thousands of requests). schemathesis is a test extra
(``pip install schemathesis``); without it those tests are skipped.
"""

from __future__ import annotations

import json
import select
import socket
import string
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptive_router.service import openapi_spec
from tests.service_fixtures import Stack, service_stack, user_body

MAX_BODY = 4096
ERROR_FIELDS = {"message", "type", "param", "code"}
EXAMPLES = 30  # per operation and per generation mode
BODY_EXAMPLES = 120  # per endpoint and per strategy
ENDPOINTS = ("/v1/chat/completions", "/route", "/feedback")
FUZZ = settings(
    max_examples=BODY_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        service_stack(monkeypatch, server={"max_body_bytes": MAX_BODY}) as running,
    ):
        yield running


@pytest.fixture(scope="module")
def answered_id(stack: Stack) -> str:
    """The request id of an answered chat: what a valid /feedback body names."""
    response = stack.chat(user_body("Something to give feedback on."))
    assert response.status_code == 200, response.text
    request_id: str = response.json()["routing"]["request_id"]
    return request_id


def assert_openai_error(response: httpx.Response) -> dict[str, Any]:
    """A 4xx whose body is ``{"error": {"message", "type", "param", "code"}}``."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) >= {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == ERROR_FIELDS, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    return error


# --- schemathesis against /openapi.json ------------------------------------------------------------


def _operations() -> list[Any]:
    params = []
    for path, methods in openapi_spec()["paths"].items():
        for method, operation in methods.items():
            label = f"{method.upper()} {path}"
            params.append(pytest.param(label, "requestBody" in operation, id=label))
    return params


@pytest.fixture(scope="module")
def schemathesis() -> Any:
    """The schemathesis module; its tests are skipped without it (a test extra)."""
    return pytest.importorskip(
        "schemathesis", reason="schemathesis is a test extra: pip install schemathesis"
    )


@pytest.fixture(scope="module")
def schema(stack: Stack, schemathesis: Any) -> Any:
    return schemathesis.openapi.from_url(stack.router_url + "/openapi.json")


def _run_schemathesis(
    stack: Stack,
    schema: Any,
    label: str,
    mode: Any,
    checks: list[Any],
    also: Callable[[httpx.Response], None],
) -> Counter[int]:
    """Up to EXAMPLES cases of ``label`` in ``mode``; ``checks`` run on each response, then ``also``."""
    operation = schema.find_operation_by_label(label)
    assert operation is not None, label
    statuses: Counter[int] = Counter()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case: Any) -> None:
        response = case.call(base_url=stack.router_url, timeout=10)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=checks)
        headers = [(name, value) for name, values in response.headers.items() for value in values]
        also(httpx.Response(response.status_code, headers=headers, content=response.content))

    call()
    return statuses


def _error_if_refused(response: httpx.Response) -> None:
    if response.status_code >= 400:
        assert_openai_error(response)


@pytest.mark.parametrize(("label", "has_body"), _operations())
def test_schemathesis_valid_requests_get_no_5xx_and_only_declared_statuses(
    stack: Stack, schemathesis: Any, schema: Any, label: str, has_body: bool
) -> None:
    checks = schemathesis.checks
    positive = [
        checks.not_a_server_error,
        checks.status_code_conformance,
        checks.content_type_conformance,
        checks.response_schema_conformance,
    ]
    statuses = _run_schemathesis(
        stack, schema, label, schemathesis.GenerationMode.POSITIVE, positive, _error_if_refused
    )
    print(f"{label} (valid): {dict(statuses)}")
    assert statuses.total() >= 1


@pytest.mark.parametrize("label", [p.values[0] for p in _operations() if p.values[1]], ids=str)
def test_schemathesis_invalid_bodies_are_refused_without_5xx(
    stack: Stack, schemathesis: Any, schema: Any, label: str
) -> None:
    checks = [schemathesis.checks.not_a_server_error, schemathesis.checks.status_code_conformance]
    statuses = _run_schemathesis(
        stack, schema, label, schemathesis.GenerationMode.NEGATIVE, checks, _error_if_refused
    )
    print(f"{label} (invalid): {dict(statuses)}")
    assert statuses.total() >= 1


# --- hypothesis bodies -----------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=16,
)
_words = st.text(alphabet=string.ascii_letters, min_size=1, max_size=12)
_lists = st.lists(json_values, max_size=3)
_dicts = st.dictionaries(st.text(max_size=8), json_values, max_size=3)
_floats = st.floats(allow_nan=False, allow_infinity=False)
# Values no lax reading can turn into the field's type (no bools for floats: pydantic reads
# true as 1.0; no numeric strings for numbers).
WRONG: dict[str, st.SearchStrategy[Any]] = {
    "str": st.integers() | _floats | st.booleans() | _lists | _dicts,
    "str_required": st.none() | st.integers() | _floats | st.booleans() | _lists | _dicts,
    "number": _words | _lists | _dicts,
    "strict_int": _words | _lists | _dicts | st.booleans() | _floats,
    "strict_bool": st.none() | _words | _lists | _dicts | st.integers() | _floats,
    "lax_int": _words | _lists | _dicts,
    "list": _words | st.integers() | _floats | st.booleans() | _dicts,
    "list_required": st.none() | _words | st.integers() | _floats | st.booleans() | _dicts,
    "object": _words | st.integers() | _floats | st.booleans() | _lists,
    "lax_bool": _lists | _dicts,
    "score": st.none() | _words | _lists | _dicts | st.booleans(),
}
FIELDS: dict[str, dict[str, str]] = {
    "/v1/chat/completions": {
        "model": "str_required",
        "messages": "list_required",
        "max_tokens": "strict_int",
        "temperature": "number",
        "top_p": "number",
        "n": "strict_int",
        "stream": "strict_bool",
        "stream_options": "object",
        "tools": "list",
        "response_format": "object",
        "route": "object",
    },
    "/route": {
        "prompt": "str",
        "model": "str_required",
        "max_tokens": "lax_int",
        "priority": "str",
        "weights": "object",
        "max_latency_ms": "number",
        "max_cost_usd": "number",
        "allow": "list_required",
        "deny": "list_required",
        "capabilities": "list_required",
        "fallback": "lax_bool",
        "cache": "lax_bool",
    },
    "/feedback": {"request_id": "str_required", "score": "score"},
}


def valid_body(path: str, request_id: str) -> dict[str, Any]:
    return {
        "/v1/chat/completions": {**user_body("Hello there."), "max_tokens": 4},
        "/route": {"prompt": "Hello there.", "priority": "speed"},
        "/feedback": {"request_id": request_id, "score": 0.5},
    }[path]


def post_raw(stack: Stack, path: str, body: Any) -> httpx.Response:
    # json.dumps escapes lone surrogates, which the router must refuse as bad JSON, not crash on.
    content = json.dumps(body).encode()
    return stack.http.post(path, content=content, headers={"content-type": "application/json"})


@pytest.mark.parametrize("path", ENDPOINTS)
def test_arbitrary_json_gets_an_answer_or_an_openai_error_never_a_5xx(stack: Stack, path: str) -> None:
    @FUZZ
    @given(body=json_values | st.fixed_dictionaries({}, optional=dict.fromkeys(FIELDS[path], json_values)))
    def send(body: Any) -> None:
        response = post_raw(stack, path, body)
        assert response.status_code < 500, (body, response.text)
        if response.status_code != 200:
            assert_openai_error(response)
        if not isinstance(body, dict):
            assert response.status_code == 400

    send()


@pytest.mark.parametrize("path", ENDPOINTS)
def test_right_keys_with_wrong_types_get_a_400_openai_error(
    stack: Stack, answered_id: str, path: str
) -> None:
    fields = FIELDS[path]

    @FUZZ
    @given(data=st.data(), broken=st.sets(st.sampled_from(sorted(fields)), min_size=1, max_size=3))
    def send(data: st.DataObject, broken: set[str]) -> None:
        body = valid_body(path, answered_id)
        for name in sorted(broken):
            body[name] = data.draw(WRONG[fields[name]], label=name)
        response = post_raw(stack, path, body)
        assert response.status_code == 400, (body, response.status_code, response.text)
        assert_openai_error(response)

    send()
    assert post_raw(stack, path, valid_body(path, answered_id)).status_code == 200  # the control


# --- oversized bodies --------------------------------------------------------------------------------


def _connect(stack: Stack) -> socket.socket:
    host, port = stack.router_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def _answer(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """Read one HTTP/1.1 response with a content-length (bounded: 5 s, 64 KiB)."""
    raw = b""
    while b"\r\n\r\n" not in raw and len(raw) < 65536:
        chunk = sock.recv(65536)
        if not chunk:
            break
        raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        int(v) for k, _, v in (line.partition(": ") for line in lines[1:]) if k.lower() == "content-length"
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    body: dict[str, Any] = json.loads(rest[:length])
    return status, body


def _head(path: str, extra: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}\r\n"
    ).encode()


@pytest.mark.parametrize("path", ENDPOINTS)
def test_declared_oversized_body_is_refused_before_it_is_sent(stack: Stack, path: str) -> None:
    declared = 10 * 1024 * 1024
    with _connect(stack) as sock:
        sock.sendall(_head(path, f"Content-Length: {declared}\r\n") + b'{"messages": "' + b"x" * 1000)
        # 1 KB of the 10 MB sent: the answer must come now, while the client still has data to send.
        status, body = _answer(sock)
    assert status == 413
    assert body["error"]["param"] == "body" and set(body["error"]) == ERROR_FIELDS
    assert stack.http.get("/health").status_code == 200


@pytest.mark.parametrize("path", ENDPOINTS)
def test_chunked_oversized_body_is_refused_before_it_ends(stack: Stack, path: str) -> None:
    chunk = b"y" * 1024
    with _connect(stack) as sock:
        sock.sendall(_head(path, "Transfer-Encoding: chunked\r\n"))
        sent, answered = 0, False
        for _ in range(64):  # up to 64 KiB, never the final zero-length chunk
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            readable, _, _ = select.select([sock], [], [], 0.05 if sent > MAX_BODY else 0)
            if readable:
                answered = True
                break
        assert answered, f"no answer after {sent} bytes of a chunked body over the {MAX_BODY}-byte limit"
        status, body = _answer(sock)
    assert status == 413
    assert MAX_BODY < sent < 64 * 1024  # refused once over the limit, with the body still open
    assert body["error"]["param"] == "body"


# --- router API keys -------------------------------------------------------------------------------

KEY = "k1"
GOOD = {"authorization": f"Bearer {KEY}"}
_header_text = st.text(alphabet=string.ascii_letters + string.digits + " -._~+/=", max_size=40)


def _accepted(header: str | None) -> bool:
    """What the router would take: ``Bearer <key>`` (any case, spaces around the key)."""
    if header is None:
        return False
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and token.strip() == KEY


bad_authorization = (
    st.none()
    | (
        _header_text
        | _header_text.map(lambda token: f"Bearer {token}")
        | st.sampled_from(
            ["Bearer", f"Basic {KEY}", KEY, f"Bearer {KEY}x", f"Token {KEY}", f"Bearer  {KEY}z"]
        )
    ).map(str.strip)  # HTTP header values carry no surrounding whitespace
).filter(lambda header: not _accepted(header))

GUARDED: list[tuple[str, str, Mapping[str, Any] | None]] = [
    ("POST", "/v1/chat/completions", user_body("Hi.")),
    ("POST", "/route", {"prompt": "Hi."}),
    ("POST", "/complete", {"prompt": "Hi."}),
    ("POST", "/feedback", {"request_id": "x", "score": 1.0}),
    ("GET", "/v1/models", None),
    ("GET", "/models", None),
    ("GET", "/metrics", None),
    ("GET", "/metrics.json", None),
]


@pytest.fixture(scope="module")
def keyed() -> Iterator[Stack]:
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        service_stack(monkeypatch, server={"api_keys": [KEY]}) as running,
    ):
        assert running.chat(headers=GOOD).status_code == 200  # some state to leave untouched
        yield running


def _state(stack: Stack) -> dict[str, Any]:
    """Everything a request could change: the upstream's counters, what the router learned
    (each model's evidence in its /models table), and its usage and spend."""
    metrics = stack.http.get("/metrics.json", headers=GOOD).json()
    table = stack.http.get("/models", headers=GOOD).json()["data"]
    return {
        "upstream": {k: v for k, v in stack.sim_stats().items() if k != "elapsed_s"},
        # Evidence decays with time (a half-life of minutes), so it is compared to within half an
        # answer: one request let through would add a whole one.
        "learned": {row["model"]: pytest.approx(row["evidence"], abs=0.5) for row in table},
        "usage": {k: metrics[k] for k in ("models", "spend_usd", "cache", "fallbacks", "breakers")},
    }


def _refused(stack: Stack) -> Callable[[str | None, int], None]:
    def send(authorization: str | None, which: int) -> None:
        method, path, body = GUARDED[which]
        headers = {} if authorization is None else {"authorization": authorization}
        response = stack.http.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (authorization, path, response.text)
        assert assert_openai_error(response)["type"] == "authentication_error"
        assert response.headers["www-authenticate"] == "Bearer"

    return send


def test_wrong_or_missing_key_gets_401_and_touches_no_state(keyed: Stack) -> None:
    before = _state(keyed)
    send = _refused(keyed)

    @FUZZ
    @given(authorization=bad_authorization, which=st.integers(0, len(GUARDED) - 1))
    def refused(authorization: str | None, which: int) -> None:
        send(authorization, which)

    refused()
    assert _state(keyed) == before
    assert keyed.chat(headers=GOOD).status_code == 200  # the control: the right key still works


def test_wrong_key_leaves_the_request_counters_alone(keyed: Stack) -> None:
    before = keyed.http.get("/metrics.json", headers=GOOD).json()["requests"]
    for authorization in (None, "Bearer wrong"):
        _refused(keyed)(authorization, 0)
    assert keyed.http.get("/metrics.json", headers=GOOD).json()["requests"] == before

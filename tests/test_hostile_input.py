"""Hostile input (issue 13): what a careless client, an attacker or a broken upstream sends, through
a real router on 127.0.0.1 in front of real upstreams (the simulator, and a misbehaving one from
``tests.hostile_upstream`` that the best-ranked model ``bad/x`` is served by).

Each refusal is a 4xx in OpenAI's error shape naming the field; each bad upstream answer is that
model's failure: the next candidate answers, the breaker counts it, nothing learns "ok" from it.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptive_router import ConfigError, load_settings
from adaptive_router.core import Catalogue, Model
from adaptive_router.core._catalogue import GLOB_CACHE_SIZE
from adaptive_router.pipeline import Metrics
from adaptive_router.service import ChatCompletionRequest, create_app
from adaptive_router.service._guards import prepare_globs
from adaptive_router.simulator import SimEvent
from tests.hostile_upstream import RICH_CHOICES, create_hostile_app
from tests.servers import running_server
from tests.service_fixtures import FAST, MID, SLOW, Stack, service_stack, user_body

BAD = "bad/x"
ANSWER_CAP = 64 * 1024
EVENT_CAP = 16 * 1024
ERROR_FIELDS = {"message", "type", "param", "code"}
JSON_HEADERS = {"content-type": "application/json"}


def hostile_catalogue() -> Catalogue:
    """``bad/x`` ranks first on every term; the simulator's three models follow in order."""
    return Catalogue(
        [
            Model(BAD, 1e-9, 1e-9, 8192, ttft_s=0.05, tpot_s=0.001, quality=0.95),
            Model(FAST, 1e-8, 2e-8, 8192, ttft_s=0.1, tpot_s=0.002, quality=0.9),
            Model(MID, 1e-6, 2e-6, 8192, ttft_s=0.4, tpot_s=0.01, quality=0.7),
            Model(SLOW, 1e-5, 3e-5, 8192, ttft_s=1.0, tpot_s=0.03, quality=0.5),
        ],
        source="test",
    )


@pytest.fixture(scope="module")
def hostile_url() -> Iterator[str]:
    with running_server(create_hostile_app()) as url:
        yield url + "/v1"


def _providers(hostile: str) -> Any:
    def build(sim_url: str) -> dict[str, Any]:
        return {"hostile": {"base_url": hostile, "models": ["bad/*"]}, "sim": {"base_url": sim_url}}

    return build


@pytest.fixture(scope="module")
def traffic_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("traffic") / "traffic.jsonl"


@pytest.fixture(scope="module")
def stack(hostile_url: str, traffic_log: Path) -> Iterator[Stack]:
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        service_stack(
            monkeypatch,
            catalogue=hostile_catalogue(),
            providers=_providers(hostile_url),
            limits={"upstream_answer_bytes": ANSWER_CAP, "upstream_event_bytes": EVENT_CAP},
            upstream={"breaker_failures": 1000},
            server={"traffic_log": str(traffic_log)},
        ) as running,
    ):
        yield running


def post(stack: Stack, path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return stack.http.post(path, content=content, headers=headers or JSON_HEADERS)


def openai_error(response: httpx.Response, status: int, param: str | None) -> str:
    """The message of a ``status`` answer in OpenAI's error shape whose ``param`` is ``param``."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == ERROR_FIELDS and error["param"] == param, error
    message: str = error["message"]
    return message


def metrics(stack: Stack) -> dict[str, Any]:
    summary: dict[str, Any] = stack.http.get("/metrics.json").json()
    return summary


def attempts(response: httpx.Response) -> list[tuple[str, str]]:
    return [(a["model"], a["outcome"]) for a in response.json()["routing"]["attempts"]]


# --- 1. allow/deny globs ---------------------------------------------------------------------------


def test_too_many_deny_globs_are_a_400_naming_route_deny(stack: Stack) -> None:
    body = user_body(route={"deny": [f"x*{i}" for i in range(33)]})
    assert "at most 32" in openai_error(post(stack, "/v1/chat/completions", body), 400, "route.deny")


def test_a_glob_too_long_is_a_400_naming_its_place(stack: Stack) -> None:
    body = user_body(route={"allow": ["lab/*", "*" + "a" * 128]})
    openai_error(post(stack, "/v1/chat/completions", body), 400, "route.allow.1")
    response = post(stack, "/route", {"prompt": "Hi.", "deny": ["?" * 129]})
    openai_error(response, 400, "deny.0")


def test_more_than_eight_wildcard_globs_in_a_list_are_a_400(stack: Stack) -> None:
    body = user_body(route={"allow": [*(f"lab/{i}*" for i in range(9)), "lab/fast"]})
    assert "at most 8 globs with wildcards" in openai_error(
        post(stack, "/v1/chat/completions", body), 400, "route.allow"
    )


def test_globs_within_the_limits_still_route(stack: Stack) -> None:
    wild, exact = [f"nothing-{i}-*" for i in range(7)], [f"nothing/{i}" for i in range(24)]
    body = user_body(route={"deny": ["bad/*", *wild, *exact]})
    response = post(stack, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == FAST
    response = post(stack, "/route", {"prompt": "Hi.", "allow": ["lab/m?d", "lab/[s]*"]})
    assert response.json()["model"] == MID


@settings(max_examples=150, deadline=None, database=None)
@given(
    pattern=st.text(alphabet="ab/*?[]!-", max_size=12),
    ids=st.lists(st.text(alphabet="ab/-", min_size=1, max_size=8), min_size=1, max_size=8, unique=True),
)
def test_glob_mask_matches_fnmatchcase(pattern: str, ids: list[str]) -> None:
    catalogue = Catalogue([Model(i, 0.0, 0.0, 1000) for i in ids])
    expected = [fnmatch.fnmatchcase(i, pattern) for i in ids]
    assert catalogue.glob_mask([pattern]).tolist() == expected
    assert catalogue.glob_mask([pattern]).tolist() == expected  # from the cache
    assert catalogue.glob_mask([pattern, "*"]).all()


def test_glob_masks_kept_per_catalogue_are_bounded() -> None:
    catalogue = Catalogue([Model("a/b", 0.0, 0.0, 1000)])
    for i in range(GLOB_CACHE_SIZE + 50):
        catalogue.glob_mask([f"*{i}*"])
    assert not catalogue.knows_glob("*0*") and catalogue.knows_glob(f"*{GLOB_CACHE_SIZE + 49}*")


def test_new_globs_are_matched_taking_turns_with_other_requests() -> None:
    catalogue = Catalogue([Model(f"m/{i}", 0.0, 0.0, 1000) for i in range(50)])
    ticks: list[int] = []

    async def other_client() -> None:
        for i in range(64):
            ticks.append(i)
            await asyncio.sleep(0)

    async def run() -> int:
        other = asyncio.ensure_future(other_client())
        await asyncio.sleep(0)
        before = len(ticks)
        await prepare_globs(catalogue, [f"m/*{i}?" for i in range(32)])
        during = len(ticks) - before
        await other
        return during

    assert asyncio.run(run()) >= 16  # the other coroutine ran between the globs
    assert all(catalogue.knows_glob(f"m/*{i}?") for i in range(32))


# --- 3. deep JSON ----------------------------------------------------------------------------------


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [65, 300, 1000])
def test_deep_json_from_a_client_is_a_400_naming_the_field_with_no_traceback(
    stack: Stack, depth: int, caplog: pytest.LogCaptureFixture
) -> None:
    raw = (
        b'{"model":"auto","messages":[{"role":"user","content":"hi"}],"tools":[{"x":'
        + _nested(depth)
        + b"}]}"
    )
    with caplog.at_level(logging.WARNING):
        message = openai_error(post(stack, "/v1/chat/completions", raw), 400, "tools")
    assert "deeper than 64" in message
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_json_nested_within_the_limit_is_passed_on(stack: Stack) -> None:
    raw = b'{"model":"auto","messages":[{"role":"user","content":"hi"}],"x":' + _nested(60) + b"}"
    assert post(stack, "/v1/chat/completions", raw).status_code == 200


def _errors_of(stack: Stack, model: str) -> int:
    errors: int = metrics(stack)["models"].get(model, {}).get("errors", 0)
    return errors


def test_a_deep_upstream_answer_is_that_models_failure_and_the_next_answers(stack: Stack) -> None:
    errors = _errors_of(stack, BAD)
    response = post(stack, "/v1/chat/completions", user_body(model=BAD, hostile="deep"))
    assert response.status_code == 200, response.text
    assert response.json()["model"] == FAST
    assert attempts(response) == [(BAD, "protocol_error"), (FAST, "ok")]
    assert "nested deeper than 64" in response.json()["routing"]["attempts"][0]["error"]
    assert _errors_of(stack, BAD) == errors + 1  # counted against bad/x (its breaker too)


def test_a_deep_first_stream_event_falls_back_before_the_client_sees_a_byte(stack: Stack) -> None:
    response = post(
        stack, "/v1/chat/completions", user_body(model=BAD, hostile="stream_deep_first", stream=True)
    )
    assert response.status_code == 200
    assert response.headers["x-router-model"] == FAST
    assert response.text.rstrip().endswith("data: [DONE]")


def _events(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]


def _last_decision(traffic_log: Path, request_id: str) -> dict[str, Any]:
    for line in reversed(traffic_log.read_text().splitlines()):
        record: dict[str, Any] = json.loads(line)
        if record.get("request_id") == request_id:
            return record
    raise AssertionError(f"{request_id} not in the traffic log")


def test_a_deep_event_mid_stream_ends_it_with_an_error_counted_once_and_not_ok(
    stack: Stack, traffic_log: Path
) -> None:
    before = metrics(stack)["requests"]
    errors = _errors_of(stack, BAD)
    response = post(
        stack, "/v1/chat/completions", user_body(model=BAD, hostile="stream_deep_later", stream=True)
    )
    events = _events(response.text)
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "hi"
    error = json.loads(events[-1])["error"]
    assert error["code"] == "protocol_error" and "nested deeper" in error["message"]
    after = metrics(stack)["requests"]
    assert after["total"] == before["total"] + 1
    assert after["by_outcome"]["upstream_error"] == before["by_outcome"]["upstream_error"] + 1
    assert _errors_of(stack, BAD) == errors + 1
    request_id = response.headers["x-router-request-id"]

    def logged() -> dict[str, Any] | None:
        try:
            return _last_decision(traffic_log, request_id)
        except AssertionError:
            return None

    record = _poll(logged)
    assert [(a["model"], a["outcome"]) for a in record["attempts"]] == [(BAD, "protocol_error")]
    assert record["answered_by"] is None


def _poll(read: Any, timeout_s: float = 10.0) -> Any:
    """``read()`` once it is not None (the traffic log is written by a background thread)."""
    deadline = time.monotonic() + timeout_s
    while (value := read()) is None:
        assert time.monotonic() < deadline, "not written in time"
        time.sleep(0.02)
    return value


# --- 5. size caps on upstream answers ---------------------------------------------------------------


def test_a_stream_with_reasoning_in_it_is_not_cached_as_plain_text(stack: Stack) -> None:
    # A finished temperature-0 stream is cached as the plain answer it adds up to, unless its
    # chunks carried more than text: reasoning would be lost from every later hit.
    def states(mode: str) -> list[str]:
        body = user_body(f"Think first ({mode}).", model=BAD, hostile=mode, stream=True, temperature=0)
        return [post(stack, "/v1/chat/completions", body).headers["x-router-cache"] for _ in range(2)]

    assert states("stream_text") == ["miss", "hit"]
    assert states("stream_reasoning") == ["miss", "miss"]


def test_a_cached_answer_with_tool_calls_replays_whole_as_a_stream(stack: Stack) -> None:
    # The upstream answers two choices (unasked): a tool call with log probabilities, a refusal.
    body = user_body("Weather in Oslo?", model=BAD, hostile="rich", temperature=0)
    plain = post(stack, "/v1/chat/completions", body)
    assert plain.status_code == 200, plain.text
    assert plain.headers["x-router-cache"] == "miss" and plain.json()["choices"] == RICH_CHOICES
    with stack.http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.headers["x-router-cache"] == "hit"
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    # Put back together as a client would, choice by choice, each delta added to its message.
    got: dict[int, dict[str, Any]] = {}
    for chunk in map(json.loads, lines[:-1]):
        for part in chunk["choices"]:
            choice = got.setdefault(part["index"], {"content": "", "finish_reason": None})
            delta = part["delta"]
            choice["content"] += delta.get("content") or ""
            for key in ("refusal", "tool_calls"):
                if delta.get(key):
                    choice[key] = delta[key]
            if part.get("logprobs"):
                choice["logprobs"] = part["logprobs"]
            choice["finish_reason"] = part["finish_reason"] or choice["finish_reason"]
    calls = got[0]["tool_calls"]
    assert [c.pop("index") for c in calls] == [0] and calls == RICH_CHOICES[0]["message"]["tool_calls"]
    assert got[0]["logprobs"] == RICH_CHOICES[0]["logprobs"] and got[0]["finish_reason"] == "tool_calls"
    assert got[1]["refusal"] == "I cannot say." and got[1]["finish_reason"] == "stop"


def test_an_answer_over_the_cap_is_that_models_failure(stack: Stack) -> None:
    response = post(stack, "/v1/chat/completions", user_body(model=BAD, hostile="huge", size=4 * ANSWER_CAP))
    assert response.status_code == 200, response.text
    assert attempts(response) == [(BAD, "protocol_error"), (FAST, "ok")]
    assert "exceeds the limit" in response.json()["routing"]["attempts"][0]["error"]


def test_an_answer_under_the_cap_is_relayed(stack: Stack) -> None:
    response = post(stack, "/v1/chat/completions", user_body(model=BAD, hostile="huge", size=ANSWER_CAP // 2))
    assert response.json()["model"] == BAD


def test_a_stream_line_over_the_cap_is_that_models_failure(stack: Stack) -> None:
    body = user_body(model=BAD, hostile="stream_long_line", size=8 * EVENT_CAP, stream=True)
    response = post(stack, "/v1/chat/completions", body)
    assert response.status_code == 200
    assert response.headers["x-router-model"] == FAST
    assert _events(response.text)[-1] == "[DONE]"


def test_the_httpx_client_caps_answers_as_well(hostile_url: str) -> None:
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        service_stack(
            monkeypatch,
            catalogue=hostile_catalogue(),
            providers=_providers(hostile_url),
            limits={"upstream_answer_bytes": ANSWER_CAP},
            upstream={"http_client": "httpx"},
        ) as running,
    ):
        response = post(
            running, "/v1/chat/completions", user_body(model=BAD, hostile="huge", size=4 * ANSWER_CAP)
        )
        assert attempts(response) == [(BAD, "protocol_error"), (FAST, "ok")]
        response = post(running, "/v1/chat/completions", user_body(model=BAD, hostile="deep"))
        assert attempts(response) == [(BAD, "protocol_error"), (FAST, "ok")]


# --- 8. Content-Type and CORS ----------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/route", "/complete", "/feedback"])
def test_a_body_not_declared_json_is_a_415(stack: Stack, path: str, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = stack.http.post(path, content=json.dumps(user_body()).encode(), headers=headers)
    assert "application/json" in openai_error(response, 415, "content-type")


def test_json_with_a_charset_is_accepted(stack: Stack) -> None:
    headers = {"content-type": "application/json; charset=utf-8"}
    assert post(stack, "/v1/chat/completions", user_body(), headers).status_code == 200


def test_no_cors_headers_unless_configured(stack: Stack) -> None:
    origin = {"origin": "https://evil.example"}
    response = post(stack, "/v1/chat/completions", user_body(), {**JSON_HEADERS, **origin})
    assert "access-control-allow-origin" not in response.headers
    preflight = stack.http.options(
        "/v1/chat/completions", headers={**origin, "access-control-request-method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_configured_origins_get_cors_and_others_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    app_origin = "https://app.example"
    with service_stack(monkeypatch, server={"cors_origins": [app_origin]}) as running:
        ask = {"access-control-request-method": "POST", "access-control-request-headers": "content-type"}
        allowed = running.http.options("/v1/chat/completions", headers={"origin": app_origin, **ask})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == app_origin
        refused = running.http.options(
            "/v1/chat/completions", headers={"origin": "https://evil.example", **ask}
        )
        assert "access-control-allow-origin" not in refused.headers
        answer = post(running, "/v1/chat/completions", user_body(), {**JSON_HEADERS, "origin": app_origin})
        assert answer.headers["access-control-allow-origin"] == app_origin
        assert "x-router-model" in answer.headers["access-control-expose-headers"]


# --- 9. the smaller items --------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://user:secret@127.0.0.1:9/v1", "http://token@127.0.0.1:9/v1"])
def test_a_provider_url_with_credentials_and_an_api_key_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    settings = load_settings(upstream={"providers": {"local": {"base_url": url, "api_key": "sk-1"}}})
    with pytest.raises(ConfigError) as caught:
        create_app(settings)
    assert caught.value.key == "upstream.providers.local.base_url"
    assert "secret" not in str(caught.value) and "sk-1" not in str(caught.value)


@pytest.mark.parametrize(("field", "value"), [("max_tokens", 2**63), ("max_completion_tokens", 2**40)])
def test_huge_max_tokens_names_its_field(stack: Stack, field: str, value: int) -> None:
    openai_error(post(stack, "/v1/chat/completions", user_body(**{field: value})), 400, field)


def test_max_tokens_beyond_every_context_window_names_max_tokens(stack: Stack) -> None:
    response = post(stack, "/route", {"prompt": "Hi.", "max_tokens": 10**9})
    assert "context window" in openai_error(response, 400, "max_tokens")


def test_enormous_weights_route_like_their_proportions(stack: Stack) -> None:
    def chosen(weights: dict[str, float]) -> list[str]:
        response = post(stack, "/route", {"prompt": "Hi.", "weights": weights})
        assert response.status_code == 200, response.text
        decision = response.json()
        return [decision["model"], *decision["fallbacks"]]

    huge = {"latency": 1e308, "cost": 1e308, "quality": 1e308}
    assert chosen(huge) == chosen({"latency": 1.0, "cost": 1.0, "quality": 1.0})
    assert chosen({"latency": 1e308}) == chosen({"latency": 1.0})


@pytest.mark.parametrize(
    ("route", "param"),
    [
        ({"weights": {"latency": "1"}}, "route.weights.latency"),
        ({"max_latency_ms": "100"}, "route.max_latency_ms"),
        ({"max_cost_usd": True}, "route.max_cost_usd"),
    ],
)
def test_numbers_as_strings_or_bools_are_refused(stack: Stack, route: dict[str, Any], param: str) -> None:
    openai_error(post(stack, "/v1/chat/completions", user_body(route=route)), 400, param)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": [{"type": 5}]}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages.0.content"),
        (user_body(tools=[{"function": 5}]), "tools"),
        (user_body(tools=[{"type": "function", "function": {"name": 5}}]), "tools"),
        (user_body(tools=[{"type": 7}]), "tools"),
    ],
)
def test_malformed_content_parts_and_tools_are_refused(
    stack: Stack, body: dict[str, Any], param: str
) -> None:
    openai_error(post(stack, "/v1/chat/completions", body), 400, param)


def test_well_formed_content_parts_and_tools_pass() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    parts = [{"type": "text", "text": "hi"}]
    ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": parts}], "tools": [tool]})


class _BrokenTransport(httpx.AsyncBaseTransport):
    """An upstream connection that fails with a bug, not a network error: the router answers 500."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise RuntimeError("a bug below the router")


def test_a_500_is_counted_as_error_not_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENROUTER_API_KEY", "ROUTER_SIMULATOR_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(upstream={"providers": {"local": {"base_url": "http://127.0.0.1:9/v1"}}})
    app = create_app(settings, transport=_BrokenTransport())
    with running_server(app) as url:
        # Starlette closes the connection after a 500 (it re-raises the bug for the server's log).
        response = httpx.post(url + "/v1/chat/completions", json=user_body(), timeout=10)
        assert response.status_code == 500
        by_outcome = httpx.get(url + "/metrics.json", timeout=10).json()["requests"]["by_outcome"]
    assert by_outcome["error"] == 1 and by_outcome["rejected"] == 0


def test_the_traffic_logs_dropped_lines_are_exported() -> None:
    pytest.importorskip("prometheus_client")
    metrics = Metrics()
    assert metrics.summary()["traffic_log"] == {"dropped": None}
    dropped = [3]
    metrics.watch_dropped(lambda: dropped[0])
    dropped[0] = 7
    assert metrics.summary()["traffic_log"] == {"dropped": 7}
    text, _ = metrics.prometheus()
    assert b"adaptive_router_traffic_log_dropped_total 7.0" in text


def test_the_traffic_log_dropped_count_is_in_metrics_json(stack: Stack) -> None:
    assert metrics(stack)["traffic_log"] == {"dropped": 0}


def test_an_upstream_retry_after_keeps_the_model_out_until_then(monkeypatch: pytest.MonkeyPatch) -> None:
    # 6,000 simulated seconds at the stack's time scale (0.01): a Retry-After of 60 s.
    limited = SimEvent(at_request=0, model=FAST, action="rate_limit", retry_after_s=6000.0)
    with service_stack(monkeypatch, events=[limited]) as running:
        first = running.chat()
        assert attempts(first) == [(FAST, "status_error"), (MID, "ok")]
        for _ in range(3):
            assert running.chat().json()["model"] == MID
        assert running.sim_stats()["requests"][FAST] == 1  # not called again within the minute
        assert metrics(running)["breakers"][FAST] == "open"


# --- hypothesis bodies: nesting, huge lists, odd types ---------------------------------------------

_odd_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(
        [1e308, -1e308, 5e-324, -0.0, 2**63, 2**64 + 1, "", "\u0000", "\ud7ff\ue000", "*" * 200]
    )
    | st.text(max_size=20)
)


def _deep(draw_depth: int, leaf: Any, as_dict: bool) -> Any:
    value = leaf
    for _ in range(draw_depth):
        value = {"k": value} if as_dict else [value]
    return value


deep_values = st.builds(_deep, st.integers(min_value=1, max_value=400), _odd_scalars, st.booleans())
huge_lists = st.builds(lambda item, n: [item] * n, _odd_scalars, st.integers(min_value=100, max_value=5000))
odd_values = _odd_scalars | deep_values | huge_lists | st.lists(_odd_scalars, max_size=5)
FIELDS = {
    "/v1/chat/completions": [
        "model",
        "messages",
        "max_tokens",
        "temperature",
        "stream",
        "tools",
        "route",
        "x",
    ],
    "/route": ["prompt", "messages", "allow", "deny", "weights", "max_tokens", "priority", "capabilities"],
    "/complete": ["prompt", "messages", "max_tokens", "temperature", "allow", "weights"],
    "/feedback": ["request_id", "score"],
}
BASES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": user_body("Hi."),
    "/route": {"prompt": "Hi."},
    "/complete": {"prompt": "Hi."},
    "/feedback": {"request_id": "x", "score": 0.5},
}
ROUTE_PARTS = ["allow", "deny", "weights", "max_latency_ms", "capabilities", "priority"]


@pytest.mark.parametrize("path", list(FIELDS))
def test_hostile_bodies_get_an_answer_or_an_openai_error_never_a_5xx(stack: Stack, path: str) -> None:
    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.data(), fields=st.sets(st.sampled_from(FIELDS[path]), min_size=1, max_size=3))
    def send(data: st.DataObject, fields: set[str]) -> None:
        body = dict(BASES[path])
        for name in sorted(fields):
            if name == "route":
                parts = data.draw(st.sets(st.sampled_from(ROUTE_PARTS), min_size=1, max_size=3))
                body["route"] = {p: data.draw(odd_values, label=f"route.{p}") for p in sorted(parts)}
            else:
                body[name] = data.draw(odd_values, label=name)
        content = json.dumps(body).encode()
        if len(content) > 1_000_000:
            return  # over the body limit: a 413, tested elsewhere
        response = stack.http.post(path, content=content, headers=JSON_HEADERS)
        assert response.status_code < 500, (path, response.status_code, response.text[:300])
        if response.status_code != 200:
            error = response.json()["error"]
            assert set(error) == ERROR_FIELDS and error["message"], error

    send()

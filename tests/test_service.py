"""The HTTP service end to end: a real uvicorn router in front of the real simulated upstream.

Nothing is mocked: the router (``create_app``) and the simulator (``create_simulator_app``) each
run in their own uvicorn server on 127.0.0.1, Redis is a real ``redis-server``, and the clients
are httpx and the official ``openai`` package. The catalogue ranks FAST > MID > SLOW on every
term and the policy is greedy, so the first choice and the fallback order are known.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from adaptive_router.core import Catalogue, Model
from adaptive_router.state import request_cache_key
from tests.redis_server import RedisServer
from tests.redis_server import redis_server_fixture as redis_server_fixture
from tests.servers import free_port
from tests.service_fixtures import (
    FAST,
    MID,
    MODELS,
    SLOW,
    Stack,
    fail,
    rate_limit,
    recover,
    service_stack,
    slow,
    user_body,
)

MODES = ("speed", "cost", "quality", "balanced")
ROUTER_HEADERS = ("x-router-model", "x-router-attempts", "x-router-decision-us", "x-router-cache")
ERROR_FIELDS = {"message", "type", "param", "code"}
POLL_S = 0.02
POLL_LIMIT_S = 3.0

JSON_TYPE = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def shared() -> Iterator[Stack]:
    """One router + simulator for the tests that need no scripted upstream behaviour."""
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        service_stack(monkeypatch, server={"max_body_bytes": 4096}) as stack,
    ):
        yield stack


def _openai(stack: Stack, api_key: str = "dummy") -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.router_url + "/v1", api_key=api_key, max_retries=0, timeout=10.0)


def _routing(response: httpx.Response) -> dict[str, Any]:
    routing: dict[str, Any] = response.json()["routing"]
    return routing


def _attempts(response: httpx.Response) -> list[tuple[str, str, int | None]]:
    return [(a["model"], a["outcome"], a["status"]) for a in _routing(response)["attempts"]]


def _assert_error_shape(response: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == ERROR_FIELDS
    assert isinstance(error["message"], str) and error["message"]
    assert error["param"] == param, error
    return error


def _sse_payloads(text: str) -> list[str]:
    """The ``data`` of each event of an SSE body; every event is one ``data:`` line."""
    assert text.endswith("\n\n"), text[-200:]
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events
    return [e.removeprefix("data: ") for e in events]


def _stream_text(payloads: list[str]) -> str:
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    return "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])


def _wait_for(condition: Callable[[], bool], limit_s: float = POLL_LIMIT_S) -> bool:
    """Poll ``condition`` until it holds or ``limit_s`` passes (bounded in count and time)."""
    for _ in range(int(limit_s / POLL_S) + 1):
        if condition():
            return True
        time.sleep(POLL_S)
    return condition()


# --- 1. the official openai client ------------------------------------------------------------


def test_openai_client_plain_completion_is_routed(shared: Stack) -> None:
    with _openai(shared) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "Say hello."}]
        )
    completion = raw.parse()
    assert completion.model == FAST
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    for header in ROUTER_HEADERS:
        assert raw.headers.get(header), header
    assert raw.headers["x-router-model"] == FAST
    assert raw.headers["x-router-attempts"] == "1"
    assert float(raw.headers["x-router-decision-us"]) >= 0
    assert raw.headers["x-router-cache"] == "bypass"  # no temperature: OpenAI's default of 1
    routing = (completion.model_extra or {})["routing"]
    assert routing["upstream"] == "simulated"
    assert routing["model"] == FAST
    assert [(a["model"], a["outcome"]) for a in routing["attempts"]] == [(FAST, "ok")]
    assert routing["decision"]["fallbacks"] == [MID, SLOW]


def test_openai_client_streams_with_a_mode(shared: Stack) -> None:
    before = shared.sim_stats()["streams"]
    deltas, finish, models = [], None, set()
    with _openai(shared) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="auto:speed", messages=[{"role": "user", "content": "Tell me a story."}], stream=True
        )
        for chunk in raw.parse():
            models.add(chunk.model)
            for choice in chunk.choices:
                deltas.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
    assert raw.headers["x-router-model"] in MODELS
    for header in ROUTER_HEADERS:
        assert raw.headers.get(header), header
    assert "".join(deltas).strip()
    assert finish in ("stop", "length")  # the last chunk arrived: the stream ended properly
    assert models == {raw.headers["x-router-model"]}
    assert shared.sim_stats()["streams"] == before + 1


def test_openai_client_stream_loop_sees_a_choice_in_every_chunk(shared: Stack) -> None:
    """The usual loop, ``chunk.choices[0]`` on every chunk, works unless the client asked for
    the usage chunk (which has no choices, as OpenAI sends it)."""
    with _openai(shared) as client:
        stream = client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "Tell me a long story."}], stream=True
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
        assert text.strip()
        with_usage = list(
            client.chat.completions.create(
                model="auto",
                messages=[{"role": "user", "content": "Tell me a long story."}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert with_usage[-1].choices == [] and with_usage[-1].usage is not None
    assert with_usage[-1].usage.completion_tokens > 0


def test_stream_over_http_ends_with_done(shared: Stack) -> None:
    body = user_body("Count to five.", stream=True)
    with shared.http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    assert _stream_text(_sse_payloads(text))


# --- 2. fallback -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "outcome", "status"),
    [
        (fail(FAST, 500), "status_error", 500),
        (fail(FAST, 503), "status_error", 503),
        (rate_limit(FAST), "status_error", 429),
    ],
    ids=["500", "503", "429"],
)
def test_fallback_on_retryable_status(
    monkeypatch: pytest.MonkeyPatch, event: Any, outcome: str, status: int
) -> None:
    with service_stack(monkeypatch, events=[event]) as stack:
        response = stack.chat()
        assert response.status_code == 200, response.text
        assert response.json()["model"] == MID
        assert response.headers["x-router-model"] == MID
        assert response.headers["x-router-attempts"] == "2"
        assert _attempts(response) == [(FAST, outcome, status), (MID, "ok", None)]
        assert stack.sim_stats()["errors"] == {FAST: {str(status): 1}}


def test_fallback_on_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # FAST answers after about 0.35 s; an attempt may take 0.12 s.
    with service_stack(monkeypatch, events=[slow(FAST, 200)], upstream={"attempt_timeout_s": 0.12}) as stack:
        response = stack.chat()
        assert response.status_code == 200, response.text
        assert response.json()["model"] == MID
        assert _attempts(response) == [(FAST, "timeout", None), (MID, "ok", None)]


def test_fallback_on_timeout_from_route_max_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    # Priors of tens of milliseconds, so that a 300 ms bound keeps FAST and MID eligible (SLOW's
    # high quantile is above it) and makes the attempt timeout 0.3 s; FAST now takes ~0.5 s.
    catalogue = Catalogue(
        [
            Model(FAST, 1e-8, 2e-8, 8192, ttft_s=0.01, tpot_s=0.0001, quality=0.9),
            Model(MID, 1e-6, 2e-6, 8192, ttft_s=0.02, tpot_s=0.0002, quality=0.7),
            Model(SLOW, 1e-5, 3e-5, 8192, ttft_s=0.05, tpot_s=0.002, quality=0.5),
        ]
    )
    with service_stack(monkeypatch, events=[slow(FAST, 4000)], catalogue=catalogue) as stack:
        response = stack.chat(user_body(route={"max_latency_ms": 300}))
        assert response.status_code == 200, response.text
        assert response.json()["model"] == MID
        assert _attempts(response) == [(FAST, "timeout", None), (MID, "ok", None)]
        assert _routing(response)["decision"]["fallbacks"] == [MID]


def test_fallback_on_refused_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nobody listens there

    def providers(sim_url: str) -> dict[str, Any]:
        return {"dead": {"base_url": dead, "models": [FAST]}, "sim": {"base_url": sim_url}}

    with service_stack(monkeypatch, providers=providers) as stack:
        response = stack.chat()
        assert response.status_code == 200, response.text
        assert response.json()["model"] == MID
        assert _attempts(response) == [(FAST, "connect_error", None), (MID, "ok", None)]
        assert _routing(response)["upstream"] == "live"  # providers from settings, not the env
        assert stack.sim_stats()["requests"] == {FAST: 0, MID: 1, SLOW: 0}


def test_fallback_on_a_dropped_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    with service_stack(monkeypatch, events=[fail(FAST, 0)]) as stack:  # status 0: no answer at all
        response = stack.chat()
        assert response.status_code == 200, response.text
        assert response.json()["model"] == MID
        (first_model, first_outcome, _), second = _attempts(response)
        assert (first_model, second) == (FAST, (MID, "ok", None))
        assert first_outcome in ("protocol_error", "connect_error")


def test_stream_falls_back_before_the_first_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    with service_stack(monkeypatch, events=[fail(FAST, 500)]) as stack:
        body = user_body("Stream me something.", stream=True)
        with stack.http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert response.headers["x-router-model"] == MID
            text = response.read().decode()
        payloads = _sse_payloads(text)
        assert _stream_text(payloads)
        assert {json.loads(p)["model"] for p in payloads[:-1]} == {MID}
        assert stack.sim_stats()["streams"] == 1  # FAST failed before streaming; MID streamed


def test_stream_attempts_header_counts_like_a_plain_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    with service_stack(monkeypatch, events=[fail(FAST, 500)]) as stack:
        plain = stack.chat()
        with stack.http.stream("POST", "/v1/chat/completions", json=user_body(stream=True)) as streamed:
            text = streamed.read().decode()
        assert plain.headers["x-router-attempts"] == "2"
        assert streamed.headers["x-router-attempts"] == plain.headers["x-router-attempts"]
        # the final chunk's routing lists them too, the stream that answered included
        final = json.loads(_sse_payloads(text)[-2])
        tried = [(a["model"], a["outcome"], a["status"]) for a in final["routing"]["attempts"]]
        assert tried == _attempts(plain)


def test_pinned_model_answers_and_falls_back_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    with service_stack(monkeypatch, events=[fail(MID, 500)]) as stack:
        pinned = stack.chat({**user_body(), "model": SLOW})
        assert pinned.status_code == 200
        assert pinned.json()["model"] == SLOW
        assert "requested by the client" in _routing(pinned)["decision"]["reason"]
        fallback = stack.chat({**user_body(), "model": MID})
        assert fallback.status_code == 200
        assert _attempts(fallback) == [(MID, "status_error", 500), (FAST, "ok", None)]
        alone = stack.chat({**user_body(), "model": MID, "route": {"fallback": False}})
        _assert_error_shape(alone, 502, None)
        assert _attempts(alone) == [(MID, "status_error", 500)]


def test_client_request_id_is_the_routing_request_id(shared: Stack) -> None:
    response = shared.chat(user_body("Which id am I?"), headers={"x-request-id": "client-chosen-id-1"})
    assert response.status_code == 200
    assert _routing(response)["request_id"] == "client-chosen-id-1"
    assert response.headers["x-router-request-id"] == "client-chosen-id-1"
    feedback = shared.http.post("/feedback", json={"request_id": "client-chosen-id-1", "score": 1.0})
    assert feedback.status_code == 200


# --- 3. no fallback on the client's own fault ----------------------------------------------------


@pytest.mark.parametrize("status", [400, 422])
def test_client_fault_goes_back_as_it_is(monkeypatch: pytest.MonkeyPatch, status: int) -> None:
    failures = 2
    with service_stack(
        monkeypatch, events=[fail(FAST, status)], upstream={"breaker_failures": failures}
    ) as stack:
        response = stack.chat()
        direct = stack.sim.post("/v1/chat/completions", json={**user_body(), "model": FAST})
        assert direct.status_code == status
        assert response.status_code == status
        assert response.content == direct.content  # the upstream's body, byte for byte
        assert response.headers["x-router-attempts"] == "1"
        assert response.headers["x-router-model"] == FAST
        streamed = stack.chat(user_body(stream=True))
        assert streamed.status_code == status
        assert streamed.content == direct.content  # a stream's refusal comes back as it is too
        for _ in range(failures + 1):  # more than enough to open a breaker, if these counted
            assert stack.chat().status_code == status
        assert stack.sim_stats()["requests"] == {FAST: failures + 4, MID: 0, SLOW: 0}
        assert stack.ready()["breakers"] == {}
        summary = stack.http.get("/metrics.json").json()
        assert summary["requests"]["by_outcome"]["client_error"] == failures + 3
        assert summary["models"].get(FAST, {}).get("errors", 0) == 0
        success = {row["model"]: row["success"] for row in stack.http.get("/models").json()["data"]}
        assert success[FAST] == success[MID]  # FAST learned nothing bad (MID was never called)


def test_router_rejects_n_above_one_without_calling_upstream(shared: Stack) -> None:
    before = shared.sim_stats()["requests_total"]
    response = shared.chat(user_body(n=2))
    _assert_error_shape(response, 400, "n")
    assert shared.sim_stats()["requests_total"] == before


# --- 4. everything fails ---------------------------------------------------------------------------


def test_all_candidates_failing_is_502_listing_every_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    with service_stack(monkeypatch, events=[fail("*", 500)]) as stack:
        response = stack.chat()
        error = _assert_error_shape(response, 502, None)
        assert error["code"] == "all_failed"
        assert _attempts(response) == [(m, "status_error", 500) for m in MODELS]
        assert all(m in error["message"] for m in MODELS)
        assert response.headers["x-router-attempts"] == "3"
        # Every candidate was tried: the official client must not try them all again.
        assert response.headers["x-should-retry"] == "false"
        with _openai(stack) as client, pytest.raises(openai.APIStatusError):
            client.with_options(max_retries=2).chat.completions.create(
                model="auto", messages=[{"role": "user", "content": "Say hello."}]
            )
        calls = sum(stack.sim_stats()["requests"].values())
        assert calls == 3 + 3  # the first request's three, and one chain for the client's call
        streamed = stack.chat(user_body(stream=True))
        assert _assert_error_shape(streamed, 502, None)["code"] == "all_failed"
        assert _attempts(streamed) == [(m, "status_error", 500) for m in MODELS]


def test_failed_answers_are_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every model fails the first request's three calls, then recovers.
    with service_stack(monkeypatch, events=[fail("*", 500), recover("*", at_request=3)]) as stack:
        body = user_body("Cache only what worked.", temperature=0)
        assert stack.chat(body).status_code == 502
        retry = stack.chat(body)
        assert retry.status_code == 200
        assert retry.headers["x-router-cache"] == "miss"
        assert stack.chat(body).headers["x-router-cache"] == "hit"
        assert stack.sim_stats()["requests_total"] == 4


def test_all_candidates_timing_out_is_504(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each model answers after about 0.35 s (each from its own median); an attempt may take 0.12 s.
    events = [slow(FAST, 200), slow(MID, 45), slow(SLOW, 17)]
    with service_stack(monkeypatch, events=events, upstream={"attempt_timeout_s": 0.12}) as stack:
        response = stack.chat()
        error = _assert_error_shape(response, 504, None)
        assert error["code"] == "all_timed_out"
        assert _attempts(response) == [(m, "timeout", None) for m in MODELS]


# --- 5. circuit breaker ------------------------------------------------------------------------------


def _concurrent_chats(stack: Stack, count: int) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=stack.router_url, timeout=10) as client:
            calls = [client.post("/v1/chat/completions", json=user_body()) for _ in range(count)]
            return list(await asyncio.gather(*calls))

    return asyncio.run(run())


def test_breaker_opens_then_lets_one_probe_through_after_cooldown(monkeypatch: pytest.MonkeyPatch) -> None:
    # Upstream calls 1-4 are FAST (fails), MID, FAST (fails), MID. From the fifth on, FAST is
    # healthy again but takes ~0.2 s, so that concurrent requests overlap with its probe.
    events = [fail(FAST, 500), recover(FAST, at_request=4), slow(FAST, 100, at_request=4)]
    settings: dict[str, Any] = {"upstream": {"breaker_failures": 2, "breaker_cooldown_s": 0.3}}
    with service_stack(monkeypatch, events=events, **settings) as stack:
        for _ in range(2):
            response = stack.chat()
            assert response.status_code == 200
            assert _attempts(response) == [(FAST, "status_error", 500), (MID, "ok", None)]
        opened = time.monotonic()
        assert stack.ready()["breakers"] == {FAST: "open"}
        response = stack.chat()  # the breaker is open: FAST is no longer chosen
        assert response.status_code == 200
        assert _routing(response)["decision"]["model"] != FAST
        assert FAST not in [a["model"] for a in _routing(response)["attempts"]]
        assert stack.sim_stats()["requests"][FAST] == 2
        time.sleep(max(0.0, opened + 0.35 - time.monotonic()))  # past the cool-down
        responses = _concurrent_chats(stack, 3)
        assert [r.status_code for r in responses] == [200, 200, 200]
        outcomes = sorted(_attempts(r) for r in responses)
        assert outcomes == [  # exactly one probe reached FAST; the others went on to MID
            [(FAST, "breaker_open", None), (MID, "ok", None)],
            [(FAST, "breaker_open", None), (MID, "ok", None)],
            [(FAST, "ok", None)],
        ]
        assert stack.ready()["breakers"] == {}
        assert stack.chat().json()["model"] == FAST
        assert stack.sim_stats()["requests"][FAST] == 4
        assert stack.http.get("/metrics.json").json()["breakers"] == {FAST: "closed"}


# --- 6. response cache ------------------------------------------------------------------------------


def test_cache_serves_a_repeated_temperature_zero_request(shared: Stack) -> None:
    body = user_body("What is the capital of France? (cache test)", temperature=0)
    first = shared.chat(body)
    assert first.status_code == 200
    assert first.headers["x-router-cache"] == "miss"
    calls = shared.sim_stats()["requests_total"]
    second = shared.chat(body)
    assert second.status_code == 200
    assert second.headers["x-router-cache"] == "hit"
    assert second.headers["x-router-attempts"] == "0"
    assert _routing(second)["cached"] is True
    assert second.json()["choices"] == first.json()["choices"]
    assert second.json()["model"] == first.json()["model"]
    assert shared.sim_stats()["requests_total"] == calls  # no second upstream call


def test_cache_skips_temperature_one(shared: Stack) -> None:
    body = user_body("Write a poem about the sea. (no-cache test)", temperature=1)
    calls = shared.sim_stats()["requests_total"]
    responses = [shared.chat(body) for _ in range(2)]
    assert [r.headers["x-router-cache"] for r in responses] == ["bypass", "bypass"]
    assert all(_routing(r)["cached"] is False for r in responses)
    assert shared.sim_stats()["requests_total"] == calls + 2


def test_cache_opt_in_through_route(shared: Stack) -> None:
    body = user_body("Write a limerick. (opt-in test)", temperature=1, route={"cache": True})
    first = shared.chat(body)
    calls = shared.sim_stats()["requests_total"]
    second = shared.chat(body)
    assert first.headers["x-router-cache"] == "miss"
    assert second.headers["x-router-cache"] == "hit"
    assert second.json()["choices"] == first.json()["choices"]
    assert shared.sim_stats()["requests_total"] == calls


def test_cached_answer_replays_as_a_stream(shared: Stack) -> None:
    body = user_body("Name three colours. (replay test)", temperature=0)
    answer = shared.chat(body).json()["choices"][0]["message"]["content"]
    calls = shared.sim_stats()
    with shared.http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["x-router-cache"] == "hit"
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    assert _stream_text(_sse_payloads(text)) == answer
    # The openai client reads the replay as a stream too.
    with _openai(shared) as client:
        stream = client.chat.completions.create(
            model="auto", messages=body["messages"], temperature=0, stream=True
        )
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    after = shared.sim_stats()
    assert (after["requests_total"], after["streams"]) == (calls["requests_total"], calls["streams"])


def _streamed(stack: Stack, body: dict[str, Any]) -> tuple[str, str]:
    """A stream's ``x-router-cache`` header and its text."""
    with stack.http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        return response.headers["x-router-cache"], _stream_text(_sse_payloads(response.read().decode()))


def test_a_finished_stream_is_cached_for_streams_and_plain_requests(shared: Stack) -> None:
    body = user_body("Name three rivers. (stream cache test)", temperature=0)
    with shared.http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.headers["x-router-cache"] == "miss"
        payloads = _sse_payloads(response.read().decode())
    text, first = _stream_text(payloads), json.loads(payloads[0])
    calls = shared.sim_stats()
    assert _streamed(shared, body) == ("hit", text)  # replayed, the upstream not asked again
    plain = shared.chat(body)  # the same answer, as JSON, as the stream's first chunk named it
    assert plain.headers["x-router-cache"] == "hit"
    answer = plain.json()
    assert answer["choices"][0]["message"]["content"] == text
    assert answer["choices"][0]["finish_reason"] in ("stop", "length")
    assert (answer["id"], answer["created"]) == (first["id"], first["created"])
    assert answer["model"] == plain.headers["x-router-model"]
    assert answer["usage"]["completion_tokens"] > 0 and answer["usage"]["cost"] == 0.0  # free this time
    assert shared.sim_stats()["requests_total"] == calls["requests_total"]


def test_a_cached_complete_answer_costs_nothing(shared: Stack) -> None:
    body = {"prompt": "Name three mountains. (complete cache test)", "temperature": 0}
    first, hit = (shared.http.post("/complete", json=body).json() for _ in range(2))
    assert (first["cached"], hit["cached"]) == (False, True) and hit["id"] == first["id"]
    assert first["usage"]["cost"] > 0 and hit["usage"]["cost"] == 0.0


# --- 7. Redis ------------------------------------------------------------------------------------------


def _redis_settings(server: RedisServer, prefix: str) -> dict[str, Any]:
    return {
        "redis": {
            "url": server.url,
            "prefix": prefix,
            "retry_after_s": 0.2,
            "connect_timeout_ms": 200.0,
            "op_timeout_ms": 200.0,
        }
    }


def _cache_keys(client: redis.Redis, prefix: str) -> set[bytes]:
    return set(client.scan_iter(match=f"{prefix}:cache:*", count=1000))


def _until_a_key_appears(stack: Stack, client: redis.Redis, prefix: str) -> bool:
    """Send new cacheable requests until one's answer is in Redis (bounded: 2 s)."""
    fresh = itertools.count()

    def key_appears() -> bool:
        body = user_body(f"A new question, number {next(fresh)}", temperature=0)
        assert stack.chat(body).status_code == 200
        return bool(_cache_keys(client, prefix))

    return _wait_for(key_appears, limit_s=2.0)


def test_cache_lives_in_redis(monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer) -> None:
    prefix = "svc-test"
    body = user_body("Cache me in Redis.", temperature=0)
    with (
        service_stack(monkeypatch, **_redis_settings(redis_server, prefix)) as stack,
        redis.Redis.from_url(redis_server.url, socket_timeout=2) as client,
    ):
        assert stack.ready()["cache"] == {"backend": "redis", "redis_configured": True, "redis_up": True}
        assert stack.chat(body).status_code == 200
        key = f"{prefix}:cache:{request_cache_key(body, None)}".encode()
        assert _cache_keys(client, prefix) == {key}
        stored = json.loads(client.get(key) or b"{}")
        assert stored["model"] == FAST
        assert 0 < client.pttl(key) <= 3600 * 1000
        assert stack.chat(body).headers["x-router-cache"] == "hit"


def test_redis_dies_mid_run_and_comes_back(
    monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    prefix = "svc-failover"
    with (
        service_stack(monkeypatch, **_redis_settings(redis_server, prefix)) as stack,
        redis.Redis.from_url(redis_server.url, socket_timeout=2) as client,
    ):
        statuses = []
        for i in range(30):
            if i == 10:
                assert len(_cache_keys(client, prefix)) == 10  # Redis held every answer so far
                redis_server.kill()
            statuses.append(stack.chat(user_body(f"Question number {i}?", temperature=0)).status_code)
        assert statuses == [200] * 30
        assert stack.ready()["cache"]["redis_up"] is False
        redis_server.start()  # back, and empty
        time.sleep(0.25)  # past redis.retry_after_s
        assert _until_a_key_appears(stack, client, prefix)
        assert stack.ready()["cache"]["redis_up"] is True


def test_router_starts_and_serves_with_redis_down(
    monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    prefix = "svc-late"
    redis_server.kill()
    with service_stack(monkeypatch, **_redis_settings(redis_server, prefix)) as stack:
        assert stack.ready()["cache"]["redis_up"] is False
        body = user_body("Served from memory.", temperature=0)
        assert stack.chat(body).status_code == 200
        assert stack.chat(body).headers["x-router-cache"] == "hit"  # the memory fallback
        redis_server.start()
        time.sleep(0.25)  # past redis.retry_after_s
        with redis.Redis.from_url(redis_server.url, socket_timeout=2) as client:
            assert _until_a_key_appears(stack, client, prefix)
        assert stack.ready()["cache"]["redis_up"] is True


# --- 8. bad input ---------------------------------------------------------------------------------------

# (id, body, status, the error's param)
BAD_BODIES: list[tuple[str, Any, int, str | None]] = [
    ("empty messages", {"model": "auto", "messages": []}, 400, "messages"),
    ("missing messages", {"model": "auto"}, 400, "messages"),
    ("messages as a string", {"model": "auto", "messages": "hi"}, 400, "messages"),
    ("message without role", {"messages": [{"content": "hi"}]}, 400, "messages.0.role"),
    ("negative max_tokens", user_body(max_tokens=-1), 400, "max_tokens"),
    ("temperature 5", user_body(temperature=5), 400, "temperature"),
    ("temperature as text", user_body(temperature="hot"), 400, "temperature"),
    ("unknown mode", {**user_body(), "model": "auto:warp"}, 404, "model"),  # as /v1/models/auto:warp
    ("unknown route.priority", user_body(route={"priority": "warp"}), 400, "route.priority"),
    (
        "negative weight",
        user_body(route={"weights": {"latency": -1, "cost": 1, "quality": 1}}),
        400,
        "route.weights.latency",
    ),
    (
        "all-zero weights",
        user_body(route={"weights": {"latency": 0, "cost": 0, "quality": 0}}),
        400,
        "route.weights",
    ),
    ("unknown route option", user_body(route={"fastest": True}), 400, "route.fastest"),
    ("max_tokens beyond every context", user_body(max_tokens=100_000), 400, "max_tokens"),
    ("unknown pinned model", {**user_body(), "model": "nobody/nothing"}, 404, "model"),
    ("model empty", {**user_body(), "model": ""}, 400, "model"),
    ("model null", {**user_body(), "model": None}, 400, "model"),
    ("top_p 3", user_body(top_p=3), 400, "top_p"),
    ("route as a string", user_body(route="fast"), 400, "route"),
    ("tools as a string", user_body(tools="x"), 400, "tools"),
    ("allow matching nothing", user_body(route={"allow": ["nothing/*"]}), 400, "route.allow"),
    ("missing capability", user_body(route={"capabilities": ["vision"]}), 400, "route.capabilities"),
    ("impossible max_cost_usd", user_body(route={"max_cost_usd": 0}), 400, "route.max_cost_usd"),
    ("impossible max_latency_ms", user_body(route={"max_latency_ms": 1}), 400, "route.max_latency_ms"),
]
# Known bugs: pytest.params with their xfail marks.
BAD_BODY_BUGS = [
    pytest.param(
        {"messages": [{"role": "user", "content": 5}]},
        400,
        "messages.0.content",
        id="content as a number",
    )
]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [*(pytest.param(*c[1:], id=c[0]) for c in BAD_BODIES), *BAD_BODY_BUGS],
)
def test_bad_body_is_a_named_4xx(shared: Stack, body: Any, status: int, param: str | None) -> None:
    before = shared.sim_stats()["requests_total"]
    _assert_error_shape(shared.chat(body), status, param)
    assert shared.sim_stats()["requests_total"] == before  # nothing reached the upstream


@pytest.mark.parametrize(
    "raw", [b'{"model": "auto", "messages": [', b"[1, 2]", b'"text"', b"", b"\xff\xfe"], ids=repr
)
def test_unparseable_or_non_object_body_is_400(shared: Stack, raw: bytes) -> None:
    response = shared.http.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    _assert_error_shape(response, 400, "body")


def test_body_over_the_limit_is_413(shared: Stack) -> None:
    body = user_body("x" * 8000)  # the shared router allows 4096 bytes
    _assert_error_shape(shared.chat(body), 413, "body")


def test_chunked_body_over_the_limit_is_413(shared: Stack) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "auto", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}]}'

    response = shared.http.post("/v1/chat/completions", content=chunks(), headers=JSON_TYPE)
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    _assert_error_shape(response, 413, "body")


def test_chunked_body_under_the_limit_is_served(shared: Stack) -> None:
    payload = json.dumps(user_body("A small chunked request.")).encode()
    response = shared.http.post(
        "/v1/chat/completions", content=iter([payload[:10], payload[10:]]), headers=JSON_TYPE
    )
    assert response.status_code == 200, response.text


def test_unknown_route_is_a_json_404(shared: Stack) -> None:
    response = shared.http.get("/v1/nothing-here")
    error = _assert_error_shape(response, 404, None)
    assert error["type"] == "not_found_error"


def test_wrong_method_is_a_json_405(shared: Stack) -> None:
    response = shared.http.get("/v1/chat/completions")
    _assert_error_shape(response, 405, None)
    assert "POST" in response.headers.get("allow", "")


def test_bad_input_on_route_and_complete(shared: Stack) -> None:
    _assert_error_shape(shared.http.post("/route", json={}), 400, "body")
    _assert_error_shape(shared.http.post("/route", json={"prompt": "hi", "model": "auto:warp"}), 404, "model")
    _assert_error_shape(shared.http.post("/complete", json={"prompt": ""}), 400, "prompt")
    _assert_error_shape(shared.http.post("/feedback", json={"score": 0.5}), 400, "request_id")


# --- 9. auth ----------------------------------------------------------------------------------------------


def test_api_keys_guard_every_route_but_health(monkeypatch: pytest.MonkeyPatch) -> None:
    with service_stack(monkeypatch, server={"api_keys": ["k1"]}) as stack:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "k1"}):
            response = stack.chat(headers=headers)
            error = _assert_error_shape(response, 401, None)
            assert error["type"] == "authentication_error"
            assert response.headers["www-authenticate"] == "Bearer"
        for path in ("/v1/models", "/models", "/metrics", "/metrics.json"):
            assert stack.http.get(path).status_code == 401, path
        assert stack.http.post("/route", json={"prompt": "hi"}).status_code == 401
        assert stack.sim_stats()["requests_total"] == 0  # a refused request touches nothing
        good = {"authorization": "Bearer k1"}
        summary = stack.http.get("/metrics.json", headers=good).json()
        assert summary["requests"]["by_outcome"]["ok"] == 0
        assert summary["models"] == {}
        assert stack.http.get("/health").status_code == 200
        assert stack.chat(headers=good).status_code == 200
        assert stack.sim_stats()["requests_total"] == 1
        messages = user_body()["messages"]
        with _openai(stack, api_key="k1") as client:
            assert client.chat.completions.create(model="auto", messages=messages).model == FAST
        with _openai(stack, api_key="k2") as client, pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="auto", messages=messages)


# --- 10. the router's own endpoints -----------------------------------------------------------------------


def test_route_explains_its_ranking(shared: Stack) -> None:
    before = shared.sim_stats()["requests_total"]
    response = shared.http.post("/route", json={"prompt": "Write a haiku.", "priority": "quality"})
    assert response.status_code == 200
    decision = response.json()
    assert decision["model"] == FAST
    assert decision["fallbacks"] == [MID, SLOW]
    assert decision["policy"] == "greedy"
    assert decision["propensity"] == 1.0
    assert decision["explored"] is False
    assert decision["mode"] == "quality"
    assert isinstance(decision["reason"], str) and "quality" in decision["reason"]
    candidates = decision["candidates"]
    assert [c["model"] for c in candidates] == [FAST, MID, SLOW]
    scores = [c["score"] for c in candidates]
    assert scores == sorted(scores, reverse=True)
    for c in candidates:
        assert {"latency_term", "cost_term", "quality_term", "exploration"} <= set(c)
        assert c["exploration"] == 0.0
        terms = c["latency_term"] + c["cost_term"] + c["quality_term"] + c["exploration"]
        assert terms == pytest.approx(c["score"], abs=1e-9)
    assert shared.sim_stats()["requests_total"] == before  # a decision calls no model


def test_route_reports_the_propensity_of_an_exploring_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    with service_stack(monkeypatch, exploration={"policy": "softmax", "temperature": 0.05}) as stack:
        decisions = [stack.http.post("/route", json={"prompt": "Hi."}).json() for _ in range(20)]
    for decision in decisions:
        assert decision["policy"] == "softmax"
        assert 0 < decision["propensity"] <= 1
        assert decision["explored"] == (decision["model"] != FAST)
    # The same request, the same scores: each model always gets the same propensity.
    by_model: dict[str, set[float]] = {}
    for decision in decisions:
        by_model.setdefault(decision["model"], set()).add(decision["propensity"])
    assert all(len(p) == 1 for p in by_model.values())
    assert sum(p.pop() for p in by_model.values()) <= 1 + 1e-9


def test_complete_has_the_published_shape(shared: Stack) -> None:
    response = shared.http.post("/complete", json={"prompt": "Say hi.", "max_tokens": 20})
    assert response.status_code == 200, response.text
    data = response.json()
    assert {"id", "model", "choices", "usage", "routing_decision", "latency_ms", "cached"} <= set(data)
    assert data["model"] == FAST
    assert data["choices"][0]["message"]["content"]
    assert data["usage"]["completion_tokens"] <= 20
    assert data["routing_decision"]["selected_model"] == FAST
    assert data["routing_decision"]["reason"]
    assert data["latency_ms"] > 0
    assert data["cached"] is False


def test_openai_models_list(shared: Stack) -> None:
    data = shared.http.get("/v1/models").json()
    assert data["object"] == "list"
    ids = [m["id"] for m in data["data"]]
    assert set(ids) == {"auto", *(f"auto:{m}" for m in MODES), *MODELS}
    assert len(ids) == len(set(ids))
    with _openai(shared) as client:
        assert [m.id for m in client.models.list()] == ids


def test_models_table_has_estimates_and_a_score_per_mode(shared: Stack) -> None:
    data = shared.http.get("/models").json()
    rows = {row["model"]: row for row in data["data"]}
    assert set(rows) == set(MODELS)
    for row in rows.values():
        assert row["est_latency_ms"] > 0 and row["est_cost_usd"] > 0
        assert 0 <= row["quality_est"] <= 1
        assert set(row["scores"]) == {"default", *MODES}
    assert rows[FAST]["scores"]["speed"] > rows[SLOW]["scores"]["speed"]
    speed = shared.http.get("/models", params={"mode": "speed"}).json()
    assert speed["modes"] == ["speed"]


def test_feedback_needs_an_answered_request(shared: Stack) -> None:
    request_id = _routing(shared.chat(user_body("Feedback target.")))["request_id"]
    ok = shared.http.post("/feedback", json={"request_id": request_id, "score": 0.8})
    assert ok.status_code == 200
    assert ok.json() == {"ok": True, "request_id": request_id}
    unknown = shared.http.post("/feedback", json={"request_id": "req-nobody", "score": 0.8})
    assert _assert_error_shape(unknown, 404, "request_id")["code"] == "unknown_request"
    too_high = shared.http.post("/feedback", json={"request_id": request_id, "score": 1.5})
    _assert_error_shape(too_high, 400, "score")


def test_prometheus_metrics(shared: Stack) -> None:
    assert shared.chat().status_code == 200
    response = shared.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()
    assert any(line.startswith("# TYPE adaptive_router_requests_total counter") for line in lines)
    ok = [line for line in lines if line.startswith("adaptive_router_requests_total{")]
    assert any(f'model="{FAST}"' in line and 'outcome="ok"' in line for line in ok), ok


def test_metrics_json_has_percentiles_and_usage(shared: Stack) -> None:
    assert shared.chat().status_code == 200
    summary = shared.http.get("/metrics.json").json()
    assert summary["requests"]["by_outcome"]["ok"] >= 1
    latency = summary["window"]["latency_ms"]
    assert {"p50", "p95", "p99"} <= set(latency)
    assert latency["p50"] <= latency["p95"] <= latency["p99"]
    assert latency["p99"] > 0
    assert summary["window"]["decision_us"]["p50"] > 0
    fast = summary["models"][FAST]
    assert fast["requests"] >= 1 and fast["completion_tokens"] > 0 and fast["spend_usd"] > 0


def test_metrics_json_latency_is_not_dragged_to_zero_by_rejected_bodies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with service_stack(monkeypatch) as stack:
        for _ in range(3):
            assert stack.chat().status_code == 200
        for _ in range(4):
            assert stack.http.post("/v1/chat/completions", content=b"{", headers=JSON_TYPE).status_code == 400
        latency = stack.http.get("/metrics.json").json()["window"]["latency_ms"]
        assert latency["p50"] > 0


def test_ready_names_the_memory_cache_before_anything_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    with service_stack(monkeypatch) as stack:
        ready = stack.ready()
        assert ready["ready"] is True
        assert ready["cache"] == {"backend": "memory", "redis_configured": False, "redis_up": None}


def test_openapi_lists_the_chat_route(shared: Stack) -> None:
    response = shared.http.get("/openapi.json")
    assert response.status_code == 200
    spec = json.loads(response.content)
    assert spec["openapi"].startswith("3.")
    assert "post" in spec["paths"]["/v1/chat/completions"]
    assert {"/route", "/complete", "/feedback", "/v1/models"} <= set(spec["paths"])


def test_docs_use_only_local_assets(shared: Stack) -> None:
    response = shared.http.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert not re.search(r"https?://", html), "the docs page must not load anything from another host"
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets, html
    for asset in assets:
        loaded = shared.http.get(asset)
        assert loaded.status_code == 200, asset
        assert len(loaded.content) > 1000, asset


# --- 11. a client that leaves mid-stream ----------------------------------------------------------------


def _established_to(port: int) -> int:
    """How many TCP connections to 127.0.0.1:``port`` are open from this machine's client side."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            remote, state = fields[2], fields[3]
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def test_client_leaving_mid_stream_closes_the_upstream_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs /proc/net/tcp to see open connections")
    # FAST streams 2,000 tokens at 1 ms each: about two seconds, in 20 ms chunks.
    sim = {"output_tokens_median": 2000, "output_tokens_sigma": 0.0}
    with service_stack(monkeypatch, events=[slow(FAST, 50)], sim=sim) as stack:
        sim_port = int(stack.sim_url.rsplit(":", 1)[1])
        success_before = {r["model"]: r["success"] for r in stack.http.get("/models").json()["data"]}
        body = user_body("Tell me a very long story.", stream=True)
        with (
            httpx.Client(base_url=stack.router_url, timeout=10) as client,  # its own connection
            client.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            assert response.status_code == 200
            received, upstream_open = b"", 0
            for chunk in response.iter_bytes():
                received += chunk
                if b"\n\n" in received:
                    # Counted inside the loop: leaving it closes httpx's iterator and the connection.
                    upstream_open = _established_to(sim_port)
                    break
        assert upstream_open >= 1  # the upstream stream was open while the client read
        assert received.startswith(b"data: ") and b"[DONE]" not in received
        assert _wait_for(lambda: _established_to(sim_port) == 0, limit_s=1.0), "upstream stream leaked"
        summary = stack.http.get("/metrics.json").json()
        assert summary["requests"]["by_outcome"]["cancelled"] == 1
        assert summary["models"][FAST]["errors"] == 0
        assert stack.ready()["breakers"] == {}
        success_after = {r["model"]: r["success"] for r in stack.http.get("/models").json()["data"]}
        assert success_after[FAST] >= success_before[FAST]  # leaving is not the model's failure
        after = stack.chat(user_body("Still there?", max_tokens=5))
        assert after.status_code == 200
        assert after.json()["model"] == FAST


def test_many_concurrent_clients_leaving_leave_no_upstream_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs /proc/net/tcp to see open connections")
    sim = {"output_tokens_median": 2000, "output_tokens_sigma": 0.0}
    with service_stack(monkeypatch, events=[slow(FAST, 50)], sim=sim) as stack:
        sim_port = int(stack.sim_url.rsplit(":", 1)[1])

        async def leave_early(client: httpx.AsyncClient) -> bytes:
            async with client.stream("POST", "/v1/chat/completions", json=user_body(stream=True)) as r:
                async for chunk in r.aiter_bytes():
                    return chunk
            return b""

        async def run() -> list[bytes]:
            async with httpx.AsyncClient(base_url=stack.router_url, timeout=10) as client:
                return await asyncio.gather(*(leave_early(client) for _ in range(5)))

        firsts = asyncio.run(run())
        assert all(f.startswith(b"data: ") for f in firsts)
        assert _wait_for(lambda: _established_to(sim_port) == 0, limit_s=1.0), "upstream streams leaked"
        summary = stack.http.get("/metrics.json").json()
        assert summary["requests"]["by_outcome"]["cancelled"] == 5
        assert stack.ready()["breakers"] == {}


def test_traffic_log_records_each_routed_request_and_its_feedback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from adaptive_router.offline import read_log

    log_path = tmp_path / "traffic.jsonl"
    with service_stack(monkeypatch, events=[fail(FAST, 500)], server={"traffic_log": str(log_path)}) as stack:
        answered = stack.chat()
        assert answered.status_code == 200
        request_id = answered.json()["routing"]["request_id"]
        assert stack.http.post("/feedback", json={"request_id": request_id, "score": 0.75}).status_code == 200
        streamed = stack.chat(user_body(stream=True))
        assert streamed.status_code == 200
    # The app has shut down: the writer flushed and closed.
    log = read_log(log_path)
    assert len(log.decisions) == 2
    first = next(r for r in log.decisions if r["request_id"] == request_id)
    assert first["model"] == FAST and first["answered_by"] != FAST
    assert [a["outcome"] for a in first["attempts"]] == ["status_error", "ok"]
    assert "Tell" not in log_path.read_text()  # prompts are hashed unless server.log_prompts
    assert log.feedback[request_id] == 0.75


def test_budget_refusal_says_when_to_come_back_and_not_to_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    with service_stack(monkeypatch, budget={"global_daily_usd": 1e-12, "mode": "reject"}) as stack:
        responses = [stack.chat() for _ in range(3)]  # the first answer's spend reaches the cap
        refused = [r for r in responses if r.status_code == 429]
        assert refused, [r.status_code for r in responses]
        error = _assert_error_shape(refused[-1], 429, None)
        assert error["code"] == "budget_exceeded"
        assert 0 < int(refused[-1].headers["retry-after"]) <= 86_400  # daily caps reset at 00:00 UTC
        assert refused[-1].headers["x-should-retry"] == "false"


def test_start_up_objects_stay_out_of_full_collections_while_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    # Full collections would walk the catalogue, settings and modules every thousand or so
    # requests (pauses of tens of ms under load): frozen while serving, given back at shutdown.
    with service_stack(monkeypatch) as stack:
        assert stack.http.get("/health").status_code == 200
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0

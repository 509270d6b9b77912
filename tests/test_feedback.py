"""``/feedback`` as clients use it, tenants kept apart, and the edges a client meets first
(unknown models, error messages, ``/complete``'s cache, ``/ready``), through a real router in
front of the real simulated upstream (both uvicorn on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import httpx
import pytest

from adaptive_router import ConfigError, load_settings
from tests.service_fixtures import FAST, Stack, service_stack, user_body

KEY_A, KEY_B, ADMIN = "key-tenant-a", "key-tenant-b", "key-admin"
TENANTS = {"server": {"api_keys": [KEY_A, KEY_B], "admin_keys": [ADMIN]}}
TYPICAL = "Hello, how are you?"  # the prompt /models rates models for: its cell is the one scored


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def feedback(stack: Stack, request_id: str, score: float, key: str | None = None) -> httpx.Response:
    headers = auth(key) if key else None
    return stack.http.post("/feedback", json={"request_id": request_id, "score": score}, headers=headers)


def quality(stack: Stack, model: str) -> float:
    rows = stack.http.get("/models").json()["data"]
    return float(next(row["quality_est"] for row in rows if row["model"] == model))


@pytest.fixture(scope="module")
def open_stack() -> Any:
    with pytest.MonkeyPatch.context() as monkeypatch, service_stack(monkeypatch) as stack:
        yield stack


@pytest.fixture(scope="module")
def tenants() -> Any:
    with pytest.MonkeyPatch.context() as monkeypatch, service_stack(monkeypatch, **TENANTS) as stack:
        yield stack


# --- ids and scoring ---------------------------------------------------------------------------


def test_feedback_takes_the_answers_chatcmpl_id_and_reaches_the_learner(open_stack: Stack) -> None:
    answer = open_stack.chat(user_body(TYPICAL)).json()
    assert answer["id"].startswith("chatcmpl-")
    before = quality(open_stack, answer["model"])
    scored = feedback(open_stack, answer["id"], 0.0)
    assert scored.status_code == 200, scored.text
    assert scored.json() == {"ok": True, "request_id": answer["routing"]["request_id"]}
    assert quality(open_stack, answer["model"]) < before


def test_a_request_is_scored_once_by_either_id(open_stack: Stack) -> None:
    answer = open_stack.chat().json()
    assert feedback(open_stack, answer["routing"]["request_id"], 1.0).status_code == 200
    for again in (answer["routing"]["request_id"], answer["id"]):
        refused = feedback(open_stack, again, 0.2)
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "already_scored"
        assert refused.json()["error"]["param"] == "request_id"


def test_request_ids_are_unguessable(open_stack: Stack) -> None:
    ids = [open_stack.chat().json()["routing"]["request_id"] for _ in range(2)]
    assert all(re.fullmatch(r"req-[0-9a-f]{24}", i) for i in ids), ids
    differing = sum(x != y for x, y in zip(ids[0], ids[1], strict=True))
    assert differing >= 12, ids  # a counter changes one or two characters; 96 random bits change ~22


def stream_chunks(stack: Stack, **extra: Any) -> tuple[httpx.Response, list[dict[str, Any]]]:
    body = user_body(stream=True, **extra)
    with stack.http.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return response, [json.loads(line[6:]) for line in lines[:-1]]


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_streams_final_chunk_names_the_request_for_feedback(open_stack: Stack, include_usage: bool) -> None:
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    response, chunks = stream_chunks(open_stack, **extra)
    request_id = response.headers["x-router-request-id"]
    last = chunks[-1]
    assert last["routing"]["request_id"] == request_id
    assert last["routing"]["model"] == response.headers["x-router-model"]
    assert isinstance(last.get("usage"), dict) is include_usage
    assert all("routing" not in chunk for chunk in chunks if chunk["choices"] and not _finishes(chunk))
    assert feedback(open_stack, request_id, 1.0).status_code == 200
    assert feedback(open_stack, chunks[0]["id"], 1.0).status_code == 409  # the answer's id names it too


def test_a_cache_hit_has_its_own_request_id_and_scores_the_model_that_answered(open_stack: Stack) -> None:
    body = user_body(TYPICAL, temperature=0, max_tokens=23)  # cacheable; its cell is the one /models rates
    first, hit = open_stack.chat(body), open_stack.chat(body)
    assert hit.headers["x-router-cache"] == "hit"
    hit_id = hit.headers["x-router-request-id"]
    assert re.fullmatch(r"req-[0-9a-f]{24}", hit_id), hit_id
    assert hit.json()["routing"]["request_id"] == hit_id != first.json()["routing"]["request_id"]
    model = hit.json()["model"]
    before = quality(open_stack, model)
    scored = feedback(open_stack, hit_id, 0.0)
    assert scored.status_code == 200, scored.text
    assert scored.json() == {"ok": True, "request_id": hit_id}
    assert quality(open_stack, model) < before  # the model that produced the cached answer
    assert feedback(open_stack, hit_id, 0.0).status_code == 409  # once, like any request
    assert feedback(open_stack, first.json()["routing"]["request_id"], 1.0).status_code == 200  # its own


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_streamed_cache_hit_names_its_request_in_the_header_and_final_chunk(
    open_stack: Stack, include_usage: bool
) -> None:
    extra: dict[str, Any] = {"temperature": 0, "max_tokens": 29 + include_usage}
    assert open_stack.chat(user_body(**extra)).headers["x-router-cache"] == "miss"  # stored
    usage = {"stream_options": {"include_usage": True}} if include_usage else {}
    response, chunks = stream_chunks(open_stack, **extra, **usage)
    assert response.headers["x-router-cache"] == "hit"
    request_id = response.headers["x-router-request-id"]
    assert chunks[-1]["routing"]["request_id"] == request_id and chunks[-1]["routing"]["cached"] is True
    assert feedback(open_stack, request_id, 1.0).status_code == 200


def _finishes(chunk: dict[str, Any]) -> bool:
    return any(choice.get("finish_reason") for choice in chunk["choices"])


# --- tenants -----------------------------------------------------------------------------------


def test_only_the_requesting_key_or_an_admin_scores_a_request(tenants: Stack) -> None:
    first = tenants.chat(headers=auth(KEY_A)).json()
    for some_id in (first["routing"]["request_id"], first["id"]):
        refused = feedback(tenants, some_id, 0.0, KEY_B)
        assert refused.status_code == 404, refused.text  # as if unknown: nothing confirms it exists
        assert refused.json()["error"]["code"] == "unknown_request"
    assert feedback(tenants, first["id"], 0.0).status_code == 401
    assert feedback(tenants, first["id"], 1.0, KEY_A).status_code == 200
    second = tenants.chat(headers=auth(KEY_B)).json()
    assert feedback(tenants, second["routing"]["request_id"], 1.0, ADMIN).status_code == 200


def test_two_keys_sending_the_same_x_request_id_each_score_their_own_request(tenants: Stack) -> None:
    chosen = "client-chosen-" + os.urandom(4).hex()
    for key in (KEY_A, KEY_B):
        answer = tenants.chat(headers={**auth(key), "x-request-id": chosen}).json()
        assert answer["routing"]["request_id"] == chosen
    for key in (KEY_A, KEY_B):  # B's request neither replaced A's record nor took its one score
        scored = feedback(tenants, chosen, 1.0, key)
        assert scored.status_code == 200, scored.text
        assert feedback(tenants, chosen, 0.0, key).json()["error"]["code"] == "already_scored"
    other = "client-chosen-" + os.urandom(4).hex()
    tenants.chat(headers={**auth(KEY_A), "x-request-id": other})
    assert feedback(tenants, other, 1.0, KEY_B).status_code == 404
    assert feedback(tenants, other, 1.0, ADMIN).status_code == 200  # an admin scores any key's request
    assert feedback(tenants, other, 1.0, KEY_A).status_code == 409


def test_the_response_cache_is_per_key_unless_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    body = user_body("What is the capital of France?", temperature=0)
    with service_stack(monkeypatch, **TENANTS) as stack:
        states = [stack.chat(body, auth(key)).headers["x-router-cache"] for key in (KEY_A, KEY_A, KEY_B)]
        assert states == ["miss", "hit", "miss"]
    shared = {**TENANTS, "cache": {"shared_across_keys": True}}
    with service_stack(monkeypatch, **shared) as stack:
        states = [stack.chat(body, auth(key)).headers["x-router-cache"] for key in (KEY_A, KEY_B)]
        assert states == ["miss", "hit"]


def test_ready_shows_its_detail_only_with_a_key(tenants: Stack) -> None:
    assert tenants.http.get("/health").json() == {"status": "ok"}
    for headers in (None, auth("not-a-key")):
        bare = tenants.http.get("/ready", headers=headers)
        assert bare.status_code == 200 and bare.json() == {"ready": True}
    full = tenants.http.get("/ready", headers=auth(KEY_B)).json()
    assert full["ready"] is True and full["upstream"]["providers"]


# --- the first ten minutes ---------------------------------------------------------------------


def test_complete_answers_identical_requests_from_the_cache(open_stack: Stack) -> None:
    body = {"prompt": "Name a prime number.", "temperature": 0, "max_tokens": 8}
    first = open_stack.http.post("/complete", json=body).json()
    second = open_stack.http.post("/complete", json=body)
    assert first["cached"] is False and first["routing_decision"]["request_id"]
    assert second.json()["cached"] is True and second.json()["id"] == first["id"]
    assert second.headers["x-router-cache"] == "hit"
    assert second.json()["choices"] == first["choices"]
    hit_id = second.json()["routing_decision"]["request_id"]  # a hit is scored by its own id
    assert hit_id == second.headers["x-router-request-id"] != first["routing_decision"]["request_id"]
    assert feedback(open_stack, hit_id, 1.0).status_code == 200
    warm = open_stack.http.post("/complete", json={**body, "temperature": 0.7}).json()
    assert warm["cached"] is False and warm["id"] != first["id"]


@pytest.mark.parametrize("model", ["nobody/nothing", "auto:nope"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/complete", "/route"])
def test_an_unknown_model_is_404_model_not_found(open_stack: Stack, path: str, model: str) -> None:
    # as GET /v1/models/{id} answers: a mode nobody configured is a model that does not exist
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    response = open_stack.http.post(path, json=body)
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "model_not_found",
        "model",
        "invalid_request_error",
    )


def test_a_model_can_be_retrieved_by_id(open_stack: Stack) -> None:
    routed = [(m, "adaptive-router") for m in ("auto", "auto:speed", "auto:default")]
    for model, owner in ((FAST, "lab"), *routed):
        found = open_stack.http.get(f"/v1/models/{model}")
        assert found.status_code == 200, found.text
        assert found.json() == {"id": model, "object": "model", "created": 0, "owned_by": owner}
    for missing in ("nobody/nothing", "auto:nope"):
        response = open_stack.http.get(f"/v1/models/{missing}")
        assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


def test_messages_carry_no_pydantic_prefix(open_stack: Stack) -> None:
    zero = user_body(route={"weights": {"latency": 0, "cost": 0, "quality": 0}})
    message = open_stack.chat(zero).json()["error"]["message"]
    assert message == "route.weights: weights must not all be zero"


def test_a_missing_favicon_is_not_counted_as_a_routed_request(open_stack: Stack) -> None:
    before = open_stack.http.get("/metrics.json").json()["requests"]
    assert open_stack.http.get("/favicon.ico").status_code == 404
    after = open_stack.http.get("/metrics.json").json()["requests"]
    assert after["total"] == before["total"]
    assert after["by_outcome"]["rejected"] == before["by_outcome"]["rejected"]


def test_setting_errors_carry_no_pydantic_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("ROUTER_")]:
        monkeypatch.delenv(name)
    with pytest.raises(ConfigError) as raised:
        load_settings(routing={"default_weights": {"latency": 0, "cost": 0, "quality": 0}})
    assert str(raised.value) == "setting 'routing.default_weights': weights must not all be zero"

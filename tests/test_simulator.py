from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive_router import ConfigError, simulator
from adaptive_router.simulator import (
    CHARS_PER_TOKEN,
    Scenario,
    SimEvent,
    SimModel,
    create_simulator_app,
    fit_llmperf,
    load_scenario,
    parse_scenario,
    sim_models_from_catalogue,
)
from tests.servers import running_server

CHAT = "/v1/chat/completions"
# ../shared/data beside the repository, or wherever $ADAPTIVE_ROUTER_DATA says (README, "Data")
DATA_DIR = Path(os.environ.get("ADAPTIVE_ROUTER_DATA", Path(__file__).resolve().parents[2] / "shared/data"))


def _exact(model_id: str, ttft_s: float = 0.2, tpot_s: float = 0.01) -> SimModel:
    """A model without randomness in latency or faults, so ratios can be checked exactly."""
    return SimModel(
        model_id, ttft_s=ttft_s, tpot_s=tpot_s, error_rate=0.0, rate_limit_rate=0.0,
        ttft_sigma=0.0, tpot_sigma=0.0, tail_prob=0.0,
    )  # fmt: skip


def _body(model: str = "fast", content: str = "Say something.", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def _latency(response: httpx.Response) -> float:
    return float(response.headers["x-sim-latency-ms"])


def _sse_events(text: str) -> list[str]:
    """The data payloads of an SSE body, checking that every event is a single ``data:`` line."""
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    return [e.removeprefix("data: ") for e in events]


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    """One server for the wire-format tests: no sleeping, no random faults."""
    models = [SimModel("fast", error_rate=0.0), SimModel("slow", ttft_s=2.0, error_rate=0.0)]
    app = create_simulator_app(models, Scenario(seed=3, time_scale=0.0))
    with running_server(app) as url, httpx.Client(base_url=url, timeout=10) as http:
        yield http


def _serve(models: list[SimModel], scenario: Scenario) -> Any:
    return running_server(create_simulator_app(models, scenario))


# --- wire format -----------------------------------------------------------------------------


def test_chat_non_stream_has_openai_shape(client: httpx.Client) -> None:
    body = _body(messages=[{"role": "system", "content": "x" * 10}, {"role": "user", "content": "y" * 7}])
    r = client.post(CHAT, json=body)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    data = r.json()
    assert set(data) >= {"id", "object", "created", "model", "choices", "usage"}
    assert data["id"].startswith("chatcmpl-")
    assert data["object"] == "chat.completion"
    assert isinstance(data["created"], int) and data["model"] == "fast"
    [choice] = data["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    usage = data["usage"]
    assert usage["prompt_tokens"] == math.ceil(17 / CHARS_PER_TOKEN)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert len(choice["message"]["content"]) == CHARS_PER_TOKEN * usage["completion_tokens"]
    assert _latency(r) > 0


def test_chat_stream_has_openai_chunks_and_done(client: httpx.Client) -> None:
    body = _body(content="stream me", stream=True, stream_options={"include_usage": True})
    r = client.post(CHAT, json=body)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = _sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    *choice_chunks, usage_chunk = chunks
    assert choice_chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in choice_chunks[:-1]] == [None] * (len(choice_chunks) - 1)
    assert choice_chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["usage"] is None for c in choice_chunks)
    assert usage_chunk["choices"] == []
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in choice_chunks)
    assert len(content) == CHARS_PER_TOKEN * usage_chunk["usage"]["completion_tokens"]
    # The same request without streaming yields the same text.
    plain = client.post(CHAT, json=_body(content="stream me")).json()
    assert plain["choices"][0]["message"]["content"] == content


def test_chat_stream_without_include_usage_has_no_usage(client: httpx.Client) -> None:
    events = _sse_events(client.post(CHAT, json=_body(stream=True)).text)
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in c and len(c["choices"]) == 1 for c in chunks)


@pytest.mark.parametrize("cap_field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("stream", [False, True])
def test_chat_max_tokens_caps_with_finish_reason_length(
    client: httpx.Client, cap_field: str, stream: bool
) -> None:
    body = _body(content="a long answer please", stream=stream)
    body[cap_field] = 3
    r = client.post(CHAT, json=body)
    assert r.status_code == 200
    if stream:
        chunks = [json.loads(e) for e in _sse_events(r.text)[:-1]]
        content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        finish = chunks[-1]["choices"][0]["finish_reason"]
    else:
        choice = r.json()["choices"][0]
        content, finish = choice["message"]["content"], choice["finish_reason"]
        assert r.json()["usage"]["completion_tokens"] == 3
    assert finish == "length"
    assert len(content) == 3 * CHARS_PER_TOKEN


def test_chat_unknown_model_is_404_in_openai_shape(client: httpx.Client) -> None:
    r = client.post(CHAT, json=_body(model="no-such-model"))
    assert r.status_code == 404
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == "model" and error["code"] == "model_not_found"
    assert "no-such-model" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "fast", "messages": [', None),
        (b"[]", None),
        (b'{"model": "fast"}', "messages"),
        (b'{"model": "fast", "messages": []}', "messages"),
        (b'{"model": "fast", "messages": "hi"}', "messages"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": 7, "messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "fast", "messages": [{"role": 1, "content": "hi"}]}', "messages[0].role"),
        (b'{"model": "fast", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        (b'{"model": "fast", "messages": [{"role": "user"}], "max_tokens": "9"}', "max_tokens"),
        (b'{"model": "fast", "messages": [{"role": "user"}], "max_tokens": 0}', "max_tokens"),
        (b'{"model": "fast", "messages": [{"role": "user"}], "temperature": 3}', "temperature"),
        (b'{"model": "fast", "messages": [{"role": "user"}], "stream": "yes"}', "stream"),
        (b'{"model": "fast", "messages": [{"role": "user"}], "stream_options": {}}', "stream_options"),
    ],
)
def test_chat_bad_body_is_400_naming_the_field(client: httpx.Client, body: bytes, param: str | None) -> None:
    r = client.post(CHAT, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    if param is not None:
        assert param in error["message"]


def test_models_health_and_stats_endpoints(client: httpx.Client) -> None:
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["fast", "slow"]
    assert {m["object"] for m in models["data"]} == {"model"}
    assert client.get("/health").json() == {"status": "ok"}
    before = client.get("/sim/stats").json()
    client.post(CHAT, json=_body(model="slow"))
    after = client.get("/sim/stats").json()
    assert after["requests"]["slow"] == before["requests"]["slow"] + 1
    assert after["requests_total"] == before["requests_total"] + 1


@settings(max_examples=25, deadline=None)
@given(
    content=st.text(min_size=0, max_size=200),
    cap=st.none() | st.integers(min_value=1, max_value=400),
)
def test_chat_completion_is_deterministic_and_capped(
    client: httpx.Client, content: str, cap: int | None
) -> None:
    natural = client.post(CHAT, json=_body(content=content)).json()
    first, second = (client.post(CHAT, json=_body(content=content, max_tokens=cap)).json() for _ in range(2))
    assert first["choices"][0]["message"] == second["choices"][0]["message"]
    assert first["usage"]["prompt_tokens"] == math.ceil(len(content) / CHARS_PER_TOKEN)
    uncapped = natural["usage"]["completion_tokens"]
    assert uncapped >= 1 and natural["choices"][0]["finish_reason"] == "stop"
    capped = cap is not None and uncapped > cap
    assert first["usage"]["completion_tokens"] == (cap if capped else uncapped)
    assert first["choices"][0]["finish_reason"] == ("length" if capped else "stop")
    # A cap cuts the same text short; it never changes the text before the cut.
    assert natural["choices"][0]["message"]["content"].startswith(first["choices"][0]["message"]["content"])


def test_openai_client_plain_and_streaming_calls(client: httpx.Client) -> None:
    messages: list[Any] = [{"role": "user", "content": "hello from the official client"}]
    with openai.OpenAI(base_url=str(client.base_url) + "/v1", api_key="sk-dummy", max_retries=0) as oai:
        plain = oai.chat.completions.create(model="fast", messages=messages)
        stream = oai.chat.completions.create(
            model="fast", messages=messages, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
    assert plain.object == "chat.completion" and plain.usage is not None
    text = plain.choices[0].message.content or ""
    assert len(text) == CHARS_PER_TOKEN * plain.usage.completion_tokens
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    )


def test_chat_stream_batches_tokens_by_min_chunk_interval() -> None:
    body = _body(model="m", stream=True)
    counts = []
    for interval in (0.0, 10.0):
        scenario = Scenario(seed=1, time_scale=0.0001, min_chunk_interval_s=interval)
        with _serve([_exact("m")], scenario) as url:
            chunks = [json.loads(e) for e in _sse_events(httpx.post(url + CHAT, json=body).text)[:-1]]
        content = [c for c in chunks if c["choices"][0]["delta"].get("content")]
        counts.append((len(content), sum(len(c["choices"][0]["delta"]["content"]) for c in content)))
    (fine_chunks, fine_chars), (coarse_chunks, coarse_chars) = counts
    assert fine_chars == coarse_chars
    assert fine_chunks == fine_chars // CHARS_PER_TOKEN  # one token per chunk
    assert coarse_chunks == 2  # the first token alone (for an honest ttft), then the rest at once


# --- scripted events and injected faults -----------------------------------------------------


def test_slow_event_multiplies_latency_after_n_requests() -> None:
    events = [SimEvent(at_request=3, model="a*", action="slow", factor=5.0)]
    with (
        _serve([_exact("a1"), _exact("b1")], Scenario(seed=1, time_scale=0.001, events=events)) as url,
        httpx.Client(base_url=url) as http,
    ):
        # Requests 1-3 run before the event; it fires on the 4th.
        b = [_latency(http.post(CHAT, json=_body(model="b1")))]
        a = [_latency(http.post(CHAT, json=_body(model="a1"))) for _ in range(2)]
        b += [_latency(http.post(CHAT, json=_body(model="b1")))]
        a += [_latency(http.post(CHAT, json=_body(model="a1"))) for _ in range(2)]
    assert a[0] == a[1] and a[2] == a[3]
    assert a[2] / a[0] == pytest.approx(5.0, rel=1e-3)
    assert b[0] == b[1]  # "a*" did not touch b1


def test_slow_event_at_seconds_uses_simulated_time() -> None:
    # 2,000 simulated seconds at time_scale 0.001 are 2 s of real time: room for a busy machine
    # to send the first request before the event (at 0.5 s, a load of 6 once sent it after).
    events = [SimEvent(at_seconds=2_000, action="slow", factor=3.0)]
    with (
        _serve([_exact("m")], Scenario(seed=1, time_scale=0.001, events=events)) as url,
        httpx.Client(base_url=url) as http,
    ):
        before = _latency(http.post(CHAT, json=_body(model="m")))
        deadline = time.monotonic() + 10
        while http.get("/sim/stats").json()["elapsed_s"] < 2.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        after = _latency(http.post(CHAT, json=_body(model="m")))
    assert after / before == pytest.approx(3.0, rel=1e-3)


def test_fail_event_answers_status_until_recover() -> None:
    events = [
        SimEvent(at_request=2, model="a*", action="fail", status=503),
        SimEvent(at_request=4, model="*", action="recover"),
    ]
    with (
        _serve([_exact("a1"), _exact("b1")], Scenario(time_scale=0.001, events=events)) as url,
        httpx.Client(base_url=url) as http,
    ):
        statuses = [http.post(CHAT, json=_body(model="a1")).status_code for _ in range(2)]
        failed = http.post(CHAT, json=_body(model="a1"))
        statuses += [failed.status_code, http.post(CHAT, json=_body(model="b1")).status_code]
        statuses += [http.post(CHAT, json=_body(model="a1")).status_code for _ in range(2)]
        stats = http.get("/sim/stats").json()
    assert statuses == [200, 200, 503, 200, 200, 200]
    assert set(failed.json()["error"]) == {"message", "type", "param", "code"}
    assert stats["errors"] == {"a1": {"503": 1}}
    assert stats["events_applied"] == 2


def test_fail_event_default_status_is_500_with_probability() -> None:
    events = [SimEvent(at_request=0, action="fail", probability=0.5)]
    with (
        _serve([_exact("m")], Scenario(seed=5, time_scale=0.0, events=events)) as url,
        httpx.Client(base_url=url) as http,
    ):
        statuses = [http.post(CHAT, json=_body(model="m")).status_code for _ in range(40)]
    assert set(statuses) == {200, 500}
    assert 8 <= statuses.count(500) <= 32


def test_fail_status_zero_drops_the_connection() -> None:
    events = [SimEvent(at_request=1, action="fail", status=0), SimEvent(at_request=3, action="recover")]
    with (
        _serve([_exact("m")], Scenario(time_scale=0.001, events=events)) as url,
        httpx.Client(base_url=url) as http,
    ):
        assert http.post(CHAT, json=_body(model="m")).status_code == 200
        for stream in (False, True):
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                http.post(CHAT, json=_body(model="m", stream=stream))
        assert http.post(CHAT, json=_body(model="m")).status_code == 200
        assert http.get("/sim/stats").json()["errors"] == {"m": {"0": 2}}


def test_rate_limit_event_answers_429_with_retry_after() -> None:
    events = [SimEvent(at_request=1, action="rate_limit", retry_after_s=30)]
    with (
        _serve([_exact("m")], Scenario(time_scale=0.1, events=events)) as url,
        httpx.Client(base_url=url) as http,
    ):
        ok = http.post(CHAT, json=_body(model="m"))
        limited = http.post(CHAT, json=_body(model="m"))
    assert ok.status_code == 200
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "3"  # 30 s scaled by 0.1
    assert limited.headers["retry-after-ms"] == "3000"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize(("field", "status"), [("error_rate", 500), ("rate_limit_rate", 429)])
def test_scenario_default_rates_inject_random_errors(field: str, status: int) -> None:
    scenario = parse_scenario({"time_scale": 0, field: 1.0, "retry_after_s": 2})
    with _serve([SimModel("m")], scenario) as url, httpx.Client(base_url=url) as http:
        responses = [http.post(CHAT, json=_body(model="m")) for _ in range(3)]
        stats = http.get("/sim/stats").json()
    assert [r.status_code for r in responses] == [status] * 3
    assert stats["errors_total"] == 3
    if status == 429:
        assert responses[0].headers["retry-after"] == "0"  # time_scale 0 scales every wait away


def test_same_seed_gives_same_latencies_and_content() -> None:
    def run(seed: int) -> list[tuple[float, str]]:
        with (
            _serve([SimModel("m", error_rate=0.0)], Scenario(seed=seed, time_scale=0.0)) as url,
            httpx.Client(base_url=url) as http,
        ):
            responses = [http.post(CHAT, json=_body(model="m", content=f"q{i}")) for i in range(5)]
        return [(_latency(r), r.json()["choices"][0]["message"]["content"]) for r in responses]

    first, again, other = run(11), run(11), run(12)
    assert first == again
    assert [lat for lat, _ in first] != [lat for lat, _ in other]
    assert len({text for _, text in first}) > 1  # different messages, different answers


# --- scenario files --------------------------------------------------------------------------


def test_load_scenario_reads_yaml_and_json(tmp_path: Path) -> None:
    text = """
seed: 7
time_scale: 0.01
models: {"gpt-*": {ttft_s: 0.3}}
events:
  - {at_request: 10, model: "gpt-4*", action: slow, factor: 5}
  - {at_seconds: 60, action: fail, status: 0}
  - {at_request: 20, action: recover}
"""
    (tmp_path / "s.yaml").write_text(text)
    scenario = load_scenario(tmp_path / "s.yaml")
    assert scenario.seed == 7 and scenario.models["gpt-*"].ttft_s == 0.3
    assert [e.action for e in scenario.events] == ["slow", "fail", "recover"]
    assert scenario.events[1].status == 0
    (tmp_path / "s.json").write_text(scenario.model_dump_json())
    assert load_scenario(tmp_path / "s.json") == scenario


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("time_scale: -1", "time_scale"),
        ("seed: [1]", "seed"),
        ("bogus: 1", "bogus"),
        ("events: [{at_request: 1, action: explode}]", "events[0].action"),
        ("events: [{at_request: 1, action: recover}, {at_request: 2, action: slow}]", "events[1].factor"),
        ("events: [{at_request: 1, at_seconds: 2, action: recover}]", "events[0].at_seconds"),
        ("events: [{action: recover}]", "events[0].at_seconds"),
        ("events: [{at_request: 1, action: fail, status: 200}]", "events[0].status"),
        ("events: [{at_request: -1, action: recover}]", "events[0].at_request"),
        ("models: {'m*': {error_rate: 2}}", "models.m*.error_rate"),
        ("[1, 2]", "scenario"),
        ("events: [unclosed", "scenario"),
    ],
)
def test_load_scenario_error_names_the_field(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert info.value.key == key
    assert key in str(info.value)


def test_load_scenario_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="scenario"):
        load_scenario(tmp_path / "absent.yaml")


def test_scenario_glob_matching_no_model_is_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        create_simulator_app(
            [SimModel("m")],
            parse_scenario({"events": [{"at_request": 1, "model": "x*", "action": "recover"}]}),
        )
    assert info.value.key == "events[0].model"
    with pytest.raises(ConfigError) as info:
        create_simulator_app([SimModel("m")], parse_scenario({"models": {"typo": {"ttft_s": 1}}}))
    assert info.value.key == "models.typo"


def test_scenario_overrides_apply_by_glob_in_order() -> None:
    scenario = parse_scenario(
        {"error_rate": 0.5, "models": {"a*": {"ttft_s": 2.0}, "a2": {"ttft_s": 3.0, "error_rate": 0.0}}}
    )
    app = create_simulator_app([SimModel("a1"), SimModel("a2"), SimModel("b")], scenario)
    models = app.state.simulator.models
    assert (models["a1"].ttft_s, models["a2"].ttft_s, models["b"].ttft_s) == (
        2.0,
        3.0,
        simulator.DEFAULT_TTFT_S,
    )
    assert (models["a1"].error_rate, models["a2"].error_rate) == (0.5, 0.0)


def test_sim_model_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="error_rate"):
        SimModel("m", error_rate=1.5)
    with pytest.raises(ConfigError, match="ttft_s"):
        SimModel("m", ttft_s=float("nan"))


# --- catalogue and fitted constants ----------------------------------------------------------


@dataclass
class _FakeCatalogue:
    ids: tuple[str, ...]
    ttft_prior: npt.NDArray[np.float64]
    tpot_prior: npt.NDArray[np.float64]


def test_sim_models_from_catalogue_uses_priors() -> None:
    catalogue = _FakeCatalogue(("a", "b"), np.array([0.3, np.nan]), np.array([0.02, 0.05]))
    a, b = sim_models_from_catalogue(catalogue)
    assert (a.id, a.ttft_s, a.tpot_s) == ("a", 0.3, 0.02)
    assert (b.id, b.ttft_s, b.tpot_s) == ("b", simulator.DEFAULT_TTFT_S, 0.05)
    assert a.ttft_sigma == simulator.DEFAULT_TTFT_SIGMA


def test_sim_models_from_catalogue_rejects_misaligned_arrays() -> None:
    with pytest.raises(ConfigError, match="catalogue"):
        sim_models_from_catalogue(_FakeCatalogue(("a",), np.array([0.3, 0.4]), np.array([0.02])))


@pytest.mark.skipif(not (DATA_DIR / "latency/llmperf_requests.csv").exists(), reason="llmperf data absent")
def test_fit_llmperf_reproduces_embedded_constants() -> None:
    fit = fit_llmperf(DATA_DIR / "latency/llmperf_requests.csv")
    embedded = {
        "ttft_s": simulator.DEFAULT_TTFT_S,
        "tpot_s": simulator.DEFAULT_TPOT_S,
        "ttft_sigma": simulator.DEFAULT_TTFT_SIGMA,
        "tpot_sigma": simulator.DEFAULT_TPOT_SIGMA,
        "tail_prob": simulator.DEFAULT_TAIL_PROB,
        "tail_factor": simulator.DEFAULT_TAIL_FACTOR,
        "error_rate": simulator.DEFAULT_ERROR_RATE,
        "rate_limit_rate": simulator.DEFAULT_RATE_LIMIT_RATE,
    }
    assert {k: fit[k] for k in embedded} == pytest.approx(embedded, rel=1e-3)
    assert fit["requests"] == 2845

"""What an operator sees: per-request cost on answers, and the process log (access lines, JSON
mode, upstream failures, the start-up summary) of a real ``adaptive-router serve``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from adaptive_router import load_settings
from adaptive_router._logs import JsonFormatter, TextFormatter, Throttle, configure_logging
from adaptive_router.pipeline._observe import BreakerLog
from tests.process_fixtures import CHAT_BODY, Catalogue, ProcessGroup, router_env, scenario, wait_for
from tests.service_fixtures import FAST, MID, fail, service_stack, small_catalogue, user_body

PRICES = {m.id: (m.price_prompt, m.price_completion) for m in small_catalogue().models}


def priced(usage: dict[str, Any], model: str) -> float:
    prompt, completion = PRICES[model]
    return float(usage["prompt_tokens"] * prompt + usage["completion_tokens"] * completion)


# --- cost -------------------------------------------------------------------------------------


def test_answer_carries_usage_cost_and_header_equal_to_tokens_times_catalogue_prices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with service_stack(monkeypatch, events=[fail(FAST)]) as stack:
        response = stack.chat()
        assert response.status_code == 200
        body = response.json()
        assert body["model"] == MID  # fell back once: the model that answered is the one priced
        usage = body["usage"]
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
        assert usage["cost"] == pytest.approx(priced(usage, MID), rel=1e-12)
        assert float(response.headers["x-router-cost-usd"]) == usage["cost"]
        spend = stack.http.get("/metrics.json").json()["spend_usd"]
        assert spend == pytest.approx(usage["cost"], rel=1e-9)  # what was billed is what was said


def test_streamed_answer_carries_cost_in_its_usage_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    body = user_body(stream=True, stream_options={"include_usage": True})
    with (
        service_stack(monkeypatch) as stack,
        stack.http.stream("POST", "/v1/chat/completions", json=body) as r,
    ):
        assert r.status_code == 200
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert len(usage) == 1
    assert usage[0]["cost"] == pytest.approx(priced(usage[0], FAST), rel=1e-12)


def test_cache_hit_costs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    body = user_body(temperature=0)
    with service_stack(monkeypatch) as stack:
        first, second = stack.chat(body), stack.chat(body)
    assert first.json()["usage"]["cost"] > 0
    assert second.headers["x-router-cache"] == "hit"
    assert second.json()["usage"]["cost"] == 0.0
    assert float(second.headers["x-router-cost-usd"]) == 0.0


# --- formatting -------------------------------------------------------------------------------


def _record(message: str, **fields: Any) -> logging.LogRecord:
    record = logging.LogRecord("adaptive_router.access", logging.INFO, __file__, 1, message, (), None)
    record.fields = fields
    return record


def test_json_formatter_writes_one_object_with_timestamp_level_and_fields() -> None:
    line = JsonFormatter().format(_record("access", request_id="r1", status=200))
    data = json.loads(line)
    assert data["level"] == "info" and data["message"] == "access"
    assert data["request_id"] == "r1" and data["status"] == 200
    assert data["ts"].endswith("Z") and "T" in data["ts"]


def test_text_formatter_appends_fields_and_starts_with_a_timestamp() -> None:
    line = TextFormatter().format(_record("access", request_id="r1", model=None, error="upstream said no"))
    assert line[:4].isdigit() and "INFO adaptive_router.access: access request_id=r1" in line
    assert 'error="upstream said no"' in line and "model=" not in line


def test_throttle_allows_one_line_per_interval_and_counts_the_rest() -> None:
    now = [0.0]
    limiter = Throttle(10.0, clock=lambda: now[0])
    assert limiter.allow("m") == 0
    assert limiter.allow("m") is None and limiter.allow("m") is None
    assert limiter.allow("other") == 0
    now[0] = 10.5
    assert limiter.allow("m") == 2


def test_configure_logging_replaces_its_own_handler(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    level, before = root.level, list(root.handlers)
    try:
        configure_logging("warning", "json")
        configure_logging("warning", "json")
        logging.getLogger("adaptive_router.test").warning("hello %s", "there")
        lines = capsys.readouterr().err.strip().splitlines()
        assert [json.loads(line)["message"] for line in lines] == ["hello there"]
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
        root.setLevel(level)


def test_log_level_setting_is_accepted_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_SERVER__LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("ROUTER_SERVER__LOG_FORMAT", "json")
    server = load_settings().server
    assert (server.log_level, server.log_format) == ("debug", "json")


# --- a served process's log -------------------------------------------------------------------

SECRET_PROMPT = "xyzzy-the-prompt-nobody-may-read"
KEY = "sk-router-key-never-logged"


def _log_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_served_json_log_has_a_summary_an_access_line_per_request_and_no_prompt_or_key(
    tmp_path: Path,
) -> None:
    with ProcessGroup(tmp_path) as group:
        catalogue = Catalogue.write(tmp_path)
        sim = group.simulator(catalogue, scenario([{"at_request": 0, "model": "lab/a", "action": "fail"}]))
        env = router_env(
            catalogue,
            SERVER__LOG_FORMAT="json",
            SERVER__LOG_LEVEL="INFO",
            SERVER__API_KEYS=[KEY],
            UPSTREAM__BREAKER_FAILURES=100,
        )
        router = group.serve("router", sim, env)
        auth = {"authorization": f"Bearer {KEY}"}
        body = {**CHAT_BODY, "messages": [{"role": "user", "content": SECRET_PROMPT}]}
        ids = [f"req-{i}" for i in range(3)]
        for request_id in ids:
            answer = router.http.post(
                "/v1/chat/completions", json=body, headers={**auth, "x-request-id": request_id}
            )
            assert answer.status_code == 200
        assert router.http.post("/v1/chat/completions", json=body).status_code == 401
        assert (
            router.http.post("/v1/chat/completions", json={"model": "auto"}, headers=auth).status_code == 400
        )

        def logged_all() -> bool:
            return sum('"access"' in line for line in router.log_path.read_text().splitlines()) >= 5

        assert wait_for(logged_all, 10.0), router.log_tail()
        text = router.log_path.read_text()
        lines = _log_lines(router.log_path)  # every line is one JSON object
    assert SECRET_PROMPT not in text and KEY not in text
    routed = [line for line in lines if line["message"] == "access" and line.get("request_id") in ids]
    assert sorted(line["request_id"] for line in routed) == ids
    for line in routed:
        assert line["status"] == 200 and line["model"].startswith("lab/") and line["attempts"] >= 1
        assert line["latency_ms"] > 0 and line["prompt_tokens"] > 0 and line["completion_tokens"] > 0
        assert line["cost_usd"] > 0 and line["level"] == "info" and line["ts"].endswith("Z")
    refused = sorted(line["status"] for line in lines if line.get("outcome") == "refused")
    assert refused == [400, 401]
    failures = [line for line in lines if line["message"] == "upstream attempt failed"]
    assert failures and {(f["model"], f["level"], f["status"]) for f in failures} == {
        ("lab/a", "warning", 500)
    }
    summary = next(line for line in lines if line["message"] == "serving")
    assert summary["catalogue_models"] == len(catalogue.ids) and summary["auth"] == "on (1 keys)"
    assert summary["upstream"] == "simulated" and summary["policy"] == "greedy"
    assert summary["redis"] == "none" and summary["tracing"] == "off"


class _Inner:
    def __init__(self) -> None:
        self.seen: list[tuple[str, ...]] = []

    def attempt(self, model: str, outcome: str, latency_s: float) -> None:
        self.seen.append(("attempt", model, outcome))

    def fallback(self, from_model: str, to_model: str) -> None:
        self.seen.append(("fallback", from_model, to_model))

    def breaker(self, model: str, state: str) -> None:
        self.seen.append(("breaker", model, state))


def test_breaker_log_forwards_everything_and_logs_a_model_let_back_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inner = _Inner()
    observer = BreakerLog(inner, interval_s=60.0)
    with caplog.at_level(logging.INFO, logger="adaptive_router.upstream"):
        observer.attempt("m", "timeout", 0.1)
        observer.fallback("m", "n")
        observer.breaker("m", "open")  # the breakers log an opening themselves
        observer.breaker("m", "half_open")
        observer.breaker("m", "closed")
        observer.breaker("m", "half_open")  # flapping within the interval: held back
    assert inner.seen == [
        ("attempt", "m", "timeout"),
        ("fallback", "m", "n"),
        ("breaker", "m", "open"),
        ("breaker", "m", "half_open"),
        ("breaker", "m", "closed"),
        ("breaker", "m", "half_open"),
    ]
    assert [r.getMessage() for r in caplog.records] == ["circuit breaker half-open", "circuit breaker closed"]


def test_json_formatter_writes_values_its_codec_does_not_know() -> None:
    import numpy as np

    data = json.loads(JsonFormatter().format(_record("access", explored=np.bool_(True), n=np.int64(3))))
    assert data["explored"] == "True" and data["n"] == "3"

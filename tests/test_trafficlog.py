from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive_router import load_settings
from adaptive_router.core import Catalogue, Decision, Model, Outcome, Router, RouteRequest
from adaptive_router.offline import TrafficLog, decision_record, feedback_record, prompt_digest
from adaptive_router.simulator import SimClock
from adaptive_router.upstream import Attempt, Completion

IDS = ["lab/a", "lab/b", "lab/c"]


def make_router(policy: str = "softmax") -> tuple[Router, SimClock]:
    models = [
        Model(id=m, price_prompt=1e-6 * (i + 1), price_completion=2e-6 * (i + 1), context_length=32_000)
        for i, m in enumerate(IDS)
    ]
    clock = SimClock()
    settings = load_settings(exploration={"policy": policy, "seed": 0}, routing={"top_k": 8})
    return Router.from_settings(settings, Catalogue(models), clock=clock), clock


def decide(router: Router, text: str = "Tell me about the sea.") -> tuple[RouteRequest, Decision]:
    request = RouteRequest(prompt=text, mode="quality", max_tokens=100, max_cost_usd=1.0)
    return request, router.decide(request)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


# --- the record --------------------------------------------------------------------------------


def test_decision_record_has_the_documented_fields_and_no_prompt_text() -> None:
    router, _ = make_router()
    request, decision = decide(router, "my secret prompt")
    record = decision_record(
        decision, [Outcome(decision.model, True, 0.8, 0.2, 10, 40, 0.001)], False, None, 12.5, request=request
    )
    assert record["v"] == 1 and record["type"] == "decision" and record["time"] == 12.5
    assert record["request_id"] == decision.request_id
    assert record["profile"]["task"] == decision.profile.task
    assert record["mode"] == "quality" and record["weights"]["quality"] == pytest.approx(0.7)
    assert record["cost_scale"] == {"norm": "linear", "reference_usd": 0.02}  # what cost_term reads on
    assert record["constraints"]["max_cost_usd"] == 1.0 and record["constraints"]["max_tokens"] == 100
    assert record["model"] == decision.model and record["answered_by"] == decision.model
    assert record["propensity"] == pytest.approx(decision.propensity) and record["policy"] == "softmax"
    assert record["candidates"][0]["model"] == decision.model and len(record["candidates"]) == 3
    for c in record["candidates"]:
        assert c["score"] == pytest.approx(
            c["latency_term"] + c["cost_term"] + c["quality_term"] + c["exploration"]
        )
    attempt = record["attempts"][0]
    assert attempt == {
        "model": decision.model,
        "outcome": "ok",
        "latency_ms": 800.0,
        "ttft_ms": 200.0,
        "prompt_tokens": 10,
        "completion_tokens": 40,
        "cost_usd": 0.001,
        "status": None,
        "error": None,
    }
    assert record["prompt_sha256"] == hashlib.sha256(b"my secret prompt").hexdigest()
    assert "prompt" not in record and "secret" not in json.dumps(record)


def test_decision_record_includes_the_prompt_only_when_asked() -> None:
    router, _ = make_router()
    messages = [{"role": "user", "content": "hello there"}]
    decision = router.decide(RouteRequest(messages=messages))
    record = decision_record(decision, [], prompt_text=messages, now=1.0, include_prompts=True)
    assert record["prompt"] == messages
    assert record["prompt_sha256"] == prompt_digest(messages) != prompt_digest("hello there")
    assert record["answered_by"] is None and record["attempts"] == []


def test_decision_record_fills_the_answering_attempt_from_the_completion() -> None:
    router, _ = make_router()
    _, decision = decide(router)
    first, second = decision.chain[0], decision.chain[1]
    attempts = [Attempt(first, "timeout", 1500.0, None, "no answer"), Attempt(second, "ok", 900.0)]
    answer = Completion(second, "sim", 200, {}, 0.9, 0.25, 12, 30, 0.0004, {})
    record = decision_record(decision, attempts, answer=answer, now=1.0)
    failed, ok = record["attempts"]
    assert failed["outcome"] == "timeout" and failed["error"] == "timeout" and failed["cost_usd"] is None
    assert ok["ttft_ms"] == 250.0 and ok["completion_tokens"] == 30 and ok["cost_usd"] == 0.0004
    assert record["answered_by"] == second


def test_decision_record_thompson_has_no_propensity() -> None:
    router, _ = make_router("thompson")
    _, decision = decide(router)
    assert decision_record(decision, now=0.0)["propensity"] is None


def test_feedback_record_shape() -> None:
    assert feedback_record("req-1", 0.25, 3.0) == {
        "v": 1,
        "type": "feedback",
        "request_id": "req-1",
        "score": 0.25,
        "time": 3.0,
    }


# --- the writer --------------------------------------------------------------------------------


def test_traffic_log_writes_decisions_and_feedback_in_order(tmp_path: Path) -> None:
    router, clock = make_router()
    path = tmp_path / "logs" / "traffic.jsonl"
    with TrafficLog(path, clock=clock) as log:
        ids = []
        for _ in range(20):
            request, decision = decide(router)
            assert log.log_decision(decision, [Outcome(decision.model, True, 0.5)], request=request)
            assert log.log_feedback(decision.request_id, 0.75)
            ids.append(decision.request_id)
            clock.advance(1.0)
    written = lines(path)
    assert [r["type"] for r in written] == ["decision", "feedback"] * 20
    assert [r["request_id"] for r in written[::2]] == ids
    assert [r["time"] for r in written[::2]] == [clock.now - 20 + i for i in range(20)]
    assert log.written == 40 and log.dropped == 0 and log.errors == 0


def test_traffic_log_flush_makes_queued_lines_visible(tmp_path: Path) -> None:
    log = TrafficLog(tmp_path / "t.jsonl")
    try:
        log.log_feedback("a", 1.0)
        assert log.flush(timeout=5.0)
        assert lines(tmp_path / "t.jsonl") == [
            {
                "v": 1,
                "type": "feedback",
                "request_id": "a",
                "score": 1.0,
                "time": pytest.approx(time.time(), abs=60),
            }
        ]
    finally:
        log.close()


def test_traffic_log_rotates_by_size_and_keeps_n_backups(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    with TrafficLog(path, max_bytes=2_000, backups=3) as log:
        for i in range(400):
            log.log_feedback(f"request-{i:04d}", 0.5)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["t.jsonl", "t.jsonl.1", "t.jsonl.2", "t.jsonl.3"]
    for name in files:
        assert (tmp_path / name).stat().st_size <= 2_000
    kept = [
        r["request_id"]
        for name in ["t.jsonl.3", "t.jsonl.2", "t.jsonl.1", "t.jsonl"]
        for r in lines(tmp_path / name)
    ]
    # the newest lines survive, in order, with nothing missing between them
    assert kept == [f"request-{i:04d}" for i in range(400 - len(kept), 400)]


def test_traffic_log_without_backups_truncates(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    with TrafficLog(path, max_bytes=1_000, backups=0) as log:
        for i in range(100):
            log.log_feedback(f"r{i}", 0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl"]
    assert lines(path)[-1]["request_id"] == "r99" and path.stat().st_size <= 1_000


@settings(max_examples=15, deadline=None)
@given(max_bytes=st.integers(300, 3_000), count=st.integers(1, 60))
def test_traffic_log_loses_nothing_while_backups_suffice(
    tmp_path_factory: pytest.TempPathFactory, max_bytes: int, count: int
) -> None:
    folder = tmp_path_factory.mktemp("rot")
    with TrafficLog(folder / "t.jsonl", max_bytes=max_bytes, backups=100) as log:
        for i in range(count):
            log.log_feedback(f"id-{i}", i / 100)
    files = sorted(folder.iterdir(), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    ids = [r["request_id"] for f in files for r in lines(f)]
    assert ids == [f"id-{i}" for i in range(count)]


def test_traffic_log_drops_and_counts_when_the_queue_is_full(tmp_path: Path) -> None:
    entered, gate = threading.Event(), threading.Event()
    log = TrafficLog(tmp_path / "t.jsonl", queue_size=4)
    original = log._file.write

    def hanging_write(data: bytes) -> None:  # a disk that hangs until the test lets it go
        entered.set()
        gate.wait(10.0)
        original(data)

    log._file.write = hanging_write  # type: ignore[method-assign]
    try:
        assert log.log_feedback("first", 0.5)
        assert entered.wait(5.0)  # the writer is now stuck on the first line
        accepted = [log.log_feedback(f"r{i}", 0.5) for i in range(50)]  # a blocking put would hang here
        assert accepted == [True] * 4 + [False] * 46
        assert log.dropped == 46
    finally:
        gate.set()
        log.close()
    assert log.written == 5
    assert [r["request_id"] for r in lines(tmp_path / "t.jsonl")] == ["first", "r0", "r1", "r2", "r3"]


def test_traffic_log_survives_a_line_it_cannot_write(tmp_path: Path) -> None:
    with TrafficLog(tmp_path / "t.jsonl") as log:
        log.log_record({"v": 1, "type": "decision", "bad": object()})
        log.log_feedback("after", 1.0)
    assert log.errors == 1
    assert [r["request_id"] for r in lines(tmp_path / "t.jsonl")] == ["after"]


def test_traffic_log_after_close_drops_and_close_is_idempotent(tmp_path: Path) -> None:
    log = TrafficLog(tmp_path / "t.jsonl")
    log.close()
    log.close()
    assert log.log_feedback("late", 1.0) is False
    assert log.dropped == 1


def test_traffic_log_rejects_bad_limits(tmp_path: Path) -> None:
    for kwargs in ({"max_bytes": 0}, {"backups": -1}, {"queue_size": 0}):
        with pytest.raises(ValueError):
            TrafficLog(tmp_path / "t.jsonl", **kwargs)  # type: ignore[arg-type]

"""Deadlines and availability (issue 13, items 4 and 6): a request's total deadline, a shutdown
that ends trickling streams inside its grace period with the learned state saved, head and body
timeouts for slow clients, and a pinned model without fallback whose breaker is open."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.process_fixtures import HOST, Catalogue, ProcessGroup, router_env, scenario, wait_for
from tests.service_fixtures import FAST, fail, service_stack, user_body

SLOW_STREAM = {"*": {"ttft_s": 0.01, "tpot_s": 0.1, "tail_prob": 0.0, "ttft_sigma": 0.0, "tpot_sigma": 0.0}}


def _events(response: httpx.Response) -> list[Any]:
    out: list[Any] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_a_stream_is_cut_at_the_total_deadline_with_an_error_event(monkeypatch: pytest.MonkeyPatch) -> None:
    sim = {"time_scale": 1.0, "output_tokens_median": 40, "output_tokens_sigma": 0.0, "models": SLOW_STREAM}
    with service_stack(monkeypatch, sim=sim, upstream={"request_timeout_s": 1.0}) as stack:
        body = user_body(stream=True)
        with stack.http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            events = _events(response)  # an answer of ~4 s, cut at 1 s
        assert "[DONE]" not in events
        assert events[-1]["error"]["code"] == "deadline_exceeded"
        assert "upstream.request_timeout_s" in events[-1]["error"]["message"]
        content = "".join(
            e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e.get("choices")
        )
        assert 0 < len(content.split()) < 40  # some of the answer came, not all of it

        plain = stack.chat(user_body())  # not streamed: every attempt within the same deadline
        assert plain.status_code == 504, plain.text
        attempts = plain.json()["routing"]["attempts"]
        assert attempts[-1]["error"] == "the request's total deadline passed"
        assert len(attempts) == 2  # one timed out at the deadline, the next was not tried


def test_a_pinned_model_without_fallback_answers_503_while_its_breaker_is_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pinned = user_body(model=FAST, route={"fallback": False})
    with service_stack(
        monkeypatch, events=[fail(FAST)], upstream={"breaker_failures": 1, "breaker_cooldown_s": 30}
    ) as stack:
        first = stack.chat(pinned)
        assert first.status_code == 502  # it failed once: its breaker opens
        refused = stack.chat(pinned)
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["param"], error["type"]) == (
            "model_unavailable",
            "model",
            "service_unavailable",
        )
        assert 1 <= int(refused.headers["retry-after"]) <= 30
        assert stack.sim_stats()["requests"][FAST] == 1  # not called again, and nothing else was
        assert sum(stack.sim_stats()["requests"].values()) == 1
        rerouted = stack.chat(user_body(model=FAST))  # with fallback (the default) another answers
        assert rerouted.status_code == 200 and rerouted.headers["x-router-model"] != FAST


# --- a real `adaptive-router serve` process -----------------------------------------------------


def _raw_exchange(port: int, data: bytes, limit_s: float = 15.0) -> bytes:
    """Send ``data`` and read until the server closes the connection (bounded)."""
    with socket.create_connection((HOST, port), timeout=limit_s) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


def _stream_into(url: str, sink: list[Any]) -> None:
    body = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": "Tell a long story."}]}
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30.0) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    data = line.removeprefix("data: ")
                    sink.append(data if data == "[DONE]" else json.loads(data))
    except httpx.HTTPError as exc:
        sink.append(repr(exc))


def test_serve_times_out_slow_clients_and_exits_within_its_grace_period(tmp_path: Path) -> None:
    catalogue = Catalogue.write(tmp_path)
    trickle = {"*": {"ttft_s": 0.01, "tpot_s": 0.2, "ttft_sigma": 0.0, "tpot_sigma": 0.0, "tail_prob": 0.0}}
    state = tmp_path / "learned.npz"
    grace = 3.0
    with ProcessGroup(tmp_path) as group:
        sim = group.simulator(catalogue, scenario(models=trickle, output_tokens_median=200))
        env = router_env(
            catalogue,
            SERVER__SHUTDOWN_GRACE_S=str(grace),
            SERVER__HEADER_TIMEOUT_S="1",
            SERVER__BODY_TIMEOUT_S="1",
            LEARNING__STATE_PATH=str(state),
        )
        router = group.serve("router", sim, env)

        head = _raw_exchange(router.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        assert head.startswith(b"HTTP/1.1 408"), head
        assert b"server.header_timeout_s" in head
        slow_body = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        body = _raw_exchange(router.port, slow_body + b'content-length: 100\r\n\r\n{"model"')
        assert body.startswith(b"HTTP/1.1 408"), body
        assert b"server.body_timeout_s" in body

        sinks: list[list[Any]] = [[] for _ in range(4)]
        threads = [threading.Thread(target=_stream_into, args=(router.url, s), daemon=True) for s in sinks]
        for thread in threads:
            thread.start()
        assert wait_for(lambda: all(len(s) >= 2 for s in sinks), 15.0)  # each is trickling
        sent_at = time.time()
        router.terminate()
        assert router.wait(grace + 15.0) == 0
        took = time.time() - sent_at
        for thread in threads:
            thread.join(10.0)
        assert took < grace + 3.0, took  # not the ~40 s the streams would have run
        for sink in sinks:
            assert isinstance(sink[-1], dict), sink[-1]
            assert sink[-1]["error"]["code"] == "shutting_down"
        assert state.exists() and state.stat().st_mtime >= sent_at - 1.0  # saved on the way out

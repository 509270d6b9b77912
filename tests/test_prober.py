"""Health probes through a real router and the real simulated upstream: with no client traffic
at all, the prober finds a fallback model that went down (its breaker opens) and finds it back
(the breaker closes); the outcomes reach the learner, /ready and /metrics; the spend cap holds."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.process_fixtures import wait_for
from tests.service_fixtures import FAST, SLOW, Stack, service_stack

LIMIT_S = 15.0


def _probing(**probe: Any) -> dict[str, Any]:
    return {
        "probe": {"enabled": True, "interval_s": 0.05, "idle_after_s": 0.0, **probe},
        "routing": {"fallback_models": [SLOW]},
        "upstream": {"breaker_failures": 1, "breaker_cooldown_s": 0.2},
    }


def _health(stack: Stack) -> dict[str, Any]:
    health: dict[str, Any] = stack.ready()["health"]
    return health


def _gauge(stack: Stack, name: str, model: str) -> float | None:
    text = stack.http.get("/metrics").text
    found = re.search(rf'^{name}\{{model="{re.escape(model)}"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else None


def _model(stack: Stack, model: str) -> dict[str, Any]:
    detail: dict[str, Any] = _health(stack)["models"].get(model, {})
    return detail


def _sim_event(stack: Stack, **event: Any) -> None:
    stack.sim.post("/sim/events", json=event).raise_for_status()


def test_the_prober_opens_and_closes_the_breaker_of_a_model_that_goes_down_and_comes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with service_stack(monkeypatch, **_probing()) as stack:
        assert wait_for(lambda: (_model(stack, SLOW).get("last_probe") or {}).get("ok") is True, LIMIT_S)
        assert _gauge(stack, "adaptive_router_model_up", SLOW) == 1.0

        before = _model(stack, SLOW)["success"]
        _sim_event(stack, model=SLOW, action="fail", status=503)
        assert wait_for(lambda: _model(stack, SLOW).get("breaker") == "open", LIMIT_S)
        assert _model(stack, SLOW)["last_probe"]["outcome"] == "status_error"
        assert _gauge(stack, "adaptive_router_model_up", SLOW) == 0.0  # open or half-open: not up
        # The failed probes reach the learner: its success estimate falls while the model is down.
        assert wait_for(lambda: _model(stack, SLOW)["success"] < before, LIMIT_S)

        _sim_event(stack, model=SLOW, action="recover")
        assert wait_for(lambda: _model(stack, SLOW).get("breaker") == "closed", LIMIT_S)
        assert _model(stack, SLOW)["last_probe"]["ok"] is True
        assert SLOW not in _health(stack)["down"]
        metrics = stack.http.get("/metrics").text
        assert f'adaptive_router_probes_total{{model="{SLOW}",outcome="status_error"}}' in metrics
        # Only the prober spoke to the upstream, and only to the fallback model.
        assert stack.sim_stats()["requests"][FAST] == 0


def test_probes_ask_for_one_token_and_their_spend_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    with service_stack(monkeypatch, **_probing()) as stack:
        assert wait_for(lambda: stack.sim_stats()["requests"][SLOW] >= 3, LIMIT_S)
        usage = stack.http.get("/metrics.json").json()["models"][SLOW]
        assert 0 < usage["completion_tokens"] <= usage["attempts"]  # max_tokens 1 per probe
        assert _health(stack)["probes"]["spent_today_usd"] > 0


def test_no_probe_goes_out_beyond_the_daily_spend_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    with service_stack(monkeypatch, **_probing(daily_usd=0.0)) as stack:
        assert wait_for(lambda: _health(stack)["probes"]["capped"], LIMIT_S)
        assert stack.sim_stats()["requests"][SLOW] == 0


def test_a_bad_simulator_event_is_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    with service_stack(monkeypatch) as stack:
        refused = stack.sim.post("/sim/events", json={"model": SLOW, "action": "explode"})
        assert refused.status_code == 400 and "action" in refused.json()["error"]["message"]

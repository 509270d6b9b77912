"""A real router in front of the real simulated upstream, both served by uvicorn on 127.0.0.1.

    with service_stack(monkeypatch, events=[fail(FAST)]) as stack:
        response = stack.chat()                  # POST /v1/chat/completions through the router
        stack.sim_stats()["requests"][FAST]      # what reached the upstream

The catalogue has three models that rank FAST > MID > SLOW on every term (latency, cost and
quality), so under the greedy policy the first choice and the fallback order are known.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from adaptive_router import load_settings
from adaptive_router.core import Catalogue, Model
from adaptive_router.pipeline import SIMULATOR_URL_ENV
from adaptive_router.service import create_app
from adaptive_router.simulator import Scenario, SimEvent, create_simulator_app, sim_models_from_catalogue
from tests.servers import running_server

__all__ = [
    "FAST",
    "MID",
    "MODELS",
    "SLOW",
    "Stack",
    "fail",
    "rate_limit",
    "recover",
    "scenario",
    "service_stack",
    "slow",
    "small_catalogue",
    "user_body",
]

FAST, MID, SLOW = "lab/fast", "lab/mid", "lab/slow"
MODELS = (FAST, MID, SLOW)
TIME_SCALE = 0.01  # a simulated second lasts 10 ms
HTTP_TIMEOUT_S = 10.0


def small_catalogue() -> Catalogue:
    """Three models, each better than the next on latency, cost and quality."""
    return Catalogue(
        [
            Model(FAST, 1e-8, 2e-8, 8192, ttft_s=0.1, tpot_s=0.002, quality=0.9),
            Model(MID, 1e-6, 2e-6, 8192, ttft_s=0.4, tpot_s=0.01, quality=0.7),
            Model(SLOW, 1e-5, 3e-5, 8192, ttft_s=1.0, tpot_s=0.03, quality=0.5),
        ],
        source="test",
    )


def fail(model: str, status: int = 500, at_request: int = 0) -> SimEvent:
    return SimEvent(at_request=at_request, model=model, action="fail", status=status)


def rate_limit(model: str, at_request: int = 0) -> SimEvent:
    return SimEvent(at_request=at_request, model=model, action="rate_limit", retry_after_s=0.0)


def slow(model: str, factor: float, at_request: int = 0) -> SimEvent:
    return SimEvent(at_request=at_request, model=model, action="slow", factor=factor)


def recover(model: str, at_request: int) -> SimEvent:
    return SimEvent(at_request=at_request, model=model, action="recover")


def user_body(content: str = "Say hello.", **extra: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": content}], **extra}


def scenario(events: list[SimEvent] | None = None, **overrides: Any) -> Scenario:
    """Fast, and without random faults or heavy tails: only scripted events go wrong."""
    base = {
        "seed": 7,
        "time_scale": TIME_SCALE,
        "error_rate": 0.0,
        "rate_limit_rate": 0.0,
        "output_tokens_median": 40,
        "models": {"*": {"tail_prob": 0.0}},
        "events": [e.model_dump() for e in events or []],
    }
    return Scenario.model_validate({**base, **overrides})


@dataclass
class Stack:
    """URLs of the running router and simulator, with an httpx client for each."""

    router_url: str
    sim_url: str
    http: httpx.Client
    sim: httpx.Client

    def chat(
        self, body: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        return self.http.post("/v1/chat/completions", json=dict(body or user_body()), headers=headers)

    def sim_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.sim.get("/sim/stats").raise_for_status().json()
        return stats

    def ready(self) -> dict[str, Any]:
        ready: dict[str, Any] = self.http.get("/ready").json()
        return ready


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _isolate(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings read ROUTER_* and OPENROUTER_API_KEY: nothing from the shell may leak in.
    for name in list(os.environ):
        if name.startswith("ROUTER_") or name == "OPENROUTER_API_KEY":
            monkeypatch.delenv(name)


@contextlib.contextmanager
def service_stack(
    monkeypatch: pytest.MonkeyPatch,
    *,
    events: list[SimEvent] | None = None,
    sim: Mapping[str, Any] | None = None,
    providers: Callable[[str], dict[str, Any]] | None = None,
    catalogue: Catalogue | None = None,
    **settings: Any,
) -> Iterator[Stack]:
    """The simulator, then the router pointed at it: through ``ROUTER_SIMULATOR_URL`` (upstream
    "simulated"), or through ``upstream.providers`` built by ``providers(sim_base_url)``.

    ``sim`` overrides fields of the simulator's scenario; ``settings`` are keyword overrides for
    ``load_settings``, merged over the test defaults (greedy policy, fixed seed)."""
    _isolate(monkeypatch)
    catalogue = catalogue or small_catalogue()
    sim_app = create_simulator_app(sim_models_from_catalogue(catalogue), scenario(events, **(sim or {})))
    with running_server(sim_app) as sim_url:
        overrides = _merge({"exploration": {"policy": "greedy", "seed": 0}}, settings)
        if providers is None:
            monkeypatch.setenv(SIMULATOR_URL_ENV, sim_url + "/v1")
        else:
            overrides = _merge(overrides, {"upstream": {"providers": providers(sim_url + "/v1")}})
        app = create_app(load_settings(**overrides), catalogue=catalogue)
        with (
            running_server(app) as router_url,
            httpx.Client(base_url=router_url, timeout=HTTP_TIMEOUT_S) as http,
            httpx.Client(base_url=sim_url, timeout=HTTP_TIMEOUT_S) as sim_client,
        ):
            yield Stack(router_url, sim_url, http, sim_client)

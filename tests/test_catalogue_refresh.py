"""Catalogue refresh through a real router: the OpenRouter source (a local server on 127.0.0.1
serving OpenRouter's /api/v1/models) is fetched again on an interval; a new model joins with its
priors, a removed one leaves the ranking, prices follow, and what was learned stays."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adaptive_router import Catalogue, Model, load_settings
from adaptive_router.pipeline import SIMULATOR_URL_ENV
from adaptive_router.service import create_app
from adaptive_router.simulator import create_simulator_app, sim_models_from_catalogue
from tests.process_fixtures import wait_for
from tests.reload_fixtures import openrouter_entry
from tests.servers import running_server
from tests.service_fixtures import HTTP_TIMEOUT_S, scenario, user_body

A, B, C = "lab/a", "lab/b", "lab/c"
LIMIT_S = 15.0


@dataclass
class Listing:
    """What the local "OpenRouter" lists now (the test changes it), and how often it was asked."""

    entries: list[dict[str, Any]]
    fetches: int = 0

    def app(self) -> Starlette:
        async def models(request: Request) -> Response:
            self.fetches += 1
            return Response(json.dumps({"data": self.entries}), media_type="application/json")

        return Starlette(routes=[Route("/api/v1/models", models, methods=["GET"])])


@dataclass
class Refreshing:
    listing: Listing
    http: httpx.Client
    sim: httpx.Client

    def ids(self) -> list[str]:
        return [m["id"] for m in self.http.get("/v1/models").json()["data"] if "/" in m["id"]]

    def refresh(self) -> dict[str, Any]:
        """The last refresh (``{}`` before the first)."""
        refresh: dict[str, Any] = self.http.get("/ready").json()["catalogue_refresh"] or {}
        return refresh

    def change(self) -> dict[str, Any]:
        """The last refresh that changed the catalogue (``{}`` before one did)."""
        change: dict[str, Any] = self.refresh().get("last_change") or {}
        return change

    def row(self, model: str) -> dict[str, Any]:
        rows = self.http.get("/models").json()["data"]
        row: dict[str, Any] = next(r for r in rows if r["model"] == model)
        return row


@contextlib.contextmanager
def refreshing(monkeypatch: pytest.MonkeyPatch, **settings: Any) -> Iterator[Refreshing]:
    for name in [n for n in os.environ if n.startswith("ROUTER_") or n == "OPENROUTER_API_KEY"]:
        monkeypatch.delenv(name)
    listing = Listing([openrouter_entry(A), openrouter_entry(B)])
    # The simulated upstream serves every model the listing will ever name.
    served = Catalogue([Model(m, 1e-6, 2e-6, 8192, ttft_s=0.1, tpot_s=0.002) for m in (A, B, C)])
    sim_app = create_simulator_app(sim_models_from_catalogue(served), scenario())
    with running_server(listing.app()) as listing_url, running_server(sim_app) as sim_url:
        monkeypatch.setenv(SIMULATOR_URL_ENV, sim_url + "/v1")
        config = load_settings(
            catalogue={"source": "openrouter", "refresh_interval_s": 0.1},
            upstream={
                "simulate": "always",
                "openrouter_base_url": listing_url + "/api/v1",
                **settings.pop("upstream", {}),
            },
            exploration={"policy": "greedy", "seed": 0},
            cache={"enabled": False},
            **settings,
        )
        with (
            running_server(create_app(config)) as url,
            httpx.Client(base_url=url, timeout=HTTP_TIMEOUT_S) as http,
            httpx.Client(base_url=sim_url, timeout=HTTP_TIMEOUT_S) as sim,
        ):
            yield Refreshing(listing, http, sim)


def test_a_refresh_adds_a_new_model_and_removes_one_that_left(monkeypatch: pytest.MonkeyPatch) -> None:
    with refreshing(monkeypatch) as stack:
        assert stack.ids() == [A, B]
        for _ in range(3):
            answered = stack.http.post("/v1/chat/completions", json=user_body(model=A))
            assert answered.headers["x-router-model"] == A
        learned = stack.row(A)["evidence"]
        assert learned > 0

        stack.listing.entries = [openrouter_entry(A), openrouter_entry(C)]
        assert wait_for(lambda: stack.change().get("models_added") == [C], LIMIT_S)
        change = stack.change()
        assert change["ok"] is True and change["models_removed"] == [B]
        assert stack.ids() == [A, C]
        assert stack.http.get("/ready").json()["catalogue"]["models"] == 2

        pinned_gone = stack.http.post("/route", json={"model": B, "prompt": "hi"})
        assert pinned_gone.status_code == 404 and pinned_gone.json()["error"]["param"] == "model"
        assert pinned_gone.json()["error"]["code"] == "model_not_found"
        new = stack.http.post("/v1/chat/completions", json=user_body(model=C))
        assert new.status_code == 200 and new.headers["x-router-model"] == C
        assert stack.row(A)["evidence"] == pytest.approx(learned, rel=0.05)  # kept
        ranked = {r["model"] for r in stack.http.get("/models").json()["data"]}
        assert ranked == {A, C}


def test_a_refresh_brings_new_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    with refreshing(monkeypatch) as stack:
        assert stack.row(A)["completion_per_m"] == pytest.approx(2.0)
        stack.listing.entries = [openrouter_entry(A, completion="0.000005"), openrouter_entry(B)]
        assert wait_for(lambda: stack.row(A)["completion_per_m"] == pytest.approx(5.0), LIMIT_S)


def test_a_failed_fetch_keeps_the_running_catalogue(monkeypatch: pytest.MonkeyPatch) -> None:
    with refreshing(monkeypatch) as stack:
        stack.listing.entries = [{"id": A, "pricing": {"prompt": "free"}}]
        assert wait_for(lambda: stack.refresh().get("ok") is False, LIMIT_S)
        assert "pricing.prompt" in stack.refresh()["error"]  # the listing stays broken: so does each try
        assert stack.ids() == [A, B]
        assert stack.http.post("/v1/chat/completions", json=user_body()).status_code == 200


def test_a_model_removed_while_its_breaker_is_open_is_forgotten_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    breaker = {"breaker_failures": 1, "breaker_cooldown_s": 0.05}
    with refreshing(monkeypatch, upstream=breaker) as stack:
        stack.sim.post("/sim/events", json={"model": B, "action": "fail"}).raise_for_status()
        failed = stack.http.post("/v1/chat/completions", json=user_body(model=B))
        assert failed.json()["routing"]["attempts"][0]["model"] == B  # failed, then fell back
        assert stack.http.get("/ready").json()["breakers"] == {B: "open"}
        stack.listing.entries = [openrouter_entry(A)]
        assert wait_for(lambda: stack.change().get("models_removed") == [B], LIMIT_S)
        # Its cool-down ends after it left the catalogue: requests go on as before.
        for _ in range(3):
            assert stack.http.post("/v1/chat/completions", json=user_body()).status_code == 200

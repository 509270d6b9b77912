"""A router whose settings live in a file, in front of the simulated upstream, for reload tests.

    with file_stack(monkeypatch, tmp_path, {"server": {"admin_keys": ["adm"]}}) as stack:
        stack.route("speed")                        # the model mode "speed" picks now
        stack.write({"routing": {"modes": {"speed": COST_HEAVY}}})
        stack.reload()                              # POST /admin/reload with the admin key

Two models trade speed against price: ``QUICK`` answers fast and costs much, ``CHEAP`` is slow
and nearly free, with equal quality. A latency-heavy mode picks ``QUICK``, a cost-heavy ``CHEAP``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from adaptive_router import load_catalogue, load_settings
from adaptive_router.pipeline import SIMULATOR_URL_ENV
from adaptive_router.service import create_app
from adaptive_router.simulator import create_simulator_app, sim_models_from_catalogue
from tests.servers import running_server
from tests.service_fixtures import HTTP_TIMEOUT_S, scenario

__all__ = [
    "ADMIN_KEY",
    "CHEAP",
    "COST_HEAVY",
    "QUICK",
    "SPEED_HEAVY",
    "FileStack",
    "file_stack",
    "openrouter_entry",
    "write_catalogue",
]

QUICK, CHEAP = "lab/quick", "lab/cheap"
ADMIN_KEY = "admin-secret"
SPEED_HEAVY = {"latency": 0.8, "cost": 0.1, "quality": 0.1}
COST_HEAVY = {"latency": 0.05, "cost": 0.9, "quality": 0.05}
_PRICES = {QUICK: ("0.00001", "0.00003"), CHEAP: ("0.00000001", "0.00000002")}
_PRIORS = {QUICK: (0.05, 0.001), CHEAP: (2.0, 0.05)}


def openrouter_entry(model_id: str, prompt: str = "0.000001", completion: str = "0.000002") -> dict[str, Any]:
    """One model as OpenRouter's ``/api/v1/models`` lists it."""
    return {
        "id": model_id,
        "name": model_id,
        "context_length": 8192,
        "pricing": {"prompt": prompt, "completion": completion},
        "architecture": {"input_modalities": ["text"], "output_modalities": ["text"]},
        "top_provider": {"context_length": 8192, "max_completion_tokens": 1024},
        "supported_parameters": ["max_tokens", "temperature", "response_format"],
    }


def write_catalogue(directory: Path) -> tuple[Path, Path]:
    """The two models (OpenRouter's shape) and their priors (an overlay)."""
    models = directory / "models.json"
    models.write_text(json.dumps({"data": [openrouter_entry(m, *_PRICES[m]) for m in (QUICK, CHEAP)]}))
    overlay = directory / "priors.yaml"
    priors = {m: {"ttft_s": t, "tpot_s": p, "quality": 0.7} for m, (t, p) in _PRIORS.items()}
    overlay.write_text(json.dumps(priors))  # JSON is YAML, and keeps 0.001 a number
    return models, overlay


@dataclass
class FileStack:
    """The router (settings from ``path``), its simulator, and clients for both."""

    path: Path
    base: dict[str, Any]
    http: httpx.Client
    sim: httpx.Client

    def write(self, extra: Mapping[str, Any]) -> None:
        """Rewrite the settings file: the base settings with ``extra`` merged over them."""
        self.path.write_text(yaml.safe_dump(_merge(self.base, extra)))

    def reload(self, key: str = ADMIN_KEY) -> httpx.Response:
        return self.http.post("/admin/reload", headers={"authorization": f"Bearer {key}"})

    def route(self, mode: str, **extra: Any) -> dict[str, Any]:
        body = {"model": f"auto:{mode}", "prompt": "Say hello.", **extra}
        response = self.http.post("/route", json=body)
        assert response.status_code == 200, response.text
        decision: dict[str, Any] = response.json()
        return decision

    def ready(self) -> dict[str, Any]:
        """``/ready`` in full: with router keys set, that takes a key (the admin's is one)."""
        headers = {"authorization": f"Bearer {ADMIN_KEY}"}
        ready: dict[str, Any] = self.http.get("/ready", headers=headers).json()
        return ready

    def model_row(self, model: str) -> dict[str, Any]:
        rows = self.http.get("/models").json()["data"]
        row: dict[str, Any] = next(r for r in rows if r["model"] == model)
        return row


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@contextlib.contextmanager
def file_stack(
    monkeypatch: pytest.MonkeyPatch, directory: Path, settings: Mapping[str, Any] | None = None
) -> Iterator[FileStack]:
    """The simulator, then a router started from a settings file in ``directory``."""
    models, overlay = write_catalogue(directory)
    base = _merge(
        {
            "server": {"admin_keys": [ADMIN_KEY]},
            "exploration": {"policy": "greedy", "seed": 0},
            "cache": {"enabled": False},
            "upstream": {"simulate": "always"},
            "catalogue": {"source": str(models), "overlay": str(overlay)},
        },
        settings or {},
    )
    path = directory / "settings.yaml"
    path.write_text(yaml.safe_dump(base))
    catalogue = load_catalogue(str(models), str(overlay))
    sim_app = create_simulator_app(sim_models_from_catalogue(catalogue), scenario())
    for name in [n for n in os.environ if n.startswith("ROUTER_") or n == "OPENROUTER_API_KEY"]:
        monkeypatch.delenv(name)  # nothing from the shell may leak in
    with running_server(sim_app) as sim_url:
        monkeypatch.setenv(SIMULATOR_URL_ENV, sim_url + "/v1")
        app = create_app(load_settings(path))
        with (
            running_server(app) as router_url,
            httpx.Client(base_url=router_url, timeout=HTTP_TIMEOUT_S) as http,
            httpx.Client(base_url=sim_url, timeout=HTTP_TIMEOUT_S) as sim,
        ):
            yield FileStack(path, base, http, sim)

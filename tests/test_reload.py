"""Live reconfiguration through a real server: POST /admin/reload and SIGHUP read the settings
file again; a file that does not validate changes nothing; learned state survives."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import yaml

from adaptive_router import load_catalogue, load_settings
from adaptive_router.pipeline import (
    RESTART_ONLY,
    SIMULATOR_URL_ENV,
    build_service,
    changed_keys,
    keep_restart_only,
    operations,
)
from adaptive_router.simulator import create_simulator_app, sim_models_from_catalogue
from tests.process_fixtures import Catalogue, ProcessGroup, router_env, wait_for
from tests.reload_fixtures import (
    ADMIN_KEY,
    CHEAP,
    COST_HEAVY,
    QUICK,
    SPEED_HEAVY,
    file_stack,
    write_catalogue,
)
from tests.servers import running_server
from tests.service_fixtures import user_body

SPEED = {"routing": {"modes": {"speed": SPEED_HEAVY}}}
SPEED_BY_COST = {"routing": {"modes": {"speed": COST_HEAVY}}}


def test_admin_reload_with_a_changed_mode_weight_changes_the_next_decision(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with file_stack(monkeypatch, tmp_path, SPEED) as stack:
        assert stack.route("speed")["model"] == QUICK
        stack.write(SPEED_BY_COST)
        response = stack.reload()
        assert response.status_code == 200, response.text
        report = response.json()
        assert report["ok"] is True
        assert "routing.modes.speed.cost" in report["changed"]
        assert stack.route("speed")["model"] == CHEAP
        answer = stack.http.post("/v1/chat/completions", json=user_body(model="auto:speed"))
        assert answer.status_code == 200
        assert answer.headers["x-router-model"] == CHEAP
        ready = stack.ready()["reload"]
        assert ready["ok"] is True and ready["source"] == "admin" and ready["error"] is None


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (yaml.safe_dump({"routing": {"modes": {"speed": {"latency": -1}}}}), "routing.modes.speed.latency"),
        ("routing: {modes: [unclosed\n", "settings file"),
        (yaml.safe_dump({"routing": {"fallback_models": ["lab/nowhere"]}}), "routing.fallback_models"),
    ],
)
def test_an_invalid_file_is_refused_and_the_old_weights_keep_serving(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str, field: str
) -> None:
    with file_stack(monkeypatch, tmp_path, SPEED_BY_COST) as stack:
        assert stack.route("speed")["model"] == CHEAP
        stack.path.write_text(text)
        response = stack.reload()
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["param"] == field and error["code"] == "invalid_settings"
        ready = stack.ready()["reload"]
        assert ready["ok"] is False and ready["field"] == field and field.split(".")[-1] in ready["error"]
        assert stack.route("speed")["model"] == CHEAP  # the running weights
        assert stack.http.post("/v1/chat/completions", json=user_body(model="auto:speed")).status_code == 200


def test_admin_reload_needs_an_admin_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with file_stack(monkeypatch, tmp_path, {"server": {"api_keys": ["client-key"]}}) as stack:
        assert stack.reload("client-key").status_code == 401  # a client's key is not an admin's
        assert stack.http.post("/admin/reload").status_code == 401
        assert stack.ready()["reload"] is None  # nothing was reloaded
        stack.write({"server": {"admin_keys": []}})
        assert stack.reload().status_code == 200
        refused = stack.reload()
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_disabled"


def test_client_keys_change_live(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with file_stack(monkeypatch, tmp_path) as stack:
        assert stack.http.post("/route", json={"prompt": "hi"}).status_code == 200
        stack.write({"server": {"api_keys": ["new-key"]}})
        assert stack.reload().status_code == 200
        assert stack.http.post("/route", json={"prompt": "hi"}).status_code == 401
        keyed = stack.http.post("/route", json={"prompt": "hi"}, headers={"authorization": "Bearer new-key"})
        assert keyed.status_code == 200


def test_learned_state_and_feedback_survive_a_reload_that_changes_the_models_priors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with file_stack(monkeypatch, tmp_path, SPEED) as stack:
        ids = []
        for _ in range(5):
            answer = stack.http.post("/v1/chat/completions", json=user_body(model="auto:speed"))
            assert answer.headers["x-router-model"] == QUICK
            ids.append(answer.json()["routing"]["request_id"])
        learned = stack.model_row(QUICK)["evidence"]
        assert learned > 0
        prior_ttft_ms = stack.model_row(CHEAP)["ttft_ms"]  # the prior, scaled by what QUICK showed
        # New priors for CHEAP: the learner is rebuilt, and takes the old one's evidence by id.
        overlay = tmp_path / "priors2.yaml"
        overlay.write_text(json.dumps({CHEAP: {"ttft_s": 1.5, "tpot_s": 0.04, "quality": 0.7}}))
        stack.write({**SPEED, "catalogue": {"overlay": str(overlay)}})
        assert stack.reload().status_code == 200
        assert stack.model_row(QUICK)["evidence"] == pytest.approx(learned, rel=0.05)
        assert stack.model_row(CHEAP)["ttft_ms"] == pytest.approx(prior_ttft_ms * 1.5 / 2.0, rel=0.05)
        assert stack.model_row(CHEAP)["evidence"] == 0
        feedback = stack.http.post("/feedback", json={"request_id": ids[0], "score": 0.9})
        assert feedback.status_code == 200


def test_evaluator_scores_reach_the_router_a_reload_built(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """After a reload that rebuilds the learner, evaluators score into the new one, not the old."""
    with file_stack(monkeypatch, tmp_path, SPEED) as stack:
        overlay = tmp_path / "priors2.yaml"
        overlay.write_text(json.dumps({CHEAP: {"ttft_s": 1.5, "tpot_s": 0.04, "quality": 0.7}}))
        stack.write({**SPEED, "catalogue": {"overlay": str(overlay)}})
        assert stack.reload().status_code == 200
        before = {m: stack.model_row(m)["quality_est"] for m in (QUICK, CHEAP)}
        # "Hello, how are you?": the prompt whose cell /models reports
        body = user_body("Hello, how are you?", model="auto:speed", response_format={"type": "json_object"})
        answered = stack.http.post("/v1/chat/completions", json=body).headers["x-router-model"]
        for _ in range(5):  # the simulator answers words: the json evaluator scores each 0
            body["route"] = {"fallback": False}
            body["model"] = answered
            assert stack.http.post("/v1/chat/completions", json=body).status_code == 200
        assert wait_for(lambda: stack.model_row(answered)["quality_est"] < before[answered] - 0.01, 15.0)


def test_restart_only_settings_keep_their_running_values_and_are_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with file_stack(monkeypatch, tmp_path) as stack:
        stack.write({"server": {"port": 1}, "learning": {"latency_half_life_s": 60}})
        report = stack.reload().json()
        assert report["restart_needed"] == ["server.port", "learning"]
        assert "server.port" not in report["changed"]
        assert stack.http.get("/health").status_code == 200  # still where it was


def test_keep_restart_only_names_the_keys_and_keeps_the_rest() -> None:
    running = load_settings(server={"port": 8000}, routing={"top_k": 4})
    new = load_settings(server={"port": 9000, "api_keys": ["k"]}, routing={"top_k": 2})
    kept, restart = keep_restart_only(running, new)
    assert restart == ("server.port",)
    assert kept.server.port == 8000 and kept.server.api_keys == ["k"] and kept.routing.top_k == 2
    assert changed_keys(running, kept) == ("routing.top_k", "server.api_keys")
    assert all(key.split(".")[0] in type(running).model_fields for key in RESTART_ONLY)


def _settings_file(tmp_path: Path, models: Path, overlay: Path, extra: dict[str, Any]) -> Path:
    path = tmp_path / "settings.yaml"
    base = {"catalogue": {"source": str(models), "overlay": str(overlay)}, **extra}
    path.write_text(yaml.safe_dump(base))
    return path


def test_sighup_reloads_the_file_and_an_invalid_one_is_refused(tmp_path: Path) -> None:
    """A real ``uvicorn`` process: SIGHUP with a changed weight changes the next decision; a
    file that does not validate afterwards leaves those weights serving, and /ready says why."""
    models, overlay = write_catalogue(tmp_path)
    path = _settings_file(tmp_path, models, overlay, SPEED)
    catalogue = Catalogue(models, overlay, (QUICK, CHEAP))
    sim_app = create_simulator_app(sim_models_from_catalogue(load_catalogue(str(models), str(overlay))))
    with running_server(sim_app) as sim_url, ProcessGroup(tmp_path) as group:
        # Only the router needs to be a process of its own (to receive the signal).
        sim = SimpleNamespace(url=sim_url)
        env = {k: v for k, v in router_env(catalogue).items() if not k.startswith("ROUTER_ROUTING")}
        router = group.router("router", sim, {**env, "ROUTER_SETTINGS_FILE": str(path)})  # type: ignore[arg-type]

        def route() -> str:
            response = router.post("/route", {"model": "auto:speed", "prompt": "Say hello."})
            model: str = response.json()["model"]
            return model

        def reloaded(ok: bool) -> bool:
            last = router.get("/ready")["reload"]
            return last is not None and last["ok"] is ok

        assert route() == QUICK
        _settings_file(tmp_path, models, overlay, SPEED_BY_COST)
        router.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: reloaded(True), 10.0), router.log_tail()
        assert router.get("/ready")["reload"]["source"] == "SIGHUP"
        assert route() == CHEAP
        path.write_text(yaml.safe_dump({"routing": {"modes": {"speed": {"latency": "fast"}}}}))
        router.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: reloaded(False), 10.0), router.log_tail()
        assert router.get("/ready")["reload"]["field"] == "routing.modes.speed.latency"
        assert route() == CHEAP
        assert router.alive
        assert "settings NOT reloaded" in router.log_tail(50)


def test_admin_key_is_secret_in_repr() -> None:
    settings = load_settings(server={"admin_keys": [ADMIN_KEY]})
    assert ADMIN_KEY not in repr(settings)


def test_requests_in_flight_during_reloads_are_all_answered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Reloads swapping the weights back and forth under a steady stream of chats (and the
    learner rebuilt each time: the overlay alternates too) lose no request."""
    overlay = tmp_path / "priors-b.yaml"
    overlay.write_text(json.dumps({CHEAP: {"ttft_s": 1.5, "tpot_s": 0.04, "quality": 0.7}}))
    with file_stack(monkeypatch, tmp_path, SPEED) as stack:
        statuses: list[int] = []
        done = threading.Event()

        def chat() -> None:
            with httpx.Client(base_url=str(stack.http.base_url), timeout=10.0) as client:
                for _ in range(60):  # bounded in count; each request bounded by its timeout
                    body = user_body(model="auto:speed", stream=len(statuses) % 3 == 0)
                    statuses.append(client.post("/v1/chat/completions", json=body).status_code)
            done.set()

        worker = threading.Thread(target=chat, daemon=True)
        worker.start()
        reloads = 0
        while reloads < 2 or (not done.is_set() and reloads < 10):
            extra = SPEED_BY_COST if reloads % 2 else {**SPEED, "catalogue": {"overlay": str(overlay)}}
            stack.write(extra)
            assert stack.reload().status_code == 200
            reloads += 1
        worker.join(60.0)
        assert not worker.is_alive()
        assert statuses == [200] * 60


def _simulated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A settings file for an in-process service on the simulator, no ROUTER_* from outside."""
    for name in [n for n in os.environ if n.startswith("ROUTER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(SIMULATOR_URL_ENV, "http://127.0.0.1:9/v1")  # never called: no request is sent
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({"upstream": {"simulate": "always"}}))
    return path


def test_reload_listeners_hear_each_swap_and_a_failing_one_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What settings build outside the router (evaluator hooks) rebuilds itself from a listener."""
    path = _simulated_settings(monkeypatch, tmp_path)

    async def main() -> None:
        service = build_service(load_settings(path))
        async with service.open() as running, operations(running) as ops:
            heard: list[int] = []
            ops.reloader.listeners += [lambda s: heard.append(s.routing.top_k), lambda s: 1 / 0]
            path.write_text(yaml.safe_dump({"upstream": {"simulate": "always"}, "routing": {"top_k": 2}}))
            report = await ops.reloader.reload("test")
            assert report.ok and heard == [2]
            assert running.service.router.config.top_k == 2

    asyncio.run(main())


def test_answered_requests_are_kept_once_by_the_feedback_store_across_reloads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``learning.feedback_memory`` bounds one copy: the store's, not the router's as well."""
    path = _simulated_settings(monkeypatch, tmp_path)

    async def main() -> None:
        service = build_service(load_settings(path))
        async with service.open() as running, operations(running) as ops:
            assert running.pipeline.feedback is not None and running.service.router.answers is None
            path.write_text(yaml.safe_dump({"upstream": {"simulate": "always"}, "routing": {"top_k": 2}}))
            assert (await ops.reloader.reload("test")).ok
            assert running.service.router.config.top_k == 2 and running.service.router.answers is None

    asyncio.run(main())

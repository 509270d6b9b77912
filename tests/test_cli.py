from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from adaptive_router._cli import main
from adaptive_router.core import load_bundled

REPO = Path(__file__).resolve().parents[1]
MODES = ["speed", "cost", "quality", "balanced"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI reads ./settings.yaml, ./.env and ROUTER_*: none from the repository or shell may leak in.
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("ROUTER_"):
            monkeypatch.delenv(name)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run a command line argparse must refuse; return its stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    return err


# --- models ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [None, *MODES])
def test_models_json_ranked_by_score(capsys: pytest.CaptureFixture[str], mode: str | None) -> None:
    argv = ["models", "--json"] + (["--mode", mode] if mode else [])
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    rows: list[dict[str, Any]] = json.loads(out)
    # every bundled model but the rate-limited ':free' ones routing.deny excludes by default
    routable = {m for m in load_bundled().ids if not m.endswith(":free")}
    assert len(routable) < len(load_bundled())
    assert {r["model"] for r in rows} == routable
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert {r["mode"] for r in rows} == {mode or "default"}
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    for row in rows:  # the shown terms are the parts of the shown score
        assert row["latency"] + row["cost"] + row["quality"] == pytest.approx(row["score"], abs=2e-4)


def test_models_modes_rank_differently(capsys: pytest.CaptureFixture[str]) -> None:
    orders = {}
    for mode in ("speed", "quality"):
        code, out, _ = _run(capsys, "models", "--json", "--mode", mode)
        assert code == 0
        orders[mode] = [r["model"] for r in json.loads(out)]
    assert orders["speed"] != orders["quality"]


def test_models_limit(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "models", "--json", "--limit", "3")
    assert code == 0
    limited = json.loads(out)
    _, out, _ = _run(capsys, "models", "--json")
    assert limited == json.loads(out)[:3]


def test_models_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "models", "--mode", "cost", "--limit", "2")
    assert code == 0
    _, json_out, _ = _run(capsys, "models", "--json", "--mode", "cost", "--limit", "2")
    for row in json.loads(json_out):
        assert row["model"] in out


def test_models_unknown_mode_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "models", "--mode", "turbo")
    assert code == 2
    assert "turbo" in err
    assert out == ""


def test_models_json_subprocess() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, "-m", "adaptive_router", "models", "--json", "--limit", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 3
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert all(r["model"] in load_bundled() for r in rows)


# --- route --------------------------------------------------------------------------------


def test_route_dry_run_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(
        capsys, "route", "Write a Python function that merges two lists", "--dry-run", "--json"
    )
    assert code == 0, err
    decision = json.loads(out)
    assert {"model", "fallbacks", "reason", "propensity", "candidates"} <= set(decision)
    assert decision["model"] in load_bundled()
    assert decision["model"] not in decision["fallbacks"]
    assert 1 <= len(decision["fallbacks"]) <= 3  # top_k 4: the choice and three fallbacks
    assert [c["model"] for c in decision["candidates"]] == [decision["model"], *decision["fallbacks"]]
    assert 0.0 < decision["propensity"] <= 1.0
    assert decision["reason"].startswith("default mode")
    assert decision["profile"]["task"] == "code"
    assert decision["mode"] == "default"


def test_route_dry_run_priority_and_weights(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "route", "hello", "--dry-run", "--json", "--priority", "speed")
    assert code == 0
    decision = json.loads(out)
    assert decision["mode"] == "speed"
    assert decision["reason"].startswith("speed mode")
    code, out, _ = _run(capsys, "route", "hello", "--dry-run", "--json", "--weights", "2,1,1")
    assert code == 0
    decision = json.loads(out)
    assert decision["mode"] == "custom"
    assert decision["weights"] == {"latency": 0.5, "cost": 0.25, "quality": 0.25}


def test_route_dry_run_constraints_are_applied(capsys: pytest.CaptureFixture[str]) -> None:
    catalogue = load_bundled()
    argv = [
        "route",
        "Describe this picture",
        "--dry-run",
        "--json",
        "--allow",
        "openai/*",
        "--capability",
        "vision",
    ]
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    decision = json.loads(out)
    for model_id in [decision["model"], *decision["fallbacks"]]:
        assert model_id.startswith("openai/")
        assert "vision" in catalogue.model(model_id).capabilities


def test_route_dry_run_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "route", "Translate into French: good night", "--dry-run")
    assert code == 0
    assert "model:" in out and "fallbacks:" in out and "reason:" in out
    assert "task=translation" in out


def test_route_max_latency_unmeetable_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "route", "hello", "--dry-run", "--max-latency", "1")
    assert code == 1
    assert "max_latency_ms" in err
    assert "Traceback" not in err
    assert out == ""


def test_route_unknown_priority_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "route", "hello", "--dry-run", "--priority", "turbo")
    assert code == 2
    assert "'turbo'" in err
    assert "speed" in err  # the known modes are listed
    assert out == ""


@pytest.mark.parametrize("weights", ["1,2", "a,b,c", "0,0,0", "-1,1,1", "nan,1,1"])
def test_route_bad_weights_exit_2(capsys: pytest.CaptureFixture[str], weights: str) -> None:
    err = _usage_error(capsys, "route", "hello", "--dry-run", "--weights", weights)
    assert "--weights" in err


def test_route_unknown_capability_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "route", "hello", "--dry-run", "--capability", "telepathy")
    assert code == 2
    assert "telepathy" in err


# --- benchmark ------------------------------------------------------------------------------


def test_benchmark_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "benchmark", "--iterations", "500", "--models", "50", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["models"] == 50
    assert result["iterations"] == 500
    for key in ("p50_us", "p99_us", "per_second"):
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, key
    assert result["p50_us"] <= result["p99_us"]


@pytest.mark.parametrize("iterations", ["0", "-3", "many"])
def test_benchmark_bad_iterations_exit_2(capsys: pytest.CaptureFixture[str], iterations: str) -> None:
    err = _usage_error(capsys, "benchmark", "--iterations", iterations)
    assert "--iterations" in err


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
@pytest.mark.parametrize("command", ["serve", "simulate-upstream"])
def test_a_port_out_of_range_exits_2(capsys: pytest.CaptureFixture[str], command: str, port: str) -> None:
    # serve --port 99999 was a traceback (bind overflow); simulate-upstream served on another port
    err = _usage_error(capsys, command, "--port", port)
    assert "--port" in err and "65535" in err and "Traceback" not in err


# --- configuration --------------------------------------------------------------------------


def test_config_bad_settings_file_exits_2_naming_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("routing:\n  default_weights: {latency: -1, cost: 0.5, quality: 0.5}\n", encoding="utf-8")
    code, out, err = _run(capsys, "--config", str(path), "models")
    assert code == 2
    assert "routing.default_weights.latency" in err
    assert "Traceback" not in err
    assert out == ""


def test_config_missing_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _run(capsys, "--config", str(tmp_path / "absent.yaml"), "models")
    assert code == 2
    assert "absent.yaml" in err


def test_config_file_modes_reach_the_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "custom.yaml"
    path.write_text("routing:\n  modes:\n    frugal: {latency: 0, cost: 1, quality: 0}\n", encoding="utf-8")
    code, out, err = _run(
        capsys, "--config", str(path), "route", "hi", "--dry-run", "--json", "--mode", "frugal"
    )
    assert code == 0, err
    assert json.loads(out)["mode"] == "frugal"


def test_settings_yaml_in_working_directory_is_read(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "settings.yaml").write_text(
        "routing:\n  modes:\n    frugal: {latency: 0, cost: 1, quality: 0}\n", encoding="utf-8"
    )
    code, out, err = _run(capsys, "models", "--json", "--mode", "frugal", "--limit", "1")
    assert code == 0, err
    assert json.loads(out)[0]["mode"] == "frugal"


def test_no_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    _usage_error(capsys)


def test_route_help_explains_every_option() -> None:
    # `route` is the first command a user tries; its --help listed bare flags
    from adaptive_router._cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    bare = [a.dest for a in sub.choices["route"]._actions if not a.help]
    assert bare == []

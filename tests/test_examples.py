"""What the repository ships for a fresh clone: the example scenario, the data sample, the
licence and the container files (the README's examples themselves run in test_readme.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from adaptive_router import ConfigError, load_bundled
from adaptive_router.simulator import (
    create_simulator_app,
    load_scenario,
    parse_scenario,
    sim_models_from_catalogue,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def test_example_scenario_is_valid_for_the_bundled_catalogue() -> None:
    scenario = load_scenario(EXAMPLES / "scenario.yaml")
    assert scenario.events and scenario.models
    assert {e.action for e in scenario.events} == {"slow", "fail", "recover", "rate_limit"}
    create_simulator_app(sim_models_from_catalogue(load_bundled()), scenario)  # every glob matches


def test_scenario_with_a_glob_matching_nothing_is_refused() -> None:
    data = yaml.safe_load((EXAMPLES / "scenario.yaml").read_text(encoding="utf-8"))
    data["models"]["openai/gpt-4o-minii"] = {"ttft_s": 1.0}
    with pytest.raises(ConfigError, match="matches no simulated model"):
        create_simulator_app(sim_models_from_catalogue(load_bundled()), parse_scenario(data))


def test_data_sample_is_small_and_only_licensed_sources() -> None:
    files = [p for p in (EXAMPLES / "data").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 2_000_000
    with (EXAMPLES / "data/outcomes/outcomes.csv").open() as handle:
        sources = {row["source"] for row in csv.DictReader(handle)}
    assert sources == {"routellm"}, "RouterBench has no licence: never copied"
    with (EXAMPLES / "data/outcomes/prompts.jsonl").open() as handle:
        assert {json.loads(line)["source"] for line in handle} == {"routellm"}


def test_licence_is_apache_2() -> None:
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_container_files_follow_the_readme_commands() -> None:
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert "pip install" in dockerfile and ".[all]" in dockerfile
    assert '"adaptive-router", "serve"' in dockerfile
    compose = yaml.safe_load((REPO / "compose.yaml").read_text(encoding="utf-8"))
    router, valkey = compose["services"]["router"], compose["services"]["valkey"]
    assert router["environment"]["ROUTER_REDIS__URL"] == "redis://valkey:6379/0"
    assert valkey["image"].startswith("valkey/valkey")

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adaptive_router import CatalogueError
from tools import build_snapshot as _snapshot
from tools.build_snapshot import (
    CAPABILITIES,
    LatencyClass,
    QualityFit,
    build_catalogue,
    capabilities,
    catalogue_entry,
    check_selectable,
    latency_classes,
    quality_prior,
    render,
    size_class,
    thinks_by_default,
    ttft_prior,
)

REPO = Path(__file__).resolve().parents[1]
CATALOGUE = REPO / "adaptive_router" / "data" / "catalogue.json"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MODELS_JSON = SHARED_DATA / "catalog" / "openrouter_api_v1_models.json"
LLMPERF_CSV = SHARED_DATA / "latency" / "llmperf_requests.csv"
needs_shared_data = pytest.mark.skipif(
    not (MODELS_JSON.is_file() and LLMPERF_CSV.is_file()),
    reason=f"raw inputs not found under {SHARED_DATA} (../shared/data beside the repository)",
)

MODEL_KEYS = {
    "id",
    "name",
    "price_prompt",
    "price_completion",
    "context_length",
    "max_output_tokens",
    "capabilities",
    "priors",
    "prior_sources",
}
PRIOR_KEYS = {"ttft_s", "tpot_s", "quality"}
PROVIDERS = {
    "openai",
    "anthropic",
    "google",
    "meta-llama",
    "mistralai",
    "deepseek",
    "qwen",
    "x-ai",
    "cohere",
    "amazon",
    "microsoft",
}
LLMPERF_HEADER = (
    "provider,llama2_size,provider_model,concurrency,request_idx,error_code,error_msg,"
    "inter_token_latency_s,ttft_s,end_to_end_latency_s,request_output_throughput_token_per_s,"
    "number_total_tokens,number_output_tokens,number_input_tokens"
)


def committed() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(CATALOGUE.read_text(encoding="utf-8"))
    return document


def models() -> list[dict[str, Any]]:
    return list(committed()["models"])


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "build_snapshot.py"), *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def llmperf_row(size: str, ttft: float, e2e: float, tokens: int = 151, error: str = "") -> str:
    itl = e2e / tokens
    return f"p,{size},m,5,0,{error},,{itl},{ttft},{e2e},1.0,{550 + tokens},{tokens},550"


def write_llmperf(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join([LLMPERF_HEADER, *rows]) + "\n", encoding="utf-8")
    return path


def openrouter_entry(model_id: str, **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": model_id,
        "name": f"Test: {model_id}",
        "created": 1_750_000_000,
        "context_length": 128000,
        "architecture": {"input_modalities": ["text"], "output_modalities": ["text"]},
        "pricing": {"prompt": "0.000001", "completion": "0.000002"},
        "top_provider": {"max_completion_tokens": None},
        "supported_parameters": ["max_tokens"],
    }
    entry.update(overrides)
    return entry


# --- the committed catalogue ------------------------------------------------------------------


@needs_shared_data
def test_snapshot_committed_file_equals_builder_output() -> None:
    built = render(build_catalogue(MODELS_JSON, LLMPERF_CSV))
    assert CATALOGUE.read_text(encoding="utf-8") == built


@needs_shared_data
def test_snapshot_cli_is_byte_reproducible(tmp_path: Path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert run_cli(MODELS_JSON, LLMPERF_CSV, "-o", first).returncode == 0
    assert run_cli(MODELS_JSON, LLMPERF_CSV, "-o", second).returncode == 0
    assert first.read_bytes() == second.read_bytes() == CATALOGUE.read_bytes()


def test_catalogue_header_names_schema_and_sources() -> None:
    document = committed()
    assert set(document) == {"schema", "attribution", "models"}
    assert document["schema"] == 1
    for source in ("OpenRouter", "llmperf-leaderboard", "Apache-2.0", "Artificial Analysis"):
        assert source in document["attribution"]


def test_catalogue_is_small() -> None:
    assert CATALOGUE.stat().st_size < 100_000


def test_catalogue_models_have_every_field_and_only_those() -> None:
    for model in models():
        assert set(model) == MODEL_KEYS, model["id"]
        assert set(model["priors"]) == PRIOR_KEYS, model["id"]
        assert set(model["prior_sources"]) == PRIOR_KEYS, model["id"]
        assert isinstance(model["name"], str) and model["name"], model["id"]
        assert isinstance(model["context_length"], int) and model["context_length"] > 0, model["id"]
        limit = model["max_output_tokens"]
        assert limit is None or (isinstance(limit, int) and limit > 0), model["id"]


def test_catalogue_ids_are_unique_and_sorted() -> None:
    ids = [model["id"] for model in models()]
    assert ids == sorted(set(ids))


def test_catalogue_prices_are_non_negative_floats() -> None:
    for model in models():
        for field in ("price_prompt", "price_completion"):
            assert isinstance(model[field], float | int), model["id"]
            assert model[field] >= 0, model["id"]


def test_catalogue_priors_are_in_range() -> None:
    for model in models():
        priors = model["priors"]
        assert 0 < priors["ttft_s"] < 60, model["id"]
        assert 0 < priors["tpot_s"] < 1, model["id"]
        assert 0 <= priors["quality"] <= 1, model["id"]


def test_catalogue_every_prior_has_a_source() -> None:
    for model in models():
        for key, source in model["prior_sources"].items():
            assert isinstance(source, str) and source.strip(), (model["id"], key)


def test_catalogue_has_no_batch_alias_or_pseudo_models() -> None:
    for model in models():
        assert not model["id"].endswith(":batch")
        assert not model["id"].startswith("~")
        assert not model["id"].startswith("openrouter/")
        assert model["price_prompt"] != -1 and model["price_completion"] != -1


def test_catalogue_spread_covers_providers_free_and_expensive_models() -> None:
    entries = models()
    assert len(entries) >= 45
    assert {model["id"].split("/")[0] for model in entries} >= PROVIDERS
    free = [m for m in entries if m["id"].endswith(":free") or m["price_completion"] == 0]
    assert len(free) >= 2
    paid = [m["price_completion"] for m in entries if m["price_completion"] > 0]
    assert max(paid) / min(paid) > 100


def test_catalogue_capabilities_come_from_the_vocabulary() -> None:
    for model in models():
        caps = model["capabilities"]
        assert caps == sorted(set(caps)), model["id"]
        assert set(caps) <= CAPABILITIES, model["id"]
        assert "streaming" in caps, model["id"]


def test_catalogue_keeps_no_prose_from_openrouter() -> None:
    text = CATALOGUE.read_text(encoding="utf-8")
    assert '"description"' not in text


# --- the rules --------------------------------------------------------------------------------


def test_size_class_boundaries() -> None:
    assert size_class(0.0) == "7b"
    assert size_class(0.49e-6) == "7b"
    assert size_class(0.5e-6) == "13b"
    assert size_class(4.99e-6) == "13b"
    assert size_class(5e-6) == "70b"
    assert size_class(600e-6) == "70b"


@given(st.floats(0, 1e-3), st.floats(0, 1e-3))
def test_size_class_is_monotone_in_price(a: float, b: float) -> None:
    order = {"7b": 0, "13b": 1, "70b": 2}
    low, high = sorted((a, b))
    assert order[size_class(low)] <= order[size_class(high)]


def test_latency_classes_take_medians_of_successful_requests_only() -> None:
    rows = [
        llmperf_row("7b", ttft=0.1, e2e=1.6),
        llmperf_row("7b", ttft=0.3, e2e=3.3),
        llmperf_row("7b", ttft=0.2, e2e=2.2),
        llmperf_row("7b", ttft=9.0, e2e=99.0, error="429.0"),
        llmperf_row("13b", ttft=0.5, e2e=2.0),
        llmperf_row("70b", ttft=0.4, e2e=3.4),
    ]
    classes = latency_classes(csv.DictReader([LLMPERF_HEADER, *rows]))
    small = classes["7b"]
    assert small.requests == 3
    assert small.ttft_s == pytest.approx(0.2)
    # decode time per token: (e2e - ttft) / (tokens - 1) = 1.5/150, 3.0/150, 2.0/150
    assert small.tpot_s == pytest.approx(2.0 / 150)
    assert classes["70b"].tpot_s == pytest.approx(3.0 / 150)


def test_latency_classes_reject_a_size_without_successes() -> None:
    rows = [llmperf_row("7b", 0.1, 1.0), llmperf_row("13b", 0.1, 1.0), llmperf_row("70b", 1, 2, error="-1")]
    with pytest.raises(CatalogueError, match="70b"):
        latency_classes(csv.DictReader([LLMPERF_HEADER, *rows]))


def test_ttft_prior_adds_reasoning_tokens_for_thinking_models() -> None:
    latency = LatencyClass(size="70b", requests=10, ttft_s=0.4, tpot_s=0.02, itl_s=0.03)
    assert ttft_prior(latency, thinks=False) == pytest.approx(0.4)
    assert ttft_prior(latency, thinks=True) == pytest.approx(0.4 + _snapshot.REASONING_TOKENS * 0.02)


def test_thinks_by_default_unless_marked_off() -> None:
    reasoning = ["reasoning", "include_reasoning"]
    assert not thinks_by_default(openrouter_entry("a/plain"))
    assert thinks_by_default(openrouter_entry("a/r", supported_parameters=reasoning, reasoning=None))
    on = openrouter_entry("a/on", supported_parameters=reasoning, reasoning={"mandatory": False})
    off = openrouter_entry("a/off", supported_parameters=reasoning, reasoning={"default_enabled": False})
    assert thinks_by_default(on)
    assert not thinks_by_default(off)


def test_capabilities_map_parameters_and_modalities() -> None:
    entry = openrouter_entry(
        "a/m",
        supported_parameters=["tools", "response_format", "structured_outputs", "include_reasoning"],
        architecture={"input_modalities": ["text", "image"], "output_modalities": ["text"]},
    )
    everything = ["json_mode", "reasoning", "streaming", "structured_outputs", "tools", "vision"]
    assert capabilities(entry) == everything
    bare = openrouter_entry("a/n", supported_parameters=None, architecture=None)
    assert capabilities(bare) == ["streaming"]


@pytest.mark.parametrize(
    "quality_index, expected", [(-5.0, 0.40), (0.0, 0.40), (35.0, 0.675), (63.1, 0.895786), (140.0, 0.95)]
)
def test_quality_prior_scales_and_clamps(quality_index: float, expected: float) -> None:
    assert quality_prior(quality_index) == pytest.approx(expected)


@given(st.floats(0, 1e-2), st.integers(1_500_000_000, 2_000_000_000))
def test_quality_fit_prediction_stays_inside_the_observed_indices(price: float, created: int) -> None:
    fit = QualityFit(
        intercept=-44.0,
        per_log10_price=12.0,
        per_year=24.5,
        years=(2.0, 3.6),
        indices=(5.5, 63.1),
        rmse=6.5,
        n=100,
    )
    index, _, _ = fit.predict(price, created)
    assert 5.5 <= index <= 63.1
    assert 0 <= quality_prior(index) <= 1


@pytest.mark.parametrize("model_id", ["openai/gpt-4o:batch", "~openai/gpt-latest", "openrouter/auto"])
def test_check_selectable_refuses_batch_alias_and_router_ids(model_id: str) -> None:
    with pytest.raises(CatalogueError):
        check_selectable(model_id)


def test_catalogue_entry_refuses_pseudo_prices_and_non_chat_models() -> None:
    latency = LatencyClass(size="7b", requests=1, ttft_s=0.4, tpot_s=0.01, itl_s=0.02)
    classes = {size: latency for size in ("7b", "13b", "70b")}
    fit = QualityFit(0.0, 0.0, 0.0, (0.0, 9.0), (5.0, 60.0), 1.0, 10)
    pseudo = openrouter_entry("a/pseudo", pricing={"prompt": "-1", "completion": "-1"})
    embedder = openrouter_entry("a/embed", architecture={"output_modalities": ["embeddings"]})
    by_id = {"a/pseudo": pseudo, "a/embed": embedder}
    with pytest.raises(CatalogueError, match="pseudo-model"):
        catalogue_entry("a/pseudo", by_id, classes, fit)
    with pytest.raises(CatalogueError, match="not a chat model"):
        catalogue_entry("a/embed", by_id, classes, fit)
    with pytest.raises(CatalogueError, match="not in the OpenRouter response"):
        catalogue_entry("a/absent", by_id, classes, fit)


def test_catalogue_entry_gives_a_free_variant_its_paid_siblings_class() -> None:
    latency = {
        size: LatencyClass(size=size, requests=1, ttft_s=0.4, tpot_s=t, itl_s=t)
        for size, t in (("7b", 0.01), ("13b", 0.02), ("70b", 0.03))
    }
    fit = QualityFit(0.0, 0.0, 0.0, (0.0, 9.0), (5.0, 60.0), 1.0, 10)
    paid = openrouter_entry("a/big", pricing={"prompt": "0.000005", "completion": "0.00002"})
    free = openrouter_entry("a/big:free", pricing={"prompt": "0", "completion": "0"})
    entry = catalogue_entry("a/big:free", {"a/big": paid, "a/big:free": free}, latency, fit)
    assert entry["price_completion"] == 0
    assert entry["priors"]["tpot_s"] == pytest.approx(0.03)
    assert "a/big" in entry["prior_sources"]["tpot_s"]
    assert entry["max_output_tokens"] is None


# --- the command line -------------------------------------------------------------------------


def test_cli_reports_a_missing_input_without_traceback(tmp_path: Path) -> None:
    csv_path = write_llmperf(tmp_path / "llmperf.csv", [llmperf_row("7b", 0.1, 1.0)])
    result = run_cli(tmp_path / "absent.json", csv_path, "-o", tmp_path / "out.json")
    assert result.returncode != 0
    assert result.stderr.startswith("error: ")
    assert "absent.json" in result.stderr and "cannot read" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.json").exists()


def test_cli_reports_malformed_json_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "models.json"
    bad.write_text('{"data": [', encoding="utf-8")
    csv_path = write_llmperf(tmp_path / "llmperf.csv", [llmperf_row("7b", 0.1, 1.0)])
    result = run_cli(bad, csv_path, "-o", tmp_path / "out.json")
    assert result.returncode != 0
    assert "not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_reports_a_response_without_data_list(tmp_path: Path) -> None:
    bad = tmp_path / "models.json"
    bad.write_text('{"models": []}', encoding="utf-8")
    csv_path = write_llmperf(tmp_path / "llmperf.csv", [llmperf_row("7b", 0.1, 1.0)])
    result = run_cli(bad, csv_path, "-o", tmp_path / "out.json")
    assert result.returncode != 0
    assert "'data' list" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_reports_a_malformed_csv_without_traceback(tmp_path: Path) -> None:
    models_json = tmp_path / "models.json"
    models_json.write_text('{"data": []}', encoding="utf-8")
    bad = tmp_path / "llmperf.csv"
    bad.write_text("provider,ttft_s\nx,0.1\n", encoding="utf-8")
    result = run_cli(models_json, bad, "-o", tmp_path / "out.json")
    assert result.returncode != 0
    assert "missing column" in result.stderr and "llama2_size" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_reports_a_non_numeric_csv_value_without_traceback(tmp_path: Path) -> None:
    models_json = tmp_path / "models.json"
    models_json.write_text('{"data": []}', encoding="utf-8")
    row = llmperf_row("7b", 0.1, 1.0).replace(",0.1,", ",soon,")
    result = run_cli(models_json, write_llmperf(tmp_path / "llmperf.csv", [row]), "-o", tmp_path / "o")
    assert result.returncode != 0
    assert "ttft_s" in result.stderr
    assert "Traceback" not in result.stderr

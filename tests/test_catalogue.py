from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adaptive_router import CatalogueError, RouterError
from adaptive_router.core import (
    CAPABILITIES,
    Catalogue,
    Model,
    apply_overlay,
    load_bundled,
    load_catalogue,
    load_openrouter,
)
from adaptive_router.core._catalogue import capability_bits

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MODELS_JSON = SHARED_DATA / "catalog" / "openrouter_api_v1_models.json"
needs_models_json = pytest.mark.skipif(
    not MODELS_JSON.is_file(),
    reason=f"OpenRouter models response not found at {MODELS_JSON} (../shared/data beside the repository)",
)

COLUMNS = (
    "price_prompt",
    "price_completion",
    "context_length",
    "max_output_tokens",
    "capabilities",
    "ttft_prior",
    "tpot_prior",
    "quality_prior",
)


def _entry(model_id: str = "acme/chat-1", **fields: Any) -> dict[str, Any]:
    """One well-formed OpenRouter ``/models`` entry; ``fields`` replace its keys."""
    entry: dict[str, Any] = {
        "id": model_id,
        "name": f"Acme: {model_id}",
        "context_length": 8192,
        "architecture": {"input_modalities": ["text"], "output_modalities": ["text"]},
        "pricing": {"prompt": "0.000001", "completion": "0.000002"},
        "top_provider": {"context_length": 8192, "max_completion_tokens": 4096},
        "supported_parameters": ["max_tokens", "temperature"],
    }
    entry.update(fields)
    return entry


def _write(tmp_path: Path, payload: Any) -> Path:
    path = tmp_path / "models.json"
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


def _model(model_id: str, **fields: Any) -> Model:
    values: dict[str, Any] = {"price_prompt": 1e-6, "price_completion": 2e-6, "context_length": 8192}
    values.update(fields)
    return Model(id=model_id, **values)


@pytest.fixture(scope="module")
def bundled() -> Catalogue:
    return load_bundled()


@pytest.fixture(scope="module")
def raw_models() -> list[dict[str, Any]]:
    if not MODELS_JSON.is_file():
        pytest.skip(f"OpenRouter models response not found at {MODELS_JSON}")
    data: list[dict[str, Any]] = json.loads(MODELS_JSON.read_text(encoding="utf-8"))["data"]
    return data


@pytest.fixture(scope="module")
def openrouter() -> Catalogue:
    if not MODELS_JSON.is_file():
        pytest.skip(f"OpenRouter models response not found at {MODELS_JSON}")
    return load_openrouter(MODELS_JSON)


def _is_pseudo(entry: dict[str, Any]) -> bool:
    return "-1" in (entry["pricing"].get("prompt"), entry["pricing"].get("completion"))


def _answers_in_text(entry: dict[str, Any]) -> bool:
    return "text" in ((entry.get("architecture") or {}).get("output_modalities") or ["text"])


# --- the bundled snapshot -------------------------------------------------------------------


def test_load_bundled_has_enough_unique_models(bundled: Catalogue) -> None:
    assert len(bundled) >= 45
    assert len(set(bundled.ids)) == len(bundled.ids)
    assert bundled.source == "bundled"
    assert load_catalogue().ids == bundled.ids


def test_load_bundled_columns_are_aligned_with_ids(bundled: Catalogue) -> None:
    for name in COLUMNS:
        assert getattr(bundled, name).shape == (len(bundled.ids),), name
    for model_id in bundled.ids:
        row = bundled.index[model_id]
        model = bundled.model(model_id)
        assert bundled.ids[row] == model.id == model_id
        assert bundled.price_prompt[row] == model.price_prompt
        assert bundled.price_completion[row] == model.price_completion
        assert bundled.context_length[row] == model.context_length
        assert bundled.ttft_prior[row] == model.ttft_s
        assert bundled.tpot_prior[row] == model.tpot_s
        assert bundled.quality_prior[row] == model.quality
    assert bundled.max_context == max(m.context_length for m in bundled.models)


def test_load_bundled_unknown_max_output_is_unbounded(bundled: Catalogue) -> None:
    unknown = [m for m in bundled.models if m.max_output_tokens == 0]
    known = [m for m in bundled.models if m.max_output_tokens > 0]
    assert known
    for model in unknown:
        assert math.isinf(bundled.max_output_tokens[bundled.index[model.id]])
    for model in known:
        assert bundled.max_output_tokens[bundled.index[model.id]] == model.max_output_tokens


def test_catalogue_max_output_zero_means_unbounded() -> None:
    catalogue = Catalogue(
        [_model("a/unknown", max_output_tokens=0), _model("a/known", max_output_tokens=100)]
    )
    assert np.isinf(catalogue.max_output_tokens[catalogue.index["a/unknown"]])
    assert catalogue.max_output_tokens[catalogue.index["a/known"]] == 100


def test_load_bundled_capability_bits_match_each_model(bundled: Catalogue) -> None:
    bits = [capability_bits([name]) for name in CAPABILITIES]
    assert len(set(bits)) == len(CAPABILITIES)
    assert all(b > 0 and b & (b - 1) == 0 for b in bits)  # one distinct bit per capability
    for model in bundled.models:
        row = bundled.index[model.id]
        have = {name for name, bit in zip(CAPABILITIES, bits, strict=True) if bundled.capabilities[row] & bit}
        assert have == set(model.capabilities), model.id
    assert any("vision" in m.capabilities for m in bundled.models)
    assert any("vision" not in m.capabilities for m in bundled.models)


def test_catalogue_columns_are_read_only(bundled: Catalogue) -> None:
    with pytest.raises(ValueError):
        bundled.price_prompt[0] = 0.0
    with pytest.raises(ValueError):
        bundled.glob_mask(["*"])[0] = False


def test_catalogue_model_unknown_id_names_it(bundled: Catalogue) -> None:
    with pytest.raises(CatalogueError) as err:
        bundled.model("nobody/nothing")
    assert err.value.model == "nobody/nothing"
    assert err.value.field == "id"
    assert "nobody/nothing" not in bundled


def test_catalogue_empty_is_rejected() -> None:
    with pytest.raises(CatalogueError) as err:
        Catalogue([])
    assert err.value.field == "models"


def test_catalogue_duplicate_ids_rejected() -> None:
    with pytest.raises(CatalogueError) as err:
        Catalogue([_model("a/one"), _model("a/two"), _model("a/one")])
    assert err.value.model == "a/one"
    assert err.value.field == "id"
    assert "a/one" in str(err.value)


def test_catalogue_with_models_rejects_an_existing_id(bundled: Catalogue) -> None:
    with pytest.raises(CatalogueError) as err:
        bundled.with_models([bundled.models[0]])
    assert err.value.model == bundled.ids[0]
    extended = bundled.with_models([_model("local/llama")])
    assert len(extended) == len(bundled) + 1
    assert "local/llama" in extended
    assert "local/llama" not in bundled


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"price_prompt": -1e-6}, "price_prompt"),
        ({"price_completion": math.nan}, "price_completion"),
        ({"context_length": 0}, "context_length"),
        ({"max_output_tokens": -1}, "max_output_tokens"),
        ({"ttft_s": 0.0}, "ttft_s"),
        ({"tpot_s": -0.1}, "tpot_s"),
        ({"quality": 1.5}, "quality"),
        ({"capabilities": frozenset({"telepathy"})}, "capabilities"),
    ],
)
def test_model_invalid_field_names_model_and_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(CatalogueError) as err:
        _model("acme/bad", **fields)
    assert err.value.model == "acme/bad"
    assert err.value.field == field
    assert isinstance(err.value, RouterError)


# --- OpenRouter's /api/v1/models, the real response -------------------------------------------


@needs_models_json
def test_load_openrouter_skips_router_pseudo_models(
    openrouter: Catalogue, raw_models: list[dict[str, Any]]
) -> None:
    pseudo = [e["id"] for e in raw_models if _is_pseudo(e)]
    assert "openrouter/auto" in pseudo
    assert not set(pseudo) & set(openrouter.ids)


@needs_models_json
def test_load_openrouter_skips_models_without_text_output(
    openrouter: Catalogue, raw_models: list[dict[str, Any]]
) -> None:
    no_text = [e["id"] for e in raw_models if not _answers_in_text(e)]
    assert len(no_text) >= 10  # embeddings, image, speech and video models
    assert not set(no_text) & set(openrouter.ids)


@needs_models_json
def test_load_openrouter_keeps_every_other_model(
    openrouter: Catalogue, raw_models: list[dict[str, Any]]
) -> None:
    expected = {e["id"] for e in raw_models if not _is_pseudo(e) and _answers_in_text(e)}
    assert set(openrouter.ids) == expected
    assert openrouter.source == str(MODELS_JSON)


@needs_models_json
def test_load_openrouter_keeps_free_models_at_price_zero(
    openrouter: Catalogue, raw_models: list[dict[str, Any]]
) -> None:
    free = [
        e["id"]
        for e in raw_models
        if _answers_in_text(e)
        and float(e["pricing"]["prompt"]) == 0
        and float(e["pricing"]["completion"]) == 0
    ]
    assert free
    for model_id in free:
        row = openrouter.index[model_id]
        assert openrouter.price_prompt[row] == 0.0
        assert openrouter.price_completion[row] == 0.0


@needs_models_json
def test_load_openrouter_parses_prices_from_strings(
    openrouter: Catalogue, raw_models: list[dict[str, Any]]
) -> None:
    by_id = {e["id"]: e for e in raw_models}
    assert all(isinstance(by_id[i]["pricing"]["prompt"], str) for i in openrouter.ids)
    for model_id in openrouter.ids:
        row = openrouter.index[model_id]
        assert openrouter.price_prompt[row] == float(by_id[model_id]["pricing"]["prompt"])
        assert openrouter.price_completion[row] == float(by_id[model_id]["pricing"]["completion"])
    assert openrouter.price_completion.max() > 0


@needs_models_json
def test_load_openrouter_reads_limits_and_capabilities(
    openrouter: Catalogue, raw_models: list[dict[str, Any]]
) -> None:
    by_id = {e["id"]: e for e in raw_models}
    for model in openrouter.models:
        entry = by_id[model.id]
        row = openrouter.index[model.id]
        assert model.context_length == entry["context_length"]
        limit = (entry.get("top_provider") or {}).get("max_completion_tokens")
        assert openrouter.max_output_tokens[row] == (limit if limit else math.inf)
        params = set(entry.get("supported_parameters") or ())
        assert ("tools" in model.capabilities) == ("tools" in params)
        assert ("vision" in model.capabilities) == ("image" in entry["architecture"]["input_modalities"])
        assert ("json_mode" in model.capabilities) == ("response_format" in params)


# --- OpenRouter format: malformed inputs --------------------------------------------------------


def test_load_openrouter_minimal_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path, {"data": [_entry("acme/a"), _entry("acme/b", pricing={"prompt": "0", "completion": "0"})]}
    )
    catalogue = load_openrouter(path)
    assert catalogue.ids == ("acme/a", "acme/b")
    assert catalogue.price_prompt.tolist() == [1e-6, 0.0]
    assert catalogue.max_output_tokens.tolist() == [4096.0, 4096.0]
    assert load_openrouter(str(path)).ids == catalogue.ids  # a str path works too


def test_load_openrouter_missing_pricing_names_model_and_field(tmp_path: Path) -> None:
    entry = _entry("acme/unpriced")
    del entry["pricing"]
    with pytest.raises(CatalogueError) as err:
        load_openrouter(_write(tmp_path, {"data": [_entry("acme/fine"), entry]}))
    assert (err.value.model, err.value.field) == ("acme/unpriced", "pricing")
    assert "acme/unpriced" in str(err.value) and "pricing" in str(err.value)


@pytest.mark.parametrize(
    ("side", "value"), [("prompt", "cheap"), ("completion", "1e-6 USD"), ("prompt", None)]
)
def test_load_openrouter_non_numeric_price_names_field(tmp_path: Path, side: str, value: Any) -> None:
    pricing = {"prompt": "0.000001", "completion": "0.000002", side: value}
    with pytest.raises(CatalogueError) as err:
        load_openrouter(_write(tmp_path, {"data": [_entry("acme/odd", pricing=pricing)]}))
    assert (err.value.model, err.value.field) == ("acme/odd", f"pricing.{side}")
    assert f"pricing.{side}" in str(err.value)


def test_load_openrouter_non_finite_price_rejected(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError) as err:
        load_openrouter(
            _write(tmp_path, {"data": [_entry("acme/inf", pricing={"prompt": "inf", "completion": "0"})]})
        )
    assert (err.value.model, err.value.field) == ("acme/inf", "pricing.prompt")


@pytest.mark.parametrize("context", [None, 0, -5, "8192"])
def test_load_openrouter_bad_context_length_names_field(tmp_path: Path, context: Any) -> None:
    entry = _entry("acme/nocontext", context_length=context, top_provider={"max_completion_tokens": 100})
    with pytest.raises(CatalogueError) as err:
        load_openrouter(_write(tmp_path, {"data": [entry]}))
    assert (err.value.model, err.value.field) == ("acme/nocontext", "context_length")


def test_load_openrouter_missing_context_length_falls_back_to_top_provider() -> None:
    entry = _entry("acme/ctx")
    del entry["context_length"]
    entry["top_provider"] = {"context_length": 32768, "max_completion_tokens": None}
    catalogue = load_openrouter({"data": [entry]})
    assert catalogue.context_length.tolist() == [32768.0]
    assert math.isinf(catalogue.max_output_tokens[0])


@pytest.mark.parametrize("payload", [{"data": {"acme/a": {}}}, {"data": None}, {"models": []}, [_entry()]])
def test_load_openrouter_data_not_a_list_rejected(tmp_path: Path, payload: Any) -> None:
    with pytest.raises(CatalogueError) as err:
        load_openrouter(_write(tmp_path, payload))
    assert err.value.field == "data"


def test_load_openrouter_entry_without_string_id_rejected() -> None:
    with pytest.raises(CatalogueError) as err:
        load_openrouter({"data": [_entry(), {"name": "no id", "pricing": {}}]})
    assert err.value.field == "id"


def test_load_openrouter_bad_json_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"data": [', encoding="utf-8")
    with pytest.raises(CatalogueError) as err:
        load_openrouter(path)
    assert err.value.field == "file"
    assert str(path) in str(err.value)
    assert isinstance(err.value.__cause__, json.JSONDecodeError)


@pytest.mark.parametrize("name", ["does-not-exist.json", "a-directory"])
def test_load_openrouter_unreadable_path_names_path(tmp_path: Path, name: str) -> None:
    (tmp_path / "a-directory").mkdir()
    path = tmp_path / name
    with pytest.raises(CatalogueError) as err:
        load_openrouter(path)
    assert err.value.field == "file"
    assert str(path) in str(err.value)


def test_load_openrouter_duplicate_ids_rejected(tmp_path: Path) -> None:
    payload = {"data": [_entry("acme/twin"), _entry("acme/other"), _entry("acme/twin")]}
    with pytest.raises(CatalogueError) as err:
        load_openrouter(_write(tmp_path, payload))
    assert (err.value.model, err.value.field) == ("acme/twin", "id")


def test_load_openrouter_nothing_routable_rejected() -> None:
    only_pseudo = _entry("openrouter/auto", pricing={"prompt": "-1", "completion": "-1"})
    with pytest.raises(CatalogueError) as err:
        load_openrouter({"data": [only_pseudo]})
    assert err.value.field == "models"


def test_load_openrouter_negative_price_other_than_sentinel_rejected() -> None:
    corrupt = _entry("acme/corrupt", pricing={"prompt": "-0.000001", "completion": "0.000002"})
    with pytest.raises(CatalogueError) as err:
        load_openrouter({"data": [_entry("acme/fine"), corrupt]})
    assert (err.value.model, err.value.field) == ("acme/corrupt", "pricing.prompt")


def test_load_openrouter_non_numeric_max_completion_tokens_names_field() -> None:
    entry = _entry("acme/limit", top_provider={"context_length": 8192, "max_completion_tokens": "lots"})
    with pytest.raises(CatalogueError) as err:
        load_openrouter({"data": [entry]})
    assert (err.value.model, err.value.field) == ("acme/limit", "top_provider.max_completion_tokens")


# --- overlays ---------------------------------------------------------------------------------


def test_apply_overlay_by_exact_id(bundled: Catalogue) -> None:
    target = "openai/gpt-4o-mini"
    assert target in bundled
    changed = apply_overlay(
        bundled, {target: {"quality": 0.91, "tpot_s": 0.004, "source": "our eval, 2026-10"}}
    )
    row = changed.index[target]
    assert changed.quality_prior[row] == 0.91
    assert changed.tpot_prior[row] == 0.004
    assert changed.model(target).prior_sources["quality"] == "our eval, 2026-10"
    assert changed.model(target).prior_sources["tpot_s"] == "our eval, 2026-10"
    assert changed.model(target).ttft_s == bundled.model(target).ttft_s
    assert changed.model(target).prior_sources["ttft_s"] == bundled.model(target).prior_sources["ttft_s"]
    others = [i for i in range(len(bundled)) if i != row]
    assert np.array_equal(changed.quality_prior[others], bundled.quality_prior[others])
    assert bundled.model(target).quality != 0.91  # the input catalogue is left as it was
    assert changed.ids == bundled.ids


def test_apply_overlay_by_glob(bundled: Catalogue) -> None:
    changed = apply_overlay(bundled, {"openai/*": {"ttft_s": 0.3}})
    matched = [i for i in bundled.ids if i.startswith("openai/")]
    assert len(matched) >= 2
    for model_id in bundled.ids:
        row = bundled.index[model_id]
        expected = 0.3 if model_id in matched else bundled.ttft_prior[row]
        assert changed.ttft_prior[row] == expected, model_id
    assert changed.model(matched[0]).prior_sources["ttft_s"] == "overlay 'openai/*'"


def test_apply_overlay_later_entries_win(bundled: Catalogue) -> None:
    target = "openai/gpt-4o-mini"
    specific_last = apply_overlay(bundled, {"openai/*": {"quality": 0.6}, target: {"quality": 0.9}})
    glob_last = apply_overlay(bundled, {target: {"quality": 0.9}, "openai/*": {"quality": 0.6}})
    sibling = next(i for i in bundled.ids if i.startswith("openai/") and i != target)
    assert specific_last.model(target).quality == 0.9
    assert specific_last.model(sibling).quality == 0.6
    assert glob_last.model(target).quality == 0.6
    assert glob_last.model(target).prior_sources["quality"] == "overlay 'openai/*'"


def test_apply_overlay_unmatched_pattern_changes_nothing(bundled: Catalogue) -> None:
    changed = apply_overlay(bundled, {"nobody/*": {"quality": 0.99}})
    assert np.array_equal(changed.quality_prior, bundled.quality_prior)


def test_apply_overlay_unknown_field_named(bundled: Catalogue) -> None:
    with pytest.raises(CatalogueError) as err:
        apply_overlay(bundled, {"openai/*": {"quality": 0.5, "latency_ms": 300}})
    assert (err.value.model, err.value.field) == ("openai/*", "latency_ms")


@pytest.mark.parametrize(
    ("field", "value"), [("quality", -0.1), ("tpot_s", -1), ("ttft_s", "fast"), ("ttft_s", True)]
)
def test_apply_overlay_bad_value_names_field(bundled: Catalogue, field: str, value: Any) -> None:
    with pytest.raises(CatalogueError) as err:
        apply_overlay(bundled, {"anthropic/*": {field: value}})
    assert err.value.field == field
    assert field in str(err.value)


def test_apply_overlay_out_of_range_quality_names_model_and_field(bundled: Catalogue) -> None:
    with pytest.raises(CatalogueError) as err:
        apply_overlay(bundled, {"openai/gpt-4o-mini": {"quality": 1.5}})
    assert (err.value.model, err.value.field) == ("openai/gpt-4o-mini", "quality")


def test_apply_overlay_entry_not_a_mapping_rejected(bundled: Catalogue) -> None:
    with pytest.raises(CatalogueError) as err:
        apply_overlay(bundled, {"openai/*": 0.8})
    assert (err.value.model, err.value.field) == ("openai/*", "overlay")


def test_apply_overlay_from_yaml_file(tmp_path: Path, bundled: Catalogue) -> None:
    path = tmp_path / "priors.yaml"
    path.write_text(
        '"openai/*":\n  quality: 0.8\n  source: "our eval, 2026-10"\n'
        '"openai/gpt-4o-mini":\n  tpot_s: 0.008\n  quality: 0.7\n',
        encoding="utf-8",
    )
    changed = load_catalogue("bundled", overlay=str(path))
    mini = changed.model("openai/gpt-4o-mini")
    assert (mini.quality, mini.tpot_s) == (0.7, 0.008)
    assert mini.prior_sources["quality"] == "overlay 'openai/gpt-4o-mini'"
    sibling = next(m for m in changed.models if m.id.startswith("openai/") and m.id != mini.id)
    assert sibling.quality == 0.8
    assert sibling.prior_sources["quality"] == "our eval, 2026-10"
    assert apply_overlay(bundled, path).model(mini.id).quality == 0.7  # a Path works too


@pytest.mark.parametrize("text", ["- openai/*\n- quality\n", "", "openai/*: [unclosed\n"])
def test_apply_overlay_bad_yaml_file_rejected(tmp_path: Path, bundled: Catalogue, text: str) -> None:
    path = tmp_path / "priors.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CatalogueError) as err:
        apply_overlay(bundled, path)
    assert err.value.field == "overlay"
    assert str(path) in str(err.value)


def test_apply_overlay_missing_file_rejected(tmp_path: Path, bundled: Catalogue) -> None:
    with pytest.raises(CatalogueError) as err:
        apply_overlay(bundled, tmp_path / "absent.yaml")
    assert err.value.field == "overlay"


# --- glob_mask ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "patterns", [["openai/*"], ["*-mini"], ["openai/gpt-4o-mini"], ["anthropic/*", "*:free"], ["*"], []]
)
def test_glob_mask_matches_whole_ids_like_fnmatch(bundled: Catalogue, patterns: list[str]) -> None:
    mask = bundled.glob_mask(patterns)
    expected = [any(fnmatch.fnmatchcase(i, p) for p in patterns) for i in bundled.ids]
    assert mask.dtype == np.bool_
    assert mask.tolist() == expected


def test_glob_mask_selects_the_expected_rows(bundled: Catalogue) -> None:
    assert [bundled.ids[i] for i in np.flatnonzero(bundled.glob_mask(["openai/gpt-4o-mini"]))] == [
        "openai/gpt-4o-mini"
    ]
    openai = bundled.glob_mask(["openai/*"])
    assert 0 < openai.sum() < len(bundled)
    assert not bundled.glob_mask(["openai"]).any()  # a bare prefix is not a glob
    assert bundled.glob_mask(["*"]).all()
    assert not bundled.glob_mask([]).any()


def test_glob_mask_agrees_with_overlay_matching(bundled: Catalogue) -> None:
    # allow/deny (glob_mask) and overlays must select the same models for the same glob.
    pattern = "*/gpt-*"
    changed = apply_overlay(bundled, {pattern: {"quality": 0.123}})
    assert (changed.quality_prior == 0.123).tolist() == bundled.glob_mask([pattern]).tolist()

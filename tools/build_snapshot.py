"""Build the bundled catalogue snapshot, ``adaptive_router/data/catalogue.json``.

    python tools/build_snapshot.py \\
        /work/shared/data/catalog/openrouter_api_v1_models.json \\
        /work/shared/data/latency/llmperf_requests.csv \\
        -o adaptive_router/data/catalogue.json

Inputs: a raw OpenRouter ``GET /api/v1/models`` response and the per-request CSV of
ray-project/llmperf-leaderboard (Dec 2023, Apache-2.0). From OpenRouter we keep facts only
(id, name, prices, context length, output limit, capabilities); its file states no licence,
so no description or other prose is copied. Each prior carries a source string naming the
rule below that produced it. The output is byte-identical from run to run: models sorted by
id, keys sorted, floats rounded to 6 significant digits.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adaptive_router import CatalogueError, ConfigError, RouterError

__all__ = [
    "CAPABILITIES",
    "SELECTED_IDS",
    "LatencyClass",
    "QualityFit",
    "build_catalogue",
    "capabilities",
    "catalogue_entry",
    "check_selectable",
    "fit_quality",
    "latency_classes",
    "main",
    "quality_prior",
    "render",
    "size_class",
    "thinks_by_default",
    "tpot_prior",
    "ttft_prior",
]

SCHEMA = 1
# The day the response was committed to github.com/anuran-roy/unified-llm-pricing; the file
# itself carries no date.
SNAPSHOT_DATE = "2026-08-19"
WHOLE_FILE = "*"  # the ``model`` of a CatalogueError about the input file as a whole

# Widely used chat models, a spread from free and tiny to frontier and very expensive.
SELECTED_IDS: tuple[str, ...] = (
    "openai/gpt-5.6-sol",
    "openai/gpt-5.6-luna",
    "openai/gpt-5.5",
    "openai/gpt-5.5-pro",
    "openai/gpt-5.4-mini",
    "openai/gpt-5.4-nano",
    "openai/gpt-5-mini",
    "openai/gpt-4.1",
    "openai/gpt-4.1-mini",
    "openai/gpt-4o",
    "openai/gpt-4o-mini",
    "openai/o3",
    "openai/o4-mini",
    "openai/gpt-oss-120b",
    "openai/gpt-oss-20b:free",
    "anthropic/claude-opus-5",
    "anthropic/claude-sonnet-5",
    "anthropic/claude-sonnet-4.6",
    "anthropic/claude-sonnet-4.5",
    "anthropic/claude-haiku-4.5",
    "anthropic/claude-3-haiku",
    "google/gemini-3.7-flash",
    "google/gemini-3.5-flash",
    "google/gemini-3.5-flash-lite",
    "google/gemini-3.1-pro-preview",
    "google/gemini-2.5-pro",
    "google/gemini-2.5-flash",
    "google/gemini-2.5-flash-lite",
    "google/gemma-4-31b-it",
    "google/gemma-4-31b-it:free",
    "meta-llama/llama-4-maverick",
    "meta-llama/llama-4-scout",
    "meta-llama/llama-3.3-70b-instruct",
    "meta-llama/llama-3.1-8b-instruct",
    "meta-llama/llama-3.2-3b-instruct",
    "meta/muse-spark-1.2",
    "mistralai/mistral-medium-3-5",
    "mistralai/mistral-large-2512",
    "mistralai/mistral-small-2603",
    "mistralai/mistral-small-3.2-24b-instruct",
    "mistralai/ministral-8b-2512",
    "mistralai/mistral-nemo",
    "deepseek/deepseek-v4-pro",
    "deepseek/deepseek-v4-flash",
    "deepseek/deepseek-v3.2",
    "deepseek/deepseek-r1-0528",
    "qwen/qwen3.8-max",
    "qwen/qwen3.7-plus",
    "qwen/qwen3.7-flash",
    "qwen/qwen3-235b-a22b-2507",
    "qwen/qwen3-coder",
    "qwen/qwen3-32b",
    "x-ai/grok-4.6",
    "x-ai/grok-4.3",
    "x-ai/grok-4.20",
    "cohere/command-a",
    "cohere/command-r-08-2024",
    "cohere/command-r7b-12-2024",
    "amazon/nova-premier-v1",
    "amazon/nova-pro-v1",
    "amazon/nova-lite-v1",
    "amazon/nova-micro-v1",
    "microsoft/phi-4",
    "microsoft/wizardlm-2-8x22b",
)

CAPABILITIES = frozenset({"tools", "json_mode", "structured_outputs", "vision", "reasoning", "streaming"})

# Latency size classes: the completion price stands in for model size and serving cost.
SIZE_CLASSES = ("7b", "13b", "70b")
CLASS_13B_FROM = 0.5e-6  # USD per completion token
CLASS_70B_FROM = 5e-6
# An assumption, not a measurement: hidden thinking before the first visible token. Kept
# modest because many models here think only when asked; live ttft replaces it quickly.
REASONING_TOKENS = 256

# Quality fit: release dates are measured in years from this instant (2023-01-01 UTC).
EPOCH_2023 = 1_672_531_200
SECONDS_PER_YEAR = 31_557_600  # Julian year

LLMPERF_COLUMNS = (
    "llama2_size",
    "error_code",
    "error_msg",
    "inter_token_latency_s",
    "ttft_s",
    "end_to_end_latency_s",
    "number_output_tokens",
)


def round6(value: float) -> float:
    """Round to 6 significant digits, so the JSON text is stable across runs."""
    return float(f"{value:.6g}")


def _per_million(price: float) -> str:
    return f"${price * 1e6:g}/M"


# --- reading the inputs -------------------------------------------------------------------


def _read_text(path: Path, key: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise CatalogueError(WHOLE_FILE, key, f"{path} is not UTF-8 text: {exc}") from exc


def load_openrouter(path: Path) -> dict[str, dict[str, Any]]:
    """The ``data`` entries of a ``GET /api/v1/models`` response, by id."""
    try:
        document = json.loads(_read_text(path, "models_json"))
    except json.JSONDecodeError as exc:
        raise CatalogueError(WHOLE_FILE, "models_json", f"{path} is not valid JSON: {exc}") from exc
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list):
        raise CatalogueError(WHOLE_FILE, "data", f"{path}: expected an object with a 'data' list")
    by_id: dict[str, dict[str, Any]] = {}
    for position, entry in enumerate(data):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise CatalogueError(WHOLE_FILE, f"data[{position}].id", "not an object with a string id")
        by_id[entry["id"]] = entry
    return by_id


def read_llmperf(path: Path) -> list[dict[str, str]]:
    """The rows of the llmperf-leaderboard request CSV, checked for the columns we use."""
    reader = csv.DictReader(_read_text(path, "llmperf_csv").splitlines())
    missing = [column for column in LLMPERF_COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise CatalogueError(WHOLE_FILE, "llmperf_csv", f"{path}: missing column(s) {', '.join(missing)}")
    return list(reader)


# --- facts from one OpenRouter entry ------------------------------------------------------


def check_selectable(model_id: str) -> None:
    """Refuse ids that are not one concrete chat model: batch variants, aliases, routers."""
    if model_id.endswith(":batch"):
        raise CatalogueError(model_id, "id", "a :batch variant is not served interactively")
    if model_id.startswith("~") or model_id.startswith("openrouter/"):
        raise CatalogueError(model_id, "id", "an alias or router pseudo-model, not one model")


def _price(entry: Mapping[str, Any], field: str) -> float:
    raw = _mapping(entry.get("pricing")).get(field)
    try:
        value = float(raw) if isinstance(raw, str | int | float) else math.nan
    except ValueError:
        value = math.nan
    if value == -1:
        raise CatalogueError(entry["id"], f"pricing.{field}", "-1 marks a router pseudo-model")
    if not math.isfinite(value) or value < 0:
        raise CatalogueError(entry["id"], f"pricing.{field}", f"not a price in USD per token: {raw!r}")
    return value


def _mapping(value: Any) -> Mapping[str, Any]:
    """A JSON object, or an empty one where the response has null or something else."""
    return value if isinstance(value, dict) else {}


def _strings(value: Any) -> set[str]:
    """The strings of a JSON list, or none where the response has null or something else."""
    return {item for item in value if isinstance(item, str)} if isinstance(value, list) else set()


def _check_chat(entry: Mapping[str, Any]) -> None:
    outputs = _mapping(entry.get("architecture")).get("output_modalities")
    if outputs != ["text"]:
        raise CatalogueError(entry["id"], "architecture.output_modalities", f"not a chat model: {outputs!r}")


def _positive_int(entry: Mapping[str, Any], value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CatalogueError(entry["id"], field, f"not a positive integer: {value!r}")
    return value


def _max_output_tokens(entry: Mapping[str, Any]) -> int | None:
    value = _mapping(entry.get("top_provider")).get("max_completion_tokens")
    return None if value is None else _positive_int(entry, value, "top_provider.max_completion_tokens")


def capabilities(entry: Mapping[str, Any]) -> list[str]:
    """Capability strings from the entry's supported parameters and input modalities.

    tools: ``tools``; json_mode: ``response_format``; structured_outputs:
    ``structured_outputs``; reasoning: ``reasoning`` or ``include_reasoning``; vision: an
    ``image`` input modality; streaming: always (every chat model here streams).
    """
    parameters = _strings(entry.get("supported_parameters"))
    inputs = _strings(_mapping(entry.get("architecture")).get("input_modalities"))
    found = {"streaming"}
    found |= {"tools"} if "tools" in parameters else set()
    found |= {"json_mode"} if "response_format" in parameters else set()
    found |= {"structured_outputs"} if "structured_outputs" in parameters else set()
    found |= {"reasoning"} if parameters & {"reasoning", "include_reasoning"} else set()
    found |= {"vision"} if "image" in inputs else set()
    return sorted(found)


def facts(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The factual fields of one chat model, validated; nothing else of the entry is kept."""
    check_selectable(entry["id"])
    _check_chat(entry)
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CatalogueError(entry["id"], "name", "missing")
    return {
        "id": entry["id"],
        "name": name,
        "price_prompt": round6(_price(entry, "prompt")),
        "price_completion": round6(_price(entry, "completion")),
        "context_length": _positive_int(entry, entry.get("context_length"), "context_length"),
        "max_output_tokens": _max_output_tokens(entry),
        "capabilities": capabilities(entry),
    }


def price_basis(model_id: str, by_id: Mapping[str, Mapping[str, Any]]) -> tuple[float, str | None]:
    """The completion price that places a model in a tier, and the sibling it came from.

    A free variant ``x:free`` serves the same weights as its paid sibling ``x``, so it takes
    the sibling's price when the response has one (a price of 0 says nothing of its size).
    """
    sibling = model_id.removesuffix(":free")
    if sibling != model_id and sibling in by_id:
        return _price(by_id[sibling], "completion"), sibling
    return _price(by_id[model_id], "completion"), None


# --- latency priors (llmperf-leaderboard) -------------------------------------------------


@dataclass(frozen=True)
class LatencyClass:
    """Medians for one Llama-2 size over the successful llmperf requests.

    ``itl_s`` is llmperf's own inter_token_latency_s, which sums the gaps between chunks
    *including* the time to the first one and divides by the output tokens, so it counts
    TTFT twice once added to it; the prior uses ``tpot_s`` = (end-to-end - ttft) / (tokens - 1).
    """

    size: str
    requests: int
    ttft_s: float
    tpot_s: float
    itl_s: float


def _successful(row: Mapping[str, str]) -> bool:
    failed = (row["error_code"] or "").strip() or (row["error_msg"] or "").strip()
    return not failed and _output_tokens(row) >= 2


def _output_tokens(row: Mapping[str, str]) -> int:
    try:
        return int(float(row["number_output_tokens"]))
    except (TypeError, ValueError) as exc:  # a short row leaves None
        message = f"not a count: {row['number_output_tokens']!r}"
        raise CatalogueError(WHOLE_FILE, "llmperf number_output_tokens", message) from exc


def _number(row: Mapping[str, str], column: str) -> float:
    try:
        value = float(row[column])
    except (TypeError, ValueError) as exc:  # a short row leaves None
        raise CatalogueError(WHOLE_FILE, f"llmperf {column}", f"not a number: {row[column]!r}") from exc
    if not math.isfinite(value) or value < 0:
        raise CatalogueError(WHOLE_FILE, f"llmperf {column}", f"not a duration: {row[column]!r}")
    return value


def _decode_time_per_token(row: Mapping[str, str]) -> float:
    decode = _number(row, "end_to_end_latency_s") - _number(row, "ttft_s")
    return max(decode, 0.0) / (_output_tokens(row) - 1)


def latency_classes(rows: Iterable[Mapping[str, str]]) -> dict[str, LatencyClass]:
    """Median TTFT, decode time per token and llmperf ITL per Llama-2 size (7b, 13b, 70b).

    Successful means no error code, no error message and at least 2 output tokens. All
    providers' requests are pooled, as the leaderboard's raw data gives them.
    """
    pooled: dict[str, list[Mapping[str, str]]] = {size: [] for size in SIZE_CLASSES}
    for row in rows:
        if row["llama2_size"] in pooled and _successful(row):
            pooled[row["llama2_size"]].append(row)
    classes = {}
    for size, group in pooled.items():
        if not group:
            raise CatalogueError(WHOLE_FILE, "llmperf_csv", f"no successful request for Llama-2 {size}")
        classes[size] = LatencyClass(
            size=size,
            requests=len(group),
            ttft_s=statistics.median(_number(row, "ttft_s") for row in group),
            tpot_s=statistics.median(_decode_time_per_token(row) for row in group),
            itl_s=statistics.median(_number(row, "inter_token_latency_s") for row in group),
        )
    return classes


def size_class(price_completion: float) -> str:
    """The Llama-2 size whose latency a model is given, by its completion price tier.

    Below $0.50/M output tokens: 7b; from $0.50/M to below $5/M: 13b; $5/M and above: 70b.
    """
    if price_completion < CLASS_13B_FROM:
        return "7b"
    return "13b" if price_completion < CLASS_70B_FROM else "70b"


def _class_rule(size: str) -> str:
    low, high = _per_million(CLASS_13B_FROM), _per_million(CLASS_70B_FROM)
    return {"7b": f"< {low}", "13b": f"{low}..{high}", "70b": f">= {high}"}[size]


def ttft_prior(latency: LatencyClass, thinks: bool) -> float:
    """The class's median TTFT, plus REASONING_TOKENS decoded at the class's pace for a
    model that thinks by default (hidden tokens come before the first visible one)."""
    extra = REASONING_TOKENS * latency.tpot_s if thinks else 0.0
    return round6(latency.ttft_s + extra)


def tpot_prior(latency: LatencyClass) -> float:
    """The class's median decode time per output token."""
    return round6(latency.tpot_s)


def _basis_note(price: float, sibling: str | None) -> str:
    if sibling is None:
        return f"completion {_per_million(price)}"
    return f"paid sibling {sibling} completion {_per_million(price)}"


def thinks_by_default(entry: Mapping[str, Any]) -> bool:
    """A model with the reasoning capability thinks before answering unless the response
    says ``reasoning.default_enabled`` is false (hybrid models that think only when asked).
    ``reasoning.mandatory`` is not used: the response marks o3 and o4-mini ``false``."""
    if "reasoning" not in capabilities(entry):
        return False
    return _mapping(entry.get("reasoning")).get("default_enabled") is not False


def latency_sources(latency: LatencyClass, thinks: bool, basis: str) -> tuple[str, str]:
    """The source strings of (ttft_s, tpot_s)."""
    head = f"llmperf-leaderboard Dec 2023: Llama-2-{latency.size.upper()}"
    tier = f"(n={latency.requests}); class {latency.size} = completion {_class_rule(latency.size)}: {basis}"
    ttft = f"{head} median TTFT {tier}"
    if thinks:
        ttft += f"; + {REASONING_TOKENS} assumed reasoning tokens x class tpot (thinks by default)"
    return ttft, f"{head} median (e2e - ttft)/(tokens - 1) {tier}"


# --- quality priors -----------------------------------------------------------------------


def intelligence_index(entry: Mapping[str, Any]) -> float | None:
    """Artificial Analysis Intelligence Index as the OpenRouter response reports it, if any."""
    value = _mapping(_mapping(entry.get("benchmarks")).get("artificial_analysis")).get("intelligence_index")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _years(created: float) -> float:
    return (created - EPOCH_2023) / SECONDS_PER_YEAR


@dataclass(frozen=True)
class QualityFit:
    """index = intercept + per_log10_price * log10(completion $/M) + per_year * years since 2023.

    Release time is held inside the years seen in the fit and the result inside the indices
    seen, so no model is extrapolated beyond the evidence.
    """

    intercept: float
    per_log10_price: float
    per_year: float
    years: tuple[float, float]
    indices: tuple[float, float]
    rmse: float
    n: int

    def predict(self, price_completion: float, created: float) -> tuple[float, float, bool]:
        """(index, unclipped index, whether the release date was held inside the fit's years)."""
        years = min(max(_years(created), self.years[0]), self.years[1])
        price = max(price_completion * 1e6, 1e-3)  # a free model without a paid sibling
        raw = self.intercept + self.per_log10_price * math.log10(price) + self.per_year * years
        return min(max(raw, self.indices[0]), self.indices[1]), raw, years != _years(created)


def _calibration_point(model_id: str, entry: Mapping[str, Any]) -> tuple[float, float, float] | None:
    """(log10 completion $/M, years since 2023, index) for a priced text model with an index."""
    if ":" in model_id or model_id.startswith("~") or model_id.startswith("openrouter/"):
        return None
    index, created = intelligence_index(entry), entry.get("created")
    outputs = _mapping(entry.get("architecture")).get("output_modalities")
    if index is None or not isinstance(created, int) or outputs != ["text"]:
        return None
    try:
        price = _price(entry, "completion")
    except CatalogueError:
        return None
    return (math.log10(price * 1e6), _years(created), index) if price > 0 else None


def fit_quality(by_id: Mapping[str, Mapping[str, Any]]) -> QualityFit:
    """Least squares of the index on log10 price and release date over the response's own
    priced text models that carry an index (no :free/:batch/:thinking variants or aliases)."""
    points = [p for model_id in sorted(by_id) if (p := _calibration_point(model_id, by_id[model_id]))]
    if len(points) < 10:
        raise CatalogueError(WHOLE_FILE, "benchmarks", f"only {len(points)} models carry an index; need 10")
    table = np.array(points, dtype=np.float64)
    design = np.column_stack([np.ones(len(points)), table[:, 0], table[:, 1]])
    coefficients, *_ = np.linalg.lstsq(design, table[:, 2], rcond=None)
    residuals = design @ coefficients - table[:, 2]
    return QualityFit(
        intercept=float(coefficients[0]),
        per_log10_price=float(coefficients[1]),
        per_year=float(coefficients[2]),
        years=(float(table[:, 1].min()), float(table[:, 1].max())),
        indices=(float(table[:, 2].min()), float(table[:, 2].max())),
        rmse=float(np.sqrt(np.mean(residuals**2))),
        n=len(points),
    )


QUALITY_FLOOR, QUALITY_SPAN, INDEX_TOP = 0.40, 0.55, 70.0


def quality_prior(index: float) -> float:
    """An Intelligence Index (0-100 points) as an expected answer quality in [0, 1].

    ``0.40 + 0.55 * index / 70``, clamped to [0.40, 0.95]. The index ranks models; the quality
    term is what feedback (a score in [0, 1] per answer) will measure, and even the weakest
    listed chat model answers most everyday requests acceptably: so the floor is 0.40, not 0,
    and the strongest (index ~63) lands near 0.90. The ranking the index gives is kept.
    """
    scaled = QUALITY_FLOOR + QUALITY_SPAN * index / INDEX_TOP
    return round6(min(max(scaled, QUALITY_FLOOR), QUALITY_FLOOR + QUALITY_SPAN))


def quality_and_source(
    model_id: str, by_id: Mapping[str, Mapping[str, Any]], fit: QualityFit
) -> tuple[float, str]:
    """The model's own index, else its paid sibling's (free variants), else the fit's."""
    entry = by_id[model_id]
    sibling = model_id.removesuffix(":free")
    index = intelligence_index(entry)
    origin = "its"
    if index is None and sibling != model_id and sibling in by_id:
        index, origin = intelligence_index(by_id[sibling]), f"paid sibling {sibling}'s"
    if index is not None:
        return quality_prior(index), (
            f"Artificial Analysis Intelligence Index {index:g} ({origin} benchmarks field in the "
            "OpenRouter response), mapped to 0.40 + 0.55 * index / 70"
        )
    price, _ = price_basis(model_id, by_id)
    created = entry.get("created")
    if not isinstance(created, int):
        raise CatalogueError(model_id, "created", f"needed for the quality fit, got {created!r}")
    index, raw, date_held = fit.predict(price, created)
    held = " (held inside the fit's dates)" if date_held else ""
    clipped = f", clipped to the fit's range {fit.indices[0]:g}..{fit.indices[1]:g}" if index != raw else ""
    return quality_prior(index), (
        f"no index in the response: least-squares fit over {fit.n} indexed models (RMSE {fit.rmse:.2g}) "
        f"on log10 completion price ({_per_million(price)}) and release date{held} "
        f"gives {raw:.3g}{clipped}; mapped to 0.40 + 0.55 * index / 70"
    )


# --- the catalogue ------------------------------------------------------------------------


def catalogue_entry(
    model_id: str,
    by_id: Mapping[str, Mapping[str, Any]],
    classes: Mapping[str, LatencyClass],
    fit: QualityFit,
) -> dict[str, Any]:
    """One model of the snapshot: its facts, its priors and where each prior came from."""
    check_selectable(model_id)
    if model_id not in by_id:
        raise CatalogueError(model_id, "id", "not in the OpenRouter response")
    entry = facts(by_id[model_id])
    price, sibling = price_basis(model_id, by_id)
    latency = classes[size_class(price)]
    thinks = thinks_by_default(by_id[model_id])
    quality, quality_source = quality_and_source(model_id, by_id, fit)
    ttft_source, tpot_source = latency_sources(latency, thinks, _basis_note(price, sibling))
    entry["priors"] = {
        "ttft_s": ttft_prior(latency, thinks),
        "tpot_s": tpot_prior(latency),
        "quality": quality,
    }
    entry["prior_sources"] = {"ttft_s": ttft_source, "tpot_s": tpot_source, "quality": quality_source}
    return entry


def attribution(snapshot_date: str, classes: Mapping[str, LatencyClass], fit: QualityFit) -> str:
    """The document's attribution: every source, its licence and the rules applied to it."""
    medians = "; ".join(
        f"{c.size}: TTFT {round6(c.ttft_s):g} s, decode {round6(c.tpot_s):g} s/token, "
        f"llmperf ITL {round6(c.itl_s):g} s (n={c.requests})"
        for c in classes.values()
    )
    low, high = _per_million(CLASS_13B_FROM), _per_million(CLASS_70B_FROM)
    return (
        "Model ids, names, prices, context lengths and capabilities: OpenRouter GET /api/v1/models "
        f"response of {snapshot_date} (facts only; as committed in "
        "github.com/anuran-roy/unified-llm-pricing). "
        "Latency priors: ray-project/llmperf-leaderboard (Apache-2.0), Dec 2023, Llama-2 on 8 "
        "providers, 550 input / 150 output tokens, concurrency 5; medians over successful requests "
        f"({medians}); a model takes the size class of its completion price (7b < {low}, 70b >= {high}); "
        f"models that think by default add {REASONING_TOKENS} assumed hidden tokens at the class's "
        "decode time to TTFT. Quality priors: Artificial Analysis Intelligence Index "
        "(artificialanalysis.ai) as reported in that OpenRouter response, mapped to "
        "0.40 + 0.55 * index / 70; models without one "
        "get the index predicted by least squares on log10 completion price and release date over "
        f"the {fit.n} indexed models (index = {fit.intercept:.4g} + {fit.per_log10_price:.4g} "
        f"log10($/M) + {fit.per_year:.4g} years since 2023-01-01; RMSE {fit.rmse:.2g} points)."
    )


def build_catalogue(
    models_json: Path, llmperf_csv: Path, snapshot_date: str = SNAPSHOT_DATE
) -> dict[str, Any]:
    """The snapshot document (schema 1) from the two raw inputs; ``render`` makes it text.

    Usage: ``render(build_catalogue(Path("models.json"), Path("llmperf.csv")))``
    """
    by_id = load_openrouter(models_json)
    classes = latency_classes(read_llmperf(llmperf_csv))
    fit = fit_quality(by_id)
    models = [catalogue_entry(model_id, by_id, classes, fit) for model_id in sorted(set(SELECTED_IDS))]
    return {"schema": SCHEMA, "attribution": attribution(snapshot_date, classes, fit), "models": models}


def render(catalogue: Mapping[str, Any]) -> str:
    """The document as JSON text: sorted keys, one space of indent, a final newline."""
    return json.dumps(catalogue, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/build_snapshot.py", description="Build the bundled catalogue snapshot."
    )
    parser.add_argument("models_json", type=Path, help="raw OpenRouter GET /api/v1/models response")
    parser.add_argument("llmperf_csv", type=Path, help="llmperf-leaderboard per-request CSV")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write catalogue.json")
    parser.add_argument("--snapshot-date", default=SNAPSHOT_DATE, help="date of the OpenRouter response")
    args = parser.parse_args(argv)
    try:
        text = render(build_catalogue(args.models_json, args.llmperf_csv, args.snapshot_date))
        args.output.write_text(text, encoding="utf-8", newline="\n")
    except RouterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the output path
        print(f"error: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

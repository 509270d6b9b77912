"""The model catalogue: what each model costs, can do, and what we believe before measuring.

A :class:`Catalogue` is built once and held as contiguous columns (NumPy arrays aligned with
``ids``) so that scoring touches no Python object per model.

    catalogue = load_catalogue("bundled")
    catalogue.index["openai/gpt-4o-mini"]      # its row in every array
    catalogue.price_completion                 # float64 USD per output token
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .._errors import CatalogueError

__all__ = [
    "CAPABILITIES",
    "Catalogue",
    "Model",
    "apply_overlay",
    "fetch_openrouter",
    "load_bundled",
    "load_catalogue",
    "load_openrouter",
    "provider_groups",
]

CAPABILITIES = ("tools", "json_mode", "structured_outputs", "vision", "reasoning", "streaming")
_CAP_BIT = {name: 1 << i for i, name in enumerate(CAPABILITIES)}

# Priors for a model nobody told us about: a mid-sized hosted model.
DEFAULT_TTFT_S = 0.8
DEFAULT_TPOT_S = 0.02
DEFAULT_QUALITY = 0.5
DEFAULT_SOURCE = "default for an unknown model (catalogue.DEFAULT_*)"

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

GLOB_CACHE_SIZE = 1024  # row masks of allow/deny globs kept per catalogue
_WILDCARDS = frozenset("*?[")
_STAR_OR_ONE = re.compile(r"[*?]+")


@dataclass(frozen=True)
class Model:
    """One routable model. Prices are USD per token; ``max_output_tokens`` 0 means unknown."""

    id: str
    price_prompt: float
    price_completion: float
    context_length: int
    max_output_tokens: int = 0
    capabilities: frozenset[str] = frozenset({"streaming"})
    ttft_s: float = DEFAULT_TTFT_S
    tpot_s: float = DEFAULT_TPOT_S
    quality: float = DEFAULT_QUALITY
    name: str = ""
    prior_sources: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_model(self)


def _check_model(m: Model) -> None:
    checks: list[tuple[str, bool, str]] = [
        ("id", bool(m.id) and isinstance(m.id, str), "must be a non-empty string"),
        ("price_prompt", _finite_nonneg(m.price_prompt), "must be a finite number >= 0"),
        ("price_completion", _finite_nonneg(m.price_completion), "must be a finite number >= 0"),
        (
            "context_length",
            isinstance(m.context_length, int) and m.context_length > 0,
            "must be an integer > 0",
        ),
        (
            "max_output_tokens",
            isinstance(m.max_output_tokens, int) and m.max_output_tokens >= 0,
            "must be >= 0",
        ),
        ("ttft_s", _finite_nonneg(m.ttft_s) and m.ttft_s > 0, "must be > 0 seconds"),
        ("tpot_s", _finite_nonneg(m.tpot_s) and m.tpot_s > 0, "must be > 0 seconds"),
        ("quality", _finite_nonneg(m.quality) and m.quality <= 1, "must be in [0, 1]"),
    ]
    for name, ok, message in checks:
        if not ok:
            raise CatalogueError(str(m.id), name, f"{message}, got {getattr(m, name)!r}")
    unknown = set(m.capabilities) - set(CAPABILITIES)
    if unknown:
        raise CatalogueError(m.id, "capabilities", f"unknown {sorted(unknown)}; known: {list(CAPABILITIES)}")


def _finite_nonneg(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


def capability_bits(names: Iterable[str]) -> int:
    """The bitmask of capability names; unknown names raise ``KeyError`` with the name."""
    bits = 0
    for name in names:
        bits |= _CAP_BIT[name]
    return bits


class Catalogue:
    """Models as columns. Immutable once built: derive a new one to change it."""

    def __init__(self, models: Sequence[Model], source: str = "") -> None:
        if not models:
            raise CatalogueError("*", "models", "a catalogue needs at least one model")
        ids = [m.id for m in models]
        duplicates = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
        if duplicates:
            raise CatalogueError(duplicates[0], "id", "appears more than once")
        self.models: tuple[Model, ...] = tuple(models)
        self.source = source
        self.ids: tuple[str, ...] = tuple(ids)
        self.index: dict[str, int] = {m: i for i, m in enumerate(ids)}
        self.price_prompt = _column(models, "price_prompt")
        self.price_completion = _column(models, "price_completion")
        self.context_length = _column(models, "context_length")
        max_out = _column(models, "max_output_tokens")
        self.max_output_tokens = np.where(max_out > 0, max_out, np.inf)
        self.capabilities = np.array([capability_bits(m.capabilities) for m in models], dtype=np.int64)
        self.ttft_prior = _column(models, "ttft_s")
        self.tpot_prior = _column(models, "tpot_s")
        self.quality_prior = _column(models, "quality")
        self.max_context = int(self.context_length.max())
        self._globs: dict[str, BoolArray] = {}
        self._joined_ids = "\n".join(self.ids)  # to rule a glob out with one substring search

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self.index

    def __repr__(self) -> str:
        return f"<Catalogue {len(self)} models from {self.source or 'memory'}>"

    def model(self, model_id: str) -> Model:
        try:
            return self.models[self.index[model_id]]
        except KeyError:
            raise CatalogueError(model_id, "id", "not in the catalogue") from None

    def glob_mask(self, patterns: Sequence[str]) -> BoolArray:
        """Rows whose id matches any glob (``openai/*``, ``*-mini``); exact ids work too.

        Each glob is matched on its own against every id, once: its row mask is kept (the last
        ``GLOB_CACHE_SIZE`` globs), so a list of globs costs one OR per glob after its first use.
        """
        masks = [self._glob_row_mask(p) for p in patterns]
        if len(masks) == 1:
            return masks[0]
        mask = np.zeros(len(self.ids), dtype=np.bool_)
        for row_mask in masks:
            mask |= row_mask
        return mask

    def knows_glob(self, pattern: str) -> bool:
        """Whether ``pattern``'s row mask is cached (matching it again costs nothing)."""
        return pattern in self._globs

    def _glob_row_mask(self, pattern: str) -> BoolArray:
        mask = self._globs.get(pattern)
        if mask is None:
            mask = _glob_mask(self.ids, self.index, self._joined_ids, pattern)
            if len(self._globs) >= GLOB_CACHE_SIZE:
                del self._globs[next(iter(self._globs))]  # the oldest: bounded, whatever clients send
            self._globs[pattern] = mask
        return mask

    def with_models(self, extra: Sequence[Model]) -> Catalogue:
        return Catalogue([*self.models, *extra], source=self.source)


def _glob_mask(ids: tuple[str, ...], index: Mapping[str, int], joined: str, pattern: str) -> BoolArray:
    """Rows matching one glob: an exact id by lookup; none when a literal part of it is in no id
    (no regex built); else its own small regex per id (fnmatch translates ``*`` so that matching
    cannot backtrack without bound)."""
    mask = np.zeros(len(ids), dtype=np.bool_)
    if not _WILDCARDS.intersection(pattern):
        row = index.get(pattern)
        if row is not None:
            mask[row] = True
    elif "[" not in pattern and not all(run in joined for run in _STAR_OR_ONE.split(pattern)):
        pass  # a literal run every match must contain is in no id
    else:
        match = re.compile(fnmatch.translate(pattern)).match
        mask[:] = np.fromiter((match(i) is not None for i in ids), dtype=np.bool_, count=len(ids))
    mask.setflags(write=False)
    return mask


def _column(models: Sequence[Model], name: str) -> FloatArray:
    column = np.fromiter((float(getattr(m, name)) for m in models), dtype=np.float64, count=len(models))
    column.setflags(write=False)
    return column


# --- the bundled snapshot ------------------------------------------------------------------


def load_bundled() -> Catalogue:
    """The snapshot shipped in the package (see ``adaptive_router/data/catalogue.json``)."""
    text = resources.files("adaptive_router").joinpath("data/catalogue.json").read_text(encoding="utf-8")
    return _from_snapshot(json.loads(text), source="bundled")


def _from_snapshot(data: Mapping[str, Any], source: str) -> Catalogue:
    if data.get("schema") != 1:
        raise CatalogueError("*", "schema", f"unsupported snapshot schema {data.get('schema')!r}")
    return Catalogue([_snapshot_model(entry) for entry in data["models"]], source=source)


def _snapshot_model(entry: Mapping[str, Any]) -> Model:
    model_id = str(entry.get("id", "?"))
    priors = entry.get("priors") or {}
    try:
        return Model(
            id=model_id,
            name=str(entry.get("name") or model_id),
            price_prompt=float(entry["price_prompt"]),
            price_completion=float(entry["price_completion"]),
            context_length=int(entry["context_length"]),
            max_output_tokens=int(entry.get("max_output_tokens") or 0),
            capabilities=frozenset(entry.get("capabilities") or ()),
            ttft_s=float(priors.get("ttft_s", DEFAULT_TTFT_S)),
            tpot_s=float(priors.get("tpot_s", DEFAULT_TPOT_S)),
            quality=float(priors.get("quality", DEFAULT_QUALITY)),
            prior_sources=dict(entry.get("prior_sources") or {}),
        )
    except KeyError as exc:
        raise CatalogueError(model_id, str(exc.args[0]), "is missing") from exc
    except (TypeError, ValueError) as exc:
        raise CatalogueError(model_id, "entry", str(exc)) from exc


# --- OpenRouter's GET /api/v1/models -------------------------------------------------------


def load_openrouter(source: str | Path | Mapping[str, Any]) -> Catalogue:
    """A catalogue from an OpenRouter ``/api/v1/models`` response (a file path or parsed JSON).

    Skipped, on purpose: router pseudo-models (price ``"-1"``) and models that cannot answer in
    text. Everything else that is malformed raises ``CatalogueError`` naming model and field.
    """
    if isinstance(source, Mapping):
        data, name = source, "openrouter"
    else:
        path = Path(source)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise CatalogueError("*", "file", f"cannot read {path}: {exc.strerror}") from exc
        except json.JSONDecodeError as exc:
            raise CatalogueError("*", "file", f"{path} is not JSON: {exc}") from exc
        name = str(path)
    if not isinstance(data, Mapping) or not isinstance(data.get("data"), list):
        raise CatalogueError("*", "data", "expected an object with a 'data' list")
    models = [m for entry in data["data"] if (m := _openrouter_model(entry)) is not None]
    return Catalogue(models, source=name)


def _openrouter_model(entry: Any) -> Model | None:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("id"), str):
        raise CatalogueError(str(entry)[:60], "id", "every entry needs a string id")
    model_id = entry["id"]
    pricing = entry.get("pricing")
    if not isinstance(pricing, Mapping):
        raise CatalogueError(model_id, "pricing", "missing or not an object")
    prompt = _price(model_id, "pricing.prompt", pricing.get("prompt"))
    completion = _price(model_id, "pricing.completion", pricing.get("completion"))
    if prompt == -1 or completion == -1:
        return None  # "-1": a router pseudo-model such as openrouter/auto, priced per routed model
    for field_name, price in (("pricing.prompt", prompt), ("pricing.completion", completion)):
        if price < 0:
            raise CatalogueError(model_id, field_name, f"negative price {price!r} (only -1 marks a router)")
    architecture = entry.get("architecture") or {}
    if "text" not in (architecture.get("output_modalities") or ["text"]):
        return None  # image, audio or embedding models cannot answer a chat
    top = entry.get("top_provider") or {}
    context = entry.get("context_length") or top.get("context_length")
    if not isinstance(context, int) or context <= 0:
        raise CatalogueError(model_id, "context_length", f"must be a positive integer, got {context!r}")
    return Model(
        id=model_id,
        name=str(entry.get("name") or model_id),
        price_prompt=prompt,
        price_completion=completion,
        context_length=context,
        max_output_tokens=_optional_count(
            model_id, "top_provider.max_completion_tokens", top.get("max_completion_tokens")
        ),
        capabilities=_openrouter_capabilities(entry),
        prior_sources={"ttft_s": DEFAULT_SOURCE, "tpot_s": DEFAULT_SOURCE, "quality": DEFAULT_SOURCE},
    )


def _optional_count(model_id: str, field_name: str, value: Any) -> int:
    """A token count that may be null (unknown: 0)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or value != int(value):
        raise CatalogueError(model_id, field_name, f"must be a whole number >= 0 or null, got {value!r}")
    return int(value)


def _price(model_id: str, field_name: str, value: Any) -> float:
    if value is None:
        raise CatalogueError(model_id, field_name, "is missing")
    try:
        price = float(value)
    except (TypeError, ValueError):
        raise CatalogueError(model_id, field_name, f"not a number: {value!r}") from None
    if not math.isfinite(price):
        raise CatalogueError(model_id, field_name, f"not finite: {value!r}")
    return price


def _openrouter_capabilities(entry: Mapping[str, Any]) -> frozenset[str]:
    params = set(entry.get("supported_parameters") or ())
    inputs = set((entry.get("architecture") or {}).get("input_modalities") or ())
    caps = {"streaming"}
    if "tools" in params:
        caps.add("tools")
    if "response_format" in params:
        caps.add("json_mode")
    if "structured_outputs" in params:
        caps.add("structured_outputs")
    if "image" in inputs:
        caps.add("vision")
    if params & {"reasoning", "include_reasoning"}:
        caps.add("reasoning")
    return frozenset(caps)


def fetch_openrouter(api_key: str | None, base_url: str = "https://openrouter.ai/api/v1") -> Catalogue:
    """Fetch the live catalogue (start-up only; the decision path never calls this)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{base_url.rstrip('/')}/models", headers=headers, timeout=20.0)
        response.raise_for_status()
        data = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise CatalogueError("*", "source", f"cannot fetch {base_url}/models: {exc}") from exc
    return load_openrouter(data)


# --- overlays: priors by id or glob -----------------------------------------------------------

_OVERLAY_FIELDS = {"ttft_s", "tpot_s", "quality"}


def apply_overlay(catalogue: Catalogue, overlay: str | Path | Mapping[str, Any]) -> Catalogue:
    """Set priors by model id or glob, in file order (later entries win).

    The overlay maps a glob to ``{ttft_s, tpot_s, quality, source}``::

        "openai/*": {quality: 0.8, source: "our eval, 2026-10"}
        "meta-llama/llama-3.1-8b-instruct": {tpot_s: 0.008}
    """
    data = _read_overlay(overlay) if not isinstance(overlay, Mapping) else overlay
    models = list(catalogue.models)
    for pattern, values in data.items():
        fields = _overlay_fields(str(pattern), values)
        source = str(values.get("source") or f"overlay {pattern!r}")
        for i, model in enumerate(models):
            if fnmatch.fnmatchcase(model.id, str(pattern)):
                sources = {**model.prior_sources, **{k: source for k in fields}}
                changes: dict[str, Any] = {**fields, "prior_sources": sources}
                models[i] = replace(model, **changes)
    return Catalogue(models, source=catalogue.source)


def _overlay_fields(pattern: str, values: Any) -> dict[str, float]:
    if not isinstance(values, Mapping):
        raise CatalogueError(pattern, "overlay", "each entry must map field names to values")
    unknown = set(values) - _OVERLAY_FIELDS - {"source"}
    if unknown:
        raise CatalogueError(
            pattern, sorted(unknown)[0], f"not an overlay field; use {sorted(_OVERLAY_FIELDS)}"
        )
    fields: dict[str, float] = {}
    for key in _OVERLAY_FIELDS & set(values):
        value = values[key]
        if not _finite_nonneg(value):
            raise CatalogueError(pattern, key, f"must be a number >= 0, got {value!r}")
        fields[key] = float(value)
    return fields


def _read_overlay(path: str | Path) -> Mapping[str, Any]:
    import yaml

    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
        # YAML 1.1 reads JSON's 1e-05 as a string: JSON files are parsed as JSON.
        data = json.loads(text) if file.suffix.lower() == ".json" else yaml.safe_load(text)
    except OSError as exc:
        raise CatalogueError("*", "overlay", f"cannot read {file}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise CatalogueError("*", "overlay", f"{file} is not valid JSON: {exc}") from exc
    except yaml.YAMLError as exc:
        raise CatalogueError("*", "overlay", f"{file} is not valid YAML/JSON: {exc}") from exc
    if not isinstance(data, Mapping):
        raise CatalogueError("*", "overlay", f"{file} must map model globs to priors")
    return data


def load_catalogue(
    source: str = "bundled",
    overlay: str | None = None,
    api_key: str | None = None,
    declared: Sequence[Mapping[str, Any]] = (),
    base_url: str = "https://openrouter.ai/api/v1",
) -> Catalogue:
    """``bundled``, ``openrouter`` (fetched live from ``base_url``), or a path to an OpenRouter
    models JSON file; then the ``declared`` models (settings ``catalogue.models``: added, or
    replacing by id), then the overlay."""
    if source == "bundled":
        catalogue = load_bundled()
    elif source == "openrouter":
        catalogue = fetch_openrouter(api_key, base_url)
    else:
        catalogue = load_openrouter(source)
    if declared:
        catalogue = with_declared(catalogue, declared)
    return apply_overlay(catalogue, overlay) if overlay else catalogue


def with_declared(catalogue: Catalogue, declared: Sequence[Mapping[str, Any]]) -> Catalogue:
    """``catalogue`` with models declared in settings (prices per million tokens), replacing by id."""
    source = "declared in settings (catalogue.models)"
    extra = {
        spec["id"]: Model(
            id=spec["id"],
            price_prompt=float(spec.get("prompt_per_mtok", 0.0)) / 1e6,
            price_completion=float(spec.get("completion_per_mtok", 0.0)) / 1e6,
            context_length=int(spec.get("context_length", 8192)),
            max_output_tokens=int(spec.get("max_output_tokens", 0)),
            capabilities=frozenset(spec.get("capabilities", ("streaming",))),
            ttft_s=float(spec.get("ttft_s", DEFAULT_TTFT_S)),
            tpot_s=float(spec.get("tpot_s", DEFAULT_TPOT_S)),
            quality=float(spec.get("quality", DEFAULT_QUALITY)),
            prior_sources={"ttft_s": source, "tpot_s": source, "quality": source},
        )
        for spec in declared
    }
    kept = [m for m in catalogue.models if m.id not in extra]
    return Catalogue([*kept, *extra.values()], source=catalogue.source)


def provider_groups(
    catalogue: Catalogue, routes: Sequence[tuple[str, Sequence[str]]]
) -> npt.NDArray[np.intp]:
    """Each model's provider: the index of the first route whose globs match its id, -1 for none."""
    groups = np.full(len(catalogue), -1, dtype=np.intp)
    for index, (_, globs) in enumerate(routes):
        unassigned = groups < 0
        groups[unassigned & catalogue.glob_mask(tuple(globs))] = index
    return groups

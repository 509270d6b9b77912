"""The simulated upstream's models and scenarios: latency shapes fitted to the llmperf
leaderboard's requests, and the scripted events (slow, fail, rate_limit, recover) a scenario
file holds. :mod:`adaptive_router.simulator` serves them over HTTP.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from .._errors import ConfigError

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_ERROR_RATE",
    "DEFAULT_RATE_LIMIT_RATE",
    "DEFAULT_TAIL_FACTOR",
    "DEFAULT_TAIL_PROB",
    "DEFAULT_TPOT_S",
    "DEFAULT_TPOT_SIGMA",
    "DEFAULT_TTFT_S",
    "DEFAULT_TTFT_SIGMA",
    "ModelOverride",
    "Scenario",
    "SimEvent",
    "SimModel",
    "apply_overrides",
    "fit_llmperf",
    "load_scenario",
    "loc_key",
    "parse_scenario",
]

#               print(f('/work/shared/data/latency/llmperf_requests.csv'))"
# rounded to 4 significant digits. Medians are the median over groups of each group's median; the
# sigmas are log-normal widths of the body around each group's median; the tail is the share of
# requests slower than 3x their group's ttft median and their median multiple.
DEFAULT_TTFT_S = 0.5166
DEFAULT_TPOT_S = 0.01806
DEFAULT_TTFT_SIGMA = 0.2547
DEFAULT_TPOT_SIGMA = 0.07972
DEFAULT_TAIL_PROB = 0.01223
DEFAULT_TAIL_FACTOR = 10.45
DEFAULT_ERROR_RATE = 0.0003515
# 429s in llmperf come in bursts from one provider under load (87% of its requests, 0% for most
# others), so a typical (median) model sees none; script them with rate_limit events or overrides.
DEFAULT_RATE_LIMIT_RATE = 0.0

CHARS_PER_TOKEN = 4
_TAIL_THRESHOLD = 3.0
_Z90 = 1.2815515655446004  # standard normal 90th percentile: sigma from the central 80% range


@dataclass(frozen=True)
class SimModel:
    """One simulated model. Latencies are medians in seconds; the sigmas are log-normal widths;
    with probability ``tail_prob`` a request's ttft is multiplied by ``tail_factor``."""

    id: str
    ttft_s: float = DEFAULT_TTFT_S
    tpot_s: float = DEFAULT_TPOT_S
    error_rate: float = DEFAULT_ERROR_RATE
    rate_limit_rate: float = DEFAULT_RATE_LIMIT_RATE
    ttft_sigma: float = DEFAULT_TTFT_SIGMA
    tpot_sigma: float = DEFAULT_TPOT_SIGMA
    tail_prob: float = DEFAULT_TAIL_PROB
    tail_factor: float = DEFAULT_TAIL_FACTOR
    quality: float = 0.7  # the true mean quality of its answers, on [0, 1] (what the judge sees)

    def __post_init__(self) -> None:
        key = f"simulator.models[{self.id}]"
        if not self.id:
            raise ConfigError("simulator.models.id", "must not be empty")
        for name in ("ttft_s", "tpot_s", "ttft_sigma", "tpot_sigma"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{key}.{name}", f"must be a finite number >= 0, got {value!r}")
        for name in ("error_rate", "rate_limit_rate", "tail_prob", "quality"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{key}.{name}", "must be between 0 and 1")
        if not self.tail_factor >= 1.0:
            raise ConfigError(f"{key}.tail_factor", "must be >= 1")


# ---------------------------------------------------------------------------------------------
# Fitting the distribution shape to llmperf


def fit_llmperf(path: str | os.PathLike[str]) -> dict[str, float]:
    """Fit the latency shape and error rates to an llmperf-leaderboard requests CSV.

    Per-token time is ``(end_to_end - ttft) / (output_tokens - 1)``: the CSV's
    ``inter_token_latency_s`` averages over stream chunks and includes the first token's wait."""
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            groups.setdefault((row["provider"], row["llama2_size"]), []).append(row)
    ttft_res: list[float] = []
    tpot_res: list[float] = []
    ttft_medians: list[float] = []
    tpot_medians: list[float] = []
    limited_shares: list[float] = []
    total = errors = limited = 0
    for rows in groups.values():
        codes = [_error_code(r) for r in rows]
        total += len(rows)
        limited += codes.count(429)
        errors += sum(1 for c in codes if c not in (None, 429, -100))
        limited_shares.append(codes.count(429) / len(rows))
        # -100 is llmperf's own "fewer tokens than asked" mark on a successful answer.
        ok = [r for r, c in zip(rows, codes, strict=True) if c in (None, -100)]
        if ok:
            _add_residuals(np.array([float(r["ttft_s"]) for r in ok]), ttft_res, ttft_medians)
            _add_residuals(
                np.array([_tpot(r) for r in ok if int(r["number_output_tokens"]) > 1]), tpot_res, tpot_medians
            )
    ttft = np.array(ttft_res)
    tail = ttft > math.log(_TAIL_THRESHOLD)
    return {
        "ttft_s": float(np.median(ttft_medians)),
        "tpot_s": float(np.median(tpot_medians)),
        "ttft_sigma": _central_sigma(ttft),
        "tpot_sigma": _central_sigma(np.array(tpot_res)),
        "tail_prob": float(tail.mean()),
        "tail_factor": float(np.exp(np.median(ttft[tail]))) if tail.any() else 1.0,
        "error_rate": errors / total,
        "rate_limit_rate": float(np.median(limited_shares)),
        "rate_limit_rate_pooled": limited / total,
        "requests": float(total),
        "groups": float(len(groups)),
    }


def _error_code(row: Mapping[str, str]) -> int | None:
    return int(float(row["error_code"])) if row["error_code"] else None


def _tpot(row: Mapping[str, str]) -> float:
    e2e, ttft = float(row["end_to_end_latency_s"]), float(row["ttft_s"])
    return (e2e - ttft) / (int(row["number_output_tokens"]) - 1)


def _add_residuals(values: npt.NDArray[np.float64], residuals: list[float], medians: list[float]) -> None:
    values = values[values > 0]
    if values.size:
        median = float(np.median(values))
        medians.append(median)
        residuals.extend((np.log(values) - math.log(median)).tolist())


def _central_sigma(log_residuals: npt.NDArray[np.float64]) -> float:
    # The central 80% sets the body; the tail beyond it is modelled separately (tail_prob/factor).
    q10, q90 = np.quantile(log_residuals, [0.1, 0.9])
    return float((q90 - q10) / (2 * _Z90))


# ---------------------------------------------------------------------------------------------
# Scenario


class ModelOverride(BaseModel):
    """Per-model overrides in a scenario, keyed by model id or glob."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ttft_s: float | None = Field(default=None, ge=0)
    tpot_s: float | None = Field(default=None, ge=0)
    error_rate: float | None = Field(default=None, ge=0, le=1)
    rate_limit_rate: float | None = Field(default=None, ge=0, le=1)
    ttft_sigma: float | None = Field(default=None, ge=0)
    tpot_sigma: float | None = Field(default=None, ge=0)
    tail_prob: float | None = Field(default=None, ge=0, le=1)
    tail_factor: float | None = Field(default=None, ge=1)
    quality: float | None = Field(default=None, ge=0, le=1)


class SimEvent(BaseModel):
    """A scripted change, fired once the global request counter reaches ``at_request`` (that many
    chat requests were admitted before) or ``at_seconds`` of simulated time have passed.

    slow: latency x ``factor`` (relative to the model's own, not compounding); fail: answer
    ``status`` (0 = reset the connection without an answer); rate_limit: answer 429 with
    Retry-After; recover: undo all three. ``probability`` applies to fail and rate_limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at_request: int | None = Field(default=None, ge=0)
    at_seconds: float | None = Field(default=None, ge=0, validate_default=True)
    model: str = Field(default="*", min_length=1)
    action: Literal["slow", "fail", "recover", "rate_limit"]
    factor: float | None = Field(default=None, gt=0, validate_default=True)
    status: int = Field(default=500, validate_default=True)
    probability: float = Field(default=1.0, gt=0, le=1)
    retry_after_s: float = Field(default=1.0, ge=0)

    @field_validator("at_seconds")
    @classmethod
    def _one_trigger(cls, value: float | None, info: ValidationInfo) -> float | None:
        if "at_request" in info.data and (value is None) == (info.data["at_request"] is None):
            raise ValueError("give exactly one of at_request and at_seconds")
        return value

    @field_validator("factor")
    @classmethod
    def _factor_for_slow(cls, value: float | None, info: ValidationInfo) -> float | None:
        if info.data.get("action") == "slow" and value is None:
            raise ValueError("required when action is 'slow'")
        return value

    @field_validator("status")
    @classmethod
    def _status_range(cls, value: int) -> int:
        if value != 0 and not 400 <= value <= 599:
            raise ValueError("must be 0 (drop the connection) or an HTTP status from 400 to 599")
        return value


class Scenario(BaseModel):
    """Everything about a simulation run that is not a model's own parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    time_scale: float = Field(default=1.0, ge=0)
    error_rate: float | None = Field(default=None, ge=0, le=1)
    rate_limit_rate: float | None = Field(default=None, ge=0, le=1)
    retry_after_s: float = Field(default=1.0, ge=0)
    output_tokens_median: int = Field(default=150, ge=1)
    output_tokens_sigma: float = Field(default=0.6, ge=0)
    max_output_tokens: int = Field(default=4096, ge=1)
    min_chunk_interval_s: float = Field(default=0.02, ge=0)
    quality_spread: float = Field(default=0.1, ge=0, description="sd of answers' quality about their model's")
    judge_noise: float = Field(default=0.1, ge=0, description="sd of the judge's error, on [0, 1]")
    models: dict[str, ModelOverride] = Field(default_factory=dict)
    events: list[SimEvent] = Field(default_factory=list)


def parse_scenario(data: Mapping[str, Any], source: str = "scenario") -> Scenario:
    """Validate a scenario mapping; the ConfigError's key names the offending field."""
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        message = err["msg"].removeprefix("Value error, ")
        raise ConfigError(loc_key(err["loc"]) or "scenario", f"{message} (in {source})") from exc


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Load a scenario from a YAML or JSON file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError("scenario", f"cannot read {path}: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("scenario", f"{path} must hold a mapping at the top level")
    return parse_scenario(data, source=str(path))


def loc_key(loc: Sequence[int | str]) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def apply_overrides(models: Sequence[SimModel], scenario: Scenario) -> dict[str, SimModel]:
    ids = [m.id for m in models]
    if len(set(ids)) != len(ids):
        raise ConfigError("simulator.models", "model ids must be unique")
    for glob in scenario.models:
        if not fnmatch.filter(ids, glob):
            raise ConfigError(f"models.{glob}", "matches no simulated model")
    for i, event in enumerate(scenario.events):
        if not fnmatch.filter(ids, event.model):
            raise ConfigError(f"events[{i}].model", f"{event.model!r} matches no simulated model")
    out: dict[str, SimModel] = {}
    for model in models:
        if scenario.error_rate is not None:
            model = replace(model, error_rate=scenario.error_rate)
        if scenario.rate_limit_rate is not None:
            model = replace(model, rate_limit_rate=scenario.rate_limit_rate)
        for glob, override in scenario.models.items():
            if fnmatch.fnmatchcase(model.id, glob):
                model = replace(model, **override.model_dump(exclude_none=True))
        out[model.id] = model
    return out

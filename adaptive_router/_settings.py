"""Settings: ``settings.yaml`` overridden by the environment, validated once at start-up.

Precedence, highest first: keyword arguments, environment (``ROUTER_<SECTION>__<KEY>``, plus
``OPENROUTER_API_KEY``), the ``.env`` file, the YAML file, the defaults below. A wrong value
raises :class:`ConfigError` naming the key, e.g. ``routing.default_weights.latency``.

    settings = load_settings("settings.yaml")
    settings.routing.modes["speed"].latency   # 0.7
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from ._errors import ConfigError
from ._evaluation_settings import EvaluationSettings
from ._profile_settings import ProfileSettings, Section, TaskRule

__all__ = [
    "DEFAULT_COST_REFERENCE_USD",
    "BudgetSettings",
    "CacheSettings",
    "CatalogueSettings",
    "EvaluationSettings",
    "ExplorationSettings",
    "LearningSettings",
    "LimitsSettings",
    "ProbeSettings",
    "ProfileSettings",
    "ProviderSettings",
    "RedisSettings",
    "RoutingSettings",
    "SentinelSettings",
    "ServerSettings",
    "Settings",
    "TaskRule",
    "TracingSettings",
    "UpstreamSettings",
    "Weights",
    "load_settings",
]

SETTINGS_FILE_ENV = "ROUTER_SETTINGS_FILE"


_Section = Section  # every section forbids unknown keys and is read-only


class Weights(_Section):
    """Non-negative weights of the three terms; normalised to sum to 1."""

    latency: float = Field(ge=0, allow_inf_nan=False)
    cost: float = Field(ge=0, allow_inf_nan=False)
    quality: float = Field(ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _not_all_zero(self) -> Weights:
        if self.latency + self.cost + self.quality <= 0:
            raise ValueError("weights must not all be zero")
        return self

    def normalised(self) -> tuple[float, float, float]:
        top = max(self.latency, self.cost, self.quality)  # first: 3 x 1e308 would sum to inf
        latency, cost, quality = self.latency / top, self.cost / top, self.quality / top
        total = latency + cost + quality
        return (latency / total, cost / total, quality / total)


def _default_modes() -> dict[str, Weights]:
    third = 1.0 / 3.0
    return {
        "speed": Weights(latency=0.70, cost=0.20, quality=0.10),
        "cost": Weights(latency=0.20, cost=0.70, quality=0.10),
        "quality": Weights(latency=0.10, cost=0.20, quality=0.70),
        "balanced": Weights(latency=third, cost=third, quality=third),
    }


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    api_keys: list[str] = Field(
        default_factory=list, description="bearer keys; empty means no auth", repr=False
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    cors_origins: list[str] = Field(
        default_factory=list, description="origins browsers may call from (CORS); empty: no CORS headers"
    )
    log_prompts: bool = Field(default=False, description="put prompt text in the traffic log (else a hash)")
    log_answers: bool = Field(default=False, description="put answer text in the traffic log")
    traffic_log: str | None = Field(default=None, description="JSON-lines traffic log path; unset: none")
    traffic_log_max_bytes: int = Field(default=64 * 1024 * 1024, ge=4096)
    traffic_log_backups: int = Field(default=5, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="the process log's threshold"
    )
    log_format: Literal["text", "json"] = Field(default="text", description="json: one object per line")
    access_log: bool = Field(default=True, description="one line per routed request (never prompt text)")
    admin_keys: list[str] = Field(
        default_factory=list, description="bearer keys of POST /admin/reload; empty: disabled", repr=False
    )

    header_timeout_s: float = Field(
        default=10.0, gt=0, description="a client's request line and headers must arrive within this"
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="a request body must arrive within this (408)"
    )
    shutdown_grace_s: float = Field(
        default=25.0,
        gt=0,
        description="after SIGTERM, open streams end with an error event by this; then exit",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class TracingSettings(_Section):
    """OpenTelemetry traces (the ``otel`` extra), exported over OTLP as the ``OTEL_*`` variables say."""

    enabled: bool | Literal["auto"] = Field(
        default="auto",
        description="auto: on when an OTEL_EXPORTER_OTLP_*ENDPOINT or OTEL_TRACES_EXPORTER is set",
    )


class SentinelSettings(_Section):
    """A primary managed by Redis Sentinel: its name and the sentinels' addresses."""

    master: str = Field(min_length=1, description="the primary's name in the sentinels' configuration")
    nodes: list[str] = Field(min_length=1, description="sentinels as host:port")
    db: int = Field(default=0, ge=0)


class RedisSettings(_Section):
    """Where Redis is. One server (``url``), a cluster (``redis+cluster://`` URL, or ``cluster:
    true`` with ``url`` and/or seed ``nodes``), or a Sentinel-managed primary (``sentinel``, or
    a ``redis+sentinel://`` URL); after validation ``url`` names it whichever way it was given."""

    url: str | None = Field(
        default=None,
        description="redis://host:port/db, redis+cluster://host:port[,host:port], "
        "redis+sentinel://host:port[,host:port]/primary[/db]; unset means memory only",
    )
    cluster: bool = Field(default=False, description="url and nodes are seed nodes of a Redis Cluster")
    nodes: list[str] = Field(default_factory=list, description="cluster seed nodes as host:port")
    sentinel: SentinelSettings | None = None
    connect_timeout_ms: float = Field(default=50.0, gt=0)
    op_timeout_ms: float = Field(default=5.0, gt=0)
    retry_after_s: float = Field(default=2.0, gt=0, description="how long to stay on memory after a fault")
    prefix: str = "adaptive-router"

    @model_validator(mode="after")
    def _one_url(self) -> RedisSettings:
        from ._topology import parse_redis_url, target_url  # the redis package, only when needed

        if self.sentinel is not None and (self.url is not None or self.cluster or self.nodes):
            raise ConfigError("redis.sentinel", "name Redis one way: sentinel, or url/cluster/nodes")
        sentinel = self.sentinel
        url = target_url(
            self.url,
            cluster=self.cluster,
            nodes=sentinel.nodes if sentinel else self.nodes,
            sentinel_master=sentinel.master if sentinel else None,
            db=sentinel.db if sentinel else 0,
        )
        if url is not None:
            parse_redis_url(url)  # a wrong URL stops start-up here, naming redis.url
        object.__setattr__(self, "url", url)  # frozen: set once, during validation
        return self

    @property
    def topology(self) -> str | None:
        """One of "single", "sentinel", "cluster"; None: memory only."""
        from ._topology import parse_redis_url

        return None if self.url is None else parse_redis_url(self.url).kind


class CacheSettings(_Section):
    enabled: bool = True
    ttl_seconds: float = Field(default=3600.0, gt=0)
    memory_max_entries: int = Field(default=10_000, ge=1)
    max_value_bytes: int = Field(default=1_048_576, ge=1)
    decision_ttl_seconds: float = Field(default=1.0, ge=0)
    shared_across_keys: bool = Field(
        default=False, description="one cache for every API key (else each key sees only its own answers)"
    )


_DEFAULT_WEIGHTS = {"latency": 0.4, "cost": 0.3, "quality": 0.3}
# A request this dear loses the whole cost weight (~1,000 tokens in, 500 out at $10/$30 per M).
DEFAULT_COST_REFERENCE_USD = 0.02


class RoutingSettings(_Section):
    default_weights: Weights = Weights(**_DEFAULT_WEIGHTS)
    modes: dict[str, Weights] = Field(default_factory=_default_modes)
    fallback_models: list[str] = Field(default_factory=list)
    top_k: int = Field(default=4, ge=1, le=64, description="candidates kept as the fallback order")
    latency_quantile: float = Field(default=0.9, gt=0.5, lt=1.0)
    latency_scale_s: tuple[float, float] = (0.01, 120.0)
    # Linear: a unit of quality is worth w_quality * reference / w_cost USD at any price (core/_scoring.py).
    cost_norm: Literal["linear", "log"] = Field(
        default="linear", description="the cost term: linear in dollars, or log between cost_scale_usd"
    )
    cost_reference_usd: float = Field(
        default=DEFAULT_COST_REFERENCE_USD,
        gt=0,
        allow_inf_nan=False,
        description="linear cost: a request costing this much (USD) counts the whole cost weight",
    )
    cost_scale_usd: tuple[float, float] = (1e-7, 1.0)
    allow: list[str] = Field(
        default_factory=list, description="globs of model ids the router may use; empty: every routable one"
    )
    deny: list[str] = Field(
        default_factory=lambda: ["*:free"],
        description="globs of model ids never used (default: OpenRouter's rate-limited ':free' variants)",
    )

    @field_validator("latency_scale_s", "cost_scale_usd")
    @classmethod
    def _scale_ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low < high:
            raise ValueError("needs 0 < low < high")
        return value

    @model_validator(mode="before")
    @classmethod
    def _partial_default_weights(cls, data: Any) -> Any:
        # ROUTER_ROUTING__DEFAULT_WEIGHTS__LATENCY=0.5 alone keeps the other two defaults;
        # likewise for one weight of a built-in mode. A new mode must give all three.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("default_weights"), dict):
            data["default_weights"] = {**_DEFAULT_WEIGHTS, **data["default_weights"]}
        if isinstance(data.get("modes"), dict):
            builtin = _default_modes()
            data["modes"] = {
                name: {**builtin[name].model_dump(), **value}
                if name in builtin and isinstance(value, dict)
                else value
                for name, value in data["modes"].items()
            }
        return data

    @model_validator(mode="after")
    def _builtin_modes_present(self) -> RoutingSettings:
        # A settings file that adds a mode should not lose the four documented ones.
        merged = {**_default_modes(), **self.modes}
        object.__setattr__(self, "modes", merged)
        return self


class LearningSettings(_Section):
    latency_half_life_s: float = Field(default=300.0, gt=0, description="latency moves fast")
    quality_half_life_s: float = Field(default=86_400.0, gt=0, description="quality moves slowly")
    prior_strength: float = Field(default=5.0, gt=0, description="pseudo-observations behind a prior")
    # With semantic cells: what the task class's quality estimate is worth in one of its cells, in
    # observations (20: cells of a class differ by ~0.1 in accuracy; "auto": read off the data
    # per model, from how far cells stray from their class).
    cell_prior_strength: float | Literal["auto"] = Field(default=20.0)
    # With semantic cells: quality is the cell's difficulty plus the model's strength, so what a
    # model showed in some cells carries to others at their difficulty (core/_hierarchy.py).
    cell_difficulty: bool = Field(default=False, description="quality = cell difficulty + model strength")

    @field_validator("cell_prior_strength")
    @classmethod
    def _strength_positive(cls, value: float | str) -> float | str:
        if value != "auto" and not float(value) > 0:
            raise ValueError("must be > 0 or 'auto'")
        return value

    latency_log_sd_prior: float = Field(
        default=0.3, gt=0, description="log spread of one answer's latency before evidence"
    )
    success_prior: float = Field(default=0.98, gt=0, lt=1)
    refresh_interval_s: float = Field(default=1.0, gt=0, description="full re-estimate at most this often")
    surprise_z: float = Field(default=2.5, gt=0, description="a latency this many sd off is a surprise")
    surprise_forget: float = Field(default=0.5, gt=0, le=1, description="past evidence kept after a surprise")
    stale_after: float = Field(
        default=100.0,
        ge=0,
        description="requests elsewhere after which a model's old latency evidence counts half (0: never)",
    )
    calibration_half_life_s: float = Field(
        default=3600.0, gt=0, description="how slowly a provider's speed against the public figures moves"
    )
    latency_prior_strength: float = Field(
        default=1.0,
        gt=0,
        description="answers' worth of the provider-calibrated prior in a model's latency fit",
    )
    calibration_strength: float = Field(
        default=1.0, gt=0, description="pseudo-observations behind 'as fast as the public figures'"
    )
    feedback_memory: int = Field(default=100_000, ge=0, description="request ids kept for /feedback")
    feedback_ttl_s: float = Field(default=86_400.0, gt=0, description="how long /feedback accepts an id")
    state_path: str | None = Field(default=None, description="save/load learned state here")
    sync_interval_ms: float = Field(default=1000.0, gt=0, description="how often replicas share via Redis")
    replica_id: str | None = Field(
        default=None, description="stable id per replica (pod name); default host-pid"
    )
    shared_ttl_s: float = Field(
        default=86_400.0, gt=0, description="a silent replica's evidence is dropped after"
    )


class ExplorationSettings(_Section):
    policy: Literal["ucb", "thompson", "softmax", "greedy"] = "ucb"
    ucb_c: float = Field(default=0.75, ge=0, description="UCB: bonus = c * sqrt(ln(1 + N)) * score sd")
    temperature: float = Field(default=0.02, gt=0, description="softmax temperature in score units")
    recheck_after: float = Field(
        default=100.0, gt=0, description="requests elsewhere after which a slowed-down model is tried again"
    )
    seed: int | None = None


class DeclaredModel(_Section):
    """A model only a configured provider serves (a local Ollama or vLLM model): its facts and priors."""

    id: str = Field(min_length=1)
    prompt_per_mtok: float = Field(default=0.0, ge=0, allow_inf_nan=False, description="USD per million")
    completion_per_mtok: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    context_length: int = Field(default=8192, ge=1)
    max_output_tokens: int = Field(default=0, ge=0)
    capabilities: list[str] = Field(default_factory=lambda: ["streaming"])
    ttft_s: float = Field(default=0.5, gt=0, allow_inf_nan=False, description="prior time to first token")
    tpot_s: float = Field(default=0.02, gt=0, allow_inf_nan=False, description="prior seconds per token")
    quality: float = Field(default=0.5, ge=0, le=1)


class CatalogueSettings(_Section):
    source: str = Field(default="bundled", description="'bundled', 'openrouter' (fetch), or a JSON file path")
    overlay: str | None = Field(default=None, description="priors by model id or glob (YAML or JSON)")
    models: list[DeclaredModel] = Field(
        default_factory=list, description="models to add (or replace) by id: local ones a provider serves"
    )
    refresh_interval_s: float | None = Field(
        default=None, gt=0, description="source 'openrouter': fetch prices and models again this often"
    )


class ProviderSettings(_Section):
    """One OpenAI-compatible endpoint. ``models`` are globs of catalogue ids it serves."""

    base_url: str
    api_key: str | None = Field(default=None, repr=False)
    api_key_env: str | None = None
    models: list[str] = Field(default_factory=lambda: ["*"])
    strip_prefix: bool = Field(default=False, description="send 'llama3' for catalogue id 'ollama/llama3'")
    headers: dict[str, str] = Field(default_factory=dict)

    def resolved_key(self) -> str | None:
        if self.api_key:
            return self.api_key
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class UpstreamSettings(_Section):
    openrouter_base_url: str = "https://openrouter.ai/api/v1"
    openrouter_api_key: str | None = Field(default=None, repr=False)
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    simulate: Literal["auto", "always", "never"] = Field(
        default="auto", description="auto: simulate when no provider has a key"
    )
    simulator_scenario: str | None = None
    simulator_time_scale: float = Field(default=1.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)
    attempt_timeout_s: float = Field(default=60.0, gt=0)
    request_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="one request's total time, fallbacks and a stream's whole length included",
    )
    max_attempts: int = Field(default=4, ge=1)
    max_connections: int = Field(default=256, ge=1)
    http_client: Literal["auto", "httpx", "aiohttp"] = Field(
        default="auto", description="auto: aiohttp (the speed extra) when installed and no proxy is set"
    )
    breaker_failures: int = Field(default=5, ge=1, description="consecutive failures that open a breaker")
    breaker_cooldown_s: float = Field(default=30.0, gt=0)


class ProbeSettings(_Section):
    """Health probes: a tiny request to models whose breaker is half-open, and to idle fallbacks."""

    enabled: bool = False
    interval_s: float = Field(default=30.0, gt=0, description="how often the prober looks at the pool")
    idle_after_s: float = Field(
        default=300.0, ge=0, description="a fallback model unused this long is probed"
    )
    daily_usd: float = Field(default=0.05, ge=0, description="spend cap of the probes per UTC day")
    max_tokens: int = Field(default=1, ge=1, le=16)
    timeout_s: float = Field(default=10.0, gt=0)


class LimitsSettings(_Section):
    """What the router accepts from clients and upstreams before it calls the input hostile."""

    json_depth: int = Field(
        default=64, ge=4, le=200, description="deeper arrays/objects: a 400 (client), a failure (upstream)"
    )
    upstream_answer_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="a longer non-streamed answer is that model's failure"
    )
    upstream_event_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="a longer line or event in a stream is that model's failure"
    )


class BudgetSettings(_Section):
    """Daily spend caps in USD (UTC days), shared by all replicas through Redis."""

    global_daily_usd: float | None = Field(default=None, ge=0)
    per_key_daily_usd: float | None = Field(default=None, ge=0, description="per router API key")
    near_fraction: float = Field(default=0.8, gt=0, le=1, description="from here on, cheap models only")
    price_ceiling_per_mtok: float | None = Field(
        default=None, ge=0, description="completion USD per 1M tokens"
    )
    mode: Literal["downgrade", "reject"] = Field(
        default="reject", description="at the cap: 429, or cheap only"
    )
    refresh_interval_ms: float = Field(default=1000.0, gt=0)
    default_output_tokens: int = Field(
        default=4096,
        ge=1,
        description="worst-case answer length held when neither max_tokens nor the model caps it",
    )

    @property
    def enabled(self) -> bool:
        return self.global_daily_usd is not None or self.per_key_daily_usd is not None


class Settings(BaseSettings):
    """Everything the router reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="ROUTER_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        frozen=True,
        populate_by_name=True,
    )

    server: ServerSettings = ServerSettings()
    redis: RedisSettings = RedisSettings()
    cache: CacheSettings = CacheSettings()
    routing: RoutingSettings = RoutingSettings()
    learning: LearningSettings = LearningSettings()
    exploration: ExplorationSettings = ExplorationSettings()
    profile: ProfileSettings = ProfileSettings()
    catalogue: CatalogueSettings = CatalogueSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    budget: BudgetSettings = BudgetSettings()
    tracing: TracingSettings = TracingSettings()
    probe: ProbeSettings = ProbeSettings()
    limits: LimitsSettings = LimitsSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    # Read from the environment or .env under their own names, not ROUTER_-prefixed paths.
    openrouter_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENROUTER_API_KEY", "openrouter_api_key"), repr=False
    )
    settings_file: str | None = Field(default=None, description="ROUTER_SETTINGS_FILE: read before the rest")
    simulator_url: str | None = Field(
        default=None, description="ROUTER_SIMULATOR_URL: a running simulated upstream"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = settings_cls.model_config.get("yaml_file")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        if yaml_file:
            sources.append(YamlConfigSettingsSource(settings_cls))
        return tuple(sources)

    @model_validator(mode="before")
    @classmethod
    def _published_aliases(cls, data: Any) -> Any:
        """Seed 000's ``config.yaml`` spells Redis as ``redis.host``, ``redis.port`` and
        ``redis.ttl_seconds``: documented aliases of ``redis.url`` (which wins when both are
        given) and ``cache.ttl_seconds``."""
        if not isinstance(data, dict) or not isinstance(data.get("redis"), dict):
            return data
        redis = dict(data["redis"])
        host, port, ttl = redis.pop("host", None), redis.pop("port", None), redis.pop("ttl_seconds", None)
        if port is not None and not _is_port(port):
            raise ValueError(f"redis.port: expected a port number 1-65535, got {port!r}")
        if (host is not None or port is not None) and not redis.get("url"):
            redis["url"] = f"redis://{host or '127.0.0.1'}:{port or 6379}/0"
        data = {**data, "redis": redis}
        if ttl is not None:
            cache = data.get("cache")
            cache = dict(cache) if isinstance(cache, dict) else {}
            cache.setdefault("ttl_seconds", ttl)
            data["cache"] = cache
        return data

    def openrouter_key(self) -> str | None:
        return self.upstream.openrouter_api_key or self.openrouter_api_key or None

    def simulated(self) -> bool:
        """Simulate when told to, or (``auto``) when no provider is configured and OpenRouter has no key."""
        mode = self.upstream.simulate
        if mode != "auto":
            return mode == "always"
        return not (self.openrouter_key() or self.upstream.providers)

    def routes(self) -> list[tuple[str, list[str]]]:
        """Which provider serves which model-id globs, in the order they are matched (first wins)."""
        if self.simulated():
            return [("simulated", ["*"])]
        routes = [(name, list(spec.models)) for name, spec in self.upstream.providers.items()]
        if self.openrouter_key():
            routes.append(("openrouter", ["*"]))
        return routes


def _is_port(value: Any) -> bool:
    return not isinstance(value, bool) and str(value).isdigit() and 0 < int(value) < 65536


def _error_key(error: Any) -> str:
    return ".".join(str(part) for part in error["loc"]) or "settings"


def settings_file_from_env(env_file: str | Path = ".env") -> str | None:
    """``$ROUTER_SETTINGS_FILE``, else the same variable in ``./.env`` (``.env.example`` lists it)."""
    if value := os.environ.get(SETTINGS_FILE_ENV):
        return value
    if not Path(env_file).is_file():
        return None
    from dotenv import dotenv_values  # pydantic-settings' own dependency for .env files

    return dotenv_values(env_file).get(SETTINGS_FILE_ENV) or None


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the one ``Settings`` object from ``path`` (or ``$ROUTER_SETTINGS_FILE`` from the
    environment or ``./.env``; else defaults)."""
    path = path or settings_file_from_env()
    settings_cls: type[Settings] = Settings
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError("settings file", f"{file} does not exist")
        _check_yaml(file)
        config = SettingsConfigDict(**{**Settings.model_config, "yaml_file": str(file)})
        settings_cls = type("Settings", (Settings,), {"model_config": config})
        overrides = {"settings_file": str(file.resolve()), **overrides}  # what a reload reads again
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(_error_key(first), first["msg"].removeprefix("Value error, ")) from exc


def _check_yaml(file: Path) -> None:
    import yaml

    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError("settings file", f"{file} is not valid YAML: {exc}") from exc
    if data is not None and not isinstance(data, dict):
        raise ConfigError("settings file", f"{file} must hold a mapping at the top level")

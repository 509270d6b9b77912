"""The HTTP service: an OpenAI-compatible routing proxy, built from ``Settings`` by ``create_app``.

    app = create_app(load_settings("settings.yaml"))      # a Starlette app
    uvicorn.run(app)                                       # or: adaptive-router serve

Point any OpenAI client at ``http://host:port/v1`` and set ``model`` to ``auto``,
``auto:<mode>`` or a model id. Handlers stay thin: routing is the ``Router``'s, attempts the
``Executor``'s, bytes the ``UpstreamClient``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from ._http import ApiError
from .budget import Budget, price_mask
from .cache import Cache, build_cache, redis_client
from .catalogue import Catalogue, load_catalogue
from .endpoints import (
    _handle_error,
    complete,
    feedback,
    health,
    list_models,
    list_models_openai,
    metrics_json,
    metrics_text,
    ready,
    route_only,
)
from .errors import RouterError
from .execution import Breakers, Executor, Result
from .metrics import Metrics
from .proxy import _AllFailed, _routing, _UpstreamAnswer, chat_completions
from .router import Decision, Router
from .settings import Settings
from .shared import Periodic, SharedState
from .topology import RedisClient
from .trafficlog import TrafficLog
from .upstream import Provider, UpstreamClient, providers_from_settings

__all__ = ["RouterService", "create_app", "serve"]

log = logging.getLogger("adaptive_router.service")
SIMULATOR_URL_ENV = "ROUTER_SIMULATOR_URL"


@dataclass
class RouterService:
    """Everything one process serves with. Built in ``create_app``; opened in the lifespan."""

    settings: Settings
    router: Router
    providers: list[Provider]
    simulated: bool
    transport: httpx.AsyncBaseTransport | None = None
    metrics: Metrics = field(default_factory=Metrics)
    cache: Cache | None = None
    client: UpstreamClient | None = None
    executor: Executor | None = None
    breakers: Breakers | None = None
    keys: list[bytes] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    traffic_log: TrafficLog | None = None
    shared: SharedState | None = None
    budget: Budget | None = None
    cheap_mask: Any = None  # the budget's price ceiling as a row mask, built once
    _background: set[asyncio.Task[Any]] = field(default_factory=set)
    _redis_clients: list[Any] = field(default_factory=list)
    _timers: list[Periodic] = field(default_factory=list)

    @property
    def upstream_mode(self) -> str:
        return "simulated" if self.simulated else "live"

    async def open(self) -> None:
        up = self.settings.upstream
        self.cache = await build_cache(
            self.settings.redis, self.settings.cache, on_state_change=lambda s: self.metrics.set_info(cache=s)
        )
        self.client = UpstreamClient(
            self.providers,
            connect_timeout_s=up.connect_timeout_s,
            read_timeout_s=up.read_timeout_s,
            max_connections=up.max_connections,
            http_client=up.http_client,
            transport=self.transport,
        )
        self.breakers = Breakers(
            self.router, up.breaker_failures, up.breaker_cooldown_s, observer=self.metrics
        )
        self.executor = Executor(
            self.router,
            self.client,
            self.breakers,
            attempt_timeout_s=up.attempt_timeout_s,
            max_attempts=up.max_attempts,
            observer=self.metrics,
        )
        self.metrics.set_info(upstream=self.upstream_mode, cache=self.cache.backend)
        server = self.settings.server
        if server.traffic_log:
            self.traffic_log = TrafficLog(
                server.traffic_log,
                server.traffic_log_max_bytes,
                server.traffic_log_backups,
                include_prompts=server.log_prompts,
            )
        saved_at = self._load_state()
        await self._open_shared(saved_at)

    async def _open_shared(self, saved_at: float | None) -> None:
        """Replicas' shared learning and budgets, both through Redis when it is configured."""
        settings, redis = self.settings, self.settings.redis
        learning, budget = settings.learning, settings.budget
        replica = learning.replica_id or f"{socket.gethostname()}-{os.getpid()}"
        if redis.url:
            interval = learning.sync_interval_ms / 1000
            client = redis_client(
                redis.url, redis.connect_timeout_ms, max(redis.op_timeout_ms, interval * 500)
            )
            self._redis_clients.append(client)
            self.shared = SharedState(
                client,
                redis.prefix,
                replica,
                self.router.learner,
                interval,
                learning.shared_ttl_s,
                clock=self.router.clock,
                on_state_change=lambda up: self.metrics.set_info(shared="redis" if up else "local"),
            )
            await self.shared.start(local_saved_at=saved_at)
        if budget.enabled:
            budget_client: RedisClient | None = None
            if redis.url:
                budget_client = redis_client(
                    redis.url, redis.connect_timeout_ms, max(redis.op_timeout_ms, 50.0)
                )
                self._redis_clients.append(budget_client)
            self.budget = Budget(
                budget_client,
                redis.prefix,
                budget.global_daily_usd,
                budget.per_key_daily_usd,
                budget.near_fraction,
                budget.price_ceiling_per_mtok,
                budget.mode,
                replica_id=replica,
                api_keys=settings.server.api_keys,
            )
            self.cheap_mask = price_mask(self.router.catalogue, budget.price_ceiling_per_mtok)
            self._timers.append(Periodic(budget.refresh_interval_ms / 1000, self.budget.refresh, "budget"))

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def admit(self, route: Any, api_key: str | None) -> None:
        """Budgets: 429 at the cap (mode reject); only models under the price ceiling near it."""
        if self.budget is None:
            return
        verdict = self.budget.check(api_key)
        verdict.raise_if_blocked()
        if verdict.price_ceiling is not None:
            route.mask = self.cheap_mask

    def charge(self, api_key: str | None, usd: float) -> None:
        if self.budget is not None and usd > 0:
            self._spawn(self.budget.charge(api_key, usd))

    def log(self, decision: Decision, result: Result, route: Any, answer: Any = None) -> None:
        """One traffic-log line (enqueued; written by a background thread, never blocking)."""
        if self.traffic_log is not None:
            self.traffic_log.log_decision(decision, result.attempts, request=route, answer=answer)

    async def close(self) -> None:
        if self.traffic_log is not None:
            self.traffic_log.close()
        for timer in self._timers:
            await timer.stop()
        await asyncio.gather(*self._background, return_exceptions=True)  # charges still in flight
        if self.budget is not None:
            await self.budget.refresh()
        pushed = await self.shared.stop() if self.shared is not None else False
        if not pushed or self.settings.learning.state_path:
            self._save_state()
        for client in self._redis_clients:
            await client.aclose()
        if self.client is not None:
            await self.client.aclose()
        if self.cache is not None:
            await self.cache.close()

    def _load_state(self) -> float | None:
        """Load the saved learned state; returns when it was saved (or None)."""
        path = self.settings.learning.state_path
        if not (path and os.path.exists(path)):
            return None
        try:
            self.router.learner.merge(self.router.learner.read_state(path))
            log.info("loaded learned state from %s", path)
            return os.path.getmtime(path)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("could not load learned state from %s: %s; starting from priors", path, exc)
            return None

    def _save_state(self) -> None:
        path = self.settings.learning.state_path
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.router.learner.save(path)
            log.info("saved learned state to %s", path)


def wants_simulator(settings: Settings) -> bool:
    """Simulate when told to, or (``auto``) when no provider has a key and none is configured."""
    mode = settings.upstream.simulate
    if mode != "auto":
        return mode == "always"
    providers = providers_from_settings(settings.upstream, settings.openrouter_key())
    return not (any(p.api_key for p in providers) or settings.upstream.providers)


def build_service(
    settings: Settings,
    *,
    catalogue: Catalogue | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> RouterService:
    """Resolve the catalogue and the upstream once, at start-up: simulated when no key is set."""
    catalogue = catalogue or load_catalogue(
        settings.catalogue.source, settings.catalogue.overlay, settings.openrouter_key()
    )
    router = Router.from_settings(settings, catalogue)
    providers = providers_from_settings(settings.upstream, settings.openrouter_key())
    simulated = wants_simulator(settings)
    if simulated:
        url = settings.simulator_url or os.environ.get(SIMULATOR_URL_ENV)
        if not url:
            raise RouterError(
                "no upstream API key is set and no simulated upstream is running; use "
                "'adaptive-router serve' (which starts one) or set OPENROUTER_API_KEY"
            )
        providers = [Provider(name="simulated", base_url=url, models=("*",))]
        log.warning(
            "NO UPSTREAM API KEY: answers come from the SIMULATED upstream at %s, not from real models. "
            "Set OPENROUTER_API_KEY (or upstream.providers) for real answers.",
            url,
        )
    keys = [k.encode() for k in settings.server.api_keys]
    return RouterService(settings, router, providers, simulated, transport, keys=keys)


def create_app(
    settings: Settings,
    *,
    catalogue: Catalogue | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """The Starlette app for ``settings``. ``transport`` replaces the upstream's network (tests)."""
    service = build_service(settings, catalogue=catalogue, transport=transport)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.open()
        try:
            yield
        finally:
            await service.close()

    from .openapi import docs_routes

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/chat/completions", chat_completions, methods=["POST"]),
        Route("/route", route_only, methods=["POST"]),
        Route("/complete", complete, methods=["POST"]),
        Route("/feedback", feedback, methods=["POST"]),
        Route("/v1/models", list_models_openai, methods=["GET"]),
        Route("/models", list_models, methods=["GET"]),
        Route("/metrics", metrics_text, methods=["GET"]),
        Route("/metrics.json", metrics_json, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        *docs_routes(),
    ]
    # Expected errors go through Starlette's ExceptionMiddleware (answered, nothing re-raised);
    # ``Exception`` is the last resort for bugs: a JSON 500, and the traceback in the log.
    expected = (ValidationError, RouterError, ApiError, HTTPException, _UpstreamAnswer, _AllFailed)
    handlers: dict[Any, Callable[..., Any]] = {cls: _handle_error for cls in (*expected, Exception)}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.state.service = service
    return app


def app_from_environment() -> Starlette:
    """Factory for ``uvicorn --factory`` and multi-worker serving: settings from the environment."""
    from .settings import load_settings

    return create_app(load_settings())


def serve(settings: Settings) -> None:
    """Run the service with uvicorn; start the simulated upstream first when no key is set."""
    import uvicorn

    from .settings import SETTINGS_FILE_ENV  # noqa: F401  (documented: the factory reads it)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per upstream call is noise
    if wants_simulator(settings) and not settings.simulator_url:  # one running elsewhere is used as it is
        url = _start_simulator(settings)
        os.environ[SIMULATOR_URL_ENV] = url  # for worker processes, which rebuild settings
        settings = settings.model_copy(update={"simulator_url": url})
    # uvicorn re-raises SIGTERM through the previous handler once it has shut down gracefully;
    # make that handler a clean exit, so orchestrators see 0 after in-flight requests finish.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    server = settings.server
    if server.workers > 1:
        uvicorn.run(
            "adaptive_router.service:app_from_environment",
            factory=True,
            host=server.host,
            port=server.port,
            workers=server.workers,
            log_level="info",
            access_log=False,
        )
    else:
        uvicorn.run(
            create_app(settings), host=server.host, port=server.port, log_level="info", access_log=False
        )


def _start_simulator(settings: Settings) -> str:
    """The simulated upstream on a free loopback port, in a background thread of this process."""
    import socket
    import threading

    import uvicorn

    from .simulator import create_simulator_app, load_scenario, sim_models_from_catalogue

    catalogue = load_catalogue(settings.catalogue.source, settings.catalogue.overlay)
    scenario = (
        load_scenario(settings.upstream.simulator_scenario) if settings.upstream.simulator_scenario else None
    )
    app = create_simulator_app(sim_models_from_catalogue(catalogue), scenario)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="simulator").start()
    url = f"http://127.0.0.1:{port}/v1"
    log.warning("started the SIMULATED upstream at %s (%d models)", url, len(catalogue))
    return url


def complete_once(settings: Settings, route: Any, prompt: str, max_tokens: int | None, as_json: bool) -> int:
    """``adaptive-router route PROMPT`` without ``--dry-run``: one routed call, printed."""
    import json
    import sys

    if wants_simulator(settings) and not settings.simulator_url:
        settings = settings.model_copy(update={"simulator_url": _start_simulator(settings)})
    service = build_service(settings)
    body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens

    async def run() -> tuple[Decision, Result]:
        await service.open()
        try:
            decision = service.router.decide(route)
            executor = service.executor
            assert executor is not None
            return decision, await executor.complete(
                decision, body, executor.timeout_for(route.max_latency_ms)
            )
        finally:
            await service.close()

    decision, result = asyncio.run(run())
    routing = _routing(service, decision, result, cached=False)
    if result.completion is None:
        print(f"adaptive-router: no model answered: {routing['attempts']}", file=sys.stderr)
        return 1
    data = {**result.completion.data, "model": result.completion.model_id, "routing": routing}
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        content = ((data.get("choices") or [{}])[0].get("message") or {}).get("content", "")
        print(content)
        print(
            f"\n-- {result.completion.model_id} ({service.upstream_mode}), {decision.reason}", file=sys.stderr
        )
    return 0

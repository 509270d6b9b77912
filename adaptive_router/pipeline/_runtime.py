"""What one process routes with: resolved at start-up (``build_service``), opened for the
lifetime of a server or a CLI call (``RouterService.open``), and closed in order.

    service = build_service(settings)                 # catalogue, router, providers: no I/O
    async with service.open() as running:             # cache, upstream client, Redis, timers
        await running.pipeline.complete(running.pipeline.call(route, body=body))

The HTTP service keeps ``running`` as Starlette lifespan state; nothing here knows HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx

from .._errors import RequestFailed, RouterError
from .._settings import Settings
from .._topology import RedisClient
from ..core._catalogue import Catalogue
from ..core._decision import RouteRequest
from ..core._router import Router, catalogue_from_settings
from ..offline._trafficlog import TrafficLog
from ..state._budget import Budget, price_mask
from ..state._cache import Cache, build_cache, redis_client
from ..state._feedback import FeedbackStore
from ..state._shared import Periodic, SharedState
from ..upstream._client import Completion, UpstreamClient
from ..upstream._execution import Breakers, Executor
from ..upstream._limits import Limits
from ..upstream._providers import Provider, providers_from_settings
from ._evaluation import Evaluations, EvaluationStats
from ._metrics import Metrics
from ._observe import LOG_INTERVAL_S, BreakerLog, install_observers
from ._pipeline import Pipeline
from ._tracing import tracer_from_settings

__all__ = [
    "SIMULATOR_URL_ENV",
    "RouterService",
    "Running",
    "build_service",
    "complete_once",
    "start_simulator",
    "wants_simulator",
]

log = logging.getLogger("adaptive_router.service")
SIMULATOR_URL_ENV = "ROUTER_SIMULATOR_URL"


@dataclass(frozen=True)
class Running:
    """An opened service: the pipeline and what ``/ready`` reports on."""

    service: RouterService
    pipeline: Pipeline
    client: UpstreamClient
    shared: SharedState | None

    @property
    def cache(self) -> Cache:
        return self.pipeline.cache


@dataclass
class RouterService:
    """Everything one process serves with that needs no I/O to build. ``open()`` starts the rest."""

    settings: Settings
    router: Router
    providers: list[Provider]
    simulated: bool
    transport: httpx.AsyncBaseTransport | None = None
    keys: list[bytes] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)
    started: float = field(default_factory=time.time)
    tracer: Any | None = None  # OpenTelemetry's, when tracing is on
    evaluation_stats: EvaluationStats | None = None  # kept across opens: its series are registered once
    evaluations: Evaluations | None = None  # the running evaluators, while open

    @property
    def upstream_mode(self) -> str:
        return "simulated" if self.simulated else "live"

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Running]:
        async with contextlib.AsyncExitStack() as stack:
            yield await self._open(stack)

    async def _open(self, stack: contextlib.AsyncExitStack) -> Running:
        settings, up = self.settings, self.settings.upstream
        cache = await build_cache(
            settings.redis, settings.cache, on_state_change=lambda s: self.metrics.set_info(cache=s)
        )
        stack.push_async_callback(cache.close)
        client = UpstreamClient(
            self.providers,
            connect_timeout_s=up.connect_timeout_s,
            read_timeout_s=up.read_timeout_s,
            max_connections=up.max_connections,
            http_client=up.http_client,
            transport=self.transport,
            limits=upstream_limits(settings),
        )
        stack.push_async_callback(client.aclose)
        observer = BreakerLog(self.metrics, LOG_INTERVAL_S)  # the metrics, and breaker changes logged
        breakers = Breakers(self.router, up.breaker_failures, up.breaker_cooldown_s, observer=observer)
        executor = Executor(
            self.router,
            client,
            breakers,
            attempt_timeout_s=up.attempt_timeout_s,
            max_attempts=up.max_attempts,
            observer=observer,
        )
        self.metrics.set_info(upstream=self.upstream_mode, cache=cache.backend)
        saved_at = self._load_state()
        background = _Background()
        shared = await self._open_shared(stack, saved_at)
        pipeline = Pipeline(
            router=self.router,
            executor=executor,
            breakers=breakers,
            metrics=self.metrics,
            cache=cache,
            cache_settings=settings.cache,
            upstream_mode=self.upstream_mode,
            spawn=background.spawn,
            request_timeout_s=up.request_timeout_s,
            default_output_tokens=settings.budget.default_output_tokens,
        )
        await self._open_budget(stack, pipeline)
        pipeline.feedback = await self._open_feedback(stack)
        self.router.answers = None  # the store is the one owner of answered requests
        stack.push_async_callback(background.drain)  # charges still in flight, before the budget's last flush
        pipeline.traffic_log = traffic_log = self._traffic_log()
        if traffic_log is not None:
            stack.callback(traffic_log.close)
            self.metrics.watch_dropped(lambda: traffic_log.dropped)
        await self._open_evaluations(stack, pipeline)
        running = Running(self, pipeline, client, shared)
        install_observers(running, executor, self.tracer)
        return running

    async def _open_evaluations(self, stack: contextlib.AsyncExitStack, pipeline: Pipeline) -> None:
        """Evaluators after each answer (see ``evaluation`` in the settings), stopped before the rest."""
        if not self.settings.evaluation.enabled:
            return
        if self.evaluation_stats is None:
            self.evaluation_stats = EvaluationStats(self.metrics)
            self.metrics.sections["evaluation"] = self.evaluation_stats.as_dict
        metrics = self.metrics

        def charged(completion: Completion) -> float:  # a judge's or shadow's call: in the spend too
            usd = pipeline.cost(completion)
            tokens = (completion.prompt_tokens or 0, completion.completion_tokens or 0)
            metrics.usage(completion.model_id, *tokens, usd)
            return usd

        evaluations = Evaluations(
            self.settings.evaluation,
            self.router,
            pipeline.executor,
            charged,
            traffic_log=pipeline.traffic_log,
            stats=self.evaluation_stats,
        )
        pipeline.hooks.add(evaluations)
        self.evaluations = evaluations
        await evaluations.start()
        stack.push_async_callback(evaluations.stop)

    def _traffic_log(self) -> TrafficLog | None:
        server = self.settings.server
        if not server.traffic_log:
            return None
        return TrafficLog(
            server.traffic_log,
            server.traffic_log_max_bytes,
            server.traffic_log_backups,
            include_prompts=server.log_prompts,
            include_answers=server.log_answers,
        )

    def _replica_id(self) -> str:
        return self.settings.learning.replica_id or f"{socket.gethostname()}-{os.getpid()}"

    async def _redis(self, stack: contextlib.AsyncExitStack, op_timeout_ms: float) -> RedisClient:
        redis = self.settings.redis
        assert redis.url is not None
        client = redis_client(redis.url, redis.connect_timeout_ms, op_timeout_ms)
        stack.push_async_callback(client.aclose)
        return client

    async def _open_shared(
        self, stack: contextlib.AsyncExitStack, saved_at: float | None
    ) -> SharedState | None:
        """Replicas' shared learning through Redis, when it is configured; the state saved on close."""
        learning, redis = self.settings.learning, self.settings.redis
        shared: SharedState | None = None
        if redis.url:
            interval = learning.sync_interval_ms / 1000
            client = await self._redis(stack, max(redis.op_timeout_ms, interval * 500))
            shared = SharedState(
                client,
                redis.prefix,
                self._replica_id(),
                self.router.learner,
                interval,
                learning.shared_ttl_s,
                clock=self.router.clock,
                on_state_change=lambda up: self.metrics.set_info(shared="redis" if up else "local"),
            )
        stack.push_async_callback(self._close_learning, shared)
        if shared is not None:
            await shared.start(local_saved_at=saved_at)
        return shared

    async def _close_learning(self, shared: SharedState | None) -> None:
        pushed = await shared.stop() if shared is not None else False
        if not pushed or self.settings.learning.state_path:
            self._save_state()

    async def _open_feedback(self, stack: contextlib.AsyncExitStack) -> FeedbackStore:
        """Answered request ids for ``/feedback``: in Redis too when it is configured, so that any
        worker or replica takes a feedback."""
        redis, learning = self.settings.redis, self.settings.learning
        timeout_ms = max(redis.op_timeout_ms, 250.0)  # a missed write costs a feedback: be patient
        client = await self._redis(stack, timeout_ms) if redis.url else None
        return FeedbackStore(
            client,
            redis.prefix,
            ttl_s=learning.feedback_ttl_s,
            max_entries=2 * learning.feedback_memory,  # two ids per answer: the request's, the answer's
            timeout_s=timeout_ms / 1000,
            retry_after_s=redis.retry_after_s,
        )

    async def _open_budget(self, stack: contextlib.AsyncExitStack, pipeline: Pipeline) -> None:
        settings, budget, redis = self.settings, self.settings.budget, self.settings.redis
        if not budget.enabled:
            return
        # A cap is only as good as the replicas' agreement on it: a slow answer (a loaded host) is
        # waited for up to a second rather than taken for an outage, which would count locally.
        client = await self._redis(stack, max(redis.op_timeout_ms, 1000.0)) if redis.url else None
        pipeline.budget = Budget(
            client,
            redis.prefix,
            budget.global_daily_usd,
            budget.per_key_daily_usd,
            budget.near_fraction,
            budget.price_ceiling_per_mtok,
            budget.mode,
            replica_id=self._replica_id(),
            api_keys=settings.server.api_keys,
            hold_ttl_s=settings.upstream.request_timeout_s + 60.0,  # a hold outlives its request
            timeout_s=1.0,
        )
        pipeline.cheap_mask = price_mask(self.router.catalogue, budget.price_ceiling_per_mtok)
        stack.push_async_callback(pipeline.budget.refresh)
        timer = Periodic(budget.refresh_interval_ms / 1000, pipeline.budget.refresh, "budget")
        stack.push_async_callback(timer.stop)

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


class _Background:
    """Fire-and-forget tasks (budget charges) kept referenced until done, awaited on close."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)


def upstream_limits(settings: Settings) -> Limits:
    """``settings.limits`` as the upstream client reads them."""
    limits = settings.limits
    return Limits(limits.upstream_answer_bytes, limits.upstream_event_bytes, limits.json_depth)


def wants_simulator(settings: Settings) -> bool:
    """Simulate when told to, or (``auto``) when no provider has a key and none is configured."""
    return settings.simulated()


def build_service(
    settings: Settings,
    *,
    catalogue: Catalogue | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> RouterService:
    """Resolve the catalogue and the upstream once, at start-up: simulated when no key is set."""
    catalogue = catalogue or catalogue_from_settings(settings)
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
    server = settings.server
    # With client keys, an admin is a client too; admin keys alone do not turn client auth on.
    keys = [k.encode() for k in [*server.api_keys, *server.admin_keys]] if server.api_keys else []
    tracer = tracer_from_settings(settings)
    return RouterService(settings, router, providers, simulated, transport, keys=keys, tracer=tracer)


def start_simulator(settings: Settings) -> str:
    """The simulated upstream on a free loopback port, in a background thread of this process."""
    import uvicorn

    from ..simulator._app import create_simulator_app, sim_models_from_catalogue
    from ..simulator._scenario import load_scenario

    catalogue = catalogue_from_settings(settings)
    scenario_path = settings.upstream.simulator_scenario
    scenario = load_scenario(scenario_path) if scenario_path else None
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


def complete_once(
    settings: Settings, route: RouteRequest, prompt: str, max_tokens: int | None, as_json: bool
) -> int:
    """``adaptive-router route PROMPT`` without ``--dry-run``: one routed call, printed."""
    import json
    import sys

    if wants_simulator(settings) and not settings.simulator_url:
        settings = settings.model_copy(update={"simulator_url": start_simulator(settings)})
    service = build_service(settings)
    body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens

    async def run() -> tuple[dict[str, Any] | None, dict[str, Any]]:
        async with service.open() as running:
            pipeline = running.pipeline
            call = pipeline.call(route, body=body)
            try:
                answer: dict[str, Any] | None = await pipeline.complete(call)
            except RequestFailed:
                answer = None
            return answer, pipeline.routing(call)

    answer, routing = asyncio.run(run())
    if answer is None:
        print(f"adaptive-router: no model answered: {routing['attempts']}", file=sys.stderr)
        return 1
    data = {**answer, "routing": routing}
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        content = ((data.get("choices") or [{}])[0].get("message") or {}).get("content", "")
        print(content)
        reason = routing["decision"]["reason"]
        print(f"\n-- {data['model']} ({service.upstream_mode}), {reason}", file=sys.stderr)
    return 0

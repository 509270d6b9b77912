"""The HTTP service: an OpenAI-compatible routing proxy, built from ``Settings`` by ``create_app``.

    app = create_app(load_settings("settings.yaml"))      # a Starlette app
    uvicorn.run(app)                                       # or: adaptive-router serve

Point any OpenAI client at ``http://host:port/v1`` and set ``model`` to ``auto``,
``auto:<mode>`` or a model id. Handlers only parse and answer: every routed request runs
through the :class:`~adaptive_router.pipeline.Pipeline`, opened in the app's lifespan.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from .._logs import configure_logging
from .._settings import Settings
from ..core._catalogue import Catalogue
from ..pipeline._operations import operations
from ..pipeline._runtime import SIMULATOR_URL_ENV, build_service, start_simulator, wants_simulator
from ._access import retrieve_model
from ._admin import admin_reload
from ._endpoints import (
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
from ._error_map import ERROR_MAP, handle_error
from ._guards import cors_middleware
from ._lifecycle import DeadlineHTTPProtocol, drain_on_terminate
from ._proxy import chat_completions
from ._serving import check_port, run_workers, started, warn_per_worker_state, worker_gone, worker_metrics_dir
from ._telemetry import TraceRequests

__all__ = [
    "app_from_environment",
    "create_app",
    "serve",
]

log = logging.getLogger("adaptive_router.service")


def create_app(
    settings: Settings,
    *,
    catalogue: Catalogue | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """The Starlette app for ``settings``. ``transport`` replaces the upstream's network (tests)."""
    service = build_service(settings, catalogue=catalogue, transport=transport)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with service.open() as running, operations(running) as ops, _frozen_heap():
            with drain_on_terminate(running.pipeline.drain, settings.server.shutdown_grace_s):
                yield {"running": running, "ops": ops}  # each request's ``request.state.running``
        worker_gone()

    from ._openapi import docs_routes

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/chat/completions", chat_completions, methods=["POST"]),
        Route("/route", route_only, methods=["POST"]),
        Route("/complete", complete, methods=["POST"]),
        Route("/feedback", feedback, methods=["POST"]),
        Route("/v1/models", list_models_openai, methods=["GET"]),
        Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
        Route("/models", list_models, methods=["GET"]),
        Route("/metrics", metrics_text, methods=["GET"]),
        Route("/metrics.json", metrics_json, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/admin/reload", admin_reload, methods=["POST"]),
        *docs_routes(),
    ]
    # Every class of the error map goes through Starlette's exception handlers (answered, nothing
    # re-raised); ``Exception`` is the last resort for bugs: a JSON 500, the traceback in the log.
    handlers: dict[Any, Callable[..., Any]] = {cls: handle_error for cls in ERROR_MAP}
    middleware = cors_middleware(settings.server.cors_origins)
    if service.tracer is not None:
        middleware.append(Middleware(TraceRequests, tracer=service.tracer))
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers, middleware=middleware)


@contextlib.asynccontextmanager
async def _frozen_heap() -> AsyncIterator[None]:
    """What start-up built (catalogue, settings, modules: ~100k objects) lives as long as the app:
    kept out of the garbage collector's full passes, each of which walked all of it (tens to
    hundreds of ms every thousand or so requests under load); let back in when the app stops."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def app_from_environment() -> Starlette:
    """Factory for ``uvicorn --factory`` and multi-worker serving: settings from the environment."""
    from .._settings import load_settings

    settings = load_settings()
    configure_logging(settings.server.log_level, settings.server.log_format)  # each worker process
    # serve passes access_log=False (our access line says more); uvicorn applied that before this
    # factory ran, and configure_logging just let uvicorn.access propagate again: off once more.
    logging.getLogger("uvicorn.access").propagate = False
    return create_app(settings)


def _exit_now(signum: int, frame: object) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def serve(settings: Settings) -> None:
    """Run the service with uvicorn; start the simulated upstream first when no key is set."""
    import uvicorn

    from .._settings import SETTINGS_FILE_ENV  # noqa: F401  (documented: the factory reads it)

    server_log = settings.server
    configure_logging(server_log.log_level, server_log.log_format)
    check_port(server_log.host, server_log.port)  # before anything starts: exit 2, not uvicorn's 3
    if wants_simulator(settings) and not settings.simulator_url:  # one running elsewhere is used as it is
        url = start_simulator(settings)
        os.environ[SIMULATOR_URL_ENV] = url  # for worker processes, which rebuild settings
        settings = settings.model_copy(update={"simulator_url": url})
        configure_logging(server_log.log_level, server_log.log_format)  # uvicorn's config replaced ours
    server = settings.server
    # Open streams end inside the grace period (see drain_on_terminate); then uvicorn cancels
    # whatever is left, and the lifespan saves the learned state.
    # By name, not the class: a worker process unpickles its config before it answers the
    # supervisor's health checks, and importing the router there first would make it late.
    limits: dict[str, Any] = {
        "http": f"{DeadlineHTTPProtocol.__module__}:{DeadlineHTTPProtocol.__qualname__}",
        "timeout_graceful_shutdown": max(1, math.ceil(server.shutdown_grace_s - 0.5)),
    }
    warn_per_worker_state(settings)
    if server.workers > 1:
        # The supervisor holds no learned state: a plain exit lets the metrics directory go.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        with worker_metrics_dir(server.workers), started():
            run_workers(  # uvicorn.run, but SIGHUP reloads the workers' settings instead of restarting them
                "adaptive_router.service:app_from_environment",
                factory=True,
                host=server.host,
                port=server.port,
                workers=server.workers,
                log_level=server.log_level,
                log_config=None,  # our handler and format, set up above
                access_log=False,
                **limits,
            )
    else:
        # uvicorn re-raises SIGTERM through the previous handler once it has shut down gracefully
        # (learned state saved, logs closed); make that handler a clean exit at once, so that
        # orchestrators see 0 within the grace period: tearing the interpreter down can take seconds.
        signal.signal(signal.SIGTERM, _exit_now)
        with started():
            uvicorn.run(
                create_app(settings),
                host=server.host,
                port=server.port,
                log_level=server.log_level,
                log_config=None,  # our handler and format, set up above
                access_log=False,  # the router's own access line says more (adaptive_router.access)
                **limits,
            )

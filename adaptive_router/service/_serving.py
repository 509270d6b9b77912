"""What ``serve`` checks and sets up around uvicorn: a free port, a loud warning when several
workers would keep state of their own, one Prometheus view over all workers, and ``SIGHUP``
reloading the settings in every worker.

With ``server.workers > 1`` every worker is its own process: ``serve`` gives them a fresh
``PROMETHEUS_MULTIPROC_DIR`` (removed on exit), so that ``/metrics`` on any worker reports the
sum over all of them (prometheus-client's multiprocess mode). A directory set by the operator
is used as it is (prometheus-client wants it emptied between runs: the operator's job then).

uvicorn's supervisor (``uvicorn.supervisors.Multiprocess``) takes ``SIGHUP`` as "restart every
worker" (``handle_hup`` -> ``restart_all``: a new process per worker, the old one terminated),
which would drop what each worker holds in memory; :func:`run_workers` runs a supervisor that
passes the signal on to each running worker instead, whose own handler reloads the settings.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from .._errors import ConfigError, RouterError
from .._settings import Settings
from ..pipeline._metrics import MULTIPROC_ENV

__all__ = [
    "check_port",
    "run_workers",
    "started",
    "warn_per_worker_state",
    "worker_gone",
    "worker_metrics_dir",
]

log = logging.getLogger("adaptive_router.service")

_STARTUP_FAILURE = 3  # uvicorn's exit code when the app did not start


def check_port(host: str, port: int) -> None:
    """ConfigError (exit 2) naming ``server.port`` when something already listens there."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    "server.port", f"{host}:{port} is already in use; stop what listens there or use --port"
                ) from None
            raise ConfigError("server.host", f"cannot listen on {host}:{port}: {exc.strerror}") from None


def warn_per_worker_state(settings: Settings) -> None:
    """Several workers and no Redis: each keeps its own feedback ids, learning, cache and budgets."""
    if settings.server.workers > 1 and settings.redis.url is None:
        log.warning(
            "%d WORKERS WITHOUT REDIS: each worker keeps its own request ids, learned state, response "
            "cache and budget counts, so /feedback answers 404 when it reaches another worker than the "
            "one that answered. Set redis.url (ROUTER_REDIS__URL) to share them, or run one worker.",
            settings.server.workers,
        )


@contextlib.contextmanager
def worker_metrics_dir(workers: int) -> Iterator[str | None]:
    """A fresh ``PROMETHEUS_MULTIPROC_DIR`` for ``workers`` > 1, exported to them and removed after."""
    if workers <= 1:
        yield None
        return
    if os.environ.get(MULTIPROC_ENV):
        yield os.environ[MULTIPROC_ENV]
        return
    path = tempfile.mkdtemp(prefix="adaptive-router-metrics-")
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def worker_gone() -> None:
    """A worker's last word in multiprocess mode: its live gauges (breaker state) leave the sum."""
    if os.environ.get(MULTIPROC_ENV):
        with contextlib.suppress(ImportError, OSError):
            from prometheus_client.multiprocess import mark_process_dead

            # prometheus_client's multiprocess module has no annotations (py.typed notwithstanding)
            mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def started() -> Iterator[None]:
    """uvicorn's own "did not start" exit (3, outside the documented codes) as a RouterError (1)."""
    try:
        yield
    except SystemExit as exc:
        if exc.code == _STARTUP_FAILURE:
            raise RouterError("the service did not start; the log above says why") from None
        raise


class _Supervisor(Multiprocess):
    """uvicorn's worker supervisor, but ``SIGHUP`` reloads settings in the workers in place."""

    def handle_hup(self) -> None:
        # A worker still starting has no handler yet (the signal would end it) and reads the
        # settings file as it starts anyway: only the ready ones are told.
        ready = [p for p in self.processes if p.pid is not None and _started(p)]
        log.info(
            "SIGHUP: reloading the settings in %d of %d workers, in place", len(ready), len(self.processes)
        )
        for process in ready:
            assert process.pid is not None
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile: its successor starts afresh
                os.kill(process.pid, signal.SIGHUP)


def _started(process: Any) -> bool:
    """Whether the worker has started serving (uvicorn >= 0.55 says so; before, whether it answers)."""
    is_ready = getattr(process, "is_ready", None)
    return bool(is_ready(timeout=1.0) if is_ready is not None else process.ping(timeout=1.0))


def run_workers(app: str, **options: Any) -> None:
    """``uvicorn.run(app, workers=N, **options)`` with :class:`_Supervisor` as the supervisor."""
    config = uvicorn.Config(app, **options)
    sock = config.bind_socket()
    with contextlib.suppress(KeyboardInterrupt):
        _Supervisor(config, sockets=[sock]).run()

"""What runs beside the requests of an opened service: reloads (``SIGHUP``, the admin endpoint),
health probes and catalogue refreshes, and what ``/ready`` and ``/metrics`` say about them.

    async with service.open() as running, operations(running) as ops:
        await ops.reloader.reload("admin")
        ops.ready_info()       # {"reload": ..., "catalogue_refresh": ..., "health": ...}

The probe and refresh loops read their interval from the running settings at every turn, so a
reload can turn them on, off, or change their pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from ._prober import Prober
from ._reload import Reloader
from ._runtime import Running

__all__ = ["Operations", "operations"]

log = logging.getLogger("adaptive_router.operations")

_OFF_RECHECK_S = 5.0  # a loop that is off looks again this often whether a reload turned it on


class Operations:
    """The reloader, the prober and their loops for one opened service."""

    def __init__(self, running: Running) -> None:
        self.running = running
        self.reloader = Reloader(running)
        self.prober = Prober(running)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sighup = False
        self._collector: _Collector | None = None

    def start(self) -> None:
        self._tasks.add(asyncio.create_task(_every(self._probe_interval, self.prober.tick, "health probes")))
        refresh = _every(self._refresh_interval, self.reloader.refresh_catalogue, "catalogue refresh")
        self._tasks.add(asyncio.create_task(refresh))
        self._sighup = _on_sighup(self._spawn_reload)
        self._collector = _Collector.register(self)

    async def stop(self) -> None:
        if self._sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._collector is not None:
            self._collector.unregister()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn_reload(self) -> None:
        task = asyncio.create_task(self.reloader.reload("SIGHUP"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _probe_interval(self) -> float | None:
        spec = self.running.service.settings.probe
        return spec.interval_s if spec.enabled else None

    def _refresh_interval(self) -> float | None:
        spec = self.running.service.settings.catalogue
        return spec.refresh_interval_s if spec.source != "bundled" else None

    def health(self) -> dict[str, Any]:
        """The pool's health: counts, and each model that is not up or was probed, with its
        breaker, the success rate the learner estimates, and its last probe."""
        pipeline = self.running.pipeline
        router, states = pipeline.router, pipeline.breakers.snapshot()
        routable = [m for m, ok in zip(router.catalogue.ids, router.permitted, strict=True) if ok]
        prober, spec = self.prober, self.running.service.settings.probe
        success = router.learner.estimates(router.clock()).success
        models = {}
        for model in sorted(set(states) | set(prober.last)):
            row = router.catalogue.index.get(model)
            probe = prober.last.get(model)
            models[model] = {
                "breaker": states.get(model, "closed"),
                "success": None if row is None else round(float(success[row]), 4),
                "last_probe": probe.as_dict() if probe else None,
            }
        return {
            "routable": len(routable),
            "up": sum(1 for m in routable if m not in states),
            "down": sorted(m for m, s in states.items() if s == "open"),
            "half_open": sorted(m for m, s in states.items() if s == "half_open"),
            "models": models,
            "probes": {
                "enabled": spec.enabled,
                "spent_today_usd": round(prober.spent_usd, 6),
                "daily_usd": spec.daily_usd,
                "capped": prober.capped,
            },
        }

    def ready_info(self) -> dict[str, Any]:
        """What ``/ready`` adds: the last reload and catalogue refresh, and the pool's health."""
        reloader = self.reloader
        refresh = None
        if reloader.last_refresh is not None:
            change = reloader.last_change
            refresh = {**reloader.last_refresh.as_dict(), "last_change": change.as_dict() if change else None}
        return {
            "reload": reloader.last_reload.as_dict() if reloader.last_reload else None,
            "catalogue_refresh": refresh,
            "health": self.health(),
        }


@contextlib.asynccontextmanager
async def operations(running: Running) -> AsyncIterator[Operations]:
    """Start the reloader, prober and refresher of ``running``; stop them on exit."""
    ops = Operations(running)
    ops.start()
    try:
        yield ops
    finally:
        await ops.stop()


async def _every(
    interval: Callable[[], float | None], step: Callable[[], Awaitable[object]], name: str
) -> None:
    """``step`` every ``interval()`` seconds (read again each turn; None: off for now)."""
    while True:
        seconds = interval()
        await asyncio.sleep(seconds if seconds is not None else _OFF_RECHECK_S)
        if seconds is None or interval() is None:
            continue
        try:
            await step()
        except Exception:  # a bug in one turn must not stop the loop for good
            log.exception("%s failed", name)


def _on_sighup(callback: Callable[[], None]) -> bool:
    """Reload on ``SIGHUP``; False where signals cannot be caught (a thread, Windows)."""
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, callback)
    except (ValueError, RuntimeError, NotImplementedError, AttributeError):
        log.info("SIGHUP does not reload here (not the main thread); use POST /admin/reload")
        return False
    return True


class _Collector:
    """Prometheus series read at scrape time: each model's health, probes, reloads."""

    def __init__(self, ops: Operations, registry: Any) -> None:
        self.ops, self.registry = ops, registry

    @classmethod
    def register(cls, ops: Operations) -> _Collector | None:
        try:
            registry = ops.running.service.metrics.registry
        except ImportError:
            return None  # no 'metrics' extra: /ready still shows all of it
        collector = cls(ops, registry)
        registry.register(collector)
        return collector

    def unregister(self) -> None:
        self.registry.unregister(self)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        ops = self.ops
        pipeline = ops.running.pipeline
        router, states = pipeline.router, pipeline.breakers.snapshot()
        up = GaugeMetricFamily(
            "adaptive_router_model_up", "1 when the model's breaker is closed, else 0.", labels=["model"]
        )
        for model, ok in zip(router.catalogue.ids, router.permitted, strict=True):
            if ok:
                up.add_metric([model], 0.0 if model in states else 1.0)
        yield up
        probes = CounterMetricFamily(
            "adaptive_router_probes", "Health probes sent, by model and outcome.", labels=["model", "outcome"]
        )
        for (model, outcome), count in sorted(ops.prober.counts.items()):
            probes.add_metric([model, outcome], count)
        yield probes
        yield GaugeMetricFamily(
            "adaptive_router_probe_spend_today_usd",
            "Spend of today's health probes (UTC day).",
            value=ops.prober.spent_usd,
        )
        reloads = CounterMetricFamily(
            "adaptive_router_config_reloads", "Settings reloads, by result.", labels=["result"]
        )
        for result, count in ops.reloader.reloads.items():
            reloads.add_metric([result], count)
        yield reloads
        yield GaugeMetricFamily(
            "adaptive_router_catalogue_models",
            "Models in the running catalogue.",
            value=len(router.catalogue),
        )

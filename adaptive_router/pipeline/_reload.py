"""Live reconfiguration: the settings file read again, validated, and swapped in between requests.

    reloader = Reloader(running)
    report = await reloader.reload("SIGHUP")       # never raises on a bad file: report.ok, .error
    report = await reloader.refresh_catalogue()    # the catalogue's source fetched again

Everything new is built first, off the event loop (settings, catalogue, router, providers); a
file that does not validate leaves the running configuration as it was. The swap itself is
plain assignments on the event loop, so each request sees the old parts or the new, never a mix.
What only a restart changes (``RESTART_ONLY``) keeps its running value and is reported.

Learned state is kept: with the same models and priors the learner carries on as it is;
otherwise a new learner takes the old one's evidence by model id (new models start from their
priors, removed ones leave the ranking), and the shared state, if any, follows it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import CatalogueError, ConfigError, RouterError
from .._settings import Settings, load_settings
from ..core._catalogue import Catalogue, apply_overlay, load_catalogue, with_declared
from ..core._router import Router
from ..state._budget import Budget, price_mask
from ..state._shared import SharedState
from ._runtime import RouterService, Running, build_service

__all__ = ["RESTART_ONLY", "ReloadReport", "Reloader", "changed_keys", "keep_restart_only"]

log = logging.getLogger("adaptive_router.reload")

# Settings read once, when the process starts: a reload keeps their running values.
RESTART_ONLY = (
    "server.host",
    "server.port",
    "server.workers",
    "server.traffic_log",
    "server.traffic_log_max_bytes",
    "server.traffic_log_backups",
    "server.log_prompts",
    "redis",
    "cache.memory_max_entries",
    "learning",
    "profile",
    "upstream.connect_timeout_s",
    "upstream.read_timeout_s",
    "upstream.max_connections",
    "upstream.http_client",
    "upstream.simulate",
    "upstream.simulator_scenario",
    "upstream.simulator_time_scale",
    "budget.refresh_interval_ms",
    "settings_file",
    "simulator_url",
)


@dataclass(frozen=True)
class ReloadReport:
    """How one reload (or catalogue refresh) went; ``/ready`` shows the last one of each."""

    source: str  # "SIGHUP", "admin" or "catalogue"
    at: float  # wall time
    ok: bool
    error: str | None = None
    field: str | None = None  # the settings key (or model) that was wrong
    changed: tuple[str, ...] = ()
    restart_needed: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)),
            "ok": self.ok,
            "error": self.error,
            "field": self.field,
            "changed": list(self.changed),
            "restart_needed": list(self.restart_needed),
            "models_added": list(self.added),
            "models_removed": list(self.removed),
        }


def _get(settings: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        settings = getattr(settings, part)
    return settings


def _set(settings: Any, dotted: str, value: Any) -> Any:
    head, _, rest = dotted.partition(".")
    inner = value if not rest else _set(getattr(settings, head), rest, value)
    return settings.model_copy(update={head: inner})


def keep_restart_only(running: Settings, new: Settings) -> tuple[Settings, tuple[str, ...]]:
    """``new`` with the running values of what only a restart changes, and those that differ."""
    differing = []
    for key in RESTART_ONLY:
        value = _get(running, key)
        if _get(new, key) != value:
            differing.append(key)
            new = _set(new, key, value)
    return new, tuple(differing)


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, Mapping):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def changed_keys(old: Settings, new: Settings) -> tuple[str, ...]:
    """The dotted keys whose values differ (names only: values may be secrets)."""
    a, b = _flat(old.model_dump()), _flat(new.model_dump())
    return tuple(sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)))


def _refusal(source: str, exc: Exception) -> ReloadReport:
    field = exc.key if isinstance(exc, ConfigError) else None
    if isinstance(exc, CatalogueError):
        field = f"catalogue: {exc.model}.{exc.field}"
    return ReloadReport(source, time.time(), False, str(exc), field)


class Reloader:
    """Reloads the settings file into ``running`` and refreshes its catalogue; one at a time."""

    def __init__(self, running: Running) -> None:
        self.running = running
        self.last_reload: ReloadReport | None = None
        self.last_refresh: ReloadReport | None = None
        self.last_change: ReloadReport | None = None  # the last refresh that changed the catalogue
        self.reloads = {"ok": 0, "error": 0}
        self._lock = asyncio.Lock()
        self._budget: Budget | None = running.pipeline.budget  # kept while a reload turns caps off
        self._base: tuple[tuple[str | None, str], Catalogue] | None = None  # the last fetched source
        # Called on the event loop right after each swap with the new settings: parts built from
        # settings outside the router (evaluator hooks, say) rebuild themselves here.
        self.listeners: list[Callable[[Settings], None]] = []

    async def reload(self, source: str) -> ReloadReport:
        """Read the settings file again and swap it in; a file that does not validate changes nothing."""
        async with self._lock:
            report = await self._reload(source)
            self.last_reload = report
            self.reloads["ok" if report.ok else "error"] += 1
        if report.ok:
            log.info(
                "settings reloaded (%s): changed %s%s",
                source,
                ", ".join(report.changed) or "nothing",
                f"; needs a restart to change: {', '.join(report.restart_needed)}"
                if report.restart_needed
                else "",
            )
        else:
            log.error("settings NOT reloaded (%s), the running ones stay: %s", source, report.error)
        return report

    async def _reload(self, source: str) -> ReloadReport:
        running = self.running.service.settings
        try:
            new, restart = keep_restart_only(running, load_settings(running.settings_file))
            fresh = await asyncio.to_thread(self._build, new, fetch=False)
        except (RouterError, OSError, ValueError) as exc:
            return _refusal(source, exc)
        restart += self._budget_restart(new)
        added, removed = self._swap(fresh)
        changed = changed_keys(running, new)
        return ReloadReport(source, time.time(), True, None, None, changed, restart, added, removed)

    async def refresh_catalogue(self) -> ReloadReport:
        """Fetch the catalogue's source again: new models join with priors, removed ones leave."""
        async with self._lock:
            report = await self._refresh()
            self.last_refresh = report
            if report.ok and report.changed:
                self.last_change = report
        if not report.ok:
            log.error("catalogue refresh failed, the running catalogue stays: %s", report.error)
        elif report.changed:
            log.info("catalogue refreshed: added %s; removed %s", list(report.added), list(report.removed))
        return report

    async def _refresh(self) -> ReloadReport:
        service = self.running.service
        try:
            catalogue = await asyncio.to_thread(self._catalogue, service.settings, True)
            if catalogue.models == service.router.catalogue.models:
                return ReloadReport("catalogue", time.time(), True)
            transport = service.transport
            fresh = await asyncio.to_thread(
                build_service, service.settings, catalogue=catalogue, transport=transport
            )
        except (RouterError, OSError, ValueError) as exc:
            return _refusal("catalogue", exc)
        added, removed = self._swap(fresh)
        return ReloadReport(
            "catalogue", time.time(), True, changed=("catalogue",), added=added, removed=removed
        )

    # --- building (in a worker thread: a source may be fetched over the network) ---------------

    def _build(self, settings: Settings, *, fetch: bool) -> RouterService:
        catalogue = self._catalogue(settings, fetch)
        return build_service(settings, catalogue=catalogue, transport=self.running.service.transport)

    def _catalogue(self, settings: Settings, fetch: bool) -> Catalogue:
        """The source (fetched again when asked, or when its address or key changed), then the
        declared models and the overlay as the settings give them now."""
        spec = settings.catalogue
        if spec.source == "openrouter":
            where = (settings.openrouter_key(), settings.upstream.openrouter_base_url)
            if fetch or self._base is None or self._base[0] != where:
                base = load_catalogue("openrouter", api_key=where[0], base_url=where[1])
                self._base = (where, base)
            catalogue = self._base[1]
        else:
            catalogue = load_catalogue(spec.source)
        if spec.models:
            catalogue = with_declared(catalogue, [m.model_dump() for m in spec.models])
        return apply_overlay(catalogue, spec.overlay) if spec.overlay else catalogue

    def _budget_restart(self, settings: Settings) -> tuple[str, ...]:
        if self._budget is None and settings.budget.enabled:
            return ("budget (caps where none were set at start)",)
        return ()

    # --- the swap (on the event loop, no await: atomic between requests) -----------------------

    def _swap(self, fresh: RouterService) -> tuple[tuple[str, ...], tuple[str, ...]]:
        running = self.running
        service, pipeline, executor = running.service, running.pipeline, running.pipeline.executor
        old, router, settings = service.router, fresh.router, fresh.settings
        carry_learning(old, router, running.shared)
        up = settings.upstream
        breakers = pipeline.breakers
        breakers.router = router
        breakers.threshold, breakers.cooldown_s = up.breaker_failures, up.breaker_cooldown_s
        for model, state in breakers.snapshot().items():
            if state == "open" and model in router.catalogue:
                router.set_available(model, False)
        executor.router = router
        executor.attempt_timeout_s, executor.max_attempts = up.attempt_timeout_s, up.max_attempts
        running.client.set_providers(fresh.providers)
        service.settings, service.router, service.providers = settings, router, fresh.providers
        service.simulated, service.keys = fresh.simulated, fresh.keys
        pipeline.router, pipeline.cache_settings = router, settings.cache
        pipeline.upstream_mode = service.upstream_mode
        self._swap_budget(settings, router)
        service.metrics.set_info(upstream=service.upstream_mode)
        for listener in self.listeners:
            try:
                listener(settings)
            except Exception:  # the swap is done: a listener's bug must not undo half of it
                log.exception("reload listener %r failed", listener)
        before, after = set(old.catalogue.ids), set(router.catalogue.ids)
        return tuple(sorted(after - before)), tuple(sorted(before - after))

    def _swap_budget(self, settings: Settings, router: Router) -> None:
        budget, spec = self._budget, settings.budget
        if budget is None:
            return
        if not spec.enabled:
            self.running.pipeline.budget = None
            return
        budget.global_cap, budget.per_key_cap = spec.global_daily_usd, spec.per_key_daily_usd
        budget.near_fraction, budget.mode = spec.near_fraction, spec.mode
        budget.price_ceiling = spec.price_ceiling_per_mtok
        self.running.pipeline.budget = budget
        self.running.pipeline.cheap_mask = price_mask(router.catalogue, spec.price_ceiling_per_mtok)


def carry_learning(old: Router, new: Router, shared: SharedState | None) -> None:
    """Hand what ``old`` learned to ``new``: the learner itself when nothing it depends on
    changed, else its evidence by model id; and the answered requests ``/feedback`` may score."""
    if _same_learner(old, new):
        new.learner = old.learner
    else:
        new.learner.set_local(old.learner.local_state())
        if shared is not None:
            shared.use_learner(new.learner)
    new.answers = old.answers  # by model id: a removed model's requests are refused when scored


def _same_learner(old: Router, new: Router) -> bool:
    a, b = old.learner, new.learner
    return (
        a.ids == b.ids
        and a.tasks == b.tasks
        and a.config == b.config
        and a.k_cell == b.k_cell
        and all(
            np.array_equal(x, y)
            for x, y in (
                (a.prior_ttft, b.prior_ttft),
                (a.prior_tpot, b.prior_tpot),
                (a.prior_quality, b.prior_quality),
                (a.groups, b.groups),
            )
        )
    )

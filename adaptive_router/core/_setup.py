"""Building the router's parts from ``Settings``: the catalogue, the profiler and the score's
reference scales (start-up only)."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from .._settings import RoutingSettings, Settings
from ._catalogue import Catalogue, load_catalogue
from ._profile import FastRoute, Profiler, TaskRules
from ._scoring import CostScale, LogScale, cost_scale

if TYPE_CHECKING:
    from ._semantic import StaticEmbedder

__all__ = ["catalogue_from_settings", "cell_strength", "profiler_from_settings", "scales_from_settings"]


def catalogue_from_settings(settings: Settings) -> Catalogue:
    """The catalogue ``settings.catalogue`` names, with its declared models and overlay."""
    spec = settings.catalogue
    declared = [m.model_dump() for m in spec.models]
    key, url = settings.openrouter_key(), settings.upstream.openrouter_base_url
    return load_catalogue(spec.source, spec.overlay, key, declared, base_url=url)


def scales_from_settings(routing: RoutingSettings) -> tuple[LogScale, CostScale]:
    """The latency and cost scales ``routing`` names (``latency_scale_s``; ``cost_norm`` with
    ``cost_reference_usd`` or ``cost_scale_usd``)."""
    latency = LogScale(*routing.latency_scale_s)
    return latency, cost_scale(routing.cost_norm, routing.cost_reference_usd, routing.cost_scale_usd)


def profiler_from_settings(settings: Settings) -> Profiler:
    """The profiler ``settings.profile`` describes (with the semantic table when its cells need it)."""
    prof = settings.profile
    rules = {name: TaskRules(rule.keywords, rule.patterns) for name, rule in prof.tasks.items()}
    fast = [
        FastRoute(r.name or f"rule {i}", TaskRules(r.keywords, r.patterns), r.mode, tuple(r.allow), r.model)
        for i, r in enumerate(prof.fast_path)
    ]
    semantic = None
    if prof.cells == "task_and_semantic":
        from ._semantic import SemanticCells  # numpy only; the table ships as data

        embedder = _embedder(prof.semantic_table)
        semantic = (embedder, SemanticCells(embedder.dims, prof.semantic_bits, embedder.centre))
    return Profiler(
        rules,
        prof.default_task,
        prof.length_buckets,
        prof.expected_output_tokens,
        prof.scan_chars,
        prof.cells,
        semantic=semantic,
        fast_path=fast,
    )


@lru_cache(maxsize=4)
def _embedder(path: str | None) -> StaticEmbedder:
    """One embedding table per process and path, shared by every router built in it (the
    table is read-only; its word cache holds only what the table determines)."""
    from ._semantic import StaticEmbedder

    return StaticEmbedder.load(path)


def cell_strength(value: float | str) -> float | None:
    """``learning.cell_prior_strength``: a number, or ``None`` for "auto" (read off the data)."""
    return None if value == "auto" else float(value)

from __future__ import annotations

import importlib

import pytest

import adaptive_router

# Changing this list changes the public API: say so in the changelog.
EXPECTED_ALL = [
    "BudgetExceeded",
    "CAPABILITIES",
    "Candidate",
    "Catalogue",
    "CatalogueError",
    "ConfigError",
    "Decision",
    "Estimates",
    "Learner",
    "LearnerState",
    "LogScale",
    "Model",
    "NoEligibleModel",
    "Outcome",
    "POLICIES",
    "Profile",
    "Profiler",
    "RequestError",
    "RouteRequest",
    "Router",
    "RouterConfig",
    "RouterError",
    "Settings",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "__version__",
    "apply_overlay",
    "load_bundled",
    "load_catalogue",
    "load_openrouter",
    "load_settings",
    "make_policy",
]

ERRORS = [
    "BudgetExceeded",
    "CatalogueError",
    "ConfigError",
    "NoEligibleModel",
    "RequestError",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamStatusError",
    "UpstreamTimeout",
]


def test_all_is_pinned() -> None:
    assert sorted(EXPECTED_ALL) == EXPECTED_ALL
    assert sorted(adaptive_router.__all__) == EXPECTED_ALL
    assert len(set(adaptive_router.__all__)) == len(adaptive_router.__all__)


@pytest.mark.parametrize("name", EXPECTED_ALL)
def test_all_names_are_importable(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from adaptive_router import {name}", namespace)  # the spelling users write
    assert namespace[name] is getattr(adaptive_router, name)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from adaptive_router import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == EXPECTED_ALL


@pytest.mark.parametrize("name", ERRORS)
def test_errors_share_one_root(name: str) -> None:
    error = getattr(adaptive_router, name)
    assert issubclass(error, adaptive_router.RouterError)
    assert error is getattr(importlib.import_module("adaptive_router.errors"), name)


def test_version_is_a_release_string() -> None:
    parts = adaptive_router.__version__.split(".")
    assert len(parts) == 3 and all(p.isdigit() for p in parts)

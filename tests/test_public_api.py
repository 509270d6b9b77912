from __future__ import annotations

import importlib

import pytest

import adaptive_router

# Changing this list changes the public API: say so in the changelog.
EXPECTED_ALL = [
    "AllCandidatesFailed",
    "ApiError",
    "BudgetExceeded",
    "CAPABILITIES",
    "CacheUnavailable",
    "Call",
    "Candidate",
    "Catalogue",
    "CatalogueError",
    "ConfigError",
    "Decision",
    "Estimates",
    "Hook",
    "Learner",
    "LearnerState",
    "LinearScale",
    "LogScale",
    "Model",
    "NoEligibleModel",
    "NoHook",
    "Outcome",
    "POLICIES",
    "Pipeline",
    "Profile",
    "Profiler",
    "RedisUnavailable",
    "ReplayError",
    "RequestError",
    "RequestFailed",
    "RouteRequest",
    "Router",
    "RouterConfig",
    "RouterError",
    "Settings",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamRejected",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "__version__",
    "apply_overlay",
    "create_app",
    "load_bundled",
    "load_catalogue",
    "load_openrouter",
    "load_settings",
    "make_policy",
]

ERRORS = [
    "AllCandidatesFailed",
    "ApiError",
    "BudgetExceeded",
    "CacheUnavailable",
    "CatalogueError",
    "ConfigError",
    "NoEligibleModel",
    "RedisUnavailable",
    "ReplayError",
    "RequestError",
    "RequestFailed",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamRejected",
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
    assert error is getattr(importlib.import_module("adaptive_router._errors"), name)


@pytest.mark.parametrize("face", ["core", "upstream", "state", "offline", "simulator", "pipeline", "service"])
def test_each_subpackage_face_exports_what_it_names(face: str) -> None:
    module = importlib.import_module(f"adaptive_router.{face}")
    assert module.__all__ == sorted(module.__all__) or sorted(module.__all__, key=str.lower)
    for name in module.__all__:
        assert not name.startswith("_") and hasattr(module, name)


def test_version_is_a_release_string() -> None:
    parts = adaptive_router.__version__.split(".")
    assert len(parts) == 3 and all(p.isdigit() for p in parts)

"""adaptive-router: pick an LLM per request by latency, cost and quality, learned live.

from adaptive_router import Router, RouteRequest, Outcome, load_settings

router = Router.from_settings(load_settings())
decision = router.decide(RouteRequest(prompt="Summarise this contract", mode="quality"))
decision.model, decision.fallbacks, decision.reason
"""

from __future__ import annotations

__version__ = "0.1.0"  # first: modules below read it while this package is still loading

from ._errors import (
    AllCandidatesFailed,
    ApiError,
    BudgetExceeded,
    CacheUnavailable,
    CatalogueError,
    ConfigError,
    NoEligibleModel,
    RedisUnavailable,
    ReplayError,
    RequestError,
    RequestFailed,
    RouterError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRejected,
    UpstreamStatusError,
    UpstreamTimeout,
)
from ._settings import Settings, load_settings
from .core import (
    CAPABILITIES,
    POLICIES,
    Candidate,
    Catalogue,
    Decision,
    Estimates,
    Learner,
    LearnerState,
    LinearScale,
    LogScale,
    Model,
    Outcome,
    Profile,
    Profiler,
    Router,
    RouteRequest,
    apply_overlay,
    load_bundled,
    load_catalogue,
    load_openrouter,
    make_policy,
)
from .core._router import RouterConfig
from .pipeline import Call, Hook, NoHook, Pipeline
from .service import create_app

__all__ = [
    "CAPABILITIES",
    "POLICIES",
    "AllCandidatesFailed",
    "ApiError",
    "BudgetExceeded",
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

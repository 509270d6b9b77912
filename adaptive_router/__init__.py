"""adaptive-router: pick an LLM per request by latency, cost and quality, learned live.

from adaptive_router import Router, RouteRequest, Outcome, load_settings

router = Router.from_settings(load_settings())
decision = router.decide(RouteRequest(prompt="Summarise this contract", mode="quality"))
decision.model, decision.fallbacks, decision.reason
"""

from __future__ import annotations

from .catalogue import (
    CAPABILITIES,
    Catalogue,
    Model,
    apply_overlay,
    load_bundled,
    load_catalogue,
    load_openrouter,
)
from .errors import (
    BudgetExceeded,
    CatalogueError,
    ConfigError,
    NoEligibleModel,
    RequestError,
    RouterError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from .learning import Estimates, Learner, LearnerState
from .profile import Profile, Profiler
from .router import Candidate, Decision, Outcome, Router, RouterConfig, RouteRequest
from .scoring import POLICIES, LogScale, make_policy
from .settings import Settings, load_settings

__version__ = "0.1.0"

__all__ = [
    "CAPABILITIES",
    "POLICIES",
    "BudgetExceeded",
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

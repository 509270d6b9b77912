"""The router's exceptions, one tree, mapped once at each edge.

    RouterError
    ├── ConfigError            a setting is missing or out of range (names the key)
    ├── CatalogueError         a catalogue file or entry is malformed (names model and field)
    ├── RequestError           a routing request is malformed (names the field)
    ├── ApiError               an HTTP request refused with its own status (auth, body, unknown id)
    ├── NoEligibleModel        every model was masked out (names the constraint)
    ├── BudgetExceeded         a spend cap was reached
    ├── ReplayError            a traffic log or outcome table that replay cannot use
    ├── RedisUnavailable       Redis did not answer in time, or answered with an error
    │   └── CacheUnavailable       ... for the response cache (the failover cache uses memory)
    ├── UpstreamError          a model call failed (carries the model id)
    │   ├── UpstreamConnectError   the upstream could not be reached
    │   ├── UpstreamTimeout        no answer within the attempt's timeout
    │   ├── UpstreamStatusError    a non-2xx answer (status, body)
    │   └── UpstreamProtocolError  an answer that is not OpenAI-shaped, or a stream cut short
    └── RequestFailed          a routed request got no answer (carries its decision and attempts)
        ├── UpstreamRejected       the upstream refused the request itself (400/413/422)
        └── AllCandidatesFailed    every candidate failed, or every one timed out

Lower-layer errors are translated into these in exactly one place each, with
``raise X(...) from exc``: httpx's in ``upstream``, redis-py's in ``redis_faults``, pydantic's
in ``settings`` (and at the HTTP edge, in ``_error_map``, which also maps this tree to HTTP).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core._decision import Decision
    from .upstream._execution import Result

__all__ = [
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
    "RouterError",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamRejected",
    "UpstreamStatusError",
    "UpstreamTimeout",
]


class RouterError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(RouterError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"setting {key!r}: {message}")
        self.key = key


class CatalogueError(RouterError):
    def __init__(self, model: str, field: str, message: str) -> None:
        super().__init__(f"catalogue model {model!r}, field {field!r}: {message}")
        self.model = model
        self.field = field


class RequestError(RouterError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ApiError(RouterError):
    """A refusal with its HTTP status and OpenAI error fields, raised anywhere in a handler."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.kind = kind
        self.code = code
        self.headers = headers or {}


class NoEligibleModel(RouterError):
    """No model met the request's constraints; ``constraint`` names the one that emptied the set."""

    def __init__(self, constraint: str, message: str) -> None:
        super().__init__(message)
        self.constraint = constraint


class BudgetExceeded(RouterError):
    def __init__(self, scope: str, message: str) -> None:
        super().__init__(message)
        self.scope = scope


class ReplayError(RouterError):
    """Replay input that cannot be used: a missing file, a malformed line, a missing column."""


class RedisUnavailable(RouterError):
    """Redis did not answer (refused, timed out, or answered with an error)."""


class CacheUnavailable(RedisUnavailable):
    """The response cache's Redis did not answer."""


class UpstreamError(RouterError):
    """A call to one model failed. ``retryable`` says whether the next candidate may be tried."""

    retryable = True
    kind = "upstream_error"

    def __init__(self, model: str, message: str) -> None:
        super().__init__(f"{model}: {message}")
        self.model = model


class UpstreamConnectError(UpstreamError):
    kind = "connect_error"


class UpstreamTimeout(UpstreamError):
    kind = "timeout"


class UpstreamProtocolError(UpstreamError):
    kind = "protocol_error"


CLIENT_FAULT_STATUSES = frozenset({400, 413, 422})


class UpstreamStatusError(UpstreamError):
    """A non-2xx answer. 400, 413 and 422 reject the request itself and go back to the client
    as they are; anything else (401/403 for one provider's key, 404 for a retired model, 408,
    429, 5xx) is that model's or provider's trouble, and the next candidate may answer."""

    kind = "status_error"

    def __init__(
        self, model: str, status_code: int, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(model, f"upstream answered HTTP {status_code}")
        self.status_code = status_code
        self.body = body
        self.headers = headers or {}
        self.retryable = status_code not in CLIENT_FAULT_STATUSES


class RequestFailed(RouterError):
    """A routed request that got no answer; ``decision`` and ``result`` say what was tried."""

    def __init__(self, message: str, decision: Decision, result: Result) -> None:
        super().__init__(message)
        self.decision = decision
        self.result = result


class UpstreamRejected(RequestFailed):
    """The upstream refused the request itself (400/413/422): ``status`` and ``body`` go back as
    they are, and no other model is tried (it would refuse the same request)."""

    def __init__(self, fault: UpstreamStatusError, decision: Decision, result: Result) -> None:
        super().__init__(str(fault), decision, result)
        self.status = fault.status_code
        self.body = fault.body


class AllCandidatesFailed(RequestFailed):
    """Every candidate failed; ``timed_out`` when every one that was tried timed out."""

    def __init__(self, decision: Decision, result: Result) -> None:
        self.timed_out = result.all_timed_out
        what = "every candidate timed out" if self.timed_out else "every candidate failed"
        tried = ", ".join(f"{a.model}: {a.outcome}" for a in result.attempts)
        super().__init__(f"{what} ({tried})", decision, result)

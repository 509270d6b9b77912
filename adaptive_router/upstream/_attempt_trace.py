"""The executor's tracing seam: a span per upstream attempt, a no-op until tracing is on.

with executor.tracer.attempt(model) as span:    # current while the call runs
    completion = await client.complete(model, body, timeout_s)
    span.answered(completion)                   # or span.failed(exc); span.keep(handle) for a stream
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .._errors import UpstreamError
    from ._client import Completion, StreamHandle

__all__ = ["NO_TRACE", "AttemptSpan", "AttemptTrace"]


class AttemptSpan(Protocol):
    def __enter__(self) -> AttemptSpan: ...
    def __exit__(self, *exc: object) -> None: ...
    def failed(self, exc: UpstreamError) -> None: ...
    def answered(self, completion: Completion) -> None: ...
    def keep(self, handle: StreamHandle) -> None: ...


class AttemptTrace(Protocol):
    def attempt(self, model: str) -> AttemptSpan: ...
    def stream_ended(self, handle: StreamHandle, error: UpstreamError | None, cancelled: bool) -> None: ...


class _NoSpan:
    """The attempt span while tracing is off: nothing happens, nothing is allocated."""

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def failed(self, exc: UpstreamError) -> None:
        pass

    def answered(self, completion: Completion) -> None:
        pass

    def keep(self, handle: StreamHandle) -> None:
        pass


class _NoTrace:
    _span = _NoSpan()

    def attempt(self, model: str) -> AttemptSpan:
        return self._span

    def stream_ended(self, handle: StreamHandle, error: UpstreamError | None, cancelled: bool) -> None:
        pass


NO_TRACE: AttemptTrace = _NoTrace()

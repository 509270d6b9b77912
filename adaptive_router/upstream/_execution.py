"""Executing a decision: try the chain in order, with per-attempt timeouts and circuit breakers.

Retryable failures (connect errors, timeouts, 429, 5xx, a stream cut short) move on to the next
candidate and count against the model; a request the upstream rejects as malformed (400, 413,
422) goes back to the client as it is and counts against nobody. Every attempt is recorded in
the learner, so the router learns from fallbacks too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._errors import UpstreamError, UpstreamStatusError, UpstreamTimeout
from ..core._decision import Decision, Outcome
from ..core._router import Router
from ._attempt_trace import NO_TRACE, AttemptTrace
from ._client import Completion, StreamHandle, UpstreamClient

__all__ = ["Attempt", "Breakers", "Executor", "Result"]

log = logging.getLogger("adaptive_router.execution")


class AttemptObserver(Protocol):
    def attempt(self, model: str, outcome: str, latency_s: float) -> None: ...
    def fallback(self, from_model: str, to_model: str) -> None: ...
    def breaker(self, model: str, state: str) -> None: ...


class _NoObserver:
    def attempt(self, model: str, outcome: str, latency_s: float) -> None:
        pass

    def fallback(self, from_model: str, to_model: str) -> None:
        pass

    def breaker(self, model: str, state: str) -> None:
        pass


@dataclass
class _Breaker:
    failures: int = 0
    open_until: float = 0.0
    state: str = "closed"  # closed -> open -> half_open -> closed | open
    probing: bool = False


class Breakers:
    """Per-model circuit breakers that clear and set rows of ``router.available``.

    ``failures`` consecutive failures open a model's breaker for ``cooldown_s``: the router
    stops choosing it. After the cool-down the model is eligible again but only one request at a
    time may try it (half-open); its success closes the breaker, its failure opens it again.
    """

    def __init__(
        self,
        router: Router,
        failures: int,
        cooldown_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        observer: AttemptObserver | None = None,
    ) -> None:
        self.router = router
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.observer = observer or _NoObserver()
        self._state: dict[str, _Breaker] = {}
        self._open: set[str] = set()  # models waiting out a cool-down

    def refresh(self) -> None:
        """Let cooled-down models back in as half-open (cheap when nothing is open)."""
        if not self._open:
            return
        now = self.clock()
        for model in [m for m in self._open if self._state[m].open_until <= now]:
            self._open.discard(model)
            self._set(model, "half_open")
            if model in self.router.catalogue:  # a catalogue refresh may have removed it
                self.router.set_available(model, True)

    def allow(self, model: str) -> bool:
        """Whether this attempt may go to ``model`` now (one probe at a time when half-open)."""
        breaker = self._state.get(model)
        if breaker is None or breaker.state == "closed":
            return True
        if breaker.state == "half_open" and not breaker.probing:
            breaker.probing = True
            return True
        return False

    def success(self, model: str) -> None:
        breaker = self._state.get(model)
        if breaker is None:
            return
        breaker.failures, breaker.probing = 0, False
        if breaker.state != "closed":
            self._set(model, "closed")

    def failure(self, model: str) -> None:
        breaker = self._state.setdefault(model, _Breaker())
        breaker.failures += 1
        breaker.probing = False
        if breaker.state == "half_open" or breaker.failures >= self.threshold:
            breaker.open_until = self.clock() + self.cooldown_s
            self._open.add(model)
            if breaker.state != "open":
                self._set(model, "open")
                log.warning(
                    "circuit breaker for %s opened for %.0f s after %d failures",
                    model,
                    self.cooldown_s,
                    breaker.failures,
                )
            if model in self.router.catalogue:
                self.router.set_available(model, False)

    def pause(self, model: str, seconds: float) -> None:
        """``model`` is unavailable for ``seconds`` (a 429 with ``Retry-After``): not chosen until
        then, then let back in like a cooled-down breaker. Not a failure: nothing is counted."""
        breaker = self._state.setdefault(model, _Breaker())
        breaker.probing = False
        breaker.open_until = max(breaker.open_until, self.clock() + seconds)
        self._open.add(model)
        if breaker.state != "open":
            self._set(model, "open")
            log.warning("%s is rate-limited: not routed to for %.0f s (Retry-After)", model, seconds)
        if model in self.router.catalogue:
            self.router.set_available(model, False)

    def release(self, model: str) -> None:
        """An attempt that ended without a verdict (the client left): free the probe slot."""
        breaker = self._state.get(model)
        if breaker is not None:
            breaker.probing = False

    def state(self, model: str) -> str:
        breaker = self._state.get(model)
        return breaker.state if breaker else "closed"

    def snapshot(self) -> dict[str, str]:
        return {m: b.state for m, b in self._state.items() if b.state != "closed"}

    def _set(self, model: str, state: str) -> None:
        self._state.setdefault(model, _Breaker()).state = state
        self.observer.breaker(model, state)


@dataclass
class Attempt:
    model: str
    outcome: (
        str  # "ok", or the error kind: timeout, connect_error, status_error, protocol_error, breaker_open
    )
    latency_ms: float
    status: int | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "outcome": self.outcome,
            "latency_ms": round(self.latency_ms, 2),
            "status": self.status,
            "error": self.error,
        }


@dataclass
class Result:
    """How a request went: what answered (if anything), every attempt, and a client fault if any."""

    attempts: list[Attempt] = field(default_factory=list)
    completion: Completion | None = None
    stream: StreamHandle | None = None
    client_fault: UpstreamStatusError | None = None

    @property
    def model(self) -> str | None:
        if self.completion is not None:
            return self.completion.model_id
        return self.stream.model_id if self.stream is not None else None

    @property
    def all_timed_out(self) -> bool:
        tried = [a for a in self.attempts if a.outcome != "breaker_open"]
        return bool(tried) and all(a.outcome == "timeout" for a in tried)


class Executor:
    """Runs decisions against the upstream client, learning from every attempt."""

    def __init__(
        self,
        router: Router,
        client: UpstreamClient,
        breakers: Breakers,
        *,
        attempt_timeout_s: float,
        max_attempts: int,
        observer: AttemptObserver | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.router = router
        self.client = client
        self.breakers = breakers
        self.attempt_timeout_s = attempt_timeout_s
        self.max_attempts = max_attempts
        self.observer = observer or _NoObserver()
        self.clock = clock
        self.tracer: AttemptTrace = NO_TRACE  # a span per attempt when tracing is on

    def timeout_for(self, max_latency_ms: float | None) -> float:
        if max_latency_ms is None:
            return self.attempt_timeout_s
        return min(self.attempt_timeout_s, max_latency_ms / 1000.0)

    async def complete(self, decision: Decision, body: dict[str, Any], timeout_s: float) -> Result:
        result = Result()
        for model in self._candidates(decision, result):
            started = self.clock()
            with self.tracer.attempt(model) as span:
                try:
                    completion = await self.client.complete(model, body, timeout_s)
                except UpstreamError as exc:
                    span.failed(exc)
                    if self._failed(decision, model, exc, self.clock() - started, result):
                        return result
                    continue
                span.answered(completion)
            self._answered(
                decision, model, completion.latency_s, completion.ttft_s, completion.completion_tokens, result
            )
            result.completion = completion
            return result
        return result

    async def open_stream(self, decision: Decision, body: dict[str, Any], timeout_s: float) -> Result:
        """Start a stream on the first candidate that sends its first event in time.

        Falling back is only possible until that first event: after it, bytes reach the client.
        The caller records the stream's outcome with :meth:`finish_stream` when it ends.
        """
        result = Result()
        for model in self._candidates(decision, result):
            started = self.clock()
            with self.tracer.attempt(model) as span:
                handle = self.client.stream(model, body, timeout_s)
                try:
                    await handle.start()
                except UpstreamError as exc:
                    span.failed(exc)
                    await handle.aclose()
                    if self._failed(decision, model, exc, self.clock() - started, result):
                        return result
                    continue
                span.keep(handle)  # the span ends with the stream (finish_stream)
            result.stream = handle
            return result
        return result

    def finish_stream(
        self,
        decision: Decision,
        handle: StreamHandle,
        error: UpstreamError | None,
        cancelled: bool,
        result: Result,
    ) -> None:
        self.tracer.stream_ended(handle, error, cancelled)
        summary = handle.result()
        if cancelled:
            self.breakers.release(handle.model_id)
            result.attempts.append(Attempt(handle.model_id, "cancelled", summary.latency_s * 1000))
            return
        if error is not None:
            self._failed(decision, handle.model_id, error, summary.latency_s, result)
            return
        self._answered(
            decision, handle.model_id, summary.latency_s, summary.ttft_s, summary.completion_tokens, result
        )

    def _candidates(self, decision: Decision, result: Result) -> list[str]:
        """The chain, less models whose breaker refuses this attempt (listed as skipped)."""
        chosen: list[str] = []
        for model in decision.chain:
            if len(chosen) >= self.max_attempts:
                break
            if self.breakers.allow(model):
                chosen.append(model)
            else:
                result.attempts.append(Attempt(model, "breaker_open", 0.0))
        return chosen

    def _failed(
        self, decision: Decision, model: str, exc: UpstreamError, elapsed: float, result: Result
    ) -> bool:
        """Record a failed attempt; True when the request must stop here (the client's own fault)."""
        status = getattr(exc, "status_code", None)
        if isinstance(exc, UpstreamStatusError) and not exc.retryable:
            self.breakers.release(model)
            result.attempts.append(Attempt(model, "client_error", elapsed * 1000, status, str(exc)))
            result.client_fault = exc
            return True
        kind = "timeout" if isinstance(exc, UpstreamTimeout) else exc.kind
        result.attempts.append(Attempt(model, kind, elapsed * 1000, status, str(exc)))
        wait = _retry_after(exc) if status == 429 else None
        if wait is not None:  # rate-limited, not broken: unavailable until then, nothing learned
            self.breakers.pause(model, wait)
        else:
            self.router.record(decision, Outcome(model=model, success=False, latency_s=elapsed, error=kind))
            self.breakers.failure(model)
        self.observer.attempt(model, kind, elapsed)
        index = decision.chain.index(model) if model in decision.chain else -1
        if 0 <= index < len(decision.chain) - 1:
            self.observer.fallback(model, decision.chain[index + 1])
        return False

    def _answered(
        self,
        decision: Decision,
        model: str,
        latency_s: float,
        ttft_s: float | None,
        completion_tokens: int | None,
        result: Result,
    ) -> None:
        result.attempts.append(Attempt(model, "ok", latency_s * 1000))
        self.router.record(
            decision,
            Outcome(
                model=model,
                success=True,
                latency_s=latency_s,
                ttft_s=ttft_s,
                completion_tokens=completion_tokens,
            ),
        )
        self.breakers.success(model)
        self.observer.attempt(model, "ok", latency_s)


_MAX_RETRY_AFTER_S = 3600.0


def _retry_after(exc: UpstreamError) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds; HTTP dates are not honoured), capped."""
    headers = getattr(exc, "headers", None) or {}
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return min(seconds, _MAX_RETRY_AFTER_S) if seconds > 0 and seconds == seconds else None

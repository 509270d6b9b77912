"""One routed request, outside HTTP: admit, decide, execute with fallback, account, store.

Every door (``/v1/chat/completions`` plain and streamed, ``/complete``, ``/route``, the CLI's
live ``route``) runs the same stages through one :class:`Pipeline`; the doors only parse and
answer. Each stage ends at a hook point (:class:`Hook`), where evaluators, tracing spans or
budget reservations plug in without touching the stages themselves::

    class CountAnswers(NoHook):
        def accounted(self, call: Call) -> None:
            if call.completion is not None:
                answered[call.completion.model_id] += 1

    pipeline.hooks.add(CountAnswers())
    call = pipeline.call(route, body={"messages": [...]})
    await pipeline.complete(call)           # raises RequestFailed when nothing answered
    call.answer                             # the upstream's answer, ``model`` set to what answered
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .._errors import AllCandidatesFailed, RequestError, UpstreamError, UpstreamRejected, UpstreamTimeout
from .._json import dumps, loads
from .._settings import CacheSettings
from ..core._answers import new_request_id
from ..core._catalogue import Catalogue
from ..core._decision import Decision, RouteRequest
from ..core._router import Router
from ..offline._trafficlog import TrafficLog
from ..state._budget import Budget, Hold
from ..state._cache import Cache, is_cacheable, request_cache_key
from ..state._feedback import Answered, FeedbackStore, owner_of
from ..upstream._client import Completion, StreamHandle
from ..upstream._execution import Breakers, Executor, Result
from ..upstream._text import streamed_answer
from ._admission import pinned_unavailable, worst_case_usd
from ._deadlines import Drain, error_event, timed_out
from ._metrics import Metrics

__all__ = ["Call", "Hook", "Hooks", "NoHook", "Pipeline", "Streamed", "with_cost"]

log = logging.getLogger("adaptive_router.pipeline")


@dataclass(slots=True)
class Call:
    """One request on its way through the stages; each stage fills in its part.

    ``body`` is what goes upstream (the client's body less ``route``); ``model`` is what the
    client asked for (``auto``, ``auto:<mode>`` or an id), kept to name the right field in errors.
    """

    route: RouteRequest
    body: dict[str, Any] = field(default_factory=dict)
    api_key: str | None = None
    model: str = "auto"
    stream: bool = False
    cache_key: str | None = None
    started: float = field(default_factory=time.perf_counter)
    decision: Decision | None = None
    hit_id: str | None = None  # a response-cache hit's own request id (it has no decision)
    result: Result | None = None
    completion: Completion | None = None
    answer: dict[str, Any] | None = None
    answer_json: bytes | None = None  # ``answer`` serialised once, for the cache and the client
    cost_usd: float = 0.0
    outcome: str = ""
    lookup_s: tuple[float, float] | None = None  # when the cache lookup began and ended (perf_counter)
    hold: Hold | None = None  # the worst case held against the budget while the call runs
    deadline: float = math.inf  # perf_counter time by which the whole request must be done

    @property
    def cache_state(self) -> str:
        """``miss`` for a cacheable request that was not in the cache, ``bypass`` otherwise."""
        return "miss" if self.cache_key is not None else "bypass"


class Hook(Protocol):
    """Called at the end of each stage, on the event loop: keep it quick and non-blocking.

    ``admitted`` and ``decided`` may raise a :class:`~adaptive_router.RouterError` to
    refuse the request; an exception from a later stage is logged and the answer still goes out.
    ``accounted`` also runs for a response-cache hit (``call.outcome == "cache_hit"``, no decision).
    """

    def admitted(self, call: Call) -> None: ...
    def decided(self, call: Call) -> None: ...
    def executed(self, call: Call) -> None: ...
    def accounted(self, call: Call) -> None: ...
    def stored(self, call: Call) -> None: ...


class NoHook:
    """A hook that does nothing at every stage: subclass it and override the stages you need."""

    def admitted(self, call: Call) -> None:
        pass

    def decided(self, call: Call) -> None:
        pass

    def executed(self, call: Call) -> None:
        pass

    def accounted(self, call: Call) -> None:
        pass

    def stored(self, call: Call) -> None:
        pass


class Hooks:
    """The registered hooks, called in order; costs nothing while none is registered."""

    def __init__(self) -> None:
        self._hooks: list[Hook] = []

    def add(self, hook: Hook) -> None:
        self._hooks.append(hook)

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def run(self, stage: str, call: Call, *, guarded: bool) -> None:
        for hook in self._hooks:
            if not guarded:
                getattr(hook, stage)(call)
                continue
            try:
                getattr(hook, stage)(call)
            except Exception:  # a later stage's hook must not lose an answer already obtained
                log.exception("pipeline hook %r failed at %s", hook, stage)


@dataclass(kw_only=True)
class Pipeline:
    """The stages of a routed request, and the parts they use (all open: built in the lifespan)."""

    router: Router
    executor: Executor
    breakers: Breakers
    metrics: Metrics
    cache: Cache
    cache_settings: CacheSettings
    upstream_mode: str
    budget: Budget | None = None
    cheap_mask: npt.NDArray[np.bool_] | None = None  # the budget's price ceiling as a row mask
    traffic_log: TrafficLog | None = None
    feedback: FeedbackStore | None = None  # answered request ids for /feedback
    hooks: Hooks = field(default_factory=Hooks)
    spawn: Callable[[Coroutine[Any, Any, Any]], object] = asyncio.ensure_future
    request_timeout_s: float = math.inf  # upstream.request_timeout_s
    default_output_tokens: int = 4096  # budget.default_output_tokens
    drain: Drain = field(default_factory=Drain)

    @property
    def catalogue(self) -> Catalogue:
        return self.router.catalogue

    def call(
        self,
        route: RouteRequest,
        *,
        body: dict[str, Any] | None = None,
        api_key: str | None = None,
        model: str = "auto",
        stream: bool = False,
    ) -> Call:
        call = Call(route, body if body is not None else {}, api_key, model, stream)
        call.deadline = call.started + self.request_timeout_s
        return call

    def consider_cache(self, call: Call, route_options: Mapping[str, Any] | None, opt_in: bool) -> None:
        """Give ``call`` a response-cache key when its answer may come from or go to the cache."""
        if self.cache_settings.enabled and is_cacheable(call.body, opt_in):
            key = request_cache_key(call.body, route_options)
            if call.api_key and not self.cache_settings.shared_across_keys:
                key += ":" + owner_of(call.api_key)  # one tenant never learns another's prompts
            call.cache_key = key

    # --- stages --------------------------------------------------------------------------------

    def admit(self, call: Call) -> None:
        """Budgets (refuse at the cap; only models under the price ceiling near it), breakers."""
        if self.budget is not None:
            verdict = self.budget.check(call.api_key)
            verdict.raise_if_blocked()
            if verdict.price_ceiling is not None:
                call.route.mask = self.cheap_mask
        self.breakers.refresh()
        unavailable = pinned_unavailable(self.breakers, call.route)
        if unavailable is not None:
            raise unavailable
        if self.hooks:
            self.hooks.run("admitted", call, guarded=False)

    async def _reserve(self, call: Call, decision: Decision) -> None:
        """Hold the request's worst case against the budget (429 when a cap is reached)."""
        if self.budget is None:
            return
        chain = decision.chain[: self.executor.max_attempts]
        prompt, answer = decision.profile.prompt_tokens, call.route.max_tokens
        worst = worst_case_usd(self.catalogue, chain, prompt, answer, self.default_output_tokens)
        call.hold = await self.budget.reserve(call.api_key, worst)

    def _release(self, call: Call, cost: float = 0.0) -> None:
        """Settle the call's hold to ``cost`` (nothing spent when it failed); once per call."""
        hold, call.hold = call.hold, None
        if hold is not None and self.budget is not None:
            self.spawn(self.budget.settle(hold, cost))

    def loop_deadline(self, call: Call, slack_s: float = 0.0) -> float:
        """``call.deadline`` on the event loop's clock, plus ``slack_s``."""
        left = call.deadline - time.perf_counter() + slack_s
        return asyncio.get_running_loop().time() + min(left, 1e9)

    def decide(self, call: Call, *, shadows: bool = True) -> Decision:
        """Profile and rank; a bad mode names the field the client wrote it in. ``shadows``: the
        call's answer is accounted here, so an exploratory pick may go beside it as a shadow."""
        try:
            decision = self.router.decide(call.route, shadows=shadows)
        except RequestError as exc:
            if exc.field != "mode":
                raise
            field_name = "model" if call.model.startswith("auto:") else "route.priority"
            raise RequestError(field_name, str(exc).removeprefix("mode: ")) from None
        call.decision = decision
        if self.hooks:
            self.hooks.run("decided", call, guarded=False)
        return decision

    def route(self, call: Call) -> Decision:
        """The decision alone (``/route``): admit and decide."""
        self.admit(call)
        return self.decide(call, shadows=False)  # the client calls the model: nothing sends a shadow

    async def lookup(self, call: Call) -> dict[str, Any] | None:
        """A cached answer for this call, or None (a corrupt entry is a miss, never an error)."""
        if call.cache_key is None:
            return None
        if self.budget is not None:  # a cached answer costs nothing, but a key over its cap gets none
            self.budget.check(call.api_key).raise_if_blocked()
        began = time.perf_counter()
        raw = await self.cache.get(call.cache_key)
        call.lookup_s = (began, time.perf_counter())
        self.metrics.cache(raw is not None)
        if raw is None:
            return None
        try:
            data = loads(raw)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        call.answer, call.answer_json, call.outcome = data, raw, "cache_hit"
        self.metrics.request(
            data.get("model"), "cache_hit", time.perf_counter() - call.started, None, 0, True, call.stream
        )
        self._accounted(call)
        await self._remember_hit(call, data)
        return data

    async def _remember_hit(self, call: Call, data: dict[str, Any]) -> None:
        """A cache hit gets a request id like any answer; a score for it counts for the model that
        produced the cached answer, in this request's cell (the answer's own ``id`` still names
        the request that produced it)."""
        call.hit_id = call.route.request_id or new_request_id()
        model = data.get("model")
        if self.feedback is None or not isinstance(model, str) or model not in self.catalogue.index:
            return
        cell = self.router.profile(call.route).cell
        await self.feedback.remember(Answered(call.hit_id, None, model, cell, owner_of(call.api_key)))

    async def complete(self, call: Call) -> dict[str, Any]:
        """Admit, decide, execute with fallback, account, store; the answer, or ``RequestFailed``."""
        self.admit(call)
        decision = self.decide(call)
        await self._reserve(call, decision)
        try:
            result = await self._execute(call, decision)
            call.result, call.completion = result, result.completion
            self._executed(call)
            self._log(call, result.completion)
            answer = self._account(call, result)
        finally:
            self._release(call)  # nothing answered, or cancelled: the hold goes, nothing spent
        await self._store(call)
        return answer

    async def _execute(self, call: Call, decision: Decision) -> Result:
        """The attempts, within the request's total deadline (each attempt's timeout shrinks to
        what is left) and cut short by a shutdown."""
        timeout = self.executor.timeout_for(call.route.max_latency_ms)
        bound = self.loop_deadline(call, slack_s=1.0)  # the executor's own deadline comes first
        try:
            async with self.drain.bounded(bound):
                return await self.executor.complete(decision, call.body, timeout, deadline=call.deadline)
        except TimeoutError:
            raise timed_out(self.drain, bound, self.request_timeout_s) from None

    async def stream(self, call: Call) -> Streamed:
        """Admit, decide, and open a stream on the first candidate that starts in time.

        Accounting happens when the returned stream ends (see :meth:`Streamed.events`).
        """
        self.admit(call)
        decision = self.decide(call)
        await self._reserve(call, decision)
        timeout = self.executor.timeout_for(call.route.max_latency_ms)
        try:
            result = await self.executor.open_stream(decision, call.body, timeout, deadline=call.deadline)
        except BaseException:
            self._release(call)
            raise
        call.result = result
        if result.stream is None:
            self._release(call)
            self._executed(call)
            self._log(call, None)
            self._account(call, result)  # raises the right RequestFailed
        assert result.stream is not None
        return Streamed(self, call, result.stream)

    # --- accounting ----------------------------------------------------------------------------

    def _executed(self, call: Call) -> None:
        if self.hooks:
            self.hooks.run("executed", call, guarded=True)

    def _log(self, call: Call, answer: Any) -> None:
        """One traffic-log line (enqueued; written by a background thread, never blocking)."""
        if self.traffic_log is not None and call.decision is not None and call.result is not None:
            self.traffic_log.log_decision(
                call.decision, call.result.attempts, request=call.route, answer=answer
            )

    def _account(self, call: Call, result: Result) -> dict[str, Any]:
        """Metrics, spend and hooks for a finished non-streamed call; raises when nothing answered."""
        decision = call.decision
        assert decision is not None
        elapsed = time.perf_counter() - call.started
        decided = None if decision.cached else decision.decision_us
        completion = result.completion
        if completion is None:
            failure: UpstreamRejected | AllCandidatesFailed
            if result.client_fault is not None:
                call.outcome, failure = (
                    "client_error",
                    UpstreamRejected(result.client_fault, decision, result),
                )
            else:
                failure = AllCandidatesFailed(decision, result)
                call.outcome = "timeout" if failure.timed_out else "upstream_error"
            self.metrics.request(None, call.outcome, elapsed, decided, len(result.attempts), False, False)
            self._accounted(call)
            raise failure
        answer = dict(completion.data)
        answer["model"] = completion.model_id
        call.answer, call.outcome = answer, "ok"
        self._spend(call, completion)
        answer["usage"] = with_cost(answer.get("usage"), call.cost_usd)
        self.metrics.request(completion.model_id, "ok", elapsed, decided, len(result.attempts), False, False)
        self._accounted(call)
        return answer

    def _spend(self, call: Call, completion: Completion) -> None:
        cost = self.cost(completion)
        call.cost_usd = cost
        self.metrics.usage(
            completion.model_id, completion.prompt_tokens or 0, completion.completion_tokens or 0, cost
        )
        if call.hold is not None:
            self._release(call, cost)
        elif self.budget is not None and cost > 0:
            self.spawn(self.budget.charge(call.api_key, cost))

    def _accounted(self, call: Call) -> None:
        if self.hooks:
            self.hooks.run("accounted", call, guarded=True)

    def cost(self, completion: Completion) -> float:
        """What an answer cost: the upstream's own figure, else its tokens at catalogue prices."""
        if completion.cost_usd is not None:
            return completion.cost_usd
        return self.price(
            completion.model_id, completion.prompt_tokens or 0, completion.completion_tokens or 0
        )

    def price(self, model_id: str, prompt_tokens: int, completion_tokens: int) -> float:
        """Tokens at the catalogue's prices (USD); 0 for a model the catalogue does not price."""
        catalogue = self.router.catalogue
        row = catalogue.index.get(model_id)
        if row is None:
            return 0.0
        prompt, done = float(catalogue.price_prompt[row]), float(catalogue.price_completion[row])
        return prompt * prompt_tokens + done * completion_tokens

    async def _store(self, call: Call) -> None:
        """Serialise and cache the answer; keep what ``/feedback`` needs."""
        await self._cache_answer(call)
        if call.completion is not None:
            await self.remember(call, call.completion)

    async def _cache_answer(self, call: Call) -> None:
        """Serialise ``call.answer``; cache it when the call is cacheable and it fits."""
        call.answer_json = dumps(call.answer)
        if call.cache_key is not None and len(call.answer_json) <= self.cache_settings.max_value_bytes:
            await self.cache.set(call.cache_key, call.answer_json, self.cache_settings.ttl_seconds)
            if self.hooks:
                self.hooks.run("stored", call, guarded=True)

    async def cache_stream(self, call: Call, completion: Completion) -> None:
        """A finished cacheable stream, before its ``[DONE]`` goes on: cached as its plain answer."""
        if call.cache_key is None:
            return
        answer = streamed_answer(completion, int(time.time()))
        if answer is not None:
            answer["usage"] = with_cost(answer.get("usage"), self.cost(completion))
            call.answer = answer
            await self._cache_answer(call)

    async def remember(self, call: Call, completion: Completion) -> None:
        """Keep what ``/feedback`` needs for an answered call; awaited before the answer leaves,
        so that another worker or replica can take the feedback the moment the client has it."""
        if self.feedback is None or call.decision is None:
            return
        answer_id = completion.data.get("id")
        await self.feedback.remember(
            Answered(
                call.decision.request_id,
                answer_id if isinstance(answer_id, str) else None,
                completion.model_id,
                call.decision.profile.cell,
                owner_of(call.api_key),
            )
        )

    def refused(self, outcome: str) -> None:
        """Count a request refused before it reached a model (a bad body, no eligible model)."""
        self.metrics.request(None, outcome, 0.0, None, 0, False, False)

    def routing(self, call: Call, *, cached: bool = False) -> dict[str, Any]:
        """What the router did for ``call``: the decision, every attempt, the upstream."""
        return routing_info(call.decision, call.result, cached, self.upstream_mode)


def routing_info(
    decision: Decision | None, result: Result | None, cached: bool, upstream_mode: str
) -> dict[str, Any]:
    """The ``routing`` object of an answer (a cached answer has no decision of its own)."""
    if decision is None:
        return {
            "model": None,
            "cached": cached,
            "attempts": [],
            "decision_us": 0.0,
            "upstream": upstream_mode,
        }
    return {
        "request_id": decision.request_id,
        "model": (result.model if result else None) or decision.model,
        "decision": {
            "model": decision.model,
            "fallbacks": decision.fallbacks,
            "reason": decision.reason,
            "mode": decision.mode,
            "policy": decision.policy,
            "propensity": decision.propensity,
            "explored": decision.explored,
            **({"shadow": decision.shadow} if decision.shadow is not None else {}),
            "task": decision.profile.task,
            "from_decision_cache": decision.cached,
        },
        "attempts": [a.as_dict() for a in result.attempts] if result else [],
        "cached": cached,
        "decision_us": round(decision.decision_us, 2),
        "upstream": upstream_mode,
    }


class Streamed:
    """An open stream: iterate :meth:`events` for each event's JSON bytes (``b"[DONE]"`` last).

    After the first byte there is no falling back: an upstream failure mid-stream becomes one
    last error event. Accounting (learning, metrics, spend, the traffic log) runs when the
    stream ends, whether it finished, failed or the client went away.
    """

    def __init__(self, pipeline: Pipeline, call: Call, handle: StreamHandle) -> None:
        self.pipeline, self.call, self.handle = pipeline, call, handle

    @property
    def attempts(self) -> int:
        """Attempts so far, the stream's own included (it is recorded when it ends)."""
        assert self.call.result is not None
        return len(self.call.result.attempts) + 1

    async def events(self) -> AsyncIterator[bytes]:
        error: UpstreamError | None = None
        cancelled = False
        # The router always asks the upstream for a usage chunk (it counts tokens and spend);
        # a client that did not ask for one would meet a chunk with no choices and break.
        wants_usage = _wants_usage(self.call.body)
        priced = False
        drain, deadline = self.pipeline.drain, self.pipeline.loop_deadline(self.call)
        upstream = self.handle.events()
        try:
            while True:
                try:  # each wait is bounded: by the request's deadline, or a shutdown's cut-off
                    async with drain.bounded(deadline):
                        payload = await anext(upstream)
                except StopAsyncIteration:
                    break
                if not priced and self.handle.usage is not None:  # the usage chunk: once a stream
                    priced = True
                    payload = self._priced(payload)
                    if not wants_usage and _usage_only(payload):
                        continue
                yield payload
        except TimeoutError:
            cancelled = drain.cut_off(deadline)  # a shutdown is nobody's failure
            error = None if cancelled else self._deadline_error()
            yield dumps(error_event(timed_out(drain, deadline, self.pipeline.request_timeout_s)))
        except UpstreamError as exc:
            error = exc
            yield dumps({"error": {"message": str(exc), "type": "upstream_error", "code": exc.kind}})
        except (asyncio.CancelledError, GeneratorExit):
            cancelled = not self.handle.done  # gone after [DONE]: answered, and paid for
            raise
        finally:
            await upstream.aclose()
            await self.handle.aclose()
            self._finish(error, cancelled)

    def _priced(self, payload: bytes) -> bytes:
        """The usage chunk with ``usage.cost`` (USD) added, as OpenRouter reports it."""
        handle = self.handle
        try:
            chunk = loads(payload)
        except ValueError:
            return payload
        if not isinstance(chunk, dict) or not isinstance(chunk.get("usage"), dict):
            return payload
        chunk["usage"] = with_cost(chunk["usage"], self.pipeline.cost(handle.result()))
        return dumps(chunk)

    def _deadline_error(self) -> UpstreamTimeout:
        limit = self.pipeline.request_timeout_s
        return UpstreamTimeout(self.handle.model_id, f"the request's total deadline of {limit:g} s passed")

    def _finish(self, error: UpstreamError | None, cancelled: bool) -> None:
        pipeline, call, handle = self.pipeline, self.call, self.handle
        result, decision = call.result, call.decision
        assert result is not None and decision is not None
        pipeline.executor.finish_stream(decision, handle, error, cancelled, result)
        pipeline._executed(call)
        summary = handle.result()
        call.completion = summary
        pipeline._log(call, summary)
        call.outcome = "cancelled" if cancelled else ("upstream_error" if error else "ok")
        if call.outcome == "ok":
            pipeline._spend(call, summary)
        pipeline._release(call)  # failed or cancelled: the hold goes, nothing spent
        decided = None if decision.cached else decision.decision_us
        elapsed = time.perf_counter() - call.started
        pipeline.metrics.request(
            handle.model_id, call.outcome, elapsed, decided, len(result.attempts), False, True
        )
        pipeline._accounted(call)


def with_cost(usage: object, cost_usd: float) -> dict[str, Any]:
    """``usage`` with ``cost`` in USD (a usage object holding only the cost when there was none)."""
    return {**usage, "cost": cost_usd} if isinstance(usage, dict) else {"cost": cost_usd}


def _wants_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, Mapping) and options.get("include_usage") is True


def _usage_only(payload: bytes) -> bool:
    """An event with a usage report and no choices (parsed only when it mentions usage)."""
    if b'"usage"' not in payload or b'"choices"' not in payload:
        return False
    try:
        chunk = loads(payload)
    except ValueError:
        return False
    return isinstance(chunk, dict) and chunk.get("choices") == [] and isinstance(chunk.get("usage"), dict)

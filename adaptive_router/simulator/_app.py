"""A simulated OpenAI-compatible upstream: many models, seeded latency, errors and scripted events.

It is the router's default upstream when no API key is set, the upstream of the tests and of the
benchmarks. Latency is a log-normal body around each model's median with a rare heavy tail, shaped
after real llmperf measurements (see ``fit_llmperf``); ``Scenario.time_scale`` shrinks every sleep
so that a test can run a minute of traffic in a second.

Usage::

    models = [SimModel("fast", ttft_s=0.2, tpot_s=0.01), SimModel("slow", ttft_s=1.5, tpot_s=0.05)]
    scenario = load_scenario("scenario.yaml")  # or Scenario(seed=1, time_scale=0.01, events=[...])
    app = create_simulator_app(models, scenario)  # a Starlette app: POST /v1/chat/completions

Scenario file (YAML or JSON)::

    seed: 7
    time_scale: 0.01
    models: {"gpt-*": {ttft_s: 0.3}}
    events:
      - {at_request: 100, model: "gpt-4*", action: slow, factor: 5}
      - {at_seconds: 60, model: "*", action: fail, status: 0}   # status 0 drops the connection
      - {at_request: 300, model: "*", action: recover}
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import json
import math
import random
import socket
import statistics
import struct
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .._errors import ConfigError
from ._judge import JUDGE_MODEL, Answers, judge_answer, true_quality
from ._scenario import (
    CHARS_PER_TOKEN,
    DEFAULT_TPOT_S,
    DEFAULT_TTFT_S,
    Scenario,
    SimEvent,
    SimModel,
    apply_overrides,
)
from ._wire import ChatRequest, bad_request, error_response

__all__ = [
    "CatalogueLike",
    "create_simulator_app",
    "run_simulator",
    "sim_models_from_catalogue",
]

# Fitted to data/latency/llmperf_requests.csv (2,845 requests, 19 provider/size groups) by
#   python3 -c "from adaptive_router.simulator import fit_llmperf as f; \
# ---------------------------------------------------------------------------------------------
# Runtime state: counters, scripted events, per-model random streams


@dataclass
class _ModelState:
    slow: float = 1.0
    fail_status: int | None = None
    fail_prob: float = 0.0
    limit_prob: float = 0.0
    retry_after_s: float = 1.0


@dataclass(frozen=True)
class _Outcome:
    status: int  # 200, an injected error status, or 0 for a dropped connection
    ttft_s: float  # simulated (unscaled) seconds
    tpot_s: float
    retry_after_s: float = 0.0


@dataclass
class _Stats:
    requests: dict[str, int] = field(default_factory=dict)
    errors: dict[str, dict[str, int]] = field(default_factory=dict)
    streams: int = 0
    bad_requests: int = 0
    unknown_model: int = 0
    events_applied: int = 0


class _Simulator:
    def __init__(self, models: Sequence[SimModel], scenario: Scenario) -> None:
        self.scenario = scenario
        listed = tuple(m.id for m in models)
        if JUDGE_MODEL not in listed:  # served beside the listed models, not listed itself
            models = [*models, SimModel(JUDGE_MODEL, ttft_s=0.3, tpot_s=0.01, quality=1.0)]
        self.models = apply_overrides(models, scenario)
        self.ids = listed
        self.states = {mid: _ModelState() for mid in self.models}
        # One stream per model, so traffic to one model never shifts another's draws.
        self.rngs = {mid: random.Random(_digest(scenario.seed, mid)) for mid in self.models}
        self.answers = Answers()  # what the judge recognises
        self.stats = _Stats(requests=dict.fromkeys(self.ids, 0))
        self.counter = 0
        self.started: float | None = None
        self.boot = random.getrandbits(32)
        self._pending = list(scenario.events)
        self._next_request, self._next_time = self._thresholds()

    def start(self) -> None:
        if self.started is None:
            self.started = time.monotonic()

    def admit(self, model_id: str) -> _Outcome:
        """Count one request, fire the events now due, and draw its latency and fault."""
        self.start()
        self._fire_due()
        self.counter += 1
        self.stats.requests[model_id] = self.stats.requests.get(model_id, 0) + 1
        outcome = self._draw(model_id)
        if outcome.status != 200:
            per_model = self.stats.errors.setdefault(model_id, {})
            per_model[str(outcome.status)] = per_model.get(str(outcome.status), 0) + 1
        return outcome

    def _draw(self, model_id: str) -> _Outcome:
        model, state, rng = self.models[model_id], self.states[model_id], self.rngs[model_id]
        # Always five draws per request, so an injected fault does not shift later latencies.
        u_event, u_rand, z_ttft, u_tail, z_tpot = (
            rng.random(),
            rng.random(),
            rng.gauss(),
            rng.random(),
            rng.gauss(),
        )
        tail = model.tail_factor if u_tail < model.tail_prob else 1.0
        ttft = model.ttft_s * state.slow * math.exp(model.ttft_sigma * z_ttft) * tail
        tpot = model.tpot_s * state.slow * math.exp(model.tpot_sigma * z_tpot)
        if state.fail_status is not None and u_event < state.fail_prob:
            return _Outcome(state.fail_status, ttft, tpot, state.retry_after_s)
        if u_event < state.limit_prob:
            return _Outcome(429, ttft, tpot, state.retry_after_s)
        if u_rand < model.error_rate:
            return _Outcome(500, ttft, tpot)
        if u_rand < model.error_rate + model.rate_limit_rate:
            return _Outcome(429, ttft, tpot, self.scenario.retry_after_s)
        return _Outcome(200, ttft, tpot)

    def _thresholds(self) -> tuple[float, float]:
        reqs = [e.at_request for e in self._pending if e.at_request is not None]
        secs = [e.at_seconds for e in self._pending if e.at_seconds is not None]
        return min(reqs, default=math.inf), min(secs, default=math.inf)

    def _fire_due(self) -> None:
        elapsed = self.elapsed_sim_s()
        if not (self.counter >= self._next_request or elapsed >= self._next_time):
            return
        remaining: list[SimEvent] = []
        for event in self._pending:
            due = (event.at_request is not None and self.counter >= event.at_request) or (
                event.at_seconds is not None and elapsed >= event.at_seconds
            )
            if due:
                self._apply(event)
            else:
                remaining.append(event)
        self._pending = remaining
        self._next_request, self._next_time = self._thresholds()

    def elapsed_sim_s(self) -> float:
        real = time.monotonic() - self.started if self.started is not None else 0.0
        scale = self.scenario.time_scale
        # With time_scale 0 simulated time passes instantly: every at_seconds event is due.
        return real / scale if scale > 0 else math.inf

    def _apply(self, event: SimEvent) -> None:
        self.stats.events_applied += 1
        for mid in fnmatch.filter(self.models, event.model):
            state = self.states[mid]
            if event.action == "slow":
                state.slow = event.factor if event.factor is not None else 1.0
            elif event.action == "fail":
                state.fail_status, state.fail_prob = event.status, event.probability
            elif event.action == "rate_limit":
                state.limit_prob, state.retry_after_s = event.probability, event.retry_after_s
            else:
                self.states[mid] = _ModelState()

    def apply_now(self, event: SimEvent) -> list[str]:
        """Apply ``event`` at once, whatever its trigger; the ids of the models it touched."""
        self._apply(event)
        return fnmatch.filter(self.ids, event.model)

    def stats_json(self) -> dict[str, Any]:
        s = self.stats
        return {
            "requests_total": self.counter,
            "requests": s.requests,
            "errors_total": sum(sum(v.values()) for v in s.errors.values()),
            "errors": s.errors,
            "streams": s.streams,
            "bad_requests": s.bad_requests,
            "unknown_model": s.unknown_model,
            "events_applied": s.events_applied,
            "events_pending": len(self._pending),
            "elapsed_s": 0.0 if self.started is None else time.monotonic() - self.started,
        }


def _digest(*parts: object) -> int:
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(str(part).encode())
        h.update(b"\x1f")
    return int.from_bytes(h.digest(), "big")


# ---------------------------------------------------------------------------------------------
# Injected errors (request validation and OpenAI error bodies: see simwire.py)


_STATUS_MESSAGES = {
    429: ("Rate limit reached for requests (simulated).", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request (simulated).", "server_error", None),
    503: ("The engine is currently overloaded (simulated).", "server_error", None),
}


def _injected_error(outcome: _Outcome, time_scale: float) -> Response:
    message, type_, code = _STATUS_MESSAGES.get(
        outcome.status, (f"Simulated upstream error {outcome.status}.", "server_error", None)
    )
    headers = {
        "x-sim-latency-ms": _ms(0.0 if outcome.status == 429 else outcome.ttft_s),
        "x-sim-injected": "1",
    }
    if outcome.status == 429:
        wait = outcome.retry_after_s * time_scale
        headers["retry-after"] = str(math.ceil(wait))
        headers["retry-after-ms"] = str(round(wait * 1000))
    return error_response(outcome.status, message, type_, None, code, headers)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


# ---------------------------------------------------------------------------------------------
# Completions: length, filler text, response bodies


_WORD_LETTERS = (
    "theandforyouarebutnotallanycanhadherwasoneouroutdaygethashimhishowmannewnowoldseetwowaywhoboydid"
    "itsletputsayshetoouseactaddageagoairarmartaskbadbagbedbigbitboxbusbuycarcatcupcutdogdrydueeareat"
    "eggendeyefarfewfitflyfungasgodgunguyhathithoticejobkeykidlawlayleglielotlowmapmixnetnoroilownpay"
    "perpopredrowrunseasetsitsixskysonsuntaxteatentietoptoytrywarwebwetwinyes"
)
_WORDS = [_WORD_LETTERS[i : i + 3] for i in range(0, len(_WORD_LETTERS), 3)]
_FILLER_TOKENS = 2048
# Every token is exactly CHARS_PER_TOKEN characters ("cat "), so content length = 4 * tokens.
_FILLER = "".join(f"{w} " for w in random.Random(0).choices(_WORDS, k=_FILLER_TOKENS))
_FILLER2 = _FILLER * 2
_NORMAL = statistics.NormalDist()


def _filler(offset: int, tokens: int) -> str:
    start = (offset % _FILLER_TOKENS) * CHARS_PER_TOKEN
    end = start + tokens * CHARS_PER_TOKEN
    if end <= len(_FILLER2):
        return _FILLER2[start:end]
    return (_FILLER * (end // len(_FILLER) + 1))[start:end]


@dataclass(frozen=True)
class _Completion:
    content: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    quality_u: float = 0.5  # a uniform draw for the answer's true quality
    cost_usd: float | None = None  # reported as usage.cost (the judge only)


def _plan_completion(req: ChatRequest, scenario: Scenario) -> _Completion:
    """Length and text depend only on (seed, model, messages), then the request's cap applies."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{scenario.seed}\x1f{req.model}".encode())
    chars = 0
    for msg in req.messages:
        text = _content_text(msg.content)
        chars += len(text)
        h.update(f"\x1e{msg.role}\x1f{text}".encode())
    value = int.from_bytes(h.digest(), "big")
    u = ((value >> 11) + 0.5) / 2.0**53
    natural = round(
        scenario.output_tokens_median * math.exp(scenario.output_tokens_sigma * _NORMAL.inv_cdf(u))
    )
    tokens = min(max(natural, 1), scenario.max_output_tokens)
    cap = req.max_completion_tokens or req.max_tokens
    finish = "stop"
    if cap is not None and tokens > cap:
        tokens, finish = cap, "length"
    quality_u = random.Random(value).random()
    return _Completion(_filler(value, tokens), math.ceil(chars / CHARS_PER_TOKEN), tokens, finish, quality_u)


def _judge_completion(sim: _Simulator, req: ChatRequest, planned: _Completion) -> _Completion:
    """The judge's answer to a grading request: ``{"score": N}``, priced per token."""
    prompt = _content_text(req.messages[-1].content) if req.messages else ""
    reply, tokens, cost = judge_answer(sim.answers, prompt, sim.scenario, planned.prompt_tokens)
    return _Completion(reply, planned.prompt_tokens, tokens, "stop", cost_usd=cost)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if p.get("type", "text") == "text")
    return ""


def _usage(c: _Completion) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
    }
    if c.cost_usd is not None:
        usage["cost"] = c.cost_usd
    return usage


def _completion_body(completion_id: str, model: str, c: _Completion) -> bytes:
    body = {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": c.content, "refusal": None},
                "logprobs": None,
                "finish_reason": c.finish_reason,
            }
        ],
        "usage": _usage(c),
    }
    return json.dumps(body, separators=(",", ":")).encode()


class _ChunkWriter:
    """Builds ``data: {chat.completion.chunk}\\n\\n`` events from a fixed prefix and suffix, so
    each chunk costs one string join rather than a JSON encoding of the whole object."""

    def __init__(self, completion_id: str, model: str, include_usage: bool) -> None:
        head = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": None,
        }
        self.include_usage = include_usage
        self._prefix = (
            "data: " + json.dumps(head, separators=(",", ":"))[:-1] + ',"choices":[{"index":0,"delta":'
        )
        usage = ',"usage":null' if include_usage else ""
        self._suffix = ',"logprobs":null,"finish_reason":null}]' + usage + "}\n\n"
        self._final = ',"logprobs":null,"finish_reason":"%s"}]' + usage + "}\n\n"
        self._head = head

    def content(self, text: str, *, first: bool = False) -> str:
        role = '{"role":"assistant","content":""}' if first else None
        opening = self._prefix + role + self._suffix if role else ""
        return opening + self._prefix + '{"content":' + json.dumps(text) + "}" + self._suffix

    def finish(self, c: _Completion) -> str:
        out = self._prefix + "{}" + self._final % c.finish_reason
        if self.include_usage:
            usage_chunk = dict(self._head, choices=[], usage=_usage(c))
            out += "data: " + json.dumps(usage_chunk, separators=(",", ":")) + "\n\n"
        return out + "data: [DONE]\n\n"


async def _sleep_until(deadline: float) -> None:
    delay = deadline - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)


async def _stream_body(
    writer: _ChunkWriter, c: _Completion, outcome: _Outcome, scenario: Scenario, t0: float
) -> AsyncIterator[str]:
    """The first token goes out alone at ttft (so clients measure ttft right); later tokens are
    batched so that chunks are at least ``min_chunk_interval_s`` of real time apart."""
    scale, n = scenario.time_scale, c.completion_tokens
    per_token = outcome.tpot_s * scale
    batch = n if per_token <= 0 else max(1, math.ceil(scenario.min_chunk_interval_s / per_token))
    await _sleep_until(t0 + outcome.ttft_s * scale)
    first = writer.content(c.content[:CHARS_PER_TOKEN], first=True)
    if n == 1:
        yield first + writer.finish(c)
        return
    yield first
    done = 1
    while done < n:
        upto = min(done + batch, n)
        await _sleep_until(t0 + (outcome.ttft_s + outcome.tpot_s * (upto - 1)) * scale)
        piece = writer.content(c.content[done * CHARS_PER_TOKEN : upto * CHARS_PER_TOKEN])
        done = upto
        yield piece + writer.finish(c) if done == n else piece


def _total_latency(outcome: _Outcome, c: _Completion) -> float:
    return outcome.ttft_s + outcome.tpot_s * (c.completion_tokens - 1)


# ---------------------------------------------------------------------------------------------
# Dropping a connection without an answer


def _reset_connection(request: Request) -> bool:
    """Reset the client's TCP connection (RST, no HTTP answer).

    ASGI has no message for this, so reach the transport through uvicorn's ``receive``, a method of
    its per-request cycle object, which Starlette passes through unwrapped. Returns False when the
    server is not uvicorn-like; the caller then breaks the response after its headers instead."""
    cycle = getattr(request.receive, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if not isinstance(transport, asyncio.Transport):
        return False
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0 turns close() into a reset, like a crashed or overloaded upstream.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    return True


async def _broken_body() -> AsyncIterator[bytes]:
    raise ConnectionAbortedError("simulated dropped connection")
    yield b""  # pragma: no cover - makes this an async generator


async def _drop(request: Request) -> Response:
    if not _reset_connection(request):
        return StreamingResponse(_broken_body(), media_type="application/json")
    # Let the server see the connection is gone, so the response below is discarded silently.
    for _ in range(3):
        await asyncio.sleep(0)
    return Response(status_code=500)


# ---------------------------------------------------------------------------------------------
# The app


def create_simulator_app(models: Sequence[SimModel], scenario: Scenario | None = None) -> Starlette:
    """A Starlette app serving ``models`` the OpenAI way; ``app.state.simulator`` holds its state.

    Routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``, ``GET /sim/stats``,
    ``POST /sim/events`` (a scenario event applied now, e.g. ``{"model": "x", "action": "fail"}``).
    Beside ``models`` it serves the judge, ``simulator/judge`` (see :mod:`._judge`), unlisted."""
    sim = _Simulator(models, scenario or Scenario())
    models_body = json.dumps(
        {
            "object": "list",
            "data": [{"id": m, "object": "model", "created": 0, "owned_by": "simulator"} for m in sim.ids],
        }
    ).encode()

    async def chat(request: Request) -> Response:
        return await _chat(sim, request)

    async def list_models(request: Request) -> Response:
        return Response(models_body, media_type="application/json")

    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def stats(request: Request) -> Response:
        return Response(json.dumps(sim.stats_json()), media_type="application/json")

    async def event(request: Request) -> Response:
        try:  # a scenario event, applied now: {"model": "lab/a", "action": "fail", "status": 503}
            fields = {"at_request": 0, **json.loads(await request.body())}
            applied = sim.apply_now(SimEvent.model_validate(fields))
        except (ValueError, TypeError) as exc:
            return error_response(400, f"not a scenario event: {exc}", "invalid_request_error", "body", None)
        return Response(json.dumps({"applied": applied}), media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        sim.start()
        yield

    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/sim/stats", stats, methods=["GET"]),
        Route("/sim/events", event, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.simulator = sim
    return app


async def _chat(sim: _Simulator, request: Request) -> Response:
    t0 = asyncio.get_running_loop().time()
    try:
        req = ChatRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        sim.stats.bad_requests += 1
        return bad_request(exc)
    if req.model not in sim.models:
        sim.stats.unknown_model += 1
        return error_response(
            404,
            f"The model `{req.model}` does not exist or you do not have access to it.",
            "invalid_request_error",
            "model",
            "model_not_found",
        )
    outcome = sim.admit(req.model)
    scale = sim.scenario.time_scale
    if outcome.status != 200:
        if outcome.status != 429:  # a failing upstream takes its time; a rate limiter answers at once
            await _sleep_until(t0 + outcome.ttft_s * scale)
        return await _drop(request) if outcome.status == 0 else _injected_error(outcome, scale)
    completion = _plan_completion(req, sim.scenario)
    if req.model == JUDGE_MODEL:
        completion = _judge_completion(sim, req, completion)
    else:  # what the judge will recognise, with its true quality
        quality = true_quality(
            sim.models[req.model].quality, completion.quality_u, sim.scenario.quality_spread
        )
        sim.answers.remember(completion.content, req.model, quality)
    completion_id = f"chatcmpl-sim{sim.boot:08x}{sim.counter:010x}"
    headers = {"x-sim-latency-ms": _ms(_total_latency(outcome, completion))}
    if req.stream:
        sim.stats.streams += 1
        include_usage = req.stream_options is not None and req.stream_options.include_usage
        writer = _ChunkWriter(completion_id, req.model, include_usage)
        body = _stream_body(writer, completion, outcome, sim.scenario, t0)
        return StreamingResponse(body, headers=headers, media_type="text/event-stream")
    await _sleep_until(t0 + _total_latency(outcome, completion) * scale)
    return Response(
        _completion_body(completion_id, req.model, completion), headers=headers, media_type="application/json"
    )


# ---------------------------------------------------------------------------------------------
# From the catalogue, and serving


class CatalogueLike(Protocol):
    @property
    def ids(self) -> tuple[str, ...]: ...
    @property
    def ttft_prior(self) -> npt.NDArray[np.float64]: ...
    @property
    def tpot_prior(self) -> npt.NDArray[np.float64]: ...


def sim_models_from_catalogue(catalogue: CatalogueLike) -> list[SimModel]:
    """One SimModel per catalogue model, its medians taken from the catalogue's latency priors
    (a missing or non-positive prior falls back to the llmperf-fitted default)."""
    ttft = np.asarray(catalogue.ttft_prior, dtype=np.float64)
    tpot = np.asarray(catalogue.tpot_prior, dtype=np.float64)
    if not len(catalogue.ids) == ttft.shape[0] == tpot.shape[0]:
        raise ConfigError("catalogue", "ids, ttft_prior and tpot_prior must have the same length")
    # The published quality figure is the simulated models' true quality (the judge's truth).
    quality = getattr(catalogue, "quality_prior", None)
    qualities = [0.7] * len(catalogue.ids) if quality is None else np.clip(quality, 0, 1).tolist()
    return [
        SimModel(mid, ttft_s=_prior(t, DEFAULT_TTFT_S), tpot_s=_prior(p, DEFAULT_TPOT_S), quality=q)
        for mid, t, p, q in zip(catalogue.ids, ttft.tolist(), tpot.tolist(), qualities, strict=True)
    ]


def _prior(value: float, default: float) -> float:
    return value if math.isfinite(value) and value > 0 else default


def run_simulator(
    models: Sequence[SimModel],
    scenario: Scenario | None = None,
    host: str = "127.0.0.1",
    port: int = 8001,
    *,
    log_level: str = "info",
) -> None:
    """Serve the simulator with uvicorn until interrupted (``adaptive-router simulate-upstream``)."""
    app = create_simulator_app(models, scenario)
    # No access log: at benchmark rates it would cost more CPU than the simulation itself.
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on", ws="none")

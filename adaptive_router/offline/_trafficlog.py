"""The traffic log: one JSON line per routed request, written off the hot path.

    log = TrafficLog("logs/traffic.jsonl", max_bytes=64 << 20, backups=5)
    log.log_decision(decision, result.attempts, request=route, answer=result.completion)
    log.log_feedback(request_id, 0.8)
    log.close()                                    # flushes what is queued

``log_decision`` and ``log_feedback`` only put a tuple on a bounded queue (a full queue drops the
line and counts it in ``dropped``: a slow disk never slows a request). A background thread builds
each line with :func:`decision_record`, writes it, and rotates by size: ``path``, ``path.1`` ...
``path.N`` (``.1`` is the newest backup; with ``backups=0`` the file is truncated instead).
Prompt text is not stored unless ``include_prompts``: a SHA-256 of it is.

Line schema, version 1 (every line has ``"v": 1`` and a ``"type"``):

    {"v": 1, "type": "decision",
     "time": 1732200000.123,              # epoch seconds when the request was logged
     "request_id": "req-...",
     "profile": {"task": "code", "prompt_tokens": 120, "bucket": 0,
                 "cell": "code",              # the learner's row: "code/0" when cells are task_and_length,
                                              # "code/s5" (semantic cell 5) when task_and_semantic
                 "expected_output_tokens": 500},  # + "fast_path": rule name, when one matched
     "mode": "quality",                   # or "default", "custom" (the request's own weights)
     "weights": {"latency": 0.1, "cost": 0.2, "quality": 0.7},
     "cost_scale": {"norm": "linear", "reference_usd": 0.02},   # what cost_term is read on
                                          # (log: {"norm": "log", "scale_usd": [low, high]}); lines
                                          # without it were written when the cost term was a log
     "constraints": {"max_latency_ms": null, "max_cost_usd": null, "max_tokens": 256,
                     "capabilities": [], "allow": [], "deny": [], "model": null, "fallback": true},
     "eligible": 12,                      # models that passed every constraint
     "candidates": [                      # the ranked chain, head first (at most routing.top_k)
        {"model": "...", "score": 0.81,   # score = latency_term + cost_term + quality_term + exploration
         "latency_term": 0.05, "cost_term": 0.12, "quality_term": 0.6, "exploration": 0.04,
         "latency_s": 1.9, "cost_usd": 0.0004, "quality": 0.86}],   # the unweighted estimates
     "model": "...",                      # the chosen model (the chain's head)
     "fallbacks": ["..."],
     "propensity": 0.83,                  # P(choice) under the policy; null when unknown (thompson)
     "policy": "softmax", "explored": false, "pinned": false,
     "attempts": [{"model": "...", "outcome": "ok",   # or timeout, connect_error, status_error, ...
                   "latency_ms": 812.5, "ttft_ms": 240.1, "prompt_tokens": 120,
                   "completion_tokens": 88, "cost_usd": 0.00012, "status": null, "error": null}],
     "answered_by": "...",                # the model whose attempt succeeded, or null
     "cached": false,
     "prompt_sha256": "9f86d0...",        # of the prompt text (chat: canonical JSON of the messages)
     "prompt": "...",                     # only with include_prompts
     "answer": "..."}                     # the answer's text, only with include_answers

    {"v": 1, "type": "feedback", "request_id": "req-...", "score": 0.8, "time": 1732200042.0}

Evaluators add ``"type": "evaluation"`` and ``"type": "preference"`` lines (see
:mod:`adaptive_router.offline._preferences`).

Unknown numbers are ``null``. Readers must ignore fields they do not know; a change that
removes or redefines a field bumps ``v``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..core._decision import Decision, Outcome, RouteRequest
from ..core._scoring import scale_record
from ..upstream._client import Completion
from ..upstream._text import answer_text

__all__ = ["SCHEMA_VERSION", "TrafficLog", "decision_record", "feedback_record", "prompt_digest"]

SCHEMA_VERSION = 1
log = logging.getLogger("adaptive_router.trafficlog")

try:  # the 'speed' extra: orjson writes lines several times faster
    import orjson

    def _dumps(value: Any) -> bytes:
        return orjson.dumps(value)

except ImportError:  # pragma: no cover - exercised where orjson is absent

    def _dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# --- the records ---------------------------------------------------------------------------


def _num(value: Any, digits: int = 6) -> float | None:
    """A finite float rounded for the log, or None (JSON has no NaN or infinity)."""
    if value is None or isinstance(value, bool):
        return None
    number = float(value)
    return round(number, digits) if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def prompt_digest(prompt: str | Sequence[Mapping[str, Any]]) -> str:
    """SHA-256 (hex) of a prompt string, or of the canonical JSON of chat messages."""
    if isinstance(prompt, str):
        data = prompt.encode("utf-8")
    else:
        data = json.dumps(list(prompt), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(data).hexdigest()


def _constraints(request: RouteRequest | None) -> dict[str, Any]:
    if request is None:
        return {}
    return {
        "max_latency_ms": _num(request.max_latency_ms, 3),
        "max_ttft_ms": _num(request.max_ttft_ms, 3),
        "max_cost_usd": _num(request.max_cost_usd, 9),
        "max_tokens": request.max_tokens,
        "capabilities": sorted(request.capabilities),
        "allow": list(request.allow),
        "deny": list(request.deny),
        "model": request.model,
        "fallback": request.fallback,
    }


def _attempt(item: Any) -> dict[str, Any]:
    """One attempt as a log row, from an ``execution.Attempt``, a ``router.Outcome`` or a mapping."""
    if isinstance(item, Outcome):
        return {
            "model": item.model,
            "outcome": "ok" if item.success else (item.error or "error"),
            "latency_ms": _num(None if item.latency_s is None else item.latency_s * 1000, 3),
            "ttft_ms": _num(None if item.ttft_s is None else item.ttft_s * 1000, 3),
            "prompt_tokens": _int(item.prompt_tokens),
            "completion_tokens": _int(item.completion_tokens),
            "cost_usd": _num(item.cost_usd, 9),
            "status": None,
            "error": item.error,
        }
    data = dict(item) if isinstance(item, Mapping) else dict(item.as_dict())
    row = {
        "model": data.get("model"),
        "outcome": data.get("outcome"),
        "latency_ms": _num(data.get("latency_ms"), 3),
        "ttft_ms": _num(data.get("ttft_ms"), 3),
        "prompt_tokens": _int(data.get("prompt_tokens")),
        "completion_tokens": _int(data.get("completion_tokens")),
        "cost_usd": _num(data.get("cost_usd"), 9),
        "status": _int(data.get("status")),
        # execution.Attempt keeps the error text in ``error`` and its kind in ``outcome``
        "error": None if data.get("outcome") == "ok" else data.get("outcome"),
    }
    return row


def _fill_answer(rows: list[dict[str, Any]], answer: Any) -> None:
    """Time to first token, tokens and cost of the successful attempt come with the answer."""
    if answer is None:
        return
    model = getattr(answer, "model_id", None)
    for row in reversed(rows):
        if row["outcome"] == "ok" and (model is None or row["model"] == model):
            ttft = getattr(answer, "ttft_s", None)
            row["ttft_ms"] = row["ttft_ms"] if ttft is None else _num(ttft * 1000, 3)
            for key in ("prompt_tokens", "completion_tokens"):
                value = _int(getattr(answer, key, None))
                row[key] = value if value is not None else row[key]
            cost = _num(getattr(answer, "cost_usd", None), 9)
            row["cost_usd"] = cost if cost is not None else row["cost_usd"]
            return


def _candidate(c: Any) -> dict[str, Any]:
    row = asdict(c)
    return {k: (_num(v, 9) if isinstance(v, float) else v) for k, v in row.items()}


def decision_record(
    decision: Decision,
    attempts: Sequence[Any] = (),
    cached: bool = False,
    prompt_text: str | Sequence[Mapping[str, Any]] | None = None,
    now: float | None = None,
    *,
    request: RouteRequest | None = None,
    answer: Any = None,
    include_prompts: bool = False,
    include_answers: bool = False,
) -> dict[str, Any]:
    """The log line (as a dict) for one routed request. Pure: no I/O, no clock unless ``now`` is None.

    ``attempts`` are ``execution.Attempt`` objects (the service), ``router.Outcome`` objects (a
    simulation) or mappings with the same keys. ``answer`` (an ``upstream.Completion`` or a
    stream's summary) adds time to first token, token counts and cost to the attempt that
    answered. ``prompt_text`` defaults to the request's messages or prompt.
    """
    if prompt_text is None and request is not None:
        prompt_text = request.messages if request.messages is not None else request.prompt
    rows = [_attempt(a) for a in attempts]
    _fill_answer(rows, answer)
    answered = next((r["model"] for r in reversed(rows) if r["outcome"] == "ok"), None)
    profile = decision.profile
    record: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "type": "decision",
        "time": _num(time.time() if now is None else now, 3),
        "request_id": decision.request_id,
        "profile": {
            "task": profile.task,
            "prompt_tokens": profile.prompt_tokens,
            "bucket": profile.bucket,
            "cell": profile.cell_name,
            "expected_output_tokens": profile.expected_output_tokens,
            **({"fast_path": profile.route.name} if profile.route is not None else {}),
        },
        "mode": decision.mode,
        "weights": dict(
            zip(("latency", "cost", "quality"), (_num(w) for w in decision.weights), strict=True)
        ),
        "cost_scale": scale_record(decision.scales[1]),
        "constraints": _constraints(request),
        "eligible": decision.eligible,
        "candidates": [_candidate(c) for c in decision.candidates],
        "model": decision.model,
        "fallbacks": list(decision.fallbacks),
        "propensity": _num(decision.propensity, 9),
        "policy": decision.policy,
        "explored": decision.explored,
        **({"shadow": decision.shadow} if decision.shadow is not None else {}),
        "pinned": decision.pinned,
        "attempts": rows,
        "answered_by": answered,
        "cached": bool(cached),
        "prompt_sha256": prompt_digest(prompt_text) if prompt_text is not None else None,
    }
    if include_prompts and prompt_text is not None:
        record["prompt"] = prompt_text if isinstance(prompt_text, str) else list(prompt_text)
    if include_answers and isinstance(answer, Completion):
        record["answer"] = answer_text(answer)
    return record


def feedback_record(request_id: str, score: float, now: float | None = None) -> dict[str, Any]:
    return {
        "v": SCHEMA_VERSION,
        "type": "feedback",
        "request_id": request_id,
        "score": _num(score),
        "time": _num(time.time() if now is None else now, 3),
    }


# --- the writer ----------------------------------------------------------------------------

_STOP = object()


class _Rotating:
    """An append-only file that rolls over to ``.1`` ... ``.N`` before passing ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("ab")
        self.size = self.file.tell()

    def write(self, data: bytes) -> None:
        if self.size and self.size + len(data) > self.max_bytes:
            self.rotate()
        self.file.write(data)
        self.size += len(data)

    def rotate(self) -> None:
        self.file.close()
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.file = self.path.open("wb")
        self.size = 0

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TrafficLog:
    """A bounded queue and a background thread that writes JSON lines, rotating by size.

    Thread-safe; ``log_*`` never block and never raise for a full queue or a closed log (the
    line is dropped and counted). ``flush`` waits until what was queued is on disk.
    """

    def __init__(
        self,
        path: str | Path,
        max_bytes: int = 64 << 20,
        backups: int = 5,
        include_prompts: bool = False,
        *,
        include_answers: bool = False,
        queue_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes <= 0 or backups < 0 or queue_size <= 0:
            raise ValueError("need max_bytes > 0, backups >= 0 and queue_size > 0")
        self.path = Path(path)
        self.include_prompts = include_prompts
        self.include_answers = include_answers
        self.clock = clock
        self.written = 0
        self.errors = 0
        self._dropped = 0
        self._drop_lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._closed = False
        self._file = _Rotating(self.path, max_bytes, backups)
        self._thread = threading.Thread(target=self._run, name="traffic-log", daemon=True)
        self._thread.start()

    def __enter__(self) -> TrafficLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def dropped(self) -> int:
        """Lines dropped because the queue was full or the log closed."""
        return self._dropped

    # --- enqueueing (the request's side: never blocks) ---------------------------------------

    def log_decision(
        self,
        decision: Decision,
        attempts: Sequence[Any] = (),
        *,
        cached: bool = False,
        request: RouteRequest | None = None,
        prompt: str | Sequence[Mapping[str, Any]] | None = None,
        answer: Any = None,
    ) -> bool:
        """Queue the line for ``decision``; the writer thread builds it. False if it was dropped."""
        item = ("decision", decision, list(attempts), cached, request, prompt, answer, self.clock())
        return self._put(item)

    def log_feedback(self, request_id: str, score: float) -> bool:
        return self._put(("feedback", request_id, score, self.clock()))

    def log_record(self, record: Mapping[str, Any]) -> bool:
        """Queue a line built elsewhere (e.g. by :func:`decision_record`)."""
        return self._put(("record", dict(record)))

    def _put(self, item: tuple[Any, ...]) -> bool:
        if not self._closed:
            try:
                self._queue.put_nowait(item)
                return True
            except queue.Full:
                pass
        with self._drop_lock:
            self._dropped += 1
        return False

    # --- flushing and closing ----------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every line queued before this call is written; False on timeout."""
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, stop the thread and close the file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("traffic log %s: queue still full after %.1f s; closing anyway", self.path, timeout)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._file.close()

    # --- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            while len(batch) < 512:  # write what is waiting in one go, flush once
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if self._write_batch(batch):
                return

    def _write_batch(self, batch: list[Any]) -> bool:
        """Write ``batch``; True when the stop marker was in it."""
        stop = False
        events = []
        for item in batch:
            if item is _STOP:
                stop = True
            elif isinstance(item, threading.Event):
                events.append(item)
            else:
                self._write_item(item)
        try:
            self._file.flush()
        except OSError as exc:
            self.errors += 1
            log.warning("traffic log %s: flush failed: %s", self.path, exc)
        for event in events:
            event.set()
        return stop

    def _write_item(self, item: tuple[Any, ...]) -> None:
        # The writer thread is a "never raise" boundary: a bad line or a full disk must cost
        # that line only, never the thread (which would silently stop all logging).
        try:
            self._file.write(_dumps(self._record(item)) + b"\n")
            self.written += 1
        except Exception as exc:  # the documented boundary above
            self.errors += 1
            log.warning("traffic log %s: could not write a line: %r", self.path, exc)

    def _record(self, item: tuple[Any, ...]) -> dict[str, Any]:
        kind = item[0]
        if kind == "record":
            record: dict[str, Any] = item[1]
            return record
        if kind == "feedback":
            return feedback_record(item[1], item[2], item[3])
        _, decision, attempts, cached, request, prompt, answer, now = item
        return decision_record(
            decision,
            attempts,
            cached,
            prompt,
            now,
            request=request,
            answer=answer,
            include_prompts=self.include_prompts,
            include_answers=self.include_answers,
        )

"""Answered requests that may still be scored: what ``/feedback`` needs, found by any worker or replica.

    store = FeedbackStore(client, "adaptive-router", ttl_s=86_400, max_entries=100_000)
    await store.remember(Answered("req-9f…", "chatcmpl-…", "openai/gpt-4o-mini", 3, owner_of(key)))
    entry = await store.resolve("chatcmpl-…")     # by routing.request_id or by the answer's id
    await store.claim(entry)                       # True once per request: a second score is refused

Memory holds this process's own entries (bounded, each for ``ttl_s``). With Redis (``client``
set) every entry is also written there, before the answer leaves, so that a feedback sent to
another worker or replica finds it; the first score claims the request there (``SET NX``), so
a request is scored once across all of them. Redis keys, each with the same TTL::

    {prefix}:fb:v1:id:<request id or answer id>   JSON: request id, model, cell, owner
    {prefix}:fb:v1:scored:<request id>            the claim of the first score

Owners are a hash of the API key that made the request (never the key itself); "" when the
router has no keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from .._errors import RedisUnavailable
from .._topology import RedisClient
from ._redis import redis_call

__all__ = ["Answered", "FeedbackStore", "owner_of"]

log = logging.getLogger("adaptive_router.feedback")

_VERSION = "fb:v1"


def owner_of(api_key: str | None) -> str:
    """Who may score a request: a hash of the key that made it ("" without router keys)."""
    if not api_key:
        return ""
    return hashlib.sha256(b"adaptive-router/owner\0" + api_key.encode()).hexdigest()[:32]


@dataclass(slots=True)
class Answered:
    """One answered request: its ids, the model that answered, the learner cell, the owner."""

    request_id: str
    response_id: str | None
    model: str
    cell: int
    owner: str
    scored: bool = field(default=False, compare=False)

    def to_json(self) -> bytes:
        data = {"r": self.request_id, "a": self.response_id, "m": self.model, "c": self.cell, "o": self.owner}
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Answered | None:
        """The entry, or None for anything malformed (a corrupt entry is unknown, never an error)."""
        try:
            data = json.loads(raw)
            answered = cls(str(data["r"]), data.get("a"), str(data["m"]), int(data["c"]), str(data["o"]))
        except (ValueError, KeyError, TypeError):
            return None
        return answered


class FeedbackStore:
    """Request ids to score, in memory and (with ``client``) in Redis; see the module's docstring."""

    def __init__(
        self,
        client: RedisClient | None,
        prefix: str,
        *,
        ttl_s: float,
        max_entries: int,
        timeout_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client, self._ttl_s, self._max = client, ttl_s, max_entries
        self._prefix = f"{prefix}:{_VERSION}"
        self._timeout_s, self._clock = timeout_s, clock
        self._memory: OrderedDict[str, tuple[float, Answered]] = OrderedDict()

    @property
    def shared(self) -> bool:
        """Whether other workers and replicas see these entries (Redis is configured)."""
        return self._client is not None

    async def remember(self, answered: Answered) -> None:
        """Keep ``answered`` for ``ttl_s`` under its request id and its answer's id."""
        if self._max <= 0:
            return
        ids = [answered.request_id]
        if answered.response_id and answered.response_id != answered.request_id:
            ids.append(answered.response_id)
        expires = self._clock() + self._ttl_s
        for key in ids:
            self._memory[key] = (expires, answered)
            self._memory.move_to_end(key)
        while len(self._memory) > self._max:
            self._memory.popitem(last=False)
        if self._client is not None:
            try:
                await self._write(ids, answered.to_json())
            except RedisUnavailable as exc:  # this process can still take the feedback itself
                log.warning("feedback entry not shared (other workers cannot score it): %s", exc)

    async def _write(self, ids: list[str], raw: bytes) -> None:
        assert self._client is not None
        ttl_ms = max(1, round(self._ttl_s * 1000))
        pipe = self._client.pipeline(transaction=False)
        for key in ids:
            pipe.set(f"{self._prefix}:id:{key}", raw, px=ttl_ms)
        await redis_call("feedback set", pipe.execute(), self._timeout_s)

    async def resolve(self, some_id: str) -> Answered | None:
        """The entry for a request id or an answer id; None when unknown or expired.

        Raises :class:`RedisUnavailable` when the id is not this process's own and Redis did
        not answer (the caller cannot tell "unknown" from "not reachable now")."""
        held = self._memory.get(some_id)
        if held is not None:
            if held[0] > self._clock():
                return held[1]
            del self._memory[some_id]
        if self._client is None:
            return None
        key = f"{self._prefix}:id:{some_id}"
        raw = await redis_call("feedback get", self._client.get(key), self._timeout_s)
        return Answered.from_json(raw) if raw is not None else None

    async def claim(self, answered: Answered) -> bool:
        """True for the first score of this request (across replicas with Redis); False after."""
        if answered.scored:
            return False
        if self._client is not None:
            key = f"{self._prefix}:scored:{answered.request_id}"
            ttl_ms = max(1, round(self._ttl_s * 1000))
            try:
                claimed = await redis_call(
                    "feedback claim", self._client.set(key, b"1", nx=True, px=ttl_ms), self._timeout_s
                )
            except RedisUnavailable as exc:  # score it here: refusing would lose the feedback
                log.warning("feedback claim not shared: %s", exc)
                claimed = True
            if not claimed:
                answered.scored = True
                return False
        answered.scored = True
        return True

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

import contextlib
import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .._errors import RedisUnavailable
from .._topology import RedisClient
from ._redis import redis_call

__all__ = ["Answered", "FeedbackStore", "owner_of"]

log = logging.getLogger("adaptive_router.feedback")

_VERSION = "fb:v1"
T = TypeVar("T")


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
    def from_json(cls, raw: bytes | str) -> Answered | None:
        """The entry, or None for anything malformed (a corrupt entry is unknown, never an error)."""
        try:
            data = json.loads(raw)
            answered = cls(str(data["r"]), data.get("a"), str(data["m"]), int(data["c"]), str(data["o"]))
        except (ValueError, KeyError, TypeError):
            return None
        return answered


class FeedbackStore:
    """Request ids to score, in memory and (with ``client``) in Redis; see the module's docstring.

    After a Redis fault the store uses memory alone for ``retry_after_s`` (an answer never waits
    on a Redis that just failed), then tries Redis again."""

    def __init__(
        self,
        client: RedisClient | None,
        prefix: str,
        *,
        ttl_s: float,
        max_entries: int,
        timeout_s: float = 0.25,
        retry_after_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client, self._ttl_s, self._max = client, ttl_s, max_entries
        self._prefix = f"{prefix}:{_VERSION}"
        self._timeout_s, self._retry_after_s, self._clock = timeout_s, retry_after_s, clock
        self._memory: OrderedDict[str, tuple[float, Answered]] = OrderedDict()
        self._down_until = -math.inf

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
            raw = answered.to_json()
            with contextlib.suppress(RedisUnavailable):  # this process can still take the feedback
                await self._redis(
                    "feedback set", lambda client: _set_all(client, self._keys(ids), raw, self._ttl_ms)
                )

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
        key = self._keys([some_id])[0]
        raw = await self._redis("feedback get", lambda client: client.get(key))
        return Answered.from_json(raw) if raw is not None else None

    async def claim(self, answered: Answered) -> bool:
        """True for the first score of this request (across replicas with Redis); False after."""
        if answered.scored:
            return False
        if self._client is not None:
            key = f"{self._prefix}:scored:{answered.request_id}"
            try:
                claimed = await self._redis(
                    "feedback claim", lambda client: client.set(key, b"1", nx=True, px=self._ttl_ms)
                )
            except RedisUnavailable:  # score it here: refusing would lose the feedback
                claimed = True
            if not claimed:
                answered.scored = True
                return False
        answered.scored = True
        return True

    @property
    def _ttl_ms(self) -> int:
        return max(1, round(self._ttl_s * 1000))

    def _keys(self, ids: list[str]) -> list[str]:
        return [f"{self._prefix}:id:{some_id}" for some_id in ids]

    async def _redis(self, op: str, command: Callable[[RedisClient], Awaitable[T]]) -> T:
        """One command; RedisUnavailable at once while a recent fault's back-off lasts."""
        assert self._client is not None
        now = self._clock()
        if now < self._down_until:
            raise RedisUnavailable(
                f"redis {op} skipped: Redis failed less than {self._retry_after_s:g} s ago"
            )
        try:
            return await redis_call(op, command(self._client), self._timeout_s)
        except RedisUnavailable as exc:
            log.warning(
                "feedback store: %s; request ids stay in this process for %g s (other workers and "
                "replicas cannot score them)",
                exc,
                self._retry_after_s,
            )
            self._down_until = self._clock() + self._retry_after_s
            raise


async def _set_all(client: RedisClient, keys: list[str], raw: bytes, ttl_ms: int) -> None:
    if len(keys) == 1:  # no answer id of its own: one command, no pipeline to build
        await client.set(keys[0], raw, px=ttl_ms)
        return
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.set(key, raw, px=ttl_ms)
    await pipe.execute()

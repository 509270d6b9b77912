"""Answered requests that may still be scored: what ``/feedback`` needs, found by any worker or replica.

    store = FeedbackStore(client, "adaptive-router", ttl_s=86_400, max_entries=100_000)
    await store.remember(Answered("req-9f…", "chatcmpl-…", "openai/gpt-4o-mini", 3, owner_of(key)))
    entry = await store.resolve("chatcmpl-…", owner_of(key))   # by routing.request_id or the answer's id
    entry = await store.resolve("req-9f…", owner_of(admin_key), any_owner=True)  # an admin: anyone's
    await store.claim(entry)                       # True once per request: a second score is refused

This store is the one owner of answered-request records in the service. Ids are scoped by owner
(a hash of the API key that made the request, never the key itself; "" when the router has no
keys): a client may choose its request id (``x-request-id``), so two keys may send the same one,
and each key's feedback finds its own request. An admin's lookup takes its own request first,
else the latest request of any key under that id.

Memory holds this process's own entries (bounded, each for ``ttl_s``). With Redis (``client``
set) every entry is also written there, before the answer leaves, so that a feedback sent to
another worker or replica finds it; the first score claims the request there (``SET NX``), so
a request is scored once across all of them. Redis keys, each with the same TTL::

    {prefix}:fb:v2:id:<request id or answer id>   HASH: owner -> JSON (request id, model, cell, owner, time)
    {prefix}:fb:v2:scored:<owner>:<request id>    the claim of the first score
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .._errors import RedisUnavailable
from .._topology import RedisClient
from ..core._answers import Answered, AnsweredMemory
from ._redis import redis_call

__all__ = ["Answered", "FeedbackStore", "owner_of"]

log = logging.getLogger("adaptive_router.feedback")

_VERSION = "fb:v2"  # v1 keyed ids alone: one key's request could overwrite another's
T = TypeVar("T")


def owner_of(api_key: str | None) -> str:
    """Who may score a request: a hash of the key that made it ("" without router keys)."""
    if not api_key:
        return ""
    return hashlib.sha256(b"adaptive-router/owner\0" + api_key.encode()).hexdigest()[:32]


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
        self._client, self._ttl_s = client, ttl_s
        self._prefix = f"{prefix}:{_VERSION}"
        self._timeout_s, self._retry_after_s, self._clock = timeout_s, retry_after_s, clock
        self.memory = AnsweredMemory(max_entries, ttl_s, clock)
        self._down_until = -math.inf

    @property
    def shared(self) -> bool:
        """Whether other workers and replicas see these entries (Redis is configured)."""
        return self._client is not None

    async def remember(self, answered: Answered) -> None:
        """Keep ``answered`` for ``ttl_s`` under its request id and its answer's id, for its owner."""
        if self.memory.max_ids <= 0:
            return
        answered.at = time.time()
        self.memory.keep(answered)
        if self._client is not None:
            keys, raw, ttl_ms = self._keys(answered.ids()), answered.to_json(), self._ttl_ms
            with contextlib.suppress(RedisUnavailable):  # this process can still take the feedback
                await self._redis(
                    "feedback set", lambda client: _set_all(client, keys, answered.owner, raw, ttl_ms)
                )

    async def resolve(self, some_id: str, owner: str, *, any_owner: bool = False) -> Answered | None:
        """``owner``'s entry for a request id or an answer id (with ``any_owner``, an admin's
        lookup: else the latest of any owner's); None when unknown or expired.

        Raises :class:`RedisUnavailable` when the id is not this process's own and Redis did
        not answer (the caller cannot tell "unknown" from "not reachable now")."""
        held = self.memory.find(some_id, owner)
        if held is not None:
            return held
        if self._client is None:
            return self.memory.find(some_id, owner, any_owner=True) if any_owner else None
        key = self._keys([some_id])[0]
        if not any_owner:
            raw = await self._redis("feedback get", lambda client: client.hget(key, owner))
            return Answered.from_json(raw) if raw is not None else None
        found = await self._redis("feedback get", lambda client: client.hgetall(key))
        latest = _own_or_latest(found, owner, time.time() - self._ttl_s)
        return latest or self.memory.find(some_id, owner, any_owner=True)  # a write Redis missed

    async def claim(self, answered: Answered) -> bool:
        """True for the first score of this request (across replicas with Redis); False after."""
        if answered.scored:
            return False
        if self._client is not None:
            key = f"{self._prefix}:scored:{answered.owner}:{answered.request_id}"
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


async def _set_all(client: RedisClient, keys: list[str], owner: str, raw: bytes, ttl_ms: int) -> None:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hset(key, owner, raw)
        pipe.pexpire(key, ttl_ms)  # an id's records live ttl after its last use (``at`` says when each came)
    await pipe.execute()


def _own_or_latest(found: dict[bytes | str, bytes | str], owner: str, oldest: float) -> Answered | None:
    """The owner's record among an id's, else the latest one not older than ``oldest``."""
    records = [a for a in map(Answered.from_json, found.values()) if a is not None and a.at >= oldest]
    own = [a for a in records if a.owner == owner]
    return max(own or records, key=lambda a: a.at, default=None)

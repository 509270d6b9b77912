"""Shared learning state: replicas publish what they learned to Redis and read each other's.

Every replica keeps its own evidence (``Learner.local_state``) and, on a timer, makes ONE
round trip to Redis (a Lua script): it writes its whole local state, refreshes its heartbeat,
drops replicas silent for longer than ``ttl_s``, and reads the states of the others that
changed since it last read them. Their sum becomes ``learner.set_remote(...)``. Decayed sums
are linear, so the view (local + others) counts every outcome once; a replica that lost Redis
keeps routing on its local evidence and the others' last known states, and publishes its
whole local state again when Redis answers.

    shared = SharedState(client, "adaptive-router", "replica-a", learner, interval_s=1.0, ttl_s=86_400)
    await shared.start()      # warm start: resume this id's own state, read the others
    ...                       # decisions read learner arrays only; the sync runs on its own task
    await shared.stop()       # one last push

Keys (one hash slot, so the script runs on a Redis Cluster too; ``{prefix}`` is a hash tag)::

    {prefix}:learn:v1:states    hash  replica id -> serialized local state
    {prefix}:learn:v1:etags     hash  replica id -> etag of that state (readers skip unchanged ones)
    {prefix}:learn:v1:replicas  zset  replica id -> last push, ms (Redis clock)

Latency surprises (``Learner.surprise_log``) forget evidence, which is not linear: each is
published as an event, and every replica applies the others' events to its own evidence and
to its copies of the others' states that do not yet reflect them (each state lists the events
it reflects), so that a slow-down seen by one replica is not drowned by the others' history.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions as redis_errors

from .._errors import RedisUnavailable
from .._topology import RedisClient
from ..core._learning import Learner
from ..core._sums import FIT_SUMS, DecayedSums, LearnerState
from ._redis import redis_call
from ._wire import Published, WireEvent, decode_state, encode_state

__all__ = [
    "Periodic",
    "SharedState",
    "SyncStats",
    "hash_tag",
    "run_script",
]

logger = logging.getLogger("adaptive_router.shared")

_ABSENT_SYNCS_BEFORE_DROP = 3  # a replica missing from Redis this many syncs in a row is gone


def hash_tag(prefix: str) -> str:
    """``prefix`` as a Redis Cluster hash tag: every key built on it lands in one slot."""
    if "{" in prefix and "}" in prefix.split("{", 1)[1]:
        return prefix
    return "{" + prefix + "}"


# --------------------------------------------------------------------------------------------
# The round trip

# One call per sync. Pull mode (empty state) writes nothing and also returns the caller's own
# state: how a restarted replica resumes. Heartbeats use Redis's clock, so replicas' clocks
# may disagree without expiring each other.
SYNC_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local me, blob, ttl = ARGV[1], ARGV[2], tonumber(ARGV[4])
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. string.format('%.0f', now_ms - ttl))
for _, id in ipairs(dead) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
end
local previous = redis.call('HGET', KEYS[2], me) or ''
if blob ~= '' then
  redis.call('HSET', KEYS[1], me, blob)
  redis.call('HSET', KEYS[2], me, ARGV[3])
  redis.call('ZADD', KEYS[3], now_ms, me)
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
end
local known = {}
for i = 5, #ARGV, 2 do known[ARGV[i]] = ARGV[i + 1] end
local live, changed = {}, {}
local etags = redis.call('HGETALL', KEYS[2])
for i = 1, #etags, 2 do
  local id, etag = etags[i], etags[i + 1]
  if id ~= me or blob == '' then
    live[#live + 1] = id
    if known[id] ~= etag then
      changed[#changed + 1] = id
      changed[#changed + 1] = etag
      changed[#changed + 1] = redis.call('HGET', KEYS[1], id) or ''
    end
  end
end
return {previous, live, changed}
"""
SYNC_SCRIPT_SHA = hashlib.sha1(SYNC_SCRIPT.encode()).hexdigest()


async def run_script(
    client: RedisClient, script: str, sha: str, keys: Sequence[str], args: Sequence[Any]
) -> Any:
    """EVALSHA, and EVAL when the server does not know the script (restarted, flushed): one
    round trip either way; EVAL also caches it for the next EVALSHA."""
    try:
        return await client.evalsha(sha, len(keys), *keys, *args)
    except redis_errors.NoScriptError:
        return await client.eval(script, len(keys), *keys, *args)


@dataclass
class SyncStats:
    """For ``/ready`` and ``/metrics``."""

    redis_up: bool
    syncs: int
    failures: int
    last_sync_age_s: float | None  # None: never synced
    replicas: int  # other replicas whose evidence is in the view
    ignored: int  # published states that could not be used (corrupt, other version, other half-life)


@dataclass
class _Remote:
    etag: str
    state: LearnerState | None  # aligned with our learner; None: unusable blob
    applied: dict[str, float] = field(default_factory=dict)  # events its sums (our copy) reflect
    absent: int = 0


class SharedState:
    """Publishes ``learner``'s local evidence under ``replica_id`` every ``interval_s`` and hands
    the other replicas' sum to ``learner.set_remote``. Never raises to its caller on Redis
    faults: ``redis_up`` and ``stats()`` say what happened, and the first fault is logged once.

    ``ttl_s``: a replica that has not pushed for this long is dropped with its evidence (keep it
    long, hours: a dead replica's evidence is still evidence). ``timeout_s`` bounds one round
    trip (default: ``interval_s``). ``clock`` must be the learner's clock (wall time): event
    times are compared with it.
    """

    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        replica_id: str,
        learner: Learner,
        interval_s: float,
        ttl_s: float,
        *,
        timeout_s: float | None = None,
        event_window_s: float = 120.0,
        clock: Callable[[], float] = time.time,
        on_state_change: Callable[[bool], None] | None = None,
    ) -> None:
        if interval_s <= 0 or ttl_s <= interval_s:
            raise ValueError("need 0 < interval_s < ttl_s")
        self._client = client
        tag = hash_tag(prefix)
        self.keys = (f"{tag}:learn:v1:states", f"{tag}:learn:v1:etags", f"{tag}:learn:v1:replicas")
        self.replica_id = replica_id
        self._learner = learner
        self._interval_s = interval_s
        self._ttl_ms = max(1, math.ceil(ttl_s * 1000.0))
        self._timeout_s = timeout_s if timeout_s is not None else interval_s
        self._window_s = event_window_s
        self._clock = clock
        self._on_state_change = on_state_change
        self._boot = secrets.token_hex(4)
        self._index = {model_id: i for i, model_id in enumerate(learner.ids)}
        self._remotes: dict[str, _Remote] = {}
        self._events: dict[str, WireEvent] = {}  # every event we know, own and others', in window
        self._own: dict[str, WireEvent] = {}  # our own surprises, published
        self._applied: dict[str, float] = {}  # events reflected in our local evidence
        self._event_seq = 0
        self._rev = 0  # bumped when events/applied change: part of the etag
        self._blob: tuple[str, bytes] | None = None
        self._claimed = False
        self._pushed = False
        self._base_saved_at: float | None = None
        self._version_at_start = learner.local_version
        self._lock = asyncio.Lock()
        self._timer: Periodic | None = None
        self._logged: set[str] = set()
        self.redis_up = True
        self.syncs = 0
        self.failures = 0
        self.ignored = 0
        self._last_sync: float | None = None

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self, local_saved_at: float | None = None) -> None:
        """Warm start, then the timer. ``local_saved_at``: when the learner's local state was
        loaded from disk, the wall time it was saved; Redis's copy wins only if pushed later."""
        self._base_saved_at = local_saved_at
        self._version_at_start = self._learner.local_version
        async with self._lock:
            await self._guarded(self._claim)
        self._timer = Periodic(self._interval_s, self.sync_once, "shared state")

    async def stop(self) -> bool:
        """Stop the timer and push the local state one last time. Says whether that push landed
        (if not, save the local state to disk)."""
        if self._timer is not None:
            await self._timer.stop(timeout_s=self._timeout_s + 1.0)
            self._timer = None
        return await self.sync_once()

    async def sync_once(self) -> bool:
        """One sync (claim first if Redis was unreachable at start). True when it reached Redis."""
        async with self._lock:
            if not self._claimed and not await self._guarded(self._claim):
                return False
            return await self._guarded(self._push_pull)

    def use_learner(self, learner: Learner) -> None:
        """Share ``learner`` from now on (a reload rebuilt it for other models): the other
        replicas' states are laid out in its models, and it gets their sum at once."""
        self._take_surprises()  # the old learner's last ones are still ours to publish
        self._learner = learner
        self._index = {model_id: i for i, model_id in enumerate(learner.ids)}
        for remote in self._remotes.values():
            if remote.state is not None:
                remote.state = learner.align(remote.state)
        self._blob = None
        self._rev += 1  # the new learner's versions start again: an etag never published before
        self._publish_view()

    def stats(self) -> SyncStats:
        age = None if self._last_sync is None else max(0.0, self._clock() - self._last_sync)
        live = sum(1 for r in self._remotes.values() if r.state is not None)
        return SyncStats(self.redis_up, self.syncs, self.failures, age, live, self.ignored)

    # --- the round trips ---------------------------------------------------------------

    async def _guarded(self, step: Callable[[], Awaitable[None]]) -> bool:
        try:
            await redis_call("shared sync", step(), self._timeout_s)
        except RedisUnavailable as exc:
            self.failures += 1
            self._set_up(False, exc)
            return False
        self.syncs += 1
        self._last_sync = self._clock()
        self._set_up(True, None)
        return True

    async def _claim(self) -> None:
        """Pull everything, our own previous state included, before writing anything."""
        _, live, changed = await self._call(b"", "")
        own = self._ingest(live, changed)
        if own is not None:
            self._resume(own)
        self._claimed = True
        self._publish_view()

    async def _push_pull(self) -> None:
        etag, blob = self._local_blob()
        previous, live, changed = await self._call(blob, etag)
        # After our first push, only another process can have written another boot's etag.
        if self._pushed and previous and previous.split(":", 1)[0] != self._boot:
            self._log_once(
                "twin",
                logging.ERROR,
                "shared state: another process publishes as replica %r: give each replica its own id",
                self.replica_id,
            )
        self._pushed = True
        self._ingest(live, changed)
        self._publish_view()

    async def _call(self, blob: bytes, etag: str) -> tuple[str, list[str], list[Any]]:
        known: list[str] = []
        for replica, remote in self._remotes.items():
            known += [replica, remote.etag]
        args = [self.replica_id, blob, etag, self._ttl_ms, *known]
        reply = await run_script(self._client, SYNC_SCRIPT, SYNC_SCRIPT_SHA, self.keys, args)
        previous, live, changed = reply
        return _text(previous), [_text(item) for item in live], list(changed)

    # --- what we publish ---------------------------------------------------------------

    def _local_blob(self) -> tuple[str, bytes]:
        self._take_surprises()
        etag = f"{self._boot}:{self._learner.local_version}:{self._rev}"
        if self._blob is None or self._blob[0] != etag:
            published = Published(
                self.replica_id,
                self._boot,
                self._clock(),
                self._learner.local_state(),
                list(self._own.values()),
                dict(self._applied),
            )
            self._blob = (etag, encode_state(published))
        return self._blob

    def _take_surprises(self) -> None:
        log = self._learner.surprise_log
        while log:
            surprise = log.popleft()
            self._event_seq += 1
            event = WireEvent(
                f"{self.replica_id}:{self._boot}:{self._event_seq}",
                surprise.name,
                self._learner.ids[surprise.model],
                surprise.t,
                surprise.factor,
            )
            self._own[event.eid] = self._events[event.eid] = event
            self._applied[event.eid] = event.t
            self._rev += 1

    # --- what we read ------------------------------------------------------------------

    def _ingest(self, live: list[str], changed: list[Any]) -> Published | None:
        """Update our copies of the others' states; return our own if Redis sent it (pull)."""
        own = None
        for i in range(0, len(changed) - 2, 3):
            replica, etag, blob = _text(changed[i]), _text(changed[i + 1]), changed[i + 2]
            published = self._decode(replica, blob)
            if replica == self.replica_id:
                own = published
                continue
            self._remotes[replica] = self._remote(replica, etag, published)
        present = set(live)
        for replica in list(self._remotes):
            remote = self._remotes[replica]
            remote.absent = 0 if replica in present else remote.absent + 1
            # A few syncs of grace: Redis restarted empty and the others have not pushed yet.
            if remote.absent >= _ABSENT_SYNCS_BEFORE_DROP:
                del self._remotes[replica]
        return own

    def _decode(self, replica: str, blob: Any) -> Published | None:
        try:
            if not isinstance(blob, bytes):
                raise ValueError("shared state: expected bytes (is the client decoding responses?)")
            published = decode_state(blob)
            published.state = self._learner.align(published.state)
        except ValueError as exc:
            self.ignored += 1
            self._log_once(
                f"bad:{replica}", logging.WARNING, "shared state: ignoring replica %r: %s", replica, exc
            )
            return None
        self._logged.discard(f"bad:{replica}")
        if replica == self.replica_id:
            return published  # our own events: _resume decides what they mean
        horizon = self._clock() - self._window_s
        for event in published.events:
            # Older events are ignored for good, here as in _applied: never applied twice.
            if event.t >= horizon:
                self._events.setdefault(event.eid, event)
        return published

    def _remote(self, replica: str, etag: str, published: Published | None) -> _Remote:
        if published is None:
            return _Remote(etag, None)
        applied = dict(published.applied) | {e.eid: e.t for e in published.events}
        return _Remote(etag, published.state, applied)

    def _resume(self, own: Published) -> None:
        """A restart under the same id: take back what we published before (see ``start``).
        Our own past surprises count as applied whatever happens: never forget them twice."""
        for event in own.events:
            self._own[event.eid] = self._events[event.eid] = event
            self._applied[event.eid] = event.t
        self._rev += 1
        if self._base_saved_at is not None and own.pushed_at <= self._base_saved_at:
            return  # the state loaded from disk is newer
        if self._learner.local_version == self._version_at_start:
            self._learner.set_local(own.state)
        elif self._base_saved_at is None:
            self._learner.merge(own.state)  # disjoint: this process's evidence and the last one's
        else:
            logger.warning(
                "shared state: replica %r has a newer state in Redis than on disk but has already "
                "learned since it started; keeping the local state",
                self.replica_id,
            )
            return
        self._applied.update(own.applied)
        logger.info("shared state: replica %r resumed its published state", self.replica_id)

    def _publish_view(self) -> None:
        """Apply the others' surprises to our evidence, bring every copy up to date with the
        events we know, and hand the sum of the others to the learner."""
        self._take_surprises()  # ours from during the round trip too, or the rebuild would undo them
        self._apply_remote_events()
        self._prune_events()
        total: LearnerState | None = None
        for remote in self._remotes.values():
            if remote.state is None:
                continue
            self._bake(remote)
            if total is None:
                total = LearnerState(remote.state.ids, remote.state.tasks, _copy_sums(remote.state))
            else:
                for name, sums in total.sums.items():
                    sums.merge(remote.state.sums[name])
        self._learner.set_remote(total)

    def _apply_remote_events(self) -> None:
        for eid, event in self._events.items():
            if eid in self._applied:
                continue
            model = self._index.get(event.model_id)
            if model is not None:
                self._learner.forget(event.name, model, event.factor)
            self._applied[eid] = event.t
            self._rev += 1

    def _bake(self, remote: _Remote) -> None:
        """Apply to our copy of a replica's state the events its sums do not reflect yet."""
        assert remote.state is not None
        for eid in self._applied.keys() - remote.applied.keys():
            event = self._events.get(eid)
            model = None if event is None else self._index.get(event.model_id)
            if event is not None and model is not None:
                for name in FIT_SUMS:  # what a "latency" surprise forgets
                    remote.state.sums[name].scale(model, event.factor)
            remote.applied[eid] = self._applied[eid]
        horizon = self._clock() - self._window_s
        for eid in [eid for eid, t in remote.applied.items() if t < horizon]:
            del remote.applied[eid]

    def _prune_events(self) -> None:
        horizon = self._clock() - self._window_s
        for table in (self._events, self._own):
            for eid in [eid for eid, event in table.items() if event.t < horizon]:
                del table[eid]
        old = [eid for eid, t in self._applied.items() if t < horizon]
        for eid in old:
            del self._applied[eid]
        if old:
            self._rev += 1

    # --- state and logs ----------------------------------------------------------------

    def _set_up(self, up: bool, exc: BaseException | None) -> None:
        if up == self.redis_up:
            return
        self.redis_up = up
        if up:
            logger.warning("shared state: Redis answers again; local state republished")
        else:
            logger.warning(
                "shared state: Redis unavailable (%r); routing on the local view and the last "
                "known state of the other replicas",
                exc,
            )
        if self._on_state_change is not None:
            try:
                self._on_state_change(up)
            except Exception:  # never-raise boundary: a broken metrics hook must not stop syncing
                logger.exception("shared state: on_state_change(%r) raised", up)

    def _log_once(self, key: str, level: int, message: str, *args: object) -> None:
        if key not in self._logged:
            self._logged.add(key)
            logger.log(level, message, *args)


def _copy_sums(state: LearnerState) -> dict[str, DecayedSums]:
    return {name: sums.copy() for name, sums in state.sums.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Periodic:
    """Run ``step`` now and then every ``interval_s`` until :meth:`stop`.

    A bug in one step is logged and the next one still runs (a never-raise boundary: a
    background task that died would stop sharing silently). Stopping sets an event the loop
    checks between steps instead of relying on cancellation alone: redis-py sends through
    ``asyncio.wait_for``, which on Python 3.11 can swallow a cancellation that lands as a send
    completes, and a loop that only ends on ``CancelledError`` would then run on forever.
    """

    def __init__(self, interval_s: float, step: Callable[[], Awaitable[object]], name: str) -> None:
        self._interval_s = interval_s
        self._step = step
        self._name = name
        self._stopping = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=name)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._step()
            except Exception:
                logger.exception("%s: periodic step failed", self._name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval_s)

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Let the current step finish (at most ``timeout_s``), then cancel until it is done."""
        self._stopping.set()
        done, _ = await asyncio.wait({self.task}, timeout=timeout_s)
        while not done:
            self.task.cancel()
            done, _ = await asyncio.wait({self.task}, timeout=0.1)

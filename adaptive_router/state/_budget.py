"""Daily spend caps, global and per router API key, shared by every replica through Redis.

    budget = Budget(client, "adaptive-router", global_daily_usd=50.0, per_key_daily_usd=5.0,
                    near_fraction=0.8, price_ceiling_per_mtok=1.0, mode="downgrade")
    verdict = budget.check(api_key)       # cheap: no I/O, from the last known totals
    verdict.raise_if_blocked()            # BudgetExceeded (HTTP 429) in "reject" mode at the cap
    if verdict.price_ceiling is not None:
        mask &= price_mask(catalogue, verdict.price_ceiling)
    hold = await budget.reserve(api_key, worst_case_usd)   # before the call; BudgetExceeded at a cap
    ...
    await budget.settle(hold, usd)        # after it (0.0 on failure): one round trip, never raises

Reservations: before a call, its worst-case cost is held against every cap it counts toward,
checked and held in one Redis script (spend + holds of every replica), so concurrent requests
cannot all pass a check that each alone would pass; a request is refused once spend + holds reach
the cap, so the day's spend overshoots a cap by at most the last admitted request's worst case.
Settling writes the real cost and drops the hold in one step. Holds expire on their own (a
process that died mid-request), after ``hold_ttl_s``. While Redis is away, holds and spend are
checked against the last known totals in this process.

Each process counts its own spend per UTC day and scope; Redis holds, per scope and day, a hash
with one field per process (replica id + a nonce drawn at start) set to that process's
cumulative spend, in integer nano-USD. A charge writes the process's new cumulative values and
reads the totals (the sum of the fields) in one Lua call. Writing absolute values, not
increments, is what makes the count exact across faults: a reply lost after Redis applied the
write, a retry, or a Redis that restarted empty are all repaired by writing the same cumulative
value again, and nothing is counted twice. While Redis is away, spend accumulates in memory and
``check`` adds it to the last known totals. The others' share is never lowered within a day:
after a Redis node restarts empty, a replica keeps reporting what it knew was spent until the
others have written theirs again.

Keys (one hash slot, for Redis Cluster): ``{prefix}:budget:v1:<YYYY-MM-DD>:global`` and
``{prefix}:budget:v1:<YYYY-MM-DD>:key:<sha256(api key), 16 hex>``, each expiring two days after
its last write.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from .._errors import BudgetExceeded, ConfigError, RedisUnavailable
from .._topology import RedisClient
from ._budget_lua import RESERVE_SCRIPT, RESERVE_SHA, SETTLE_SCRIPT, SETTLE_SHA
from ._redis import redis_call
from ._shared import hash_tag, run_script

if TYPE_CHECKING:
    from ..core._catalogue import Catalogue

__all__ = ["Budget", "BudgetSnapshot", "Hold", "Spend", "Verdict", "key_hash", "price_mask"]

logger = logging.getLogger("adaptive_router.budget")

NANO_PER_USD = 1_000_000_000
KEY_TTL_S = 2 * 86_400
GLOBAL = "global"

Scope = tuple[str, str]  # (UTC day, "global" or "key:<hash>")


def key_hash(api_key: str) -> str:
    """The API key as it appears in Redis and metrics: never the key itself."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def price_mask(catalogue: Catalogue, ceiling_per_mtok: float | None) -> npt.NDArray[np.bool_]:
    """Models whose completion price is at or under ``ceiling_per_mtok`` USD per million tokens."""
    prices = np.asarray(catalogue.price_completion, dtype=np.float64)
    if ceiling_per_mtok is None:
        return np.ones(prices.shape, dtype=np.bool_)
    # Prices are stored per token: 0.6e-6 * 1e6 is 0.6000000000000001; a model priced exactly
    # at the ceiling must pass.
    mask: npt.NDArray[np.bool_] = prices * 1e6 <= ceiling_per_mtok * (1.0 + 1e-9)
    return mask


@dataclass(frozen=True)
class Verdict:
    """What the router may do for one request. ``price_ceiling`` (USD per million completion
    tokens) is set near or at a cap: route only to models at or under it. ``spent``/``cap``/
    ``scope`` describe the cap closest to being reached."""

    allowed: bool
    near: bool
    price_ceiling: float | None
    spent: float
    cap: float | None
    scope: str | None = None  # "global" or "key"

    @property
    def message(self) -> str:
        if self.cap is None:
            return "no daily budget is set"
        whose = "the router's daily budget" if self.scope == GLOBAL else "this API key's daily budget"
        state = "reached" if self.spent >= self.cap else "nearly reached"
        return f"{whose} of ${self.cap:.2f} is {state} (${self.spent:.2f} spent); it resets at 00:00 UTC"

    def raise_if_blocked(self) -> None:
        if not self.allowed:
            raise BudgetExceeded(self.scope or GLOBAL, self.message)


@dataclass
class Hold:
    """One request's reserved worst case: settle it once (:meth:`Budget.settle`)."""

    member: str
    scopes: tuple[Scope, ...]
    nano: int
    settled: bool = False


@dataclass(frozen=True)
class Spend:
    """Totals for one UTC day after a charge, all replicas included (as far as known)."""

    day: str
    global_usd: float
    key_usd: float | None


@dataclass(frozen=True)
class BudgetSnapshot:
    """For ``/metrics``: today's spend, by API key hash, and what has not reached Redis yet."""

    day: str
    global_usd: float
    global_cap: float | None
    keys_usd: dict[str, float]
    per_key_cap: float | None
    unsynced_usd: float
    redis_up: bool
    held_usd: float = 0.0  # worst cases held by requests in flight, all replicas as far as known


class Budget:
    """Daily caps shared through Redis (``client``), or counted in this process only (``None``).

    ``mode``: at the cap, "reject" refuses requests (``Verdict.allowed`` is False) and
    "downgrade" keeps serving with the price ceiling. Near the cap (``spent >= near_fraction *
    cap``) both set the ceiling. ``api_keys`` are read on ``refresh`` even before this process
    charges them, so that the others' spend on them is known. Never raises on Redis faults.
    """

    def __init__(
        self,
        client: RedisClient | None,
        prefix: str,
        global_daily_usd: float | None,
        per_key_daily_usd: float | None,
        near_fraction: float = 0.8,
        price_ceiling_per_mtok: float | None = None,
        mode: Literal["downgrade", "reject"] = "reject",
        clock: Callable[[], float] = time.time,
        *,
        replica_id: str | None = None,
        api_keys: Sequence[str] = (),
        timeout_s: float = 0.5,
        retry_after_s: float = 1.0,
        hold_ttl_s: float = 900.0,
    ) -> None:
        _check_settings(global_daily_usd, per_key_daily_usd, near_fraction, price_ceiling_per_mtok, mode)
        self._client = client
        self._tag = hash_tag(prefix)
        self.global_cap = global_daily_usd
        self.per_key_cap = per_key_daily_usd
        self.near_fraction = near_fraction
        self.price_ceiling = price_ceiling_per_mtok
        self.mode = mode
        self._clock = clock
        replica = replica_id or f"{socket.gethostname()}-{os.getpid()}"
        self.field = f"{replica}:{secrets.token_hex(4)}"  # one field per process lifetime
        self._tracked = {key_hash(key) for key in api_keys}
        self._timeout_s = timeout_s
        self._retry_after_s = retry_after_s
        self._mine: dict[Scope, int] = {}  # this process's cumulative spend
        self._acked: dict[Scope, int] = {}  # ... as last written to Redis
        # The other processes' spend, as last read and never lowered: their fields only grow
        # within a day, so a smaller sum means Redis lost data (a node back empty, a flush),
        # not that less was spent.
        self._others: dict[Scope, int] = {}
        self._heal = False  # rewrite every scope of ours: Redis lost some of them
        self._held: dict[Scope, int] = {}  # this process's holds (requests in flight)
        self._others_held: dict[Scope, int] = {}  # the other processes' holds, as last read
        self._releases: dict[str, tuple[Scope, ...]] = {}  # settled holds Redis still has
        self._hold_ttl_ms = int(hold_ttl_s * 1000)
        self._seq = 0
        self._reserve_lock = asyncio.Lock()
        self._queued: list[tuple[Hold, asyncio.Future[bool | None]]] = []  # holds for the next trip
        self._batch: list[tuple[Hold, asyncio.Future[bool | None]]] = []  # ... and in this one
        self._lock = asyncio.Lock()
        self.redis_up = client is not None
        self._down_since = -math.inf
        self.flushes = 0
        self.failures = 0

    # --- the decision's side: no I/O ----------------------------------------------------

    def check(self, api_key: str | None) -> Verdict:
        day = self.day()
        spent_global = self._spent((day, GLOBAL))
        caps: list[tuple[str, float, float]] = []
        if self.global_cap is not None:
            caps.append((GLOBAL, spent_global, self.global_cap))
        if self.per_key_cap is not None and api_key is not None:
            caps.append(("key", self._spent((day, _key_scope(api_key))), self.per_key_cap))
        if not caps:
            return Verdict(True, False, None, spent_global, None)
        scope, spent, cap = max(caps, key=lambda c: c[1] / c[2] if c[2] > 0 else math.inf)
        at_cap = spent >= cap
        near = at_cap or spent >= self.near_fraction * cap
        ceiling = self.price_ceiling if near else None
        if at_cap and self.mode == "reject":
            return Verdict(False, True, ceiling, spent, cap, scope)
        return Verdict(True, near, ceiling, spent, cap, scope)

    def day(self) -> str:
        return time.strftime("%Y-%m-%d", time.gmtime(self._clock()))

    def _spent(self, scope: Scope) -> float:
        """Spent and held (requests in flight), all processes as far as known, in USD."""
        nano = self._others.get(scope, 0) + self._mine.get(scope, 0)
        nano += self._others_held.get(scope, 0) + self._held.get(scope, 0)
        return nano / NANO_PER_USD

    def _settled(self, scope: Scope) -> float:
        return (self._others.get(scope, 0) + self._mine.get(scope, 0)) / NANO_PER_USD

    # --- counting ------------------------------------------------------------------------

    async def charge(self, api_key: str | None, usd: float) -> Spend:
        """Count ``usd`` against today's global budget and ``api_key``'s; one round trip to
        Redis (none while it is away: the spend waits in memory). Returns the new totals."""
        if not math.isfinite(usd) or usd < 0:
            raise ValueError(f"a charge must be a finite amount >= 0, got {usd!r}")
        day = self.day()
        scopes = [(day, GLOBAL)]
        if api_key is not None:
            scopes.append((day, _key_scope(api_key)))
            self._tracked.add(key_hash(api_key))
        nano = round(usd * NANO_PER_USD)
        for scope in scopes:
            self._mine[scope] = self._mine.get(scope, 0) + nano
        self._forget_old_days()
        await self._sync(scopes)
        key_usd = self._settled(scopes[1]) if api_key is not None else None
        return Spend(day, self._settled(scopes[0]), key_usd)

    # --- reservations ----------------------------------------------------------------------

    async def reserve(self, api_key: str | None, usd: float) -> Hold:
        """Hold ``usd`` (a request's worst case) against today's caps before the call; raises
        :class:`BudgetExceeded` in "reject" mode once spend + holds reach a cap. One round trip
        (none while Redis is away: then checked against what this process knows)."""
        if not math.isfinite(usd) or usd < 0:
            raise ValueError(f"a hold must be a finite amount >= 0, got {usd!r}")
        scopes = self._scopes(api_key)
        nano = round(usd * NANO_PER_USD)
        self._seq += 1
        hold = Hold(f"{self.field}:{self._seq}:{nano}", scopes, nano)
        if self._client is not None and not self._resting():
            if await self._reserve_remote(hold, api_key):
                return self._add_hold(hold)
            raise BudgetExceeded(*self._refusal(api_key))
        if not self.check(api_key).allowed:
            raise BudgetExceeded(*self._refusal(api_key))
        return self._add_hold(hold)

    async def settle(self, hold: Hold, usd: float) -> None:
        """Count the real cost of a held request (0.0 when it failed or was cancelled) and drop
        its hold, in one step; a second settle of the same hold does nothing. Never raises."""
        if hold.settled:
            return
        hold.settled = True
        if self._client is not None:  # dropped with the spend written, even if the hold's reply was lost
            self._releases[hold.member] = hold.scopes
        nano = round(usd * NANO_PER_USD) if math.isfinite(usd) and usd > 0 else 0
        for scope in hold.scopes:
            self._held[scope] = max(0, self._held.get(scope, 0) - hold.nano)
            self._mine[scope] = self._mine.get(scope, 0) + nano
            if scope[1] != GLOBAL:
                self._tracked.add(scope[1].removeprefix("key:"))
        self._forget_old_days()
        await self._sync(hold.scopes)

    def _scopes(self, api_key: str | None) -> tuple[Scope, ...]:
        day = self.day()
        if api_key is None:
            return ((day, GLOBAL),)
        return (day, GLOBAL), (day, _key_scope(api_key))

    def _cap(self, scope: Scope) -> float | None:
        return self.global_cap if scope[1] == GLOBAL else self.per_key_cap

    def _add_hold(self, hold: Hold) -> Hold:
        for scope in hold.scopes:
            self._held[scope] = self._held.get(scope, 0) + hold.nano
        return hold

    def _refusal(self, api_key: str | None) -> tuple[str, str]:
        verdict = self.check(api_key)
        if verdict.allowed:  # Redis knew of spend or holds this process has not read yet
            cap = verdict.cap if verdict.cap is not None else 0.0
            verdict = Verdict(False, True, verdict.price_ceiling, max(verdict.spent, cap), cap, verdict.scope)
        return verdict.scope or GLOBAL, verdict.message

    def _resting(self) -> bool:
        """Redis failed a moment ago: stay on local counts for ``retry_after_s``."""
        return not self.redis_up and time.monotonic() - self._down_since < self._retry_after_s

    async def _reserve_remote(self, hold: Hold, api_key: str | None) -> bool:
        """Check and hold in Redis; False when refused. On a Redis fault: the local check.

        Holds asked for while one round trip is out go together in the next: a burst of
        requests costs a few round trips on one connection, not one connection each."""
        waiting: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        self._queued.append((hold, waiting))
        async with self._reserve_lock:
            if not waiting.done():
                try:
                    await self._reserve_batch()
                except BaseException:  # cancelled: the others' holds wait for the next round trip
                    self._queued[:0] = [(h, w) for h, w in self._batch if not w.done() and w is not waiting]
                    raise
        verdict = waiting.result()
        return self.check(api_key).allowed if verdict is None else verdict

    async def _reserve_batch(self) -> None:
        assert self._client is not None
        self._batch, self._queued = self._queued, []
        scopes = list(dict.fromkeys(s for hold, _ in self._batch for s in hold.scopes))
        index = {scope: i + 1 for i, scope in enumerate(scopes)}
        enforce = "1" if self.mode == "reject" else "0"
        args: list[str | int] = [self.field, KEY_TTL_S, self._hold_ttl_ms, enforce, len(scopes)]
        args += ["" if (cap := self._cap(s)) is None else str(round(cap * NANO_PER_USD)) for s in scopes]
        for hold, _ in self._batch:
            args += [hold.member, len(hold.scopes), *(index[s] for s in hold.scopes)]
        try:
            script = run_script(self._client, RESERVE_SCRIPT, RESERVE_SHA, self._keys(scopes), args)
            verdicts, rows = await redis_call("budget reserve", script, self._timeout_s)
        except RedisUnavailable as exc:
            self._down(exc)
            for _, waiting in self._batch:
                waiting.set_result(None)
            return
        for scope, row in zip(scopes, rows, strict=True):
            self._read_totals(scope, row, None)
        self._up()
        for (_, waiting), refused in zip(self._batch, verdicts, strict=True):
            waiting.set_result(int(refused) == 0)

    def _keys(self, scopes: Iterable[Scope]) -> list[str]:
        keys = []
        for day, name in scopes:
            base = f"{self._tag}:budget:v1:{day}:{name}"
            keys += [base, base + ":holds"]
        return keys

    def _read_totals(self, scope: Scope, row: Sequence[bytes | str], written: int | None) -> None:
        """One scope's totals from a script's answer: the others' spend (never lowered within
        a day) and holds (as they are now)."""
        before, total, held, mine_held = (int(v) for v in row)
        stored = max(before, written or 0)  # what the script left in our field
        self._others[scope] = max(self._others.get(scope, 0), total - stored)
        self._others_held[scope] = max(0, held - mine_held)

    async def refresh(self) -> bool:
        """Write what Redis has not seen yet and read today's totals (global and every API key
        known here). Call it on a timer so that an idle replica sees the others' spend."""
        day = self.day()
        reads = [(day, GLOBAL), *((day, f"key:{h}") for h in sorted(self._tracked))]
        return await self._sync(reads)

    def snapshot(self) -> BudgetSnapshot:
        day = self.day()
        keys = {h: self._settled((day, f"key:{h}")) for h in sorted(self._tracked)}
        unsynced = sum(v - self._acked.get(s, 0) for s, v in self._mine.items() if s[1] == GLOBAL)
        return BudgetSnapshot(
            day,
            self._settled((day, GLOBAL)),
            self.global_cap,
            keys,
            self.per_key_cap,
            unsynced / NANO_PER_USD,
            self.redis_up,
            (self._held.get((day, GLOBAL), 0) + self._others_held.get((day, GLOBAL), 0)) / NANO_PER_USD,
        )

    # --- Redis ----------------------------------------------------------------------------

    async def _sync(self, reads: Iterable[Scope]) -> bool:
        if self._client is None:
            return False
        async with self._lock:  # concurrent charges queue here; the first flushes for them all
            if self._resting():
                return False
            for _ in range(2):  # a second pass only when Redis turned out to have lost our fields
                if not await self._flush(reads):
                    return False
                if not self._heal:
                    break
            return True

    async def _flush(self, reads: Iterable[Scope]) -> bool:
        assert self._client is not None
        writes = {s: v for s, v in self._mine.items() if self._heal or v != self._acked.get(s, 0)}
        releases = dict(self._releases)
        wanted = [*reads, *(s for scopes in releases.values() for s in scopes)]
        scopes = list(writes) + [s for s in dict.fromkeys(wanted) if s not in writes]
        args = [self.field, KEY_TTL_S, len(scopes), *(str(writes[s]) if s in writes else "" for s in scopes)]
        args += list(releases)
        try:
            script = run_script(self._client, SETTLE_SCRIPT, SETTLE_SHA, self._keys(scopes), args)
            reply = await redis_call("budget charge", script, self._timeout_s)
        except RedisUnavailable as exc:
            self._down(exc)
            return False
        self._heal = False
        for member in releases:
            self._releases.pop(member, None)
        for scope, row in zip(scopes, reply, strict=True):
            if int(row[0]) < self._acked.get(scope, 0):
                self._heal = True  # Redis restarted or was flushed: write everything again
            self._read_totals(scope, row, writes.get(scope))
            self._acked[scope] = writes.get(scope, int(row[0]))
        self._up()
        return True

    def _down(self, exc: BaseException) -> None:
        self.failures += 1
        self._down_since = time.monotonic()
        if self.redis_up:
            self.redis_up = False
            logger.warning("budget: Redis unavailable (%r); counting spend in memory", exc)

    def _up(self) -> None:
        self.flushes += 1
        if not self.redis_up:
            self.redis_up = True
            self._heal = True  # it may have restarted empty: our fields are written again
            logger.warning("budget: Redis answers again; spend counted meanwhile written")

    def _forget_old_days(self) -> None:
        """Keep yesterday (late charges, a refresh across midnight) and today; older days go
        once Redis has all of our spend for them (at once without Redis)."""
        keep = {self.day(), time.strftime("%Y-%m-%d", time.gmtime(self._clock() - 86_400))}
        done = [s for s in self._mine if self._client is None or self._mine[s] == self._acked.get(s)]
        for scope in [s for s in done if s[0] not in keep]:
            for table in (self._mine, self._acked, self._others, self._held, self._others_held):
                table.pop(scope, None)


def _key_scope(api_key: str) -> str:
    return f"key:{key_hash(api_key)}"


def _check_settings(
    global_cap: float | None,
    per_key_cap: float | None,
    near_fraction: float,
    ceiling: float | None,
    mode: str,
) -> None:
    for name, cap in (("budget.global_daily_usd", global_cap), ("budget.per_key_daily_usd", per_key_cap)):
        if cap is not None and not (math.isfinite(cap) and cap >= 0):
            raise ConfigError(name, "must be a finite amount >= 0")
    if not 0.0 < near_fraction <= 1.0:
        raise ConfigError("budget.near_fraction", "must be in (0, 1]")
    if ceiling is not None and not (math.isfinite(ceiling) and ceiling >= 0):
        raise ConfigError("budget.price_ceiling_per_mtok", "must be a finite price >= 0")
    if mode not in ("downgrade", "reject"):
        raise ConfigError("budget.mode", "must be 'downgrade' or 'reject'")
    if mode == "downgrade" and ceiling is None:
        raise ConfigError("budget.price_ceiling_per_mtok", "is required when budget.mode is 'downgrade'")

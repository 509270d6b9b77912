from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import time
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive_router.core import DecayedSums, Learner
from adaptive_router.state import (
    WIRE_VERSION,
    Published,
    SharedState,
    WireEvent,
    decode_state,
    encode_state,
    hash_tag,
    redis_client,
)
from tests.redis_server import RedisServer, redis_server_fixture  # noqa: F401

IDS = ("a/x", "b/y", "c/z")
TASKS = ("code", "general")
PREFIX = "test-router"
LOGGER = "adaptive_router.shared"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_learner(ids: tuple[str, ...] = IDS, **kwargs: float) -> Learner:
    options: dict[str, float] = {"latency_half_life_s": 60.0, "quality_half_life_s": 600.0, "t0": 0.0}
    options.update(kwargs)
    m = len(ids)
    return Learner(
        ids, TASKS, np.linspace(0.5, 2.0, m), np.linspace(0.01, 0.04, m), np.linspace(0.5, 0.7, m), **options
    )


def exact_learner(**kwargs: float) -> Learner:
    """A learner whose evidence is plain sums: no surprise or staleness forgetting (which
    depends on the order observations arrived in)."""
    return make_learner(surprise_forget=1.0, stale_after=0.0, **kwargs)


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())  # type: ignore[arg-type]


# Where this process last measured each model is its own exploration clock, not shared evidence.
LOCAL_FIELDS = frozenset({"seen_at", "observations"})


def assert_same_estimates(left: Learner, right: Learner, at: float) -> None:
    # Full rebuilds: between them a provider's calibration is as last pooled, which depends
    # on when each learner last rebuilt.
    theirs = right.refresh(at)
    ours = left.refresh(at)
    for name, value in vars(theirs).items():
        if name in LOCAL_FIELDS:
            continue
        np.testing.assert_allclose(getattr(ours, name), value, rtol=1e-9, atol=1e-12, err_msg=name)


class Replicas:
    """SharedState instances on one Redis, each with its own client, all closed at the end."""

    def __init__(self, url: str, clock: Callable[[], float], **options: float) -> None:
        self.url = url
        self.clock = clock
        self.options = {"interval_s": 3600.0, "ttl_s": 7200.0, "timeout_s": 1.0, **options}
        self.clients: list[redis.asyncio.Redis] = []

    def make(self, replica: str, learner: Learner) -> SharedState:
        client = redis_client(self.url, 200.0, 500.0)
        self.clients.append(client)
        return SharedState(client, PREFIX, replica, learner, clock=self.clock, **self.options)  # type: ignore[arg-type]

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()

    async def __aenter__(self) -> Replicas:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


Event = tuple[float, int, int, bool, float, float, float | None]


def traffic(seed: int, n: int, start: float, end: float) -> list[Event]:
    rng = random.Random(seed)
    events = []
    for _ in range(n):
        t = rng.uniform(start, end)
        score = rng.random() if rng.random() < 0.3 else None
        events.append(
            (t, rng.randrange(3), rng.randrange(2), rng.random() < 0.9, rng.uniform(0.1, 5), 0.02, score)
        )
    return sorted(events)


def feed(learners: list[Learner], events: list[Event]) -> None:
    for t, model, task, success, ttft, tpot, score in events:
        for learner in learners:
            learner.observe(model, task, t, success, ttft, tpot)
            if score is not None:
                learner.feedback(model, task, t, score)


# --- the learner's local / remote split ------------------------------------------------------


def test_learner_set_remote_view_is_local_plus_remote_and_replaces() -> None:
    whole, mine, theirs = (exact_learner() for _ in range(3))
    left, right = traffic(1, 40, 0, 100), traffic(2, 40, 0, 100)
    feed([whole, mine], left)
    feed([whole, theirs], right)
    mine.set_remote(theirs.state())
    mine.set_remote(theirs.state())  # replaces: counted once
    assert_same_estimates(mine, whole, 150.0)
    local = mine.local_state().sums["lat_n"]
    assert local.w.sum() * local.factor(100.0) < whole.sums("lat_n").w.sum() * whole.sums("lat_n").factor(
        100.0
    )
    mine.set_remote(None)
    alone = exact_learner()
    feed([alone], left)
    assert_same_estimates(mine, alone, 150.0)


def test_learner_observations_after_set_remote_reach_view_and_local() -> None:
    mine, theirs, whole = (exact_learner() for _ in range(3))
    feed([theirs, whole], traffic(3, 30, 0, 50))
    mine.set_remote(theirs.state())
    later = traffic(4, 30, 50, 100)
    feed([mine, whole], later)
    assert_same_estimates(mine, whole, 120.0)
    only_mine = exact_learner()
    feed([only_mine], later)
    mine.set_remote(None)
    assert_same_estimates(mine, only_mine, 120.0)


def test_learner_save_writes_only_local_evidence(tmp_path: pytest.TempPathFactory) -> None:
    mine, theirs = make_learner(), make_learner()
    feed([theirs], traffic(5, 30, 0, 50))
    mine.observe(1, 0, 10.0, True, ttft_s=0.7, tpot_s=0.01)
    mine.set_remote(theirs.state())
    path = tmp_path / "state.npz"  # type: ignore[operator]
    mine.save(path)
    restored = make_learner()
    restored.merge(Learner.read_state(path))
    mine.set_remote(None)
    assert_same_estimates(restored, mine, 60.0)


def test_learner_surprise_forgets_remote_evidence_too_and_is_logged() -> None:
    mine, theirs = make_learner(), make_learner()
    for i in range(200):
        theirs.observe(0, 1, 0.1 * i, True, ttft_s=0.5)
    mine.set_remote(theirs.state())
    assert mine.estimates(20.0).ttft[0] == pytest.approx(0.5, rel=0.05)
    for i in range(6):
        mine.observe(0, 1, 20.0 + 0.1 * i, True, ttft_s=2.5)
    assert mine.surprises >= 1
    assert [s.name for s in mine.surprise_log] == ["latency"] * mine.surprises
    # At least surprise_forget is forgotten; far more for a fivefold jump over a steady history.
    assert all(0.0 < s.factor <= 0.5 for s in mine.surprise_log)
    # The other replica's history is forgotten as if it were this one's: same as one learner.
    single = make_learner()
    for i in range(200):
        single.observe(0, 1, 0.1 * i, True, ttft_s=0.5)
    for i in range(6):
        single.observe(0, 1, 20.0 + 0.1 * i, True, ttft_s=2.5)
    # (rel 1e-5: a column is as of its last recompute, which the sweep times per learner; decay
    # moves a line only through the prior's share, by parts per million over a second here.)
    assert mine.estimates(21.0).ttft[0] == pytest.approx(single.estimates(21.0).ttft[0], rel=1e-5)
    assert mine.estimates(21.0).ttft[0] > 0.7


def test_learner_forget_rejects_non_latency_sums() -> None:
    with pytest.raises(ValueError, match="forget"):
        make_learner().forget("quality", 0, 0.5)


def test_learner_set_local_replaces_local_evidence() -> None:
    mine, other = make_learner(), make_learner()
    mine.observe(0, 0, 1.0, True, ttft_s=9.0)
    other.observe(1, 0, 1.0, True, ttft_s=0.2)
    mine.set_local(other.local_state())
    assert_same_estimates(mine, other, 2.0)


def test_learner_align_rejects_another_half_life() -> None:
    with pytest.raises(ValueError, match="half-life"):
        make_learner().align(make_learner(latency_half_life_s=5.0).state())


def test_decayed_sums_merge_far_newer_reference_time_does_not_overflow() -> None:
    old = DecayedSums((1,), half_life_s=1.0, t0=0.0)
    old.add(0, 1.0, t=0.0)
    new = DecayedSums((1,), half_life_s=1.0, t0=5000.0)
    new.add(0, 2.0, t=5000.0)
    old.merge(new)
    assert np.all(np.isfinite(old.w))
    assert old.w[0] * old.factor(5000.0) == pytest.approx(1.0)
    assert old.s1[0] * old.factor(5000.0) == pytest.approx(2.0)


# --- the wire format ------------------------------------------------------------------------------


def published_sample() -> Published:
    learner = make_learner()
    feed([learner], traffic(6, 25, 0, 50))
    return Published(
        "r1",
        "b00t",
        123.5,
        learner.local_state(),
        [WireEvent("r1:b00t:1", "latency", "b/y", 40.0, 0.5)],
        {"r1:b00t:1": 40.0, "r2:x:7": 39.0},
    )


def test_wire_round_trip_is_exact() -> None:
    sent = published_sample()
    got = decode_state(encode_state(sent))
    assert (got.replica, got.boot, got.pushed_at, got.events, got.applied) == (
        sent.replica,
        sent.boot,
        sent.pushed_at,
        sent.events,
        sent.applied,
    )
    assert set(got.state.ids) <= set(IDS) and got.state.tasks == TASKS
    full = make_learner().align(got.state)  # models without evidence are not sent
    for name, sums in sent.state.sums.items():
        other = full.sums[name]
        assert (other.rate, other.t0) == (sums.rate, sums.t0)
        for array in ("w", "s1", "s2"):
            np.testing.assert_array_equal(getattr(other, array), getattr(sums, array))


def test_wire_sends_only_cells_with_evidence() -> None:
    big = make_learner(ids=tuple(f"m/{i}" for i in range(5000)))
    big.observe(7, 0, 1.0, True, ttft_s=0.5, tpot_s=0.01)
    big.feedback(4999, 1, 1.0, 0.5)
    blob = encode_state(Published("r", "b", 0.0, big.local_state()))
    assert len(blob) < 2_000  # 5,000 ids and 30,000 cells of zeros would be ~800 kB
    got = decode_state(blob).state
    assert got.ids == ("m/7", "m/4999")
    aligned = big.align(got)
    for name, sums in big.local_state().sums.items():
        np.testing.assert_array_equal(aligned.sums[name].w, sums.w)
        np.testing.assert_array_equal(aligned.sums[name].s2, sums.s2)


def test_wire_rejects_another_version() -> None:
    blob = bytearray(encode_state(published_sample()))
    struct.pack_into("<H", blob, 4, WIRE_VERSION + 1)
    with pytest.raises(ValueError, match="version"):
        decode_state(bytes(blob))


def test_wire_rejects_every_truncation() -> None:
    blob = encode_state(published_sample())
    for cut in range(0, len(blob), 7):
        with pytest.raises(ValueError):
            decode_state(blob[:cut])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 2000), st.binary(min_size=1, max_size=8))
def test_wire_decode_raises_only_value_error(noise: bytes, at: int, patch: bytes) -> None:
    blob = bytearray(encode_state(published_sample()))
    at = at % len(blob)
    blob[at : at + len(patch)] = patch
    for candidate in (noise, bytes(blob)):
        with contextlib.suppress(ValueError):  # anything else fails the test
            decode_state(candidate)


def test_hash_tag_wraps_prefix_once() -> None:
    assert hash_tag("adaptive-router") == "{adaptive-router}"
    assert hash_tag("{team}:router") == "{team}:router"


# --- replicas through a real Redis ----------------------------------------------------------------


def test_shared_observations_on_one_replica_reach_the_other(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with Replicas(redis_server.url, FakeClock()) as replicas:
            a, b = (
                exact_learner(),
                exact_learner(),
            )
            sa, sb = replicas.make("a", a), replicas.make("b", b)
            await sa.start()
            await sb.start()
            for i in range(30):
                a.observe(0, 0, 10.0 + i, True, ttft_s=4.0)
            assert b.estimates(50.0).ttft[0] == pytest.approx(0.5)
            assert await sa.sync_once() and await sb.sync_once()
            assert b.estimates(50.0).ttft[0] > 2.0
            assert_same_estimates(b, a, 50.0)
            assert b.local_state().sums["lat_n"].w.sum() == 0  # b publishes only its own evidence
            assert sb.stats().replicas == 1 and sb.stats().redis_up
            await sa.stop()
            await sb.stop()
            raw = redis.Redis.from_url(redis_server.url)
            assert {key.decode().split(":", 1)[0] for key in raw.keys("*")} == {hash_tag(PREFIX)}
            raw.close()

    run(main)


def test_shared_redis_outage_loses_nothing_and_counts_nothing_twice(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with Replicas(redis_server.url, FakeClock()) as replicas:
            whole, a, b = (exact_learner() for _ in range(3))
            sa, sb = replicas.make("a", a), replicas.make("b", b)
            await sa.start()
            await sb.start()
            feed([whole, a], traffic(10, 40, 0, 100))
            feed([whole, b], traffic(11, 40, 0, 100))
            for shared in (sa, sb, sa, sb):
                assert await shared.sync_once()

            redis_server.kill()
            feed([whole, a], traffic(12, 40, 100, 200))
            feed([whole, b], traffic(13, 10, 100, 200))
            for shared in (sa, sb, sa, sb, sa):
                assert not await shared.sync_once()
            assert not sa.redis_up and not sb.redis_up
            assert sa.stats().failures == 3 and sa.stats().replicas == 1
            a.estimates(210.0), b.estimates(210.0)  # still routing on what they know

            redis_server.start()  # empty: no persistence
            for shared in (sa, sb, sa, sb):
                assert await shared.sync_once()
            assert sa.redis_up and sb.redis_up
            assert_same_estimates(a, whole, 250.0)
            assert_same_estimates(b, whole, 250.0)
            await sa.stop()
            await sb.stop()

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        run(main)
    down = [r for r in caplog.records if "unavailable" in r.getMessage()]
    back = [r for r in caplog.records if "answers again" in r.getMessage()]
    assert len(down) == 2 and len(back) == 2  # once per replica, however many syncs failed


def test_shared_restarted_replica_with_same_id_resumes(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with Replicas(redis_server.url, FakeClock()) as replicas:
            whole, a, b = (exact_learner() for _ in range(3))
            sa, sb = replicas.make("a", a), replicas.make("b", b)
            await sa.start()
            await sb.start()
            feed([whole, a], traffic(20, 40, 0, 100))
            feed([whole, b], traffic(21, 20, 0, 100))
            assert await sa.sync_once() and await sb.sync_once()
            await sa.stop()  # a exits ...

            a2 = make_learner(
                surprise_forget=1.0, stale_after=0.0
            )  # ... and comes back empty, under the same id
            sa2 = replicas.make("a", a2)
            await sa2.start()
            assert_same_estimates(a2, whole, 150.0)
            feed([whole, a2], traffic(22, 20, 100, 140))
            for shared in (sa2, sb, sa2):
                assert await shared.sync_once()
            assert_same_estimates(a2, whole, 150.0)
            assert_same_estimates(b, whole, 150.0)
            await sa2.stop()
            await sb.stop()

    run(main)


def test_shared_replica_restarted_while_redis_was_down_merges_its_old_state(
    redis_server: RedisServer,
) -> None:
    async def main() -> None:
        async with Replicas(redis_server.url, FakeClock()) as replicas:
            whole, a = (
                exact_learner(),
                exact_learner(),
            )
            sa = replicas.make("a", a)
            await sa.start()
            feed([whole, a], traffic(23, 30, 0, 100))
            assert await sa.stop()

            # Redis unreachable at the restart: the warm start waits for Redis to answer.
            redis_server.stop()
            a2 = exact_learner()
            sa2 = replicas.make("a", a2)
            await sa2.start()
            assert not sa2.redis_up
            feed([whole, a2], traffic(24, 30, 100, 140))
            assert not await sa2.sync_once()
            # redis-server restarted empty would have forgotten a's state: bring it back by hand
            redis_server.start()
            old = encode_state(Published("a", "old", 1.0, a.local_state()))
            raw = redis.Redis.from_url(redis_server.url)
            raw.hset(sa2.keys[0], "a", old)
            raw.hset(sa2.keys[1], "a", "old:1:0")
            raw.close()
            assert await sa2.sync_once()
            assert_same_estimates(a2, whole, 150.0)
            await sa2.stop()

    run(main)


def test_shared_silent_replica_expires_after_its_ttl(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with Replicas(redis_server.url, FakeClock(), interval_s=0.1, ttl_s=0.4) as replicas:
            a, b = make_learner(), make_learner()
            sa, sb = replicas.make("a", a), replicas.make("b", b)
            a.observe(0, 0, 1.0, True, ttft_s=4.0)
            assert await sa.sync_once() and await sb.sync_once()
            assert sb.stats().replicas == 1
            await asyncio.sleep(0.6)  # a stays silent past its TTL; b keeps syncing
            for _ in range(3):
                assert await sb.sync_once()
            assert sb.stats().replicas == 0
            assert b.estimates(2.0).ttft[0] == pytest.approx(0.5)
            raw = redis.Redis.from_url(redis_server.url)
            assert not raw.hexists(sb.keys[0], "a") and raw.hexists(sb.keys[0], "b")
            await asyncio.sleep(0.6)  # nobody pushes: the whole group expires
            assert raw.exists(*sb.keys) == 0
            raw.close()

    run(main)


def test_shared_ignores_corrupt_and_foreign_states_with_one_log_line(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with Replicas(redis_server.url, FakeClock()) as replicas:
            a, b = make_learner(), make_learner()
            sa, sb = replicas.make("a", a), replicas.make("b", b)
            a.observe(0, 0, 1.0, True, ttft_s=4.0)
            assert await sa.sync_once()
            other_version = bytearray(encode_state(published_sample()))
            struct.pack_into("<H", other_version, 4, WIRE_VERSION + 1)
            other_half_life = encode_state(
                Published("h", "x", 0.0, make_learner(latency_half_life_s=1.0).state())
            )
            raw = redis.Redis.from_url(redis_server.url)
            now_ms = int(time.time() * 1000)
            for replica, blob in (
                ("garbage", b"\x00junk"),
                ("future", bytes(other_version)),
                ("h", other_half_life),
            ):
                raw.hset(sb.keys[0], replica, blob)
                raw.hset(sb.keys[1], replica, f"{replica}:1:0")
                raw.zadd(sb.keys[2], {replica: now_ms})
            raw.close()
            for _ in range(3):
                assert await sb.sync_once()
            assert sb.stats().ignored == 3 and sb.stats().replicas == 1
            assert b.estimates(2.0).ttft[0] > 0.5  # a's evidence still arrives

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        run(main)
    ignored = [r.getMessage() for r in caplog.records if "ignoring replica" in r.getMessage()]
    assert len(ignored) == 3
    assert any("version" in line for line in ignored) and any("half-life" in line for line in ignored)


def test_shared_slowdown_seen_by_one_replica_moves_the_other(redis_server: RedisServer) -> None:
    async def main() -> None:
        clock = FakeClock(0.0)
        async with Replicas(redis_server.url, clock) as replicas:
            a, b = make_learner(), make_learner()
            sa, sb = replicas.make("a", a), replicas.make("b", b)
            for i in range(200):  # both have a long, fast history of model 0
                a.observe(0, 1, 0.05 * i, True, ttft_s=0.5)
                b.observe(0, 1, 0.05 * i, True, ttft_s=0.5)
            for shared in (sa, sb, sa):
                assert await shared.sync_once()
            clock.now = 10.0
            for i in range(6):  # only a sees the slow-down
                a.observe(0, 1, 10.0 + 0.05 * i, True, ttft_s=2.5)
            assert a.surprises >= 1
            for shared in (sa, sb, sa):
                assert await shared.sync_once()
            # One learner that saw all of it, surprises included: what both replicas must believe.
            single = make_learner()
            for i in range(200):
                single.observe(0, 1, 0.05 * i, True, ttft_s=0.5)
                single.observe(0, 1, 0.05 * i, True, ttft_s=0.5)
            for i in range(6):
                single.observe(0, 1, 10.0 + 0.05 * i, True, ttft_s=2.5)
            expected = single.estimates(11.0).ttft[0]
            assert expected > 0.6  # plain sums (b's history not forgotten) would say 0.51 s
            assert b.estimates(11.0).ttft[0] == pytest.approx(expected, rel=1e-6)
            assert a.estimates(11.0).ttft[0] == pytest.approx(expected, rel=1e-6)
            # b forgot its own history, and its copy of a was not forgotten a second time
            b_local = b.local_state().sums["lat_n"]
            assert b_local.w[0] * b_local.factor(11.0) < 200 * 0.5 * 1.01
            for shared in (sb, sa, sb):  # more syncs change nothing: no event is applied twice
                assert await shared.sync_once()
            assert b.estimates(11.0).ttft[0] == pytest.approx(expected, rel=1e-6)
            assert a.estimates(11.0).ttft[0] == pytest.approx(expected, rel=1e-6)

    run(main)


def test_shared_timer_syncs_and_stop_pushes_last_evidence(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with Replicas(redis_server.url, time.time, interval_s=0.05, ttl_s=60.0) as replicas:
            a, b = make_learner(), make_learner()
            sa, sb = replicas.make("a", a), replicas.make("b", b)
            await sa.start()
            await sb.start()
            a.observe(1, 0, 1.0, True, ttft_s=9.0)
            for _ in range(100):  # bounded: 5 s at most
                if b.estimates(1.0).ttft[1] > 1.1:
                    break
                await asyncio.sleep(0.05)
            assert b.estimates(1.0).ttft[1] > 1.1
            a.feedback(2, 0, 1.0, 0.0)
            assert await sa.stop()
            await sb.stop()

            c = make_learner()
            sc = replicas.make("c", c)
            await sc.start()
            assert c.estimates(1.0).quality[0, 2] < 0.7  # the feedback given just before stop()
            await sc.stop()
            assert sa.stats().syncs >= 2 and sa.stats().last_sync_age_s is not None

    run(main)


def test_shared_ttl_must_exceed_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        SharedState(None, PREFIX, "a", make_learner(), interval_s=2.0, ttl_s=1.0)  # type: ignore[arg-type]


def test_a_command_on_a_closed_transport_is_redis_unavailable() -> None:
    """uvloop raises RuntimeError when a connection's transport closed under a command (a lost
    cluster master): that is a Redis fault, local state takes over, never a 500."""
    from adaptive_router import RedisUnavailable
    from adaptive_router.state import redis_call

    async def closed() -> None:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")

    with pytest.raises(RedisUnavailable):
        asyncio.run(redis_call("budget reserve", closed(), 1.0))


def test_a_write_racing_a_closed_connection_inside_redis_py_is_redis_unavailable() -> None:
    """redis-py lets an AttributeError escape when a write finds its connection's writer gone (a
    peer closed it: redis-py issues 3546, 4287; seen as a 500 while a cluster master was down):
    from redis-py's own code that is a Redis fault. The same error from our code is not masked."""
    from redis.asyncio.connection import Connection

    from adaptive_router import RedisUnavailable
    from adaptive_router.state import redis_call

    connection = Connection()  # never connected: its writer is None, as after the race
    with pytest.raises(RedisUnavailable, match="writelines"):
        asyncio.run(redis_call("budget reserve", connection._send_packed_command([b"PING"]), 1.0))

    async def ours() -> None:
        raise AttributeError("'NoneType' object has no attribute 'writelines'")

    with pytest.raises(AttributeError):
        asyncio.run(redis_call("budget reserve", ours(), 1.0))

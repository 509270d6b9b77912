"""A reload that rebuilds the learner, with replicas sharing through a real Redis: the shared
state follows the new learner, which sees the other replicas' evidence at once and keeps
syncing (models it gained start from their priors)."""

from __future__ import annotations

import numpy as np
import pytest

from adaptive_router.core import Learner
from tests.redis_server import RedisServer, redis_server_fixture  # noqa: F401
from tests.test_shared import IDS, TASKS, FakeClock, Replicas, exact_learner, run

NEW = "d/w"


def _rebuilt() -> Learner:
    """The learner a reload builds when the catalogue gained a model (same half-lives)."""
    ids = (*IDS, NEW)
    m = len(ids)
    return Learner(
        ids,
        TASKS,
        np.linspace(0.5, 2.0, m),
        np.linspace(0.01, 0.04, m),
        np.linspace(0.5, 0.7, m),
        latency_half_life_s=60.0,
        quality_half_life_s=600.0,
        t0=0.0,
        surprise_forget=1.0,
        stale_after=0.0,
    )


def test_the_shared_state_follows_a_rebuilt_learner(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with Replicas(redis_server.url, FakeClock()) as replicas:
            a, b = exact_learner(), exact_learner()
            sa, sb = replicas.make("a", a), replicas.make("b", b)
            await sa.start()
            await sb.start()
            for i in range(30):
                a.observe(0, 0, 10.0 + i, True, ttft_s=4.0)
            b.observe(1, 0, 10.0, True, ttft_s=3.0)
            assert await sa.sync_once() and await sb.sync_once()
            seen = b.estimates(50.0).ttft[0]
            a_knew = a.estimates(50.0).latency_evidence[1]  # b's one answer of model 1
            assert seen > 2.0

            rebuilt = _rebuilt()
            rebuilt.set_local(b.local_state())  # what the reload hands over
            sb.use_learner(rebuilt)
            assert rebuilt.estimates(50.0).ttft[0] == pytest.approx(seen)  # a's evidence, at once
            assert rebuilt.local_state().sums["lat_n"].w[1] > 0  # b's own evidence kept
            assert rebuilt.estimates(50.0).latency_evidence[3] == 0  # the new model: its prior only

            for i in range(30):
                a.observe(2, 0, 40.0 + i, True, ttft_s=5.0)
            rebuilt.observe(1, 0, 45.0, True, ttft_s=3.0)
            assert await sb.sync_once() and await sa.sync_once() and await sb.sync_once()
            assert rebuilt.estimates(80.0).ttft[2] > 2.0  # syncing goes on with the new learner
            # and what b learns after the reload reaches a (decay alone would only lower it)
            assert a.estimates(80.0).latency_evidence[1] > a_knew
            await sa.stop()
            await sb.stop()

    run(main)

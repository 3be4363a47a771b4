"""ProcessPool: a dead or hung worker costs its sites one round, never the run."""

from __future__ import annotations

import functools

import pytest

from fedblend.engine.site import SiteRunner
from fedblend.records import RoundPlan, SiteFailure, SiteUpdate
from fedblend.sim.process import ProcessPool
from fedblend.testing.pools import CrashingRunner, HangingRunner, contract_runners, contract_task, synthetic_site


def _runners(kind):
    task = contract_task()
    good = contract_runners(task, sizes=(10, 12, 14), bad=False)  # s0 s1 s2
    odd = kind(synthetic_site("odd", 8, 0), task, num_classes=3)
    return [good[0], odd, good[1], good[2]]  # 2 workers: [s0, s1] and [odd, s2]


def test_a_crashed_worker_fails_its_sites_for_one_round_then_comes_back():
    with ProcessPool(_runners(CrashingRunner), workers=2) as pool:
        w0 = pool._runners["s0"].task.init_weights(0)
        first = pool.train(RoundPlan(1, ("s0", "odd", "s2", "s1")), w0)
        assert [type(r) for r in first] == [SiteUpdate, SiteFailure, SiteFailure, SiteUpdate]
        assert "exited unexpectedly" in first[1].reason and first[2].site_id == "s2"
        again = pool.train(RoundPlan(2, ("s0", "s2")), w0)  # the worker was restarted
        assert all(isinstance(u, SiteUpdate) and u.round == 2 for u in again)


def test_a_hung_worker_times_out():
    with ProcessPool(_runners(HangingRunner), workers=2) as pool:
        w0 = pool._runners["s0"].task.init_weights(0)
        assert all(isinstance(u, SiteUpdate) for u in pool.train(RoundPlan(1, ("s0", "s2")), w0))  # warm
        pool.timeout_s = 3.0
        out = pool.train(RoundPlan(1, ("odd", "s0")), w0)
        assert isinstance(out[0], SiteFailure) and out[0].kind == "timeout" and isinstance(out[1], SiteUpdate)


def _recipe(sizes, site_ids):
    task = contract_task()
    runners = {r.site_id: r for r in contract_runners(task, sizes=sizes, bad=False)}
    return [runners[s] for s in site_ids]


def test_workers_can_build_their_sites_from_a_recipe():
    runners = contract_runners(contract_task(), sizes=(9, 11, 13), bad=False)
    recipe = functools.partial(_recipe, (9, 11, 13))
    with ProcessPool(runners, workers=1, recipe=recipe) as pool:
        w0 = runners[0].task.init_weights(0)
        out = pool.train(RoundPlan(1, ("s2", "s0")), w0)
        assert [u.num_examples for u in out] == [13, 9]
        assert pool.stats() == {r.site_id: r.stats() for r in runners}


def test_bad_worker_count_is_a_clear_error():
    from fedblend.errors import ConfigError

    with pytest.raises(ConfigError, match="workers"):
        ProcessPool(contract_runners(bad=False), workers=-2)
    with pytest.raises(ConfigError, match="at least one"):
        ProcessPool([], workers=1)


def test_more_workers_than_sites_uses_one_per_site():
    runners: list[SiteRunner] = contract_runners(sizes=(5, 6), bad=False)
    pool = ProcessPool(runners, workers=8)
    try:
        assert len(pool._workers) == 2
    finally:
        pool.close()

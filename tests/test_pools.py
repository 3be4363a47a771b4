"""Every simulation pool passes the SitePool contract (fedblend.testing.pools)."""

from __future__ import annotations

import importlib.util

import pytest

from fedblend.sim import SequentialPool
from fedblend.sim.process import ProcessPool
from fedblend.sim.vectorized import VectorizedPool
from fedblend.testing.pools import SitePoolContract


class TestSequentialPool(SitePoolContract):
    def make_pool(self, runners):
        return SequentialPool(runners)


class TestVectorizedPool(SitePoolContract):
    def make_pool(self, runners):
        return VectorizedPool(runners, device="cpu", chunk_size=4)  # 6 good sites: two chunks


class TestProcessPool(SitePoolContract):
    def make_pool(self, runners):
        return ProcessPool(runners, workers=2)


class TestVectorizedProcessPool(SitePoolContract):
    def make_pool(self, runners):
        return ProcessPool(runners, workers=2, inner="vectorized")


@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray is not installed (pip install 'fedblend[ray]')"
)
class TestRayPool(SitePoolContract):
    def make_pool(self, runners):
        from fedblend.sim.ray_pool import RayPool

        return RayPool(runners, workers=2)


@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray is not installed (pip install 'fedblend[ray]')"
)
def test_ray_pool_trains_two_sites_like_the_sequential_pool():
    from fedblend.records import RoundPlan, SiteUpdate
    from fedblend.sim.ray_pool import RayPool
    from fedblend.testing.pools import contract_runners

    runners = contract_runners(sizes=(9, 14), bad=False)
    w0 = runners[0].task.init_weights(0)
    plan = RoundPlan(1, ("s1", "s0"), seed=3)
    pool = RayPool(runners, workers=2)
    try:
        got = pool.train(plan, w0)
    finally:
        pool.close()
    want = SequentialPool(runners).train(plan, w0)
    for a, b in zip(got, want, strict=True):
        assert isinstance(a, SiteUpdate) and a.site_id == b.site_id
        assert a.weights.allclose(b.weights, rtol=1e-4, atol=1e-5)

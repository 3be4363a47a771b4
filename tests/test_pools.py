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


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray is not installed (pip install 'fedblend[ray]')"
)
class TestRayPool(SitePoolContract):
    def make_pool(self, runners):
        from fedblend.sim.ray_pool import RayPool

        return RayPool(runners, workers=2)

"""SiteRunner: the site side of a round, identical in simulation and deployment.

Given global weights and a round plan it trains the site's Task on the site's own data and returns
a SiteUpdate; given a model it scores it on one of the site's splits and returns scalar sums.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from fedblend.data.base import SiteData
from fedblend.records import EvalReport, RoundPlan, SiteStats, SiteUpdate
from fedblend.task.base import Task
from fedblend.weights import Weights

__all__ = ["SiteRunner", "site_seed"]


def site_seed(job_seed: int, round: int, site_id: str) -> int:
    """Per-round, per-site seed derived from the job seed (order- and pool-independent)."""
    key = [int(b) for b in site_id.encode()]
    ss = np.random.SeedSequence([job_seed & 0xFFFFFFFF, round, 0x5173, *key])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


class SiteRunner:
    def __init__(self, site: SiteData, task: Task, *, num_classes: int = 0, feature_names: tuple[str, ...] = (), min_cell: int = 5) -> None:
        self.site = site
        self.task = task
        self.num_classes = num_classes
        self.feature_names = feature_names
        self.min_cell = min_cell

    @property
    def site_id(self) -> str:
        return self.site.site_id

    def fit(self, plan: RoundPlan, weights: Weights) -> SiteUpdate:
        t0 = time.perf_counter()
        seed = site_seed(plan.seed, plan.round, self.site_id)
        out = self.task.train(weights, self.site.train, dict(plan.config), seed)
        return SiteUpdate(
            site_id=self.site_id,
            round=plan.round,
            weights=out.weights,
            num_examples=out.num_examples,
            metrics=dict(out.metrics),
            duration_s=time.perf_counter() - t0,
        )

    def evaluate(self, weights: Weights, split: str, reference: Weights | None = None) -> EvalReport:
        data = self.site.split(split)
        s = self.task.evaluate(weights, data, reference)
        return EvalReport(
            site_id=self.site_id,
            split=split,
            num_examples=s.num_examples,
            loss_sum=s.loss_sum,
            correct=s.correct,
            diff_sum=s.diff_sum,
            diff_sq_sum=s.diff_sq_sum,
        )

    def stats(self) -> SiteStats:
        from fedblend.data.stats import site_stats

        st: SiteStats = site_stats(self.site, self.num_classes, self.feature_names, self.min_cell)
        return st

    def describe(self) -> dict[str, Any]:
        return {"site_id": self.site_id, "num_train": len(self.site.train), "data_version": self.site.version()}

"""Every message a site receives and sends during a blend synthesis, inspected.

A site may receive only model weights (the FedAvg reference, or a candidate that is a blend in
which *every* site keeps at least floor/K of the mass, so never one site's individual model) and
may send back only the five scalar sums of an EvalReport, scored on its validation split.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np
import pytest

from fedblend.blend import build_synthesizer
from fedblend.engine.site import SiteRunner
from fedblend.records import EvalReport, RoundPlan
from fedblend.runner import prepare
from fedblend.sim.local import SequentialPool
from fedblend.strategies import FedAvg
from fedblend.weights import Weights
from jobs_util import heart_job


class SpySite:
    """A SiteRunner seen from the outside: logs every call that crosses the site boundary."""

    def __init__(self, inner: SiteRunner, log: list[dict[str, Any]]) -> None:
        self.inner = inner
        self.log = log

    @property
    def site_id(self) -> str:
        return self.inner.site_id

    def fit(self, plan: RoundPlan, weights: Weights) -> Any:
        out = self.inner.fit(plan, weights)
        self.log.append({"site": self.site_id, "call": "fit", "received": (plan, weights), "sent": out})
        return out

    def evaluate(self, weights: Weights, split: str, reference: Weights | None = None) -> EvalReport:
        out = self.inner.evaluate(weights, split, reference)
        self.log.append(
            {"site": self.site_id, "call": "evaluate", "received": (weights, split, reference), "sent": out}
        )
        return out

    def stats(self) -> Any:
        out = self.inner.stats()
        self.log.append({"site": self.site_id, "call": "stats", "received": (), "sent": out})
        return out


@pytest.mark.parametrize("space", ["simplex", "tilt"])
def test_sites_see_only_blends_and_send_only_sums(tmp_path, space):
    job = heart_job(tmp_path, **{"data.val_fraction": 0.25})
    prepared = prepare(job)
    log: list[dict[str, Any]] = []
    pool = SequentialPool([SpySite(r, log) for r in prepared.runners])  # type: ignore[list-item]
    initial = prepared.initial_weights
    updates = pool.train(RoundPlan(round=1, site_ids=tuple(pool.site_ids()), seed=job.seed), initial)
    merged = FedAvg().aggregate(initial, updates)  # type: ignore[arg-type]
    individual = {u.site_id: u.weights for u in updates}  # type: ignore[union-attr]
    val_sizes = {r.site_id: len(r.site.val) for r in prepared.runners}
    floor = 0.25
    log.clear()

    # the simplex space reaches the corners (one site alone) if nothing stops it: the floor must
    synth = build_synthesizer(
        {"space": space, "searcher": "random", "budget": 16, "batch_size": 4, "floor": floor, "tilt_range": 6.0},
        seed=0,
        val_fraction=0.25,
    )
    _, rec = synth.synthesize(pool, initial, merged, updates, 1)  # type: ignore[arg-type]

    assert log and {e["call"] for e in log} == {"evaluate"}  # no training, no statistics
    assert len(log) == 16 * 4
    basis = np.stack([individual[s].flatten() for s in individual], axis=1)  # (params, K)
    k = basis.shape[1]
    mixes = []
    for e in log:
        weights, split, reference = e["received"]
        assert split == "val"  # never test, never train
        for w in (weights, reference):
            assert isinstance(w, Weights) and w.spec() == merged.spec()  # model tensors, nothing else
        assert reference.equal(merged)
        assert not any(weights.allclose(m, rtol=1e-4, atol=1e-6) for m in individual.values())
        if not weights.equal(merged):
            coef, *_ = np.linalg.lstsq(basis, weights.flatten(), rcond=None)
            assert np.allclose(basis @ coef, weights.flatten(), atol=1e-5)  # a blend of the site models
            assert coef.sum() == pytest.approx(1.0, abs=1e-4)
            assert coef.min() >= floor / k - 1e-4  # every site is in it: never one site's model
            mixes.append(coef)
        sent = e["sent"]
        assert type(sent) is EvalReport and sent.site_id == e["site"] and sent.split == "val"
        assert sent.num_examples == val_sizes[e["site"]]
        for f in fields(sent):
            assert isinstance(getattr(sent, f.name), (int, float, str)), f.name  # scalars only
    assert len(mixes) >= 16 * 4 - 4  # all but the FedAvg reference were real blends
    if space == "simplex":  # the search pushed some candidates against the floor
        assert min(m.min() for m in mixes) == pytest.approx(floor / k, abs=1e-3)
    assert rec["communication"]["models_sent"] == 16 * 4

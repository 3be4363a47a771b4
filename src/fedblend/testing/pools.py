"""The contract every SitePool must honour, as a base test class, and the sites it runs on.

Subclass ``SitePoolContract`` in a test module, name the subclass ``Test...`` and implement
``make_pool(runners)``; pytest then runs every ``test_*`` method against your pool. One pool is
built per class (``setup_class``) and closed at the end, so slow-starting pools (processes, Ray)
pay their start-up once. The reference for every comparison is ``SequentialPool``.

    class TestMyPool(SitePoolContract):
        def make_pool(self, runners):
            return MyPool(runners)

The sites (``contract_runners``): six small synthetic sites of unequal sizes (so batches end
short and clients finish after different numbers of steps) and one site, ``bad``, whose labels
the model cannot score: training or scoring it must give a SiteFailure, never an exception.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from fedblend.data.base import ArraySplit, SiteData
from fedblend.engine.federation import Federation
from fedblend.engine.ports import SitePool
from fedblend.engine.site import SiteRunner
from fedblend.records import EvalReport, RoundPlan, SiteFailure, SiteUpdate
from fedblend.sim.local import SequentialPool
from fedblend.strategies import make_strategy
from fedblend.task import TorchTask
from fedblend.weights import Weights

__all__ = ["SitePoolContract", "contract_task", "contract_runners", "synthetic_site", "CrashingRunner", "HangingRunner"]

FEATURES = 12
CLASSES = 3
SIZES = (13, 20, 7, 30, 25, 16)


def contract_task(**params: Any) -> TorchTask:
    """A small MLP classifier task (12 features, 3 classes); keyword arguments override."""
    kw: dict[str, Any] = {"lr": 0.1, "batch_size": 4, "momentum": 0.5}
    kw.update(params)
    return TorchTask("mlp", model_params={"in_features": FEATURES, "hidden": 8, "num_classes": CLASSES}, **kw)


def synthetic_site(
    site_id: str, n_train: int, seed: int, *, n_val: int = 5, n_test: int = 9, label_shift: int = 0
) -> SiteData:
    """A site whose label depends on its features (so training has something to learn)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, *site_id.encode()]))
    proj = np.random.default_rng(1234).normal(size=(FEATURES, CLASSES))

    def split(n: int) -> ArraySplit:
        x = rng.normal(size=(n, FEATURES)).astype(np.float32)
        y = (np.argmax(x @ proj, axis=1) + label_shift).astype(np.int64)
        return ArraySplit(x, y)

    return SiteData(site_id, split(n_train), split(n_val), split(n_test))


def contract_runners(
    task: Any = None, *, sizes: Sequence[int] = SIZES, bad: bool = True, seed: int = 0
) -> list[SiteRunner]:
    """``s0..s5`` with ``sizes`` training examples, and ``bad`` (labels out of the model's range)."""
    task = task if task is not None else contract_task()
    sites = [synthetic_site(f"s{i}", n, seed) for i, n in enumerate(sizes)]
    if bad:
        sites.append(synthetic_site("bad", 10, seed, label_shift=CLASSES + 2))
    # ``bad``'s statistics still work: its own label range is declared, only the model cannot score it
    return [SiteRunner(s, task, num_classes=2 * CLASSES + 2 if s.site_id == "bad" else CLASSES) for s in sites]


class CrashingRunner(SiteRunner):
    """A site whose training kills the process it runs in (for worker-death tests)."""

    def fit(self, plan: RoundPlan, weights: Weights) -> SiteUpdate:
        os._exit(3)


class HangingRunner(SiteRunner):
    """A site whose training never returns (for timeout tests)."""

    def fit(self, plan: RoundPlan, weights: Weights) -> SiteUpdate:
        import threading

        threading.Event().wait()
        raise AssertionError("unreachable")


class SitePoolContract:
    """Base class of the SitePool contract tests; see the module docstring."""

    rtol: ClassVar[float] = 1e-4
    atol: ClassVar[float] = 1e-5
    pool: ClassVar[Any] = None
    reference: ClassVar[SequentialPool]
    runners: ClassVar[list[SiteRunner]]
    w0: ClassVar[Weights]

    def make_pool(self, runners: list[SiteRunner]) -> Any:
        raise NotImplementedError("implement make_pool(runners) in the subclass")

    @classmethod
    def setup_class(cls) -> None:
        cls.runners = contract_runners()
        cls.reference = SequentialPool(cls.runners)
        cls.w0 = cls.runners[0].task.init_weights(0)
        cls.pool = cls().make_pool(cls.runners)

    @classmethod
    def teardown_class(cls) -> None:
        if cls.pool is not None:
            cls.pool.close()
            cls.pool = None

    # helpers -----------------------------------------------------------------------------------
    @property
    def good(self) -> list[str]:
        return [r.site_id for r in self.runners if r.site_id != "bad"]

    def plan(self, site_ids: Sequence[str], round: int = 1, seed: int = 11, **config: Any) -> RoundPlan:
        return RoundPlan(round=round, site_ids=tuple(site_ids), config=dict(config), seed=seed)

    def assert_close(self, a: Weights, b: Weights, what: str) -> None:
        assert list(a) == list(b), f"{what}: tensor names differ: {list(a)} vs {list(b)}"
        for k in a:
            assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, f"{what}: {k} shape/dtype differ"
            assert np.allclose(a[k], b[k], rtol=self.rtol, atol=self.atol), (
                f"{what}: tensor {k} differs from SequentialPool's by up to {np.abs(a[k] - b[k]).max():.3g}"
            )

    # the contract ------------------------------------------------------------------------------
    def test_is_a_site_pool(self) -> None:
        assert isinstance(self.pool, SitePool)

    def test_site_ids_are_stable(self) -> None:
        expected = [r.site_id for r in self.runners]
        assert self.pool.site_ids() == expected
        assert self.pool.site_ids() == expected

    def test_train_returns_one_entry_per_planned_site_in_plan_order(self) -> None:
        order = [self.good[i] for i in (3, 0, 5, 1)]
        out = self.pool.train(self.plan(order, round=4), self.w0)
        assert [r.site_id for r in out] == order
        sizes = {r.site_id: len(r.site.train) for r in self.runners}
        for u in out:
            assert isinstance(u, SiteUpdate), f"site {u.site_id}: {u}"
            assert u.round == 4 and u.num_examples == sizes[u.site_id]
            assert u.weights.spec() == self.w0.spec() and u.weights.is_finite()
            assert np.isfinite(u.metrics["train_loss"]) and u.metrics["steps"] > 0

    def test_failing_and_unknown_sites_are_site_failures(self) -> None:
        out = self.pool.train(self.plan(["s0", "bad", "nowhere", "s1"], round=2), self.w0)
        assert [r.site_id for r in out] == ["s0", "bad", "nowhere", "s1"]
        assert isinstance(out[0], SiteUpdate) and isinstance(out[3], SiteUpdate)
        for f in out[1:3]:
            assert isinstance(f, SiteFailure) and f.round == 2 and f.reason
        ev = self.pool.evaluate(self.w0, ["bad", "s2"], "test")
        assert isinstance(ev[0], SiteFailure) and ev[0].site_id == "bad"
        assert isinstance(ev[1], EvalReport)

    def test_train_matches_sequential_pool(self) -> None:
        plan = self.plan(self.good, round=3, seed=5)
        mine, ref = self.pool.train(plan, self.w0), self.reference.train(plan, self.w0)
        for a, b in zip(mine, ref, strict=True):
            assert isinstance(a, SiteUpdate) and isinstance(b, SiteUpdate)
            assert (a.site_id, a.num_examples, a.metrics["steps"]) == (b.site_id, b.num_examples, b.metrics["steps"])
            assert abs(a.metrics["train_loss"] - b.metrics["train_loss"]) <= 1e-4 * (1 + abs(b.metrics["train_loss"]))
            self.assert_close(a.weights, b.weights, f"site {a.site_id}")

    def test_same_seed_same_model_other_seed_other_model(self) -> None:
        first = self.pool.train(self.plan(self.good, seed=21), self.w0)
        again = self.pool.train(self.plan(self.good, seed=21), self.w0)
        other = self.pool.train(self.plan(self.good, seed=22), self.w0)
        assert all(a.weights.equal(b.weights) for a, b in zip(first, again, strict=True))
        assert not all(a.weights.equal(b.weights) for a, b in zip(first, other, strict=True))

    def test_evaluate_sums_match_sequential_pool(self) -> None:
        trained = self.reference.train(self.plan(["s3"]), self.w0)[0]
        assert isinstance(trained, SiteUpdate)
        sids = list(reversed(self.good))
        for split in ("train", "val", "test"):
            for reference in (None, self.w0):
                mine = self.pool.evaluate(trained.weights, sids, split, reference)
                ref = self.reference.evaluate(trained.weights, sids, split, reference)
                assert [r.site_id for r in mine] == sids
                for a, b in zip(mine, ref, strict=True):
                    assert isinstance(a, EvalReport) and isinstance(b, EvalReport), (a, b)
                    assert (a.split, a.num_examples, a.correct) == (b.split, b.num_examples, b.correct)
                    for f in ("loss_sum", "diff_sum", "diff_sq_sum"):
                        x, y = getattr(a, f), getattr(b, f)
                        assert abs(x - y) <= 1e-4 * (1 + abs(y)), f"{a.site_id} {split} {f}: {x} vs {y}"

    def test_stats_match_sequential_pool(self) -> None:
        assert self.pool.stats() == self.reference.stats()

    def test_federation_gives_the_sequential_model(self) -> None:
        def run(pool: Any) -> Weights:
            fed = Federation(
                pool=pool, strategy=make_strategy("fedavg"), initial_weights=self.w0, rounds=2, seed=3, eval_every=0
            )
            return fed.run()

        self.assert_close(run(self.pool), run(self.reference), "global model after 2 rounds")

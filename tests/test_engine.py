"""The round loop: determinism, resume, sampling, validation of updates, quorum."""

from __future__ import annotations

import numpy as np
import pytest

from fedblend.engine import Federation, Sampling, UpdateValidator
from fedblend.errors import ConfigError, QuorumError
from fedblend.records import RoundPlan, SiteFailure, SiteUpdate
from fedblend.runner import build_federation, prepare, run_job
from fedblend.sim.local import SequentialPool
from fedblend.store import SqlRunStore
from fedblend.strategies import make_strategy
from fedblend.weights import Weights
from jobs_util import heart_job


def test_same_job_and_seed_give_bit_identical_weights(tmp_path):
    job = heart_job(tmp_path, strategy={"name": "fedadam", "server_lr": 0.05})
    a = run_job(job, run_dir=tmp_path / "a")
    b = run_job(job, run_dir=tmp_path / "b")
    assert a.weights.equal(b.weights)
    c = run_job(job.with_overrides(seed=4), run_dir=tmp_path / "c")
    assert not a.weights.equal(c.weights)


@pytest.mark.parametrize("strategy", [{"name": "fedavg"}, {"name": "fedyogi", "server_lr": 0.05}])
def test_resume_after_interruption_equals_uninterrupted(tmp_path, strategy):
    job = heart_job(tmp_path, rounds=5, strategy=strategy)
    full = run_job(job, run_dir=tmp_path / "full")
    part = run_job(job, run_dir=tmp_path / "part", until=2)  # stops after round 2, as if killed
    assert len(part.history) == 2
    # only the latest round keeps its weights in memory; the store has every round's checkpoint
    assert len(part.history[0].weights) == 0 and part.history[-1].weights.equal(part.weights)
    resumed = run_job(job, run_dir=tmp_path / "part", resume=True)
    assert resumed.start_round == 2
    assert [r.round for r in resumed.history] == [3, 4, 5]
    assert resumed.weights.equal(full.weights)
    store = SqlRunStore(tmp_path / "part", create=False)
    assert [r["round"] for r in store.rounds()] == [1, 2, 3, 4, 5]
    assert store.meta()["status"] == "finished"
    store.close()


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    job = heart_job(tmp_path, rounds=1)
    run_job(job)
    with pytest.raises(ConfigError, match="--resume"):
        run_job(job)
    assert len(run_job(job, overwrite=True).history) == 1
    with pytest.raises(ConfigError, match="contradict"):
        run_job(job, resume=True, overwrite=True)


def test_run_store_records_everything(tmp_path):
    job = heart_job(tmp_path, rounds=2)
    out = run_job(job)
    st = SqlRunStore(out.run_dir, create=False)
    rounds = st.rounds()
    assert [r["round"] for r in rounds] == [1, 2]
    assert set(rounds[-1]["participants"]) == {"cleveland", "hungary", "switzerland", "va"}
    gm = rounds[-1]["global_metrics"]
    assert 0.0 <= gm["test_acc"] <= 1.0 and gm["test_loss"] > 0
    evals = st.site_metrics("eval:test")
    assert {m["site_id"] for m in evals if m["round"] == 2} == {"cleveland", "hungary", "switzerland", "va"}
    # the pooled accuracy is the example-weighted mean of the per-site ones
    last = [m for m in evals if m["round"] == 2]
    pooled = sum(m["metrics"]["correct"] for m in last) / sum(m["num_examples"] for m in last)
    assert gm["test_acc"] == pytest.approx(pooled)
    stats = st.site_stats()
    assert stats["cleveland"]["num_train"] == 199 and stats["switzerland"]["heterogeneity"] > stats["cleveland"]["heterogeneity"]
    assert "rounds = 2" in st.document("job.toml")
    ck = st.last_checkpoint()
    assert ck is not None and ck.round == 2 and ck.weights.equal(out.weights)
    kinds = {e["kind"] for e in st.events()}
    assert {"round_started", "stage"} <= kinds
    st.close()


def test_sampling_is_seeded_and_respects_counts():
    sites = [f"s{i}" for i in range(10)]
    s = Sampling(fraction=0.3)
    a = s.choose(sites, seed=1, round=1)
    assert len(a) == 3 and a == s.choose(sites, seed=1, round=1)
    assert any(s.choose(sites, seed=1, round=r) != a for r in range(2, 6))
    assert len(Sampling(count=4).choose(sites, 0, 1)) == 4
    assert len(Sampling(fraction=0.1, min_sites=3).choose(sites, 0, 1)) == 3
    with pytest.raises(QuorumError, match="min_sites"):
        Sampling(min_sites=11).choose(sites, 0, 1)
    with pytest.raises(ConfigError):
        Sampling(fraction=1.5)


def test_sampling_in_a_run_uses_subset(tmp_path):
    out = run_job(heart_job(tmp_path, rounds=3, sampling={"count": 2}), persist=False)
    assert all(len(r.participants) == 2 for r in out.history)


class _BadSitePool(SequentialPool):
    """A pool whose first site returns a corrupted update of the given kind."""

    def __init__(self, runners, corrupt):
        super().__init__(runners)
        self.corrupt = corrupt

    def train(self, plan, weights):
        out = super().train(plan, weights)
        u = out[0]
        assert isinstance(u, SiteUpdate)
        out[0] = self.corrupt(u, weights)
        return out


def _nan(u, w):
    return SiteUpdate(u.site_id, u.round, u.weights.map(lambda a: np.full_like(a, np.nan)), u.num_examples)


def _shape(u, w):
    return SiteUpdate(u.site_id, u.round, Weights({k: np.zeros((3, 3), np.float32) for k in u.weights}), u.num_examples)


def _norm(u, w):
    return SiteUpdate(u.site_id, u.round, u.weights.map(lambda a: a + 1e6), u.num_examples)


def _count(u, w):
    return SiteUpdate(u.site_id, u.round, u.weights, -5)


def _huge_count(u, w):
    return SiteUpdate(u.site_id, u.round, u.weights, 10**12)


def _stale(u, w):
    return SiteUpdate(u.site_id, u.round - 1, u.weights, u.num_examples)


def _keys(u, w):
    return SiteUpdate(u.site_id, u.round, Weights({"evil": np.zeros(1, np.float32)}), u.num_examples)


def _dtype(u, w):
    return SiteUpdate(u.site_id, u.round, u.weights.astype(np.float64), u.num_examples)


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [(_nan, "NaN or Inf"), (_shape, "shape"), (_norm, "norm"), (_count, "positive integer"),
     (_huge_count, "exceeds the limit"), (_stale, "stale"), (_keys, "missing keys"), (_dtype, "dtype")],
)
def test_bad_updates_are_rejected_and_the_round_goes_on(tmp_path, corrupt, reason):
    job = heart_job(tmp_path, rounds=2)
    prepared = prepare(job)
    pool = _BadSitePool(prepared.runners, corrupt)
    store = SqlRunStore(tmp_path / "run")
    fed = build_federation(job, prepared, pool, store)
    fed.run()
    rounds = store.rounds()
    assert len(rounds) == 2
    for r in rounds:
        assert len(r["participants"]) == 3
        assert r["failures"][0]["kind"] == "rejected" and reason in r["failures"][0]["reason"]
    assert fed.weights.is_finite()
    assert any(e["kind"] == "update_rejected" for e in store.events())
    store.close()


def test_duplicate_updates_count_once():
    w = Weights({"a": np.zeros(2, np.float32)})
    u = SiteUpdate("s", 1, Weights({"a": np.ones(2, np.float32)}), 10)
    accepted, failures = UpdateValidator().split([u, u], w, 1)
    assert accepted == [u] and failures == []


def test_quorum_error_names_failures(tmp_path):
    job = heart_job(tmp_path, rounds=1, sampling={"min_sites": 4})
    prepared = prepare(job)
    pool = _BadSitePool(prepared.runners, _nan)
    fed = build_federation(job, prepared, pool, None)
    with pytest.raises(QuorumError, match="NaN"):
        fed.run()


def test_crashing_site_becomes_a_failure(tmp_path):
    job = heart_job(tmp_path, rounds=1)
    prepared = prepare(job)

    class Boom:
        def train(self, *a, **k):
            raise RuntimeError("disk on fire")

        def __getattr__(self, name):
            return getattr(prepared.task, name)

    prepared.runners[1].task = Boom()
    fed = build_federation(job, prepared, SequentialPool(prepared.runners), None)
    res = fed.step()
    assert len(res.participants) == 3
    assert res.failures[0].site_id == "hungary" and "disk on fire" in res.failures[0].reason


def test_federation_rejects_bad_construction():
    w = Weights({"a": np.zeros(1, np.float32)})
    with pytest.raises(ConfigError, match="rounds"):
        Federation(pool=SequentialPool([]), strategy=make_strategy("fedavg"), initial_weights=w, rounds=0)


def test_plan_carries_strategy_config(tmp_path):
    job = heart_job(tmp_path, rounds=1, strategy={"name": "fedprox", "mu": 0.5})
    prepared = prepare(job)
    seen: list[RoundPlan] = []

    class Spy(SequentialPool):
        def train(self, plan, weights):
            seen.append(plan)
            return super().train(plan, weights)

    build_federation(job, prepared, Spy(prepared.runners), None).run()
    assert seen[0].config["proximal_mu"] == 0.5


def test_site_failure_record_is_plain():
    f = SiteFailure("x", 1, "why")
    assert f.kind == "error"

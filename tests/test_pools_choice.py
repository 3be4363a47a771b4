"""make_pool: the automatic choice, the overrides, and clear errors."""

from __future__ import annotations

import sys

import pytest

from fedblend.errors import ConfigError
from fedblend.sim import SequentialPool, choose_pool, make_pool
from fedblend.sim.vectorized import VectorizedPool
from fedblend.task import TorchTask
from fedblend.testing.pools import contract_runners, contract_task


def test_auto_vectorizes_many_sites_of_one_small_model():
    runners = contract_runners(sizes=(5,) * 8, bad=False)
    kind, why = choose_pool(runners, device="cpu")
    assert kind == "vectorized" and "8 sites" in why
    pool = make_pool("auto", runners, device="cpu")
    assert isinstance(pool, VectorizedPool)


def test_auto_stays_sequential_for_little_work():
    runners = contract_runners(sizes=(5, 6, 7, 8), bad=False)
    assert choose_pool(runners, device="cpu")[0] == "sequential"
    assert isinstance(make_pool("auto", runners, device="cpu"), SequentialPool)


def test_auto_spreads_big_models_that_do_not_vectorize_over_processes(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    task = TorchTask("char_lstm", model_params={"vocab_size": 3, "hidden": 256})
    runners = contract_runners(task, sizes=(4000, 4000, 4000), bad=False)
    kind, why = choose_pool(runners, task, device="cpu")
    assert kind == "process" and "LSTM" in why
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert choose_pool(runners, task, device="cpu")[0] == "sequential"


def test_explicit_kinds_override_auto():
    runners = contract_runners(sizes=(5,) * 8, bad=False)
    assert isinstance(make_pool("sequential", runners), SequentialPool)
    assert isinstance(make_pool("vectorized", contract_runners(sizes=(5, 6), bad=False), device="cpu"), VectorizedPool)


def test_unknown_kind_names_the_valid_ones():
    with pytest.raises(ConfigError, match="'auto', 'sequential', 'vectorized', 'process', 'ray'"):
        make_pool("gpu", contract_runners(bad=False))


def test_ray_missing_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'fedblend\[ray\]'"):
        make_pool("ray", contract_runners(bad=False))


def test_job_pool_section_reaches_make_pool(tmp_path):
    from fedblend.jobs import parse_job
    from fedblend.runner import build_pool, prepare

    job = parse_job(
        {
            "name": "p",
            "data": {"dataset": "heart_disease"},
            "model": {"name": "logreg"},
            "pool": {"kind": "vectorized", "device": "cpu"},
        }
    )
    prepared = prepare(job)
    pool = build_pool(job, prepared)
    assert isinstance(pool, VectorizedPool) and pool.site_ids() == list(prepared.dataset.sites)
    assert contract_task() is not None


def test_vectorized_with_workers_runs_vectorized_worker_processes():
    from fedblend.sim.process import ProcessPool

    pool = make_pool("vectorized", contract_runners(sizes=(5, 6), bad=False), workers=2, device="cpu")
    try:
        assert isinstance(pool, ProcessPool) and pool.inner == "vectorized" and len(pool._workers) == 2
    finally:
        pool.close()
    lstm = TorchTask("char_lstm", model_params={"vocab_size": 3, "hidden": 4})
    with pytest.raises(ConfigError, match="LSTM"):
        make_pool("vectorized", contract_runners(lstm, bad=False), workers=2)

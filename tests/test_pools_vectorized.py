"""VectorizedPool: equal to SequentialPool for every optimizer setting, chunking, model kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedblend.data.base import ArraySplit, SiteData
from fedblend.engine.site import SiteRunner
from fedblend.errors import ConfigError
from fedblend.records import RoundPlan, SiteFailure, SiteUpdate
from fedblend.sim import SequentialPool
from fedblend.sim.functional import StackedOptimizer
from fedblend.sim.stacked import batch_plan
from fedblend.sim.vectorized import VectorizedPool, vmap_blocker
from fedblend.task import TorchTask
from fedblend.testing.pools import contract_runners, contract_task

SIZES = (13, 20, 7, 30, 25, 16, 3)


def _compare(task, config=None, sizes=SIZES, chunk_size=3, atol=2e-6):
    runners = contract_runners(task, sizes=sizes, bad=False)
    w0 = task.init_weights(0)
    plan = RoundPlan(round=2, site_ids=tuple(r.site_id for r in runners), config=config or {}, seed=9)
    vec = VectorizedPool(runners, device="cpu", chunk_size=chunk_size).train(plan, w0)
    seq = SequentialPool(runners).train(plan, w0)
    for a, b in zip(vec, seq, strict=True):
        assert isinstance(a, SiteUpdate) and isinstance(b, SiteUpdate)
        assert a.metrics["steps"] == b.metrics["steps"]
        assert a.metrics["train_loss"] == pytest.approx(b.metrics["train_loss"], rel=1e-5, abs=1e-6)
        for k in a.weights:
            np.testing.assert_allclose(a.weights[k], b.weights[k], rtol=1e-5, atol=atol, err_msg=f"{a.site_id}/{k}")
    return vec


@pytest.mark.parametrize(
    "params, config",
    [
        ({"lr": 0.1, "momentum": 0.0}, {}),
        ({"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}, {}),
        ({"lr": 0.05}, {"proximal_mu": 0.5}),
        ({"lr": 0.05, "momentum": 0.9}, {"proximal_mu": 0.1, "weight_decay": 0.001}),
        ({"optimizer": "adam", "lr": 0.01, "weight_decay": 0.001}, {}),
        ({"lr": 0.05, "batch_size": 8, "local_steps": 9}, {}),  # cycles through reshuffled epochs
        ({"lr": 0.05, "batch_size": 6, "local_epochs": 3}, {}),
        ({"lr": 0.05, "batch_size": 64}, {}),  # one short batch per site
        ({"lr": 0.05}, {"lr": 0.2, "batch_size": 5}),  # the round's config overrides the task's
    ],
)
def test_vectorized_equals_sequential(params, config):
    _compare(contract_task(**params), config)


def test_chunk_size_does_not_change_the_result():
    task = contract_task(lr=0.1, momentum=0.9)
    a = _compare(task, chunk_size=1)
    b = _compare(task, chunk_size=100)
    for u, v in zip(a, b, strict=True):
        assert u.weights.allclose(v.weights, rtol=1e-6, atol=1e-7)


def test_binary_logreg_with_bce():
    task = TorchTask("logreg", model_params={"in_features": 12, "binary": True}, loss="bce", lr=0.1, batch_size=4)
    runners = contract_runners(task, bad=False)
    binary = [
        SiteRunner(
            SiteData(
                r.site_id,
                *(ArraySplit(s.x, (s.y > 0).astype(np.int64)) for s in (r.site.train, r.site.val, r.site.test)),
            ),
            task,
            num_classes=2,
        )
        for r in runners
    ]
    w0 = task.init_weights(0)
    plan = RoundPlan(1, tuple(r.site_id for r in binary), seed=4)
    vec = VectorizedPool(binary, device="cpu").train(plan, w0)
    seq = SequentialPool(binary).train(plan, w0)
    assert all(a.weights.allclose(b.weights, rtol=1e-5, atol=1e-6) for a, b in zip(vec, seq, strict=True))


def test_cnn_equals_sequential():
    task = TorchTask("cnn", model_params={"num_classes": 3, "image_size": 4}, lr=0.05, batch_size=4)
    sites = []
    rng = np.random.default_rng(0)
    for i, n in enumerate((9, 14, 5)):

        def split(m):
            return ArraySplit(rng.normal(size=(m, 1, 4, 4)).astype(np.float32), rng.integers(0, 3, m))

        sites.append(SiteRunner(SiteData(f"c{i}", split(n), split(3), split(4)), task, num_classes=3))
    w0 = task.init_weights(0)
    plan = RoundPlan(1, ("c0", "c1", "c2"), seed=1)
    vec = VectorizedPool(sites, device="cpu").train(plan, w0)
    seq = SequentialPool(sites).train(plan, w0)
    assert all(a.weights.allclose(b.weights, rtol=1e-4, atol=1e-5) for a, b in zip(vec, seq, strict=True))


def test_batch_order_is_torch_tasks():
    task = contract_task(batch_size=4)
    cfg = task.train_config({"local_epochs": 2})
    got = batch_plan(task, 10, cfg, 123)
    rng = np.random.default_rng(np.random.SeedSequence(123))
    want = task.batch_indices(10, cfg, rng)
    assert [b.tolist() for b in got] == [b.tolist() for b in want]


def test_functional_sgd_matches_torch_optim_step_by_step():
    torch.manual_seed(0)
    p = torch.randn(5, 3)
    ref = p.clone().requires_grad_(True)
    opt = torch.optim.SGD([ref], lr=0.1, momentum=0.9, weight_decay=0.01)
    stacked = [p.clone().unsqueeze(0)]
    mine = StackedOptimizer({"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01})
    st = mine.init(stacked)
    for _ in range(4):
        g = torch.randn(5, 3)
        ref.grad = g.clone()
        opt.step()
        mine.step(stacked, [g.unsqueeze(0)], st, k=1)
    torch.testing.assert_close(stacked[0][0], ref.detach())


def test_clients_that_finish_early_keep_their_weights():
    # one site has 3 examples (1 step), others many; training the small one alone gives the same
    task = contract_task(lr=0.1, momentum=0.9)
    runners = contract_runners(task, sizes=(40, 3), bad=False)
    w0 = task.init_weights(0)
    pool = VectorizedPool(runners, device="cpu")
    both = pool.train(RoundPlan(1, ("s0", "s1"), seed=2), w0)
    alone = pool.train(RoundPlan(1, ("s1",), seed=2), w0)
    assert both[1].metrics["steps"] == 1
    assert both[1].weights.allclose(alone[0].weights, rtol=1e-6, atol=1e-7)


def test_bad_config_and_foreign_weights_become_site_failures():
    runners = contract_runners(bad=False)
    pool = VectorizedPool(runners, device="cpu")
    w0 = runners[0].task.init_weights(0)
    out = pool.train(RoundPlan(1, ("s0", "s1"), config={"learning_rate": 0.1}), w0)
    assert all(isinstance(f, SiteFailure) and "learning_rate" in f.reason for f in out)
    foreign = TorchTask("mlp", model_params={"in_features": 5, "num_classes": 2}).init_weights(0)
    out = pool.train(RoundPlan(1, ("s0",)), foreign)
    assert isinstance(out[0], SiteFailure) and "ModelError" in out[0].reason
    ev = pool.evaluate(foreign, ["s0"], "test")
    assert isinstance(ev[0], SiteFailure)


class _WithBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 3)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x):
        return self.bn(self.fc(x))


class _WithDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.fc(x))


@pytest.mark.parametrize(
    "task, words",
    [
        (TorchTask(_WithBatchNorm), "buffers"),
        (TorchTask(_WithDropout), "Dropout"),
        (TorchTask("char_lstm", model_params={"vocab_size": 5, "hidden": 4}), "LSTM"),
    ],
)
def test_models_that_do_not_vectorize_are_refused_with_the_reason(task, words):
    assert words in (vmap_blocker(task) or "")
    runners = contract_runners(task, bad=False)
    with pytest.raises(ConfigError, match="cannot run this task") as err:
        VectorizedPool(runners, device="cpu")
    assert words in str(err.value) and "'process'" in str(err.value)


def test_sites_with_different_tasks_are_refused():
    runners = contract_runners(bad=False)
    other = SiteRunner(runners[0].site, contract_task(lr=0.5))
    with pytest.raises(ConfigError, match="different task"):
        VectorizedPool([*runners[1:], other], device="cpu")


def test_chunk_size_follows_the_memory_budget():
    runners = contract_runners(bad=False)
    assert VectorizedPool(runners, device="cpu", chunk_size=5).chunk_size == 5
    small = VectorizedPool(runners, device="cpu", memory_mb=1)
    n_params = runners[0].task.init_weights(0).num_parameters
    assert small.chunk_size == max(1, 2**20 // (n_params * 4 * 6))
    with pytest.raises(ConfigError, match="chunk_size"):
        VectorizedPool(runners, device="cpu", chunk_size=-1)


def test_unknown_device_is_a_clear_error():
    with pytest.raises(ConfigError, match="device"):
        VectorizedPool(contract_runners(bad=False), device="tpu")


class _LayerTwice(nn.Module):
    """A linear layer applied twice: the fused path must notice and step aside."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(12, 8)
        self.mid = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(torch.relu(self.mid(torch.relu(self.mid(torch.relu(self.inp(x)))))))


class _TiedOutsideModule(nn.Module):
    """A weight also used outside its module (tied): the fused gradients would be wrong."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(12, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        h = torch.relu(self.enc(x))
        return self.head(torch.nn.functional.linear(h, self.enc.weight))


@pytest.mark.parametrize("model", [_LayerTwice, _TiedOutsideModule])
def test_fused_path_steps_aside_for_models_it_cannot_handle(model):
    task = TorchTask(model, lr=0.1, batch_size=4)
    vec = _compare(task)
    assert all(isinstance(u, SiteUpdate) for u in vec)


def test_fused_path_is_taken_for_plain_sgd_mlps():
    task = contract_task(lr=0.1, momentum=0.0)
    runners = contract_runners(task, bad=False)
    pool = VectorizedPool(runners, device="cpu")
    pool.train(RoundPlan(1, ("s0", "s1")), task.init_weights(0))
    assert pool.trainer.fused.ok and pool.trainer.fused.verified

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
from fedblend.sim.chain import ChainTrainer, trace_chain
from fedblend.sim.functional import StackedOptimizer
from fedblend.sim.stacked import batch_plan
from fedblend.sim.vectorized import VectorizedPool, vmap_blocker
from fedblend.task import TorchTask
from fedblend.testing.pools import contract_runners, contract_task

SIZES = (13, 20, 7, 30, 25, 16, 3)


def _compare(task, config=None, sizes=SIZES, chunk_size=3, atol=2e-6, chain=None):
    """Vectorized vs sequential training of one round; ``chain``: whether the hand-written
    Linear/ReLU path must have been taken (True) or not (False), None: either."""
    runners = contract_runners(task, sizes=sizes, bad=False)
    w0 = task.init_weights(0)
    plan = RoundPlan(round=2, site_ids=tuple(r.site_id for r in runners), config=config or {}, seed=9)
    pool = VectorizedPool(runners, device="cpu", chunk_size=chunk_size)
    vec = pool.train(plan, w0)
    if chain is not None:
        taken = pool.trainer.chain.reason is None and all(pool.trainer.chain.verified.values())
        assert taken == chain, (pool.trainer.chain.reason, pool.trainer.chain.verified)
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
    _compare(contract_task(**params), config, chain=True)  # the 2NN-style MLP: hand-written path


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
    pool = VectorizedPool(binary, device="cpu")
    vec = pool.train(plan, w0)
    seq = SequentialPool(binary).train(plan, w0)
    assert pool.trainer.chain.kind == "bce" and pool.trainer.chain.verified == {False: True, True: True}
    assert all(a.weights.allclose(b.weights, rtol=1e-5, atol=1e-6) for a, b in zip(vec, seq, strict=True))
    for a, b in zip(vec, seq, strict=True):
        assert a.metrics["train_loss"] == pytest.approx(b.metrics["train_loss"], rel=1e-5)


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


class _TanhMLP(nn.Module):
    """Linear layers with tanh: not a Linear/ReLU chain, but the fused (autograd-probe) path fits."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def test_fused_path_is_taken_for_plain_sgd_on_other_linear_models():
    task = TorchTask(_TanhMLP, lr=0.1, batch_size=4)
    runners = contract_runners(task, bad=False)
    pool = VectorizedPool(runners, device="cpu")
    pool.train(RoundPlan(1, ("s0", "s1")), task.init_weights(0))
    assert "tanh" in (pool.trainer.chain.reason or "")
    assert pool.trainer.fused.ok and pool.trainer.fused.verified
    _compare(task, chain=False)


# -- the hand-written Linear/ReLU path (sim/chain.py) ------------------------------------------


def _sequential_chain(last_relu=False):
    layers = [nn.Flatten(), nn.Linear(12, 6, bias=False), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)]
    if last_relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@pytest.mark.parametrize(
    "task, config",
    [
        (TorchTask("logreg", model_params={"in_features": 12, "num_classes": 3}, lr=0.2, batch_size=4), {}),
        (TorchTask("logreg", model_params={"in_features": 12, "num_classes": 3}, lr=0.1, momentum=0.9), {}),
        (TorchTask(_sequential_chain, lr=0.1, batch_size=5), {"proximal_mu": 0.3, "weight_decay": 0.01}),
        (TorchTask(_sequential_chain, model_params={"last_relu": True}, lr=0.1, batch_size=5), {}),
        (contract_task(lr=0.1, momentum=0.0, batch_size=1), {}),
    ],
)
def test_chain_path_equals_sequential_on_unequal_sites_and_short_batches(task, config):
    # sizes 13, 20, 7, ...: clients finish after different step counts, last batches are short
    vec = _compare(task, config, chain=True)
    assert [u.metrics["steps"] for u in vec][:3] == [-(-n // task.train_config(config).batch_size) for n in SIZES[:3]]


def test_chain_path_reports_each_clients_train_loss_and_checks_short_batches():
    task = contract_task(lr=0.1, momentum=0.0, batch_size=4)
    runners = contract_runners(task, bad=False)
    pool = VectorizedPool(runners, device="cpu", warm_up=False)
    plan = RoundPlan(1, ("s0", "s2", "s3"), seed=5)  # 13 and 7 examples: short last batches
    vec = pool.train(plan, task.init_weights(0))
    seq = SequentialPool(runners).train(plan, task.init_weights(0))
    assert pool.trainer.chain.verified == {False: True, True: True}
    losses = [u.metrics["train_loss"] for u in vec]
    assert len(set(losses)) == 3
    assert losses == pytest.approx([u.metrics["train_loss"] for u in seq], rel=1e-5)


class _SmoothedTask(TorchTask):
    """A task whose loss is not plain cross-entropy: the hand-written path must notice and step aside."""

    def per_example_loss(self, outputs, targets):
        return torch.nn.functional.cross_entropy(outputs, targets, reduction="none", label_smoothing=0.2)

    def loss_fn(self, outputs, targets):
        return self.per_example_loss(outputs, targets).mean()


def test_chain_path_steps_aside_when_the_loss_differs():
    task = _SmoothedTask("mlp", model_params={"in_features": 12, "hidden": 8, "num_classes": 3}, lr=0.1, batch_size=4)
    vec = _compare(task, chain=False)
    assert all(isinstance(u, SiteUpdate) for u in vec)


@pytest.mark.parametrize(
    "model, words",
    [
        (lambda: _LayerTwice(), "more than once"),
        (lambda: _TiedOutsideModule(), "single chain"),
        (lambda: _TanhMLP(), "tanh"),
        (lambda: _WithBatchNorm(), "buffers"),
        (lambda: nn.Sequential(nn.Linear(12, 4), nn.Sigmoid()), "Sigmoid"),
    ],
)
def test_trace_chain_says_why_a_model_is_not_a_linear_relu_chain(model, words):
    got = trace_chain(model())
    assert isinstance(got, str) and words in got


def test_trace_chain_reads_the_2nn():
    layers, flatten = trace_chain(TorchTask("mlp").build_model())
    assert flatten and [(s.in_features, s.out_features, s.relu) for s in layers] == [
        (784, 200, True),
        (200, 200, True),
        (200, 10, False),
    ]


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_chain_path_in_client_groups_on_two_threads_equals_sequential(two_threads, monkeypatch):
    # 11 clients of unequal sizes, two threads of interleaved client groups, minibatches gathered
    # a few steps at a time: each client's result is still the sequential one
    monkeypatch.setattr("fedblend.sim.chain._GATHER_BYTES", 3 * 11 * 4 * 12 * 4)
    groups = []
    run = ChainTrainer.run

    def spy(self, params, anchors, jobs, *args, **kwargs):
        groups.append(len(jobs))
        return run(self, params, anchors, jobs, *args, **kwargs)

    monkeypatch.setattr(ChainTrainer, "run", spy)
    sizes = (13, 20, 7, 30, 25, 16, 3, 9, 11, 4, 22)
    vec = _compare(contract_task(lr=0.1, momentum=0.0), sizes=sizes, chunk_size=11, chain=True)
    assert torch.get_num_threads() == 2  # restored after the round
    assert sorted(groups[-2:]) == [5, 6]  # two groups, in whichever order the threads ran
    assert len({u.metrics["train_loss"] for u in vec}) == len(sizes)
    _compare(contract_task(lr=0.05, momentum=0.9), {"proximal_mu": 0.1}, sizes=sizes, chunk_size=11, chain=True)


def test_a_failing_client_group_fails_the_chunk_not_the_process(two_threads, monkeypatch):
    task = contract_task(lr=0.1, momentum=0.0)
    runners = contract_runners(task, sizes=(13, 20, 7, 30, 25, 16, 3, 9), bad=False)
    pool = VectorizedPool(runners, device="cpu")
    calls = []

    def boom(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("out of memory in a group")

    monkeypatch.setattr(pool.trainer.chain, "run", boom)
    plan = RoundPlan(1, tuple(r.site_id for r in runners), seed=1)
    out = pool.train(plan, task.init_weights(0))  # the pool retries the sites one by one
    seq = SequentialPool(runners).train(plan, task.init_weights(0))
    assert len(calls) == 2 and torch.get_num_threads() == 2
    assert all(a.weights.allclose(b.weights, rtol=1e-6, atol=1e-7) for a, b in zip(out, seq, strict=True))


def test_chain_path_refuses_inputs_its_model_would_not_flatten_or_another_dtype():
    from fedblend.sim.stacked import ClientJob

    no_flatten = ChainTrainer(nn.Sequential(nn.Linear(12, 3)), ["0.weight", "0.bias"], contract_task(), None)
    assert no_flatten.reason is None and not no_flatten.flatten

    def job(x):
        return ClientJob("s", x, torch.zeros(len(x), dtype=torch.int64), [np.arange(len(x))])

    assert no_flatten.usable([job(torch.zeros(4, 12))])
    assert not no_flatten.usable([job(torch.zeros(4, 1, 12))])  # nn.Linear would act on the last axis
    assert not no_flatten.usable([job(torch.zeros(4, 12, dtype=torch.float64))])  # the model is float32
    assert not no_flatten.usable([job(torch.zeros(4, 5))])  # wrong width
    flat = ChainTrainer(
        _sequential_chain(), [n for n, _ in _sequential_chain().named_parameters()], contract_task(), None
    )
    assert flat.flatten and flat.usable([job(torch.zeros(4, 3, 4))])

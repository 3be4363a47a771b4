"""TorchTask and the built-in models: training, determinism, FedProx, evaluation sums, errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedblend.data.base import ArraySplit
from fedblend.errors import ConfigError, DataError, ModelError
from fedblend.task import (
    MODELS,
    Task,
    TorchTask,
    TrainConfig,
    build_model,
    count_parameters,
)
from fedblend.weights import Weights


def blobs(n: int = 200, d: int = 5, classes: int = 3, seed: int = 0) -> ArraySplit:
    """Linearly separable Gaussian blobs."""
    rng = np.random.default_rng(seed)
    centers = 4.0 * rng.standard_normal((classes, d))
    y = rng.integers(0, classes, n)
    x = (centers[y] + rng.standard_normal((n, d))).astype(np.float32)
    return ArraySplit(x, y.astype(np.int64))


def logreg_task(**kw) -> TorchTask:
    params = {"model_params": {"in_features": 5, "num_classes": 3}, "lr": 0.05, "batch_size": 16}
    params.update(kw)
    return TorchTask("logreg", **params)


def manual_logreg(weights: Weights, data: ArraySplit, bce: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-example loss and correctness of a linear model, written out in numpy."""
    W = weights["linear.weight"].astype(np.float64)
    b = weights["linear.bias"].astype(np.float64)
    z = data.x.astype(np.float64) @ W.T + b
    if bce:
        z = z[:, 0]
        loss = np.logaddexp(0.0, z) - data.y * z  # -[y log s(z) + (1-y) log(1-s(z))]
        return loss, ((z > 0).astype(int) == data.y)
    logp = z - np.logaddexp.reduce(z, axis=1, keepdims=True)
    loss = -logp[np.arange(len(data.y)), data.y]
    return loss, (z.argmax(1) == data.y)


# Training ----------------------------------------------------------------------------------------


def test_torch_task_satisfies_the_protocol() -> None:
    assert isinstance(logreg_task(), Task)


def test_training_lowers_loss_on_a_separable_problem() -> None:
    task, data = logreg_task(), blobs()
    w0 = task.init_weights(0)
    before = task.evaluate(w0, data)
    out = task.train(w0, data, {"local_epochs": 5}, seed=1)
    after = task.evaluate(out.weights, data)
    assert out.num_examples == len(data)
    assert after.loss_sum < 0.5 * before.loss_sum
    assert after.correct / len(data) > 0.9
    assert out.metrics["steps"] == 5 * 13  # ceil(200 / 16) batches per epoch
    assert np.isfinite(out.metrics["train_loss"])


def test_binary_logistic_regression_with_bce() -> None:
    data = blobs(classes=2, seed=3)
    task = TorchTask("logreg", model_params={"in_features": 5, "binary": True}, loss="bce", lr=0.1, batch_size=8)
    w0 = task.init_weights(0)
    assert w0["linear.weight"].shape == (1, 5)
    out = task.train(w0, data, {"local_epochs": 3}, seed=0)
    ev = task.evaluate(out.weights, data)
    assert ev.loss_sum < task.evaluate(w0, data).loss_sum and ev.correct / len(data) > 0.9


def test_adam_optimizer_and_config_overrides() -> None:
    task, data = logreg_task(), blobs()
    w0 = task.init_weights(0)
    sgd = task.train(w0, data, {}, seed=0).weights
    adam = task.train(w0, data, {"optimizer": "adam", "lr": 0.01}, seed=0).weights
    assert not sgd.equal(adam)
    assert task.train(w0, data, {"lr": 0.05}, seed=0).weights.equal(sgd)  # same as the default lr
    assert task.optimizer_settings(task.train_config({"optimizer": "adam"}))["name"] == "adam"


def test_determinism_same_seed_identical_different_seed_differs() -> None:
    task, data = logreg_task(), blobs()
    w0 = task.init_weights(0)
    a = task.train(w0, data, {}, seed=11).weights
    b = logreg_task().train(w0, data, {}, seed=11).weights  # another instance, same answer
    c = task.train(w0, data, {}, seed=12).weights
    assert a.equal(b) and a.digest() == b.digest()
    assert not a.equal(c)


def test_init_weights_deterministic_and_global_rng_untouched() -> None:
    task = logreg_task()
    state = torch.get_rng_state()
    a, b, c = task.init_weights(5), task.init_weights(5), task.init_weights(6)
    task.train(a, blobs(), {}, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.equal(b) and not a.equal(c)
    assert all(v.dtype == np.float32 for v in a.values())


def test_proximal_term_pulls_weights_toward_the_global_model() -> None:
    task, data = logreg_task(lr=0.1), blobs()
    w0 = task.init_weights(0)
    cfg = {"local_epochs": 3}

    def dist(mu: float) -> float:
        w = task.train(w0, data, {**cfg, "proximal_mu": mu}, seed=0).weights
        return (w - w0).l2_norm()

    d0, d1, d5 = dist(0.0), dist(1.0), dist(5.0)
    assert d5 < d1 < d0
    assert d5 < 0.5 * d0


class CountingLinear(nn.Module):
    """Counts forward passes in train mode, to check the number of local steps."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 3)
        self.train_calls = 0
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.train_calls += 1
            self.batch_sizes.append(len(x))
        return self.linear(x)


def test_local_steps_exactly_respected_cycling_through_epochs() -> None:
    task = TorchTask(CountingLinear, batch_size=4, lr=0.01)
    data = blobs(n=10)
    out = task.train(task.init_weights(0), data, {"local_steps": 7, "local_epochs": 50}, seed=0)
    model = task.model()
    assert out.metrics["steps"] == 7 and model.train_calls == 7
    assert model.batch_sizes == [4, 4, 2, 4, 4, 2, 4]  # epochs of 10 in batches of 4, reshuffled

    rng = np.random.default_rng(0)
    batches = TorchTask.batch_indices(10, TrainConfig(batch_size=4, local_steps=7), rng)
    assert sorted(np.concatenate(batches[:3]).tolist()) == list(range(10))  # each epoch is a permutation
    assert sorted(np.concatenate(batches[3:6]).tolist()) == list(range(10))
    assert not np.array_equal(np.concatenate(batches[:3]), np.concatenate(batches[3:6]))


def test_model_is_built_once_and_reused() -> None:
    builds = []

    def factory() -> nn.Module:
        builds.append(1)
        return nn.Linear(5, 3)

    task = TorchTask(factory, lr=0.01)
    w = task.init_weights(0)
    data = blobs()
    for s in range(3):
        w = task.train(w, data, {}, seed=s).weights
        task.evaluate(w, data, reference=w)
    assert len(builds) == 1  # init_weights built it, the rest reused it
    assert task.model() is task.model()


# Evaluation --------------------------------------------------------------------------------------


def test_evaluate_sums_match_a_manual_computation() -> None:
    task, data = logreg_task(eval_batch_size=7), blobs(n=50)
    w = task.train(task.init_weights(1), data, {}, seed=0).weights
    ev = task.evaluate(w, data)
    loss, correct = manual_logreg(w, data)
    assert ev.num_examples == 50
    assert ev.loss_sum == pytest.approx(loss.sum(), rel=1e-5)
    assert ev.correct == correct.sum()
    assert ev.diff_sum == 0.0 and ev.diff_sq_sum == 0.0


def test_evaluate_bce_matches_manual_computation() -> None:
    data = blobs(n=40, classes=2, seed=4)
    task = TorchTask("logreg", model_params={"in_features": 5, "binary": True}, loss="bce")
    w = task.init_weights(2)
    ev = task.evaluate(w, data)
    loss, correct = manual_logreg(w, data, bce=True)
    assert ev.loss_sum == pytest.approx(loss.sum(), rel=1e-5) and ev.correct == correct.sum()


def test_reference_difference_sums() -> None:
    task, data = logreg_task(), blobs(n=60)
    w_ref = task.init_weights(0)
    w = task.train(w_ref, data, {}, seed=0).weights
    ev = task.evaluate(w, data, reference=w_ref)
    d = manual_logreg(w, data)[0] - manual_logreg(w_ref, data)[0]
    assert ev.diff_sum == pytest.approx(d.sum(), rel=1e-5, abs=1e-4)
    assert ev.diff_sq_sum == pytest.approx((d**2).sum(), rel=1e-5)
    assert ev.loss_sum == pytest.approx(manual_logreg(w, data)[0].sum(), rel=1e-5)  # scored model, not reference


def test_evaluate_empty_split_is_zero() -> None:
    task, data = logreg_task(), blobs()
    ev = task.evaluate(task.init_weights(0), ArraySplit.empty_like(data))
    assert (ev.num_examples, ev.loss_sum, ev.correct) == (0, 0.0, 0.0)


# Errors ------------------------------------------------------------------------------------------


def test_model_narrower_than_labels_is_a_model_error_with_fix() -> None:
    data = blobs(n=30, classes=3)
    data = ArraySplit(data.x, np.where(data.y == 2, 12, data.y))
    task = TorchTask("logreg", model_params={"in_features": 5, "num_classes": 10})
    for call in (lambda w: task.train(w, data, {}, seed=0), lambda w: task.evaluate(w, data)):
        with pytest.raises(ModelError) as info:
            call(task.init_weights(0))
        msg = str(info.value)
        assert "outputs 10 classes" in msg and "13 classes" in msg and "num_classes=13" in msg


def test_bce_with_several_outputs_is_a_model_error() -> None:
    data = blobs(n=30, classes=2)
    task = TorchTask("logreg", model_params={"in_features": 5, "num_classes": 2}, loss="bce")
    with pytest.raises(ModelError, match=r"one output logit.*outputs 2 values.*2 classes.*binary=True"):
        task.train(task.init_weights(0), data, {}, seed=0)


def test_bce_with_multiclass_labels_and_ce_with_one_output_are_model_errors() -> None:
    task = TorchTask("logreg", model_params={"in_features": 5, "binary": True}, loss="bce")
    with pytest.raises(ModelError, match=r"labels 0/1.*3 classes"):
        task.evaluate(task.init_weights(0), blobs(n=30, classes=3))
    task = TorchTask("logreg", model_params={"in_features": 5, "binary": True}, loss="ce")
    with pytest.raises(ModelError, match="loss='bce'"):
        task.evaluate(task.init_weights(0), blobs(n=30, classes=2))


def test_auto_loss_picks_bce_for_one_logit() -> None:
    data = blobs(n=40, classes=2, seed=4)
    auto = TorchTask("logreg", model_params={"in_features": 5, "binary": True}, loss="auto")
    bce = TorchTask("logreg", model_params={"in_features": 5, "binary": True}, loss="bce")
    w = auto.init_weights(0)
    assert auto.evaluate(w, data) == bce.evaluate(w, data)


def test_weights_of_another_model_are_a_model_error() -> None:
    task = logreg_task()
    other = Weights({"linear.weight": np.zeros((2, 5), np.float32), "linear.bias": np.zeros(2, np.float32)})
    with pytest.raises(ModelError, match=r"linear.weight.*\(3, 5\).*init_weights"):
        task.train(other, blobs(), {}, seed=0)


def test_bad_config_and_inputs_are_clear_errors() -> None:
    task, data = logreg_task(), blobs()
    w = task.init_weights(0)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['learning_rate'\].*lr"):
        task.train(w, data, {"learning_rate": 0.1}, seed=0)
    with pytest.raises(ConfigError, match="'batch_size'"):
        task.train(w, data, {"batch_size": 0}, seed=0)
    with pytest.raises(ConfigError, match="'optimizer'"):
        task.train(w, data, {"optimizer": "rmsprop"}, seed=0)
    with pytest.raises(ConfigError, match="seed"):
        task.train(w, data, {}, seed=-1)
    with pytest.raises(DataError, match="0 examples"):
        task.train(w, ArraySplit.empty_like(data), {}, seed=0)
    with pytest.raises(ConfigError, match="'loss'"):
        TorchTask("logreg", loss="mse")
    with pytest.raises(ConfigError, match="unknown model 'resnet'"):
        TorchTask("resnet")
    with pytest.raises(ConfigError, match="'lr'"):
        TorchTask("mlp", lr=-1.0)


def test_get_params_returns_constructor_params_unchanged() -> None:
    mp = {"in_features": 5, "num_classes": 3}
    task = TorchTask("logreg", model_params=mp, lr=0.2, local_steps=9)
    p = task.get_params()
    assert p["model_fn"] == "logreg" and p["model_params"] is mp
    assert p["lr"] == 0.2 and p["local_steps"] == 9 and p["loss"] == "ce" and p["device"] == "cpu"
    clone = TorchTask(**p)
    assert clone.init_weights(3).equal(task.init_weights(3))
    restored = pickle.loads(pickle.dumps(task))  # process pools ship tasks; the model cache is dropped
    assert restored.init_weights(3).equal(task.init_weights(3))


# Models ------------------------------------------------------------------------------------------


def test_mcmahan_model_parameter_counts() -> None:
    assert count_parameters(build_model("cnn")) == 1_663_370
    assert count_parameters(build_model("mlp")) == 199_210
    assert count_parameters(build_model("cnn", num_classes=62)) == 1_663_370 + 52 * 513


def test_cnn_and_mlp_accept_flat_or_image_inputs() -> None:
    cnn, mlp = build_model("cnn"), build_model("mlp")
    for x in (torch.zeros(3, 784), torch.zeros(3, 28, 28), torch.zeros(3, 1, 28, 28)):
        assert cnn(x).shape == (3, 10) and mlp(x).shape == (3, 10)


def test_char_lstm_trains_on_token_ids() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, (24, 10)).astype(np.int64)
    y = x[:, -1].copy()  # predict the last seen character: learnable
    data = ArraySplit(x, y)
    task = TorchTask(
        "char_lstm", model_params={"vocab_size": 20, "hidden": 32}, optimizer="adam", lr=0.02, batch_size=8
    )
    w0 = task.init_weights(0)
    assert w0["embedding.weight"].shape == (20, 8)
    assert "lstm.weight_hh_l1" in w0  # two layers
    out = task.train(w0, data, {"local_epochs": 10}, seed=0)
    assert task.evaluate(out.weights, data).loss_sum < task.evaluate(w0, data).loss_sum
    full = build_model("char_lstm", vocab_size=80)
    assert (
        full.lstm.hidden_size == 256
        and full.lstm.num_layers == 2
        and full(torch.zeros(2, 80, dtype=torch.long)).shape == (2, 80)
    )


def test_build_model_errors() -> None:
    assert set(MODELS) == {"logreg", "mlp", "cnn", "char_lstm"}
    with pytest.raises(ConfigError, match="unknown model 'vgg'.*char_lstm"):
        build_model("vgg")
    with pytest.raises(ConfigError, match=r"no parameter\(s\) \['classes'\].*num_classes"):
        build_model("cnn", classes=10)
    with pytest.raises(ConfigError, match=r"needs parameter\(s\) \['in_features'\]"):
        build_model("logreg")
    with pytest.raises(ConfigError, match="'hidden'"):
        build_model("mlp", hidden=0)
    with pytest.raises(ConfigError, match="binary=True"):
        build_model("logreg", in_features=3, num_classes=4, binary=True)


def test_per_example_loss_matches_torch_reduction() -> None:
    task = logreg_task()
    out, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.allclose(task.per_example_loss(out, y).mean(), task.loss_fn(out, y))
    assert torch.allclose(task.loss_fn(out, y), F.cross_entropy(out, y))

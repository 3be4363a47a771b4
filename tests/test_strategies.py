"""Strategies against independent numpy reference computations, state round trips, and errors."""

from __future__ import annotations

import numpy as np
import pytest

from fedblend.errors import ConfigError, FedblendError, QuorumError, UpdateRejected
from fedblend.records import SiteUpdate
from fedblend.strategies import (
    STRATEGIES,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    Strategy,
    make_strategy,
)
from fedblend.strategies.aggregate import pseudo_gradient, weighted_average
from fedblend.weights import Weights

SHAPES = {"layer.weight": (4, 3), "layer.bias": (4,)}
COUNTS = [10, 30, 5]


def make_weights(rng: np.random.Generator, scale: float = 1.0) -> Weights:
    return Weights({k: (scale * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()})


def site_updates(rng: np.random.Generator, current: Weights, rnd: int, counts=COUNTS) -> list[SiteUpdate]:
    """Sites move away from ``current`` by different amounts, as local training would."""
    out = []
    for i, n in enumerate(counts):
        noise = make_weights(rng, scale=0.1 * (i + 1))
        out.append(SiteUpdate(site_id=f"s{i}", round=rnd, weights=current + noise, num_examples=n))
    return out


def stack(updates: list[SiteUpdate], key: str) -> np.ndarray:
    return np.stack([u.weights[key].astype(np.float64) for u in updates])


# FedAvg / FedProx -------------------------------------------------------------------------------


def test_fedavg_matches_numpy_weighted_average() -> None:
    rng = np.random.default_rng(0)
    current = make_weights(rng)
    updates = site_updates(rng, current, 1)
    merged = FedAvg().aggregate(current, updates)
    for k in SHAPES:
        ref = np.average(stack(updates, k), axis=0, weights=COUNTS)
        assert merged[k].dtype == np.float32
        np.testing.assert_allclose(merged[k], ref.astype(np.float32), rtol=1e-6, atol=1e-7)


def test_fedavg_copies_integer_counters_from_first_update() -> None:
    current = Weights({"w": np.zeros(2, np.float32), "bn.num_batches_tracked": np.array(3, np.int64)})
    ups = [
        SiteUpdate("a", 1, Weights({"w": np.ones(2, np.float32), "bn.num_batches_tracked": np.array(7, np.int64)}), 1),
        SiteUpdate(
            "b", 1, Weights({"w": 3 * np.ones(2, np.float32), "bn.num_batches_tracked": np.array(9, np.int64)}), 3
        ),
    ]
    merged = FedAvg().aggregate(current, ups)
    np.testing.assert_array_equal(merged["w"], [2.5, 2.5])
    assert merged["bn.num_batches_tracked"].dtype == np.int64 and int(merged["bn.num_batches_tracked"]) == 7


def test_weighted_average_is_sample_weighted_not_uniform() -> None:
    a = {"x": np.array([0.0], np.float32)}
    b = {"x": np.array([1.0], np.float32)}
    assert float(weighted_average([a, b], [1, 3])["x"][0]) == pytest.approx(0.75)


def test_fedprox_configures_mu_and_aggregates_like_fedavg() -> None:
    rng = np.random.default_rng(1)
    current = make_weights(rng)
    updates = site_updates(rng, current, 1)
    prox = FedProx(mu=0.25)
    assert prox.configure(1) == {"proximal_mu": 0.25}
    assert prox.configure(7) == {"proximal_mu": 0.25}
    assert FedAvg().configure(1) == {}
    assert prox.aggregate(current, updates).equal(FedAvg().aggregate(current, updates))


# Server optimizers vs hand-written numpy loops ---------------------------------------------------


def reference_run(kind: str, rounds: int, seed: int, **hp: float) -> list[dict[str, np.ndarray]]:
    """3-round server optimizer written out in numpy, independent of fedblend's helpers."""
    rng = np.random.default_rng(seed)
    w = {k: v.astype(np.float32) for k, v in make_weights(rng).items()}
    m = {k: np.zeros(s) for k, s in SHAPES.items()}
    v = {k: np.zeros(s) for k, s in SHAPES.items()}
    history = []
    for t in range(1, rounds + 1):
        ups = site_updates(rng, Weights(w), t)
        new = {}
        for k in SHAPES:
            delta = np.average(stack(ups, k), axis=0, weights=COUNTS) - w[k].astype(np.float64)
            if kind == "fedavgm":
                m[k] = hp["momentum"] * m[k] + delta
                step = hp["server_lr"] * m[k]
            else:
                m[k] = hp["beta1"] * m[k] + (1 - hp["beta1"]) * delta
                if kind == "fedadam":
                    v[k] = hp["beta2"] * v[k] + (1 - hp["beta2"]) * delta**2
                elif kind == "fedyogi":
                    v[k] = v[k] - (1 - hp["beta2"]) * delta**2 * np.sign(v[k] - delta**2)
                elif kind == "fedadagrad":
                    v[k] = v[k] + delta**2
                lr = hp["server_lr"]
                if hp.get("bias_correction"):
                    lr = lr * np.sqrt(1 - hp["beta2"] ** t) / (1 - hp["beta1"] ** t)
                step = lr * m[k] / (np.sqrt(v[k]) + hp["tau"])
            new[k] = (w[k].astype(np.float64) + step).astype(np.float32)
        w = new
        history.append(w)
    return history


def fedblend_run(strategy: Strategy, rounds: int, seed: int) -> list[Weights]:
    rng = np.random.default_rng(seed)
    w = make_weights(rng)
    history = []
    for t in range(1, rounds + 1):
        w = strategy.aggregate(w, site_updates(rng, w, t))
        history.append(w)
    return history


ADAPTIVE_HP = {"server_lr": 0.05, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}


@pytest.mark.parametrize(
    ("name", "hp"),
    [
        ("fedavgm", {"server_lr": 0.7, "momentum": 0.9}),
        ("fedadam", ADAPTIVE_HP),
        ("fedadam", {**ADAPTIVE_HP, "bias_correction": True}),
        ("fedyogi", ADAPTIVE_HP),
        ("fedadagrad", ADAPTIVE_HP),
        ("fedadam", {"server_lr": 0.01, "beta1": 0.9, "beta2": 0.999, "tau": 1e-8}),  # FLamby heart config
    ],
)
def test_server_optimizer_matches_numpy_reference(name: str, hp: dict) -> None:
    ours = fedblend_run(make_strategy(name, **hp), rounds=3, seed=42)
    ref = reference_run(name, rounds=3, seed=42, **hp)
    for got, want in zip(ours, ref, strict=True):
        for k in SHAPES:
            assert got[k].dtype == np.float32
            np.testing.assert_allclose(got[k], want[k], rtol=2e-6, atol=2e-6)
    # the optimizer really moved the weights differently from plain FedAvg
    fedavg = fedblend_run(FedAvg(), rounds=3, seed=42)
    assert not ours[-1].allclose(fedavg[-1], rtol=1e-4, atol=1e-5)


def test_fedavgm_without_momentum_is_fedavg() -> None:
    a = fedblend_run(FedAvgM(server_lr=1.0, momentum=0.0), rounds=3, seed=3)
    b = fedblend_run(FedAvg(), rounds=3, seed=3)
    for x, y in zip(a, b, strict=True):
        assert x.allclose(y, rtol=1e-6, atol=1e-6)


def test_pseudo_gradient_is_mean_change() -> None:
    cur = {"x": np.array([1.0, 2.0], np.float32)}
    ws = [{"x": np.array([2.0, 2.0], np.float32)}, {"x": np.array([1.0, 6.0], np.float32)}]
    d = pseudo_gradient(cur, ws, [1, 1])
    assert d["x"].dtype == np.float64
    np.testing.assert_allclose(d["x"], [0.5, 2.0])


# State: resume is bit-identical -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_state_round_trip_resumes_bit_identically(name: str) -> None:
    rng = np.random.default_rng(7)
    w0 = make_weights(rng)
    rounds = [site_updates(rng, w0, t) for t in (1, 2, 3)]  # fixed updates, replayed

    uninterrupted = make_strategy(name)
    w = w0
    for ups in rounds:
        w = uninterrupted.aggregate(w, ups)

    first = make_strategy(name)
    w_mid = first.aggregate(first.aggregate(w0, rounds[0]), rounds[1])
    # the state travels as safetensors bytes, as a checkpoint would store it
    saved = {k: Weights.from_bytes(v.to_bytes()) for k, v in first.state_dict().items()}
    assert set(saved) >= {"m", "step"} and all(a.dtype == np.float64 for a in saved["m"].values())

    resumed = make_strategy(name)
    resumed.load_state_dict(saved)
    assert resumed.step_count == 2
    assert resumed.aggregate(w_mid, rounds[2]).equal(w)

    fresh = make_strategy(name)  # without the state the result differs: the state matters
    assert not fresh.aggregate(w_mid, rounds[2]).equal(w)


def test_state_dict_is_empty_before_first_round_and_for_stateless_strategies() -> None:
    assert FedAdam().state_dict() == {}
    assert FedAvg().state_dict() == {}
    FedAvg().load_state_dict({})  # no-op


def test_state_dict_is_a_copy() -> None:
    rng = np.random.default_rng(0)
    s = FedAdam()
    w = make_weights(rng)
    s.aggregate(w, site_updates(rng, w, 1))
    st = s.state_dict()
    st["m"]["layer.bias"][:] = 123.0
    assert not np.any(s.state_dict()["m"]["layer.bias"] == 123.0)


def test_load_state_dict_rejects_foreign_state() -> None:
    rng = np.random.default_rng(0)
    s = FedAvgM()
    w = make_weights(rng)
    s.aggregate(w, site_updates(rng, w, 1))
    with pytest.raises(FedblendError, match="another strategy"):
        FedAdam().load_state_dict(s.state_dict())  # lacks "v"
    with pytest.raises(FedblendError, match="keeps no server state"):
        FedAvg().load_state_dict(s.state_dict())


def test_state_from_another_model_is_a_clear_error() -> None:
    rng = np.random.default_rng(0)
    s = FedYogi()
    w = make_weights(rng)
    s.aggregate(w, site_updates(rng, w, 1))
    other = Weights({"other": np.zeros(3, np.float32)})
    with pytest.raises(FedblendError, match="does not fit the model"):
        s.aggregate(other, [SiteUpdate("a", 2, other, 1)])


# Bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_empty_updates_is_a_quorum_error(name: str) -> None:
    w = make_weights(np.random.default_rng(0))
    with pytest.raises(QuorumError, match="no site updates"):
        make_strategy(name).aggregate(w, [])


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_zero_examples_everywhere_is_a_clear_error(name: str) -> None:
    rng = np.random.default_rng(0)
    w = make_weights(rng)
    ups = site_updates(rng, w, 1, counts=[0, 0])
    with pytest.raises(QuorumError, match="0 training examples"):
        make_strategy(name).aggregate(w, ups)


def test_site_with_zero_examples_gets_zero_weight() -> None:
    rng = np.random.default_rng(0)
    w = make_weights(rng)
    ups = site_updates(rng, w, 1, counts=[4, 0])
    assert FedAvg().aggregate(w, ups).allclose(ups[0].weights, rtol=0, atol=1e-7)


def test_negative_examples_rejects_that_site() -> None:
    rng = np.random.default_rng(0)
    w = make_weights(rng)
    ups = site_updates(rng, w, 1, counts=[4, -1])
    with pytest.raises(UpdateRejected) as info:
        FedAvg().aggregate(w, ups)
    assert info.value.site_id == "s1" and "num_examples" in info.value.reason


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_mismatched_shapes_name_the_site_and_tensor(name: str) -> None:
    rng = np.random.default_rng(0)
    w = make_weights(rng)
    ups = site_updates(rng, w, 1)
    bad = Weights({"layer.weight": np.zeros((4, 2), np.float32), "layer.bias": np.zeros(4, np.float32)})
    ups[2] = SiteUpdate("s2", 1, bad, 5)
    with pytest.raises(UpdateRejected) as info:
        make_strategy(name).aggregate(w, ups)
    assert info.value.site_id == "s2"
    assert "layer.weight" in info.value.reason and "(4, 3)" in info.value.reason


def test_pure_functions_reject_bad_input() -> None:
    a = {"x": np.zeros(2, np.float32)}
    b = {"x": np.zeros(3, np.float32)}
    with pytest.raises(FedblendError, match="shape"):
        weighted_average([a, b], [1, 1])
    with pytest.raises(FedblendError, match="at least one"):
        weighted_average([], [])
    with pytest.raises(FedblendError, match="0 training examples"):
        weighted_average([a, a], [0, 0])
    with pytest.raises(FedblendError, match="2 weights but 1 counts"):
        weighted_average([a, a], [1])
    with pytest.raises(FedblendError, match="finite count"):
        weighted_average([a], [float("nan")])


# Registry and estimator rule --------------------------------------------------------------------


def test_registry_builds_every_strategy_with_its_name() -> None:
    assert set(STRATEGIES) == {"fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"}
    for name, cls in STRATEGIES.items():
        s = make_strategy(name)
        assert type(s) is cls and s.name == name
    assert isinstance(make_strategy("FedAdam"), FedAdam)


def test_unknown_strategy_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        make_strategy("fedsgd")
    assert "'fedsgd'" in str(info.value) and "fedadam" in str(info.value) and "fedavg" in str(info.value)


def test_unknown_parameter_names_it_and_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        make_strategy("fedadam", lr=0.1)
    msg = str(info.value)
    assert "'lr'" in msg and "server_lr" in msg and "tau" in msg
    with pytest.raises(ConfigError, match=r"\(none\)"):
        make_strategy("fedavg", mu=0.1)


@pytest.mark.parametrize(
    ("name", "params", "bad"),
    [
        ("fedprox", {"mu": -1.0}, "mu"),
        ("fedadam", {"beta1": 1.0}, "beta1"),
        ("fedyogi", {"beta2": -0.1}, "beta2"),
        ("fedadagrad", {"tau": 0.0}, "tau"),
        ("fedavgm", {"server_lr": "fast"}, "server_lr"),
        ("fedavgm", {"momentum": float("nan")}, "momentum"),
        ("fedadam", {"bias_correction": "yes"}, "bias_correction"),
        ("fedadam", {"server_lr": True}, "server_lr"),
    ],
)
def test_invalid_parameter_value_names_it(name: str, params: dict, bad: str) -> None:
    with pytest.raises(ConfigError, match=f"'{bad}'"):
        make_strategy(name, **params)


def test_get_params_returns_constructor_params_unchanged_and_clone_rebuilds() -> None:
    s = FedYogi(server_lr=0.5, beta1=0.8, beta2=0.95, tau=1e-6)
    assert s.get_params() == {"server_lr": 0.5, "beta1": 0.8, "beta2": 0.95, "tau": 1e-6}
    assert FedAdam().get_params() == {
        "server_lr": 0.01,
        "beta1": 0.9,
        "beta2": 0.99,
        "tau": 1e-3,
        "bias_correction": False,
    }
    assert FedProx(mu=3).get_params() == {"mu": 3}
    assert FedAvgM().get_params() == {"server_lr": 1.0, "momentum": 0.9}
    assert FedAvg().get_params() == {}
    c = s.clone()
    assert type(c) is FedYogi and c.get_params() == s.get_params() and c is not s
    assert "FedYogi(server_lr=0.5" in repr(s)
    assert FedAdagrad().get_params()["tau"] == 1e-3


def test_server_optimizers_leave_integer_counters_to_the_average_and_configure_nothing() -> None:
    current = Weights({"w": np.zeros(2, np.float32), "n": np.array([3], np.int64)})
    ups = [
        SiteUpdate("a", 1, Weights({"w": np.ones(2, np.float32), "n": np.array([7], np.int64)}), 1),
        SiteUpdate("b", 1, Weights({"w": np.ones(2, np.float32), "n": np.array([9], np.int64)}), 1),
    ]
    for name in ("fedavgm", "fedadam", "fedyogi", "fedadagrad"):
        s = make_strategy(name)
        assert s.configure(1) == {}
        merged = s.aggregate(current, ups)
        assert merged["n"].dtype == np.int64 and merged["n"].tolist() == [7]
        assert merged["w"].dtype == np.float32 and np.all(merged["w"] > 0)
        assert set(s.state_dict()["m"]) == {"w"}  # moments only for float tensors


def test_a_user_strategy_needs_only_aggregate() -> None:
    class Median(Strategy):
        def aggregate(self, current, updates):
            return Weights({k: np.median([u.weights[k] for u in updates], axis=0) for k in current})

    s = Median()
    assert s.get_params() == {} and s.configure(1) == {} and s.state_dict() == {}
    w = Weights({"x": np.zeros(1)})
    ups = [SiteUpdate(str(i), 1, Weights({"x": np.array([float(i)])}), 1) for i in range(3)]
    assert s.aggregate(w, ups)["x"].tolist() == [1.0]
    with pytest.raises(NotImplementedError, match="aggregate"):
        Strategy().aggregate(w, ups)

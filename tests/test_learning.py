"""The TFF-style API and the quickstart example."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import fedblend.learning as fl
from fedblend.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _clients(seed: int = 0, n_clients: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(5, 3))
    out = []
    for _ in range(n_clients):
        x = rng.normal(size=(60, 5)).astype(np.float32)
        out.append((x, np.argmax(x @ w, axis=1).astype(np.int64)))
    return out


def _model() -> torch.nn.Module:
    return torch.nn.Linear(5, 3)


def test_initialize_next_lowers_loss_and_is_deterministic():
    process = fl.build_fedavg(_model, client_optimizer=fl.sgd(0.1), server_optimizer=fl.sgd(1.0), batch_size=10)
    clients = _clients()
    state = process.initialize()
    assert state.round == 0
    losses = []
    for _ in range(4):
        state, metrics = process.next(state, clients)
        losses.append(metrics["client_work"]["train"]["loss"])
        assert metrics["client_work"]["train"]["num_examples"] == 180
    assert state.round == 4 and losses[-1] < losses[0]
    again = process.initialize()
    for _ in range(4):
        again, _ = process.next(again, clients)
    assert again.weights.equal(state.weights)


def test_server_optimizers_map_to_strategies():
    clients = _clients()
    for opt in (fl.sgd(1.0, momentum=0.9), fl.adam(0.05), fl.yogi(0.05), fl.adagrad(0.05)):
        p = fl.build_fedavg(_model, server_optimizer=opt, batch_size=10)
        s = p.initialize()
        s, _ = p.next(s, clients)
        s, _ = p.next(s, clients)
        assert s.optimizer_state, opt  # server optimizer state carried between rounds
    prox = fl.build_fedprox(_model, mu=0.1, batch_size=10)
    s, _ = prox.next(prox.initialize(), clients)
    assert s.round == 1


def test_bad_inputs():
    with pytest.raises(ConfigError, match="server optimizer"):
        fl.build_fedavg(_model, server_optimizer=fl.OptimizerSpec("rmsprop", 0.1))
    with pytest.raises(ConfigError, match="client optimizer"):
        fl.build_fedavg(_model, client_optimizer=fl.yogi(0.1))
    p = fl.build_fedavg(_model)
    with pytest.raises(ConfigError, match="at least one"):
        p.next(p.initialize(), [])
    with pytest.raises(ConfigError, match="empty"):
        p.next(p.initialize(), [(np.zeros((0, 5), np.float32), np.zeros(0, np.int64))])
    with pytest.raises(ConfigError, match="tuple"):
        p.next(p.initialize(), [42])


def test_quickstart_loss_falls_from_round_1_to_5(data_dir, monkeypatch):
    monkeypatch.setenv("FEDBLEND_DATA_DIR", str(data_dir))
    spec = importlib.util.spec_from_file_location("quickstart", REPO / "examples" / "quickstart.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    losses = mod.main()
    assert len(losses) == 5 and losses[4] < losses[0]

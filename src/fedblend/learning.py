"""A TensorFlow-Federated-style API over the fedblend round loop.

    import fedblend.learning as fl

    process = fl.build_fedavg(model_fn, client_optimizer=fl.sgd(0.1), server_optimizer=fl.sgd(1.0))
    state = process.initialize()
    for _ in range(5):
        state, metrics = process.next(state, client_datasets)   # [(x, y), ...] or ArraySplit
        print(metrics["client_work"]["train"]["loss"])

Each ``next`` runs exactly one round of the same ``Federation`` loop the CLI uses, over an
in-process pool of the given client datasets. See examples/quickstart.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedblend.data.base import ArraySplit, SiteData
from fedblend.engine.federation import Federation
from fedblend.engine.site import SiteRunner
from fedblend.errors import ConfigError
from fedblend.sim.local import SequentialPool
from fedblend.strategies import make_strategy
from fedblend.weights import Weights

__all__ = ["OptimizerSpec", "sgd", "adam", "yogi", "adagrad", "ServerState", "LearningProcess", "build_fedavg", "build_fedprox"]


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    lr: float
    params: dict[str, float] = field(default_factory=dict)


def sgd(learning_rate: float, momentum: float = 0.0) -> OptimizerSpec:
    return OptimizerSpec("sgd", learning_rate, {"momentum": momentum})


def adam(learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.99, epsilon: float = 1e-3) -> OptimizerSpec:
    return OptimizerSpec("adam", learning_rate, {"beta1": beta_1, "beta2": beta_2, "tau": epsilon})


def yogi(learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.99, epsilon: float = 1e-3) -> OptimizerSpec:
    return OptimizerSpec("yogi", learning_rate, {"beta1": beta_1, "beta2": beta_2, "tau": epsilon})


def adagrad(learning_rate: float, epsilon: float = 1e-3) -> OptimizerSpec:
    return OptimizerSpec("adagrad", learning_rate, {"tau": epsilon})


@dataclass(frozen=True)
class ServerState:
    """The global model, the round counter and the server optimizer's state."""

    weights: Weights
    round: int = 0
    optimizer_state: dict[str, Weights] = field(default_factory=dict)


ClientData = ArraySplit | tuple[Any, Any] | Any


def _as_split(data: ClientData, i: int) -> ArraySplit:
    if isinstance(data, ArraySplit):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        return ArraySplit(np.asarray(data[0]), np.asarray(data[1]))
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):  # torch Dataset
        from fedblend.data import from_torch_dataset

        return from_torch_dataset(data)
    raise ConfigError(f"client dataset #{i} must be an (x, y) tuple, an ArraySplit or a torch Dataset (got {type(data).__name__})")


def _server_strategy(opt: OptimizerSpec, mu: float | None) -> Any:
    if mu is not None:
        if opt.name != "sgd" or opt.lr != 1.0:
            raise ConfigError("FedProx averages on the server: use server_optimizer=sgd(1.0)")
        return make_strategy("fedprox", mu=mu)
    if opt.name == "sgd":
        mom = opt.params.get("momentum", 0.0)
        if opt.lr == 1.0 and mom == 0.0:
            return make_strategy("fedavg")
        return make_strategy("fedavgm", server_lr=opt.lr, momentum=mom)
    if opt.name in ("adam", "yogi", "adagrad"):
        return make_strategy("fed" + opt.name, server_lr=opt.lr, **opt.params)
    raise ConfigError(f"server optimizer must be sgd, adam, yogi or adagrad (got {opt.name!r})")


class LearningProcess:
    """``initialize() -> state``; ``next(state, client_datasets) -> (state, metrics)``."""

    def __init__(self, task: Any, strategy_factory: Callable[[], Any], seed: int) -> None:
        self.task = task
        self._strategy_factory = strategy_factory
        self.seed = seed

    def initialize(self) -> ServerState:
        return ServerState(weights=self.task.init_weights(self.seed))

    def next(self, state: ServerState, client_datasets: Sequence[ClientData]) -> tuple[ServerState, dict[str, Any]]:
        if not client_datasets:
            raise ConfigError("next() needs at least one client dataset")
        runners = []
        for i, d in enumerate(client_datasets):
            split = _as_split(d, i)
            if len(split) == 0:
                raise ConfigError(f"client dataset #{i} is empty")
            empty = ArraySplit.empty_like(split)
            runners.append(SiteRunner(SiteData(f"client_{i}", split, empty, empty), self.task))
        strategy = self._strategy_factory()
        strategy.load_state_dict(state.optimizer_state)
        fed = Federation(
            pool=SequentialPool(runners),
            strategy=strategy,
            initial_weights=state.weights,
            rounds=state.round + 1,
            seed=self.seed,
            eval_every=0,
            eval_splits=(),
        )
        fed.round = state.round
        result = fed.step()
        losses = [m.get("train_loss", float("nan")) for m in result.train_metrics.values()]
        counts = [m.get("num_examples", 0) for m in result.train_metrics.values()]
        metrics = {
            "client_work": {
                "train": {
                    "loss": float(np.average(losses, weights=counts)),
                    "num_examples": int(sum(counts)),
                }
            },
            "round": result.round,
        }
        return ServerState(result.weights, result.round, strategy.state_dict()), metrics


def _build(model_fn: Callable[[], Any], client_optimizer: OptimizerSpec, server_optimizer: OptimizerSpec,
           mu: float | None, *, loss: str, local_epochs: int, local_steps: int | None, batch_size: int, seed: int) -> LearningProcess:
    from fedblend.task import TorchTask

    if client_optimizer.name not in ("sgd", "adam"):
        raise ConfigError(f"client optimizer must be sgd or adam (got {client_optimizer.name!r})")
    task = TorchTask(
        model_fn,
        loss=loss,
        optimizer=client_optimizer.name,
        lr=client_optimizer.lr,
        momentum=client_optimizer.params.get("momentum", 0.0),
        local_epochs=local_epochs,
        local_steps=local_steps,
        batch_size=batch_size,
    )
    _server_strategy(server_optimizer, mu)  # validate now, not at the first round
    return LearningProcess(task, lambda: _server_strategy(server_optimizer, mu), seed)


def build_fedavg(model_fn: Callable[[], Any], client_optimizer: OptimizerSpec | None = None,
                 server_optimizer: OptimizerSpec | None = None, *, loss: str = "ce", local_epochs: int = 1,
                 local_steps: int | None = None, batch_size: int = 20, seed: int = 0) -> LearningProcess:
    """Federated averaging (McMahan et al. 2017; server optimizer per Reddi et al. 2020)."""
    return _build(model_fn, client_optimizer or sgd(0.1), server_optimizer or sgd(1.0), None, loss=loss,
                  local_epochs=local_epochs, local_steps=local_steps, batch_size=batch_size, seed=seed)


def build_fedprox(model_fn: Callable[[], Any], mu: float, client_optimizer: OptimizerSpec | None = None, *,
                  loss: str = "ce", local_epochs: int = 1, local_steps: int | None = None, batch_size: int = 20,
                  seed: int = 0) -> LearningProcess:
    """FedProx (Li et al. 2020, arXiv:1812.06127): FedAvg with a proximal term on the sites."""
    return _build(model_fn, client_optimizer or sgd(0.1), sgd(1.0), mu, loss=loss, local_epochs=local_epochs,
                  local_steps=local_steps, batch_size=batch_size, seed=seed)

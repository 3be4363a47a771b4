"""Aggregation strategies (pure, no I/O) and their registry.

from fedblend.strategies import make_strategy
strategy = make_strategy("fedadam", server_lr=0.01)
"""

from __future__ import annotations

from typing import Any

from fedblend.errors import ConfigError
from fedblend.strategies.base import Strategy, check_updates
from fedblend.strategies.fedavg import FedAvg
from fedblend.strategies.fedopt import FedAdagrad, FedAdam, FedAvgM, FedYogi
from fedblend.strategies.fedprox import FedProx

__all__ = [
    "Strategy",
    "check_updates",
    "FedAvg",
    "FedProx",
    "FedAvgM",
    "FedAdam",
    "FedYogi",
    "FedAdagrad",
    "STRATEGIES",
    "make_strategy",
]

STRATEGIES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedavgm": FedAvgM,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
}


def make_strategy(name: str, **params: Any) -> Strategy:
    """Build the strategy registered as ``name`` (case-insensitive) with keyword ``params``.

    Unknown names and parameters raise ConfigError listing the valid ones.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; valid strategies: {', '.join(sorted(STRATEGIES))}")
    cls = STRATEGIES[key]
    valid = cls.param_names()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(
            f"strategy {key!r} has no parameter(s) {unknown}; valid parameters: "
            f"{', '.join(valid) if valid else '(none)'}"
        )
    return cls(**params)

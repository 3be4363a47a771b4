"""TrainConfig: the local-training settings a site uses for one round, validated.

A task has defaults (its constructor parameters); each round's plan may override any of them and
add ``proximal_mu`` (FedProx). Unknown keys are an error, so a typo never trains silently with the
default.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedblend.errors import ConfigError

__all__ = ["TrainConfig", "OPTIMIZERS"]

OPTIMIZERS = ("sgd", "adam")


def _number(name: str, value: Any, *, low: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ConfigError(
            f"train config: '{name}' must be a finite number (got {value!r} that is a {type(value).__name__})"
        )
    if value < low or (low_open and value == low):
        op = ">" if low_open else ">="
        raise ConfigError(f"train config: '{name}' must be {op} {low} (got {value!r})")


def _count(name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(
            f"train config: '{name}' must be an integer >= 1{' or None' if optional else ''} "
            f"(got {value!r} that is a {type(value).__name__})"
        )


@dataclass(frozen=True)
class TrainConfig:
    """Local training settings. ``local_steps`` (minibatches) wins over ``local_epochs`` when set."""

    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    local_epochs: int = 1
    local_steps: int | None = None
    batch_size: int = 32
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        _number("lr", self.lr, low=0.0, low_open=True)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"train config: 'optimizer' must be one of {list(OPTIMIZERS)} (got {self.optimizer!r})")
        _number("momentum", self.momentum, low=0.0)
        if self.momentum >= 1:
            raise ConfigError(f"train config: 'momentum' must be < 1 (got {self.momentum!r})")
        _number("weight_decay", self.weight_decay, low=0.0)
        _number("proximal_mu", self.proximal_mu, low=0.0)
        _count("local_epochs", self.local_epochs)
        _count("local_steps", self.local_steps, optional=True)
        _count("batch_size", self.batch_size)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def merged(self, overrides: Mapping[str, Any]) -> TrainConfig:
        """A copy with ``overrides`` applied; unknown keys raise ConfigError listing the valid ones."""
        unknown = sorted(set(overrides) - set(self.keys()))
        if unknown:
            raise ConfigError(f"train config has unknown key(s) {unknown}; valid keys: {', '.join(self.keys())}")
        return dataclasses.replace(self, **dict(overrides)) if overrides else self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

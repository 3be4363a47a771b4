"""The search space of a tune run: dotted job keys -> int, float (linear or log) or categorical ranges.

In the job file::

    [tune.space."train.lr"]
    type = "float"
    low = 1e-4
    high = 1e-1
    log = true

    [tune.space]
    "train.local_steps" = { type = "int", low = 10, high = 200, step = 10 }
    "strategy.name" = { type = "categorical", choices = ["fedavg", "fedyogi"] }
    "strategy.server_lr" = { type = "float", low = 1e-3, high = 1.0, log = true, when = { "strategy.name" = ["fedyogi"] } }

``when`` makes a parameter conditional: it is drawn only when the named (earlier) parameters took
one of the listed values, so a FedAvg trial never carries a server learning rate. ``grid`` lists
the values the grid searcher tries (default: every choice, every integer when there are at most
``grid_points`` of them, else ``grid_points`` evenly spaced values, log-spaced for ``log = true``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ParamSpec", "Scalar", "suggest_params", "grid_configs", "active_keys"]

Scalar = str | int | float | bool


class ParamSpec(BaseModel):
    """One searched job key: its type and range (estimator rule: fields stored as given)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(default=None, gt=0)
    choices: list[Scalar] | None = None
    grid: list[Scalar] | None = Field(default=None, min_length=1)
    grid_points: int = Field(default=5, ge=2, le=1000)
    when: dict[str, list[Scalar]] | None = None

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError('a categorical parameter needs choices = [...] (e.g. choices = ["fedavg", "fedyogi"])')
            for k in ("low", "high", "step"):
                if getattr(self, k) is not None:
                    raise ValueError(f"{k} does not apply to a categorical parameter; list its values in choices")
            if self.log:
                raise ValueError("log does not apply to a categorical parameter")
            if len({repr(c) for c in self.choices}) != len(self.choices):
                raise ValueError(f"choices must be distinct (got {self.choices!r})")
            if self.grid is not None:
                bad = [g for g in self.grid if g not in self.choices]
                if bad:
                    raise ValueError(f"grid values {bad!r} are not among choices {self.choices!r}")
            return self
        if self.choices is not None:
            raise ValueError(f'choices applies to type = "categorical" only (this parameter is {self.type!r})')
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs both low and high (got low={self.low!r}, high={self.high!r})")
        if self.type == "int":
            for k in ("low", "high", "step"):
                v = getattr(self, k)
                if v is not None and float(v) != int(v):
                    raise ValueError(f"{k} of an int parameter must be a whole number (got {v!r})")
        if not self.low < self.high:
            raise ValueError(f"low must be below high (got low={self.low!r}, high={self.high!r}); swap them")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale parameter needs low > 0 (got low={self.low!r})")
        if self.log and self.step is not None:
            raise ValueError("step and log = true cannot be combined; drop one")
        if self.grid is not None:
            for g in self.grid:
                if isinstance(g, bool) or not isinstance(g, int | float) or not self.low <= g <= self.high:
                    raise ValueError(f"grid value {g!r} is not a number in [{self.low}, {self.high}]")
        return self

    # -- drawing values ---------------------------------------------------------------------------
    def suggest(self, trial: Any, name: str) -> Scalar:
        """Ask an Optuna trial for a value of this parameter."""
        if self.type == "categorical":
            assert self.choices is not None
            return trial.suggest_categorical(name, self.choices)
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return int(trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log))
        return float(trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.log))

    def grid_values(self) -> list[Scalar]:
        """The values the grid searcher tries for this parameter."""
        if self.grid is not None:
            return [int(g) if self.type == "int" else g for g in self.grid]
        if self.type == "categorical":
            assert self.choices is not None
            return list(self.choices)
        assert self.low is not None and self.high is not None
        n = self.grid_points
        if self.type == "int":
            step = int(self.step or 1)
            values = list(range(int(self.low), int(self.high) + 1, step))
            if len(values) <= n:
                return values  # type: ignore[return-value]
            if self.log:
                raw = np.geomspace(self.low, self.high, n)
            else:
                raw = np.linspace(self.low, self.high, n)
            snapped = sorted({int(self.low) + step * round((v - self.low) / step) for v in raw})
            return [v for v in snapped if self.low <= v <= self.high]
        if self.log:
            return [float(v) for v in np.geomspace(self.low, self.high, n)]
        if self.step is not None:
            count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
            values = [self.low + i * self.step for i in range(count)]
            if len(values) <= n:
                return values
            idx = np.unique(np.round(np.linspace(0, count - 1, n)).astype(int))
            return [values[i] for i in idx]
        return [float(v) for v in np.linspace(self.low, self.high, n)]


def _active(p: ParamSpec, chosen: Mapping[str, Any]) -> bool:
    if not p.when:
        return True
    return all(k in chosen and chosen[k] in allowed for k, allowed in p.when.items())


def active_keys(space: Mapping[str, ParamSpec], values: Mapping[str, Any]) -> list[str]:
    """The keys of ``space`` that apply given the values of the earlier ones."""
    return [k for k, p in space.items() if _active(p, values)]


def suggest_params(trial: Any, space: Mapping[str, ParamSpec]) -> dict[str, Scalar]:
    """One configuration from an Optuna trial, honoring ``when`` conditions in declaration order."""
    values: dict[str, Scalar] = {}
    for key, p in space.items():
        if _active(p, values):
            values[key] = p.suggest(trial, key)
    return values


def grid_configs(space: Mapping[str, ParamSpec]) -> list[dict[str, Scalar]]:
    """Every distinct configuration of the grid (conditional parameters only where they apply)."""
    configs: list[dict[str, Scalar]] = [{}]
    for key, p in space.items():
        grown: list[dict[str, Scalar]] = []
        for cfg in configs:
            if _active(p, cfg):
                grown.extend({**cfg, key: v} for v in p.grid_values())
            else:
                grown.append(cfg)
        configs = grown
    # distinct, order kept
    seen: set[tuple[tuple[str, str], ...]] = set()
    out: list[dict[str, Scalar]] = []
    for cfg in configs:
        sig = tuple(sorted((k, repr(v)) for k, v in cfg.items()))
        if sig not in seen:
            seen.add(sig)
            out.append(cfg)
    return out


"""Where a candidate's score comes from.

* ``FederatedValidation`` (default): the candidate goes to the sites, which score it on their own
  validation split against the FedAvg reference and return scalar sums only (``EvalReport``).
* ``ServerValidation``: the operator holds a validation set ``(x, y)`` and scores candidates on
  the server with the same Task; nothing goes to the sites.

The search never touches a test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from fedblend.data.base import ArraySplit
from fedblend.errors import ConfigError
from fedblend.records import EvalReport, SiteFailure
from fedblend.task.base import Task
from fedblend.weights import Weights

__all__ = ["Signal", "FederatedValidation", "ServerValidation", "SEARCH_SPLIT", "EvalPool"]

SEARCH_SPLIT = "val"


class EvalPool(Protocol):
    """The two SitePool calls a synthesis makes (``fedblend.engine.ports.SitePool`` has them)."""

    def site_ids(self) -> list[str]: ...

    def evaluate(
        self, weights: Weights, site_ids: Sequence[str], split: str, reference: Weights | None = None
    ) -> list[EvalReport | SiteFailure]: ...


class Signal(Protocol):
    kind: str

    def participants(self, pool: EvalPool) -> list[str]: ...

    def evaluate(
        self, pool: EvalPool, weights: Weights, reference: Weights, site_ids: Sequence[str]
    ) -> list[EvalReport | SiteFailure]: ...


class FederatedValidation:
    """Sites score candidates on their validation split; only scalar sums come back."""

    kind = "federated"

    def participants(self, pool: EvalPool) -> list[str]:
        return list(pool.site_ids())

    def evaluate(
        self, pool: EvalPool, weights: Weights, reference: Weights, site_ids: Sequence[str]
    ) -> list[EvalReport | SiteFailure]:
        return list(pool.evaluate(weights, list(site_ids), SEARCH_SPLIT, reference=reference))


class ServerValidation:
    """A validation set the operator owns, scored on the server with ``task``."""

    kind = "server"

    def __init__(self, x: Any, y: Any, task: Task, *, name: str = "server") -> None:
        x_arr, y_arr = np.asarray(x), np.asarray(y)
        if len(x_arr) == 0:
            raise ConfigError("ServerValidation: the validation set is empty; give at least one example (x, y)")
        if len(x_arr) != len(y_arr):
            raise ConfigError(f"ServerValidation: x has {len(x_arr)} rows but y has {len(y_arr)}; they must match")
        self.data = ArraySplit(x_arr, y_arr.astype(np.int64))
        self.task = task
        self.name = name

    def participants(self, pool: EvalPool) -> list[str]:
        return [self.name]

    def evaluate(
        self, pool: EvalPool, weights: Weights, reference: Weights, site_ids: Sequence[str]
    ) -> list[EvalReport | SiteFailure]:
        s = self.task.evaluate(weights, self.data, reference)
        return [
            EvalReport(
                site_id=self.name,
                split=SEARCH_SPLIT,
                num_examples=s.num_examples,
                loss_sum=s.loss_sum,
                correct=s.correct,
                diff_sum=s.diff_sum,
                diff_sq_sum=s.diff_sq_sum,
            )
        ]

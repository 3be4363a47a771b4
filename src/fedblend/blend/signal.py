"""Where a candidate's score comes from.

* ``FederatedValidation`` (default): the candidate goes to the sites, which score it on their own
  validation split against the FedAvg reference and return scalar sums only (``EvalReport``).
* ``ServerValidation``: the operator holds a validation set ``(x, y)`` and scores candidates on
  the server with the same Task; nothing goes to the sites. From a job file:
  ``[blend] signal = "server"`` with ``server_data = "val.npz"`` (``load_server_data``).

The search never touches a test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedblend.data.base import ArraySplit
from fedblend.errors import ConfigError
from fedblend.records import EvalReport, SiteFailure
from fedblend.task.base import Task
from fedblend.weights import Weights

__all__ = ["Signal", "FederatedValidation", "ServerValidation", "SEARCH_SPLIT", "EvalPool", "load_server_data"]

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


def load_server_data(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` from an ``.npz`` file holding arrays ``x`` (features, preprocessed as at the sites)
    and ``y`` (integer labels); read without pickle."""
    p = Path(path)
    where = f"[blend].server_data = {str(path)!r}"
    if not p.is_file():
        raise ConfigError(
            f"{where}: no such file (resolved to {p.resolve()}); give the path of an .npz file with arrays x and y, "
            "e.g. np.savez('val.npz', x=x, y=y)"
        )
    try:
        with np.load(p, allow_pickle=False) as z:
            names = list(z.files)
            if "x" not in names or "y" not in names:
                raise ConfigError(
                    f"{where}: the file holds arrays {names}, expected 'x' (features) and 'y' (labels); "
                    "save it with np.savez(path, x=x, y=y)"
                )
            x, y = z["x"], z["y"]
    except ConfigError:
        raise
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{where}: not a readable .npz file ({type(exc).__name__}: {exc}); save it with np.savez(path, x=x, y=y)"
        ) from None
    whole = y.dtype.kind in "iu" or (y.dtype.kind == "f" and bool(np.all(np.mod(y, 1) == 0)))
    if y.ndim != 1 or not whole or x.dtype.kind not in "iuf":
        raise ConfigError(
            f"{where}: expected x numeric and y a 1-D array of integer class labels "
            f"(got x {x.dtype} {x.shape}, y {y.dtype} {y.shape})"
        )
    if x.dtype.kind == "f":
        x = x.astype(np.float32, copy=False)
    return x, y.astype(np.int64)

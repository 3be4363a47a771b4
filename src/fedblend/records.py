"""Frozen records that cross boundaries: between server and sites, the engine and the store.

They are typed payloads, never string-keyed dicts spelled twice (STYLE.md #6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from fedblend.weights import Weights

__all__ = [
    "RoundPlan",
    "SiteUpdate",
    "SiteFailure",
    "EvalReport",
    "SiteStats",
    "RoundResult",
]

Split = str  # "train" | "val" | "test"


@dataclass(frozen=True)
class RoundPlan:
    """What the server asks the chosen sites to do in one round."""

    round: int
    site_ids: tuple[str, ...]
    config: dict[str, Any] = field(default_factory=dict)  # lr, local_epochs, proximal_mu, ...
    seed: int = 0


@dataclass(frozen=True)
class SiteUpdate:
    """A site's answer to a training request."""

    site_id: str
    round: int
    weights: Weights
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    duration_s: float = 0.0


@dataclass(frozen=True)
class SiteFailure:
    """A site that did not deliver a usable update, and why."""

    site_id: str
    round: int
    reason: str
    kind: str = "error"  # "error" | "rejected" | "timeout" | "offline"


@dataclass(frozen=True)
class EvalReport:
    """Scalar sums a site returns when it scores a model; never per-example data.

    ``diff_sum``/``diff_sq_sum`` are the sum and sum of squares, over examples, of
    (loss under the scored model - loss under a reference model), when a reference was given.
    """

    site_id: str
    split: Split
    num_examples: int
    loss_sum: float
    correct: float
    diff_sum: float = 0.0
    diff_sq_sum: float = 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / self.num_examples if self.num_examples else math.nan

    @property
    def accuracy(self) -> float:
        return self.correct / self.num_examples if self.num_examples else math.nan


@dataclass(frozen=True)
class SiteStats:
    """Privacy-safe profile of a site's data: counts below ``min_cell`` are suppressed (None)."""

    site_id: str
    num_train: int
    num_val: int
    num_test: int
    label_counts: dict[str, int | None] = field(default_factory=dict)
    features: dict[str, dict[str, float | None]] = field(default_factory=dict)  # name -> mean/std/missing
    data_version: str = ""
    min_cell: int = 5

    def to_json(self) -> dict[str, Any]:
        return {
            "site_id": self.site_id,
            "num_train": self.num_train,
            "num_val": self.num_val,
            "num_test": self.num_test,
            "label_counts": self.label_counts,
            "features": self.features,
            "data_version": self.data_version,
            "min_cell": self.min_cell,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SiteStats:
        return cls(**d)


@dataclass(frozen=True)
class RoundResult:
    """What one round produced; the engine commits it to the store atomically."""

    round: int
    weights: Weights
    participants: tuple[str, ...]
    failures: tuple[SiteFailure, ...]
    train_metrics: dict[str, dict[str, float]]  # site -> metrics
    eval_reports: tuple[EvalReport, ...] = ()
    global_metrics: dict[str, float] = field(default_factory=dict)
    blend: dict[str, Any] | None = None
    duration_s: float = 0.0

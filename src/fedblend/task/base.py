"""The Task protocol: what a site runs. Build a model, train it locally, score it.

A Task is stateless between calls: everything it needs arrives as arguments, so the same Task
object serves every site in a simulation and the single site of a deployed agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from fedblend.data.base import ArraySplit
from fedblend.weights import Weights

__all__ = ["Task", "TrainOutput", "EvalSums"]


@dataclass(frozen=True)
class TrainOutput:
    weights: Weights
    num_examples: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class EvalSums:
    num_examples: int
    loss_sum: float
    correct: float
    diff_sum: float = 0.0
    diff_sq_sum: float = 0.0


@runtime_checkable
class Task(Protocol):
    def init_weights(self, seed: int) -> Weights:
        """Fresh model weights, deterministic in ``seed``."""
        ...

    def train(self, weights: Weights, data: ArraySplit, config: dict[str, Any], seed: int) -> TrainOutput:
        """Local training from ``weights``; ``config`` holds lr, local_epochs/steps, batch_size,
        proximal_mu, ... (see ``fedblend.task.TrainConfig``)."""
        ...

    def evaluate(self, weights: Weights, data: ArraySplit, reference: Weights | None = None) -> EvalSums:
        """Loss and correct-count sums on ``data``; with ``reference``, also the sum and sum of
        squares of per-example (loss - reference loss)."""
        ...

"""Aggregation math as pure functions on arrays: strategies decide *what* to combine, these do it.

Nothing here keeps state or does I/O. Means are accumulated in float64; server-optimizer moments
are float64 arrays (the caller casts the final weights back to each tensor's dtype).

Server-optimizer rules follow Reddi et al., "Adaptive Federated Optimization" (ICLR 2021,
arXiv:2003.00295), Algorithm 2, exactly as FLamby's ``flamby/strategies/fed_opt.py`` applies
them: moments start at zero, there is no bias correction, and ``tau`` is added after the square
root. FedAvgM follows Hsu et al. 2019 (arXiv:1909.06335) as Flower's ``FedAvgM`` does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from fedblend.errors import FedblendError
from fedblend.weights import Weights, weighted_sum

__all__ = [
    "sample_fractions",
    "weighted_average",
    "pseudo_gradient",
    "apply_step",
    "ema",
    "heavy_ball",
    "adam_second_moment",
    "yogi_second_moment",
    "adagrad_second_moment",
    "adaptive_step",
    "adam_bias_corrected_lr",
]

Arrays = Mapping[str, np.ndarray]


def sample_fractions(num_examples: Sequence[float]) -> list[float]:
    """``n_k / sum(n)`` for each site; raises FedblendError when a count is bad or all are zero."""
    if len(num_examples) == 0:
        raise FedblendError("aggregation needs at least one update (got none)")
    counts: list[float] = []
    for i, n in enumerate(num_examples):
        if isinstance(n, bool) or not isinstance(n, (int, float, np.integer, np.floating)):
            raise FedblendError(f"num_examples[{i}] must be a number (got {n!r} that is a {type(n).__name__})")
        if not math.isfinite(float(n)) or n < 0:
            raise FedblendError(f"num_examples[{i}] must be a finite count >= 0 (got {n!r})")
        counts.append(float(n))
    total = math.fsum(counts)
    if total <= 0:
        raise FedblendError(
            f"cannot weight {len(counts)} update(s) by sample count: every one reports 0 training examples; "
            "check that the sites have training data"
        )
    return [c / total for c in counts]


def _check_same_structure(items: Sequence[Arrays], what: str = "weights") -> None:
    first = items[0]
    spec0 = {k: np.shape(v) for k, v in first.items()}
    for i, item in enumerate(items[1:], start=1):
        spec = {k: np.shape(v) for k, v in item.items()}
        if spec == spec0:
            continue
        missing, extra = sorted(set(spec0) - set(spec)), sorted(set(spec) - set(spec0))
        if missing or extra:
            raise FedblendError(f"{what}[{i}] has other tensors than {what}[0]: missing {missing}, unexpected {extra}")
        bad = next(k for k in spec0 if spec0[k] != spec[k])
        raise FedblendError(
            f"{what}[{i}]: tensor {bad!r} must have shape {spec0[bad]} like {what}[0] (got {spec[bad]})"
        )


def weighted_average(list_of_weights: Sequence[Arrays], num_examples: Sequence[float]) -> Weights:
    """Sample-weighted mean ``sum_k n_k w_k / sum_k n_k``, accumulated in float64.

    Each float tensor is cast back to its dtype; non-float tensors (counters) are copied from the
    first item.
    """
    if len(list_of_weights) != len(num_examples):
        raise FedblendError(f"weighted_average: {len(list_of_weights)} weights but {len(num_examples)} counts")
    fractions = sample_fractions(num_examples)
    _check_same_structure(list_of_weights)
    return weighted_sum(list_of_weights, fractions)


def pseudo_gradient(
    current: Arrays, list_of_weights: Sequence[Arrays], num_examples: Sequence[float]
) -> dict[str, np.ndarray]:
    """``delta = sum_k p_k (w_k - current)`` in float64, for the float tensors of ``current``.

    This is the weighted mean of the sites' model changes (FLamby's ``aggregated_delta_weights``);
    it equals ``weighted_average(...) - current`` but keeps float64 throughout.
    """
    if len(list_of_weights) != len(num_examples):
        raise FedblendError(f"pseudo_gradient: {len(list_of_weights)} weights but {len(num_examples)} counts")
    fractions = sample_fractions(num_examples)
    _check_same_structure([current, *list_of_weights], what="weights")
    out: dict[str, np.ndarray] = {}
    for k, c in current.items():
        c = np.asarray(c)
        if c.dtype.kind != "f":
            continue
        c64 = c.astype(np.float64)
        acc = np.zeros(c.shape, dtype=np.float64)
        for p, w in zip(fractions, list_of_weights, strict=True):
            acc += p * (np.asarray(w[k], dtype=np.float64) - c64)
        out[k] = acc
    return out


def apply_step(current: Arrays, step: Mapping[str, np.ndarray], rest: Arrays | None = None) -> Weights:
    """``current + step`` per float tensor (float64 sum, cast back to the tensor's dtype).

    Tensors without a step (non-float counters) come from ``rest`` when given, else ``current``.
    """
    out: dict[str, np.ndarray] = {}
    for k, c in current.items():
        c = np.asarray(c)
        if k in step:
            out[k] = (c.astype(np.float64) + step[k]).astype(c.dtype)
        else:
            out[k] = np.array(rest[k] if rest is not None else c)
    return Weights(out)


# Moment rules (one tensor at a time; all float64) ----------------------------------------------


def ema(m: np.ndarray, delta: np.ndarray, beta: float) -> np.ndarray:
    """First moment: ``beta * m + (1 - beta) * delta``."""
    return beta * m + (1.0 - beta) * delta


def heavy_ball(m: np.ndarray, delta: np.ndarray, momentum: float) -> np.ndarray:
    """FedAvgM momentum buffer: ``momentum * m + delta`` (Hsu et al. 2019)."""
    return momentum * m + delta


def adam_second_moment(v: np.ndarray, delta: np.ndarray, beta2: float) -> np.ndarray:
    """``beta2 * v + (1 - beta2) * delta^2``."""
    return beta2 * v + (1.0 - beta2) * delta * delta


def yogi_second_moment(v: np.ndarray, delta: np.ndarray, beta2: float) -> np.ndarray:
    """``v - (1 - beta2) * delta^2 * sign(v - delta^2)``."""
    d2 = delta * delta
    return v - (1.0 - beta2) * d2 * np.sign(v - d2)


def adagrad_second_moment(v: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """``v + delta^2``."""
    return v + delta * delta


def adaptive_step(m: np.ndarray, v: np.ndarray, lr: float, tau: float) -> np.ndarray:
    """``lr * m / (sqrt(v) + tau)``."""
    return lr * m / (np.sqrt(v) + tau)


def adam_bias_corrected_lr(lr: float, beta1: float, beta2: float, t: int) -> float:
    """Kingma & Ba's ``alpha_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)`` for step ``t >= 1``
    (the optional correction Flower's FedAdam applies; FLamby applies none)."""
    if t < 1:
        raise FedblendError(f"bias correction needs step t >= 1 (got {t})")
    return lr * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)

"""Building a candidate model from the sites' models and a set of mixing ratios.

``blend_weights`` computes, tensor by tensor and in float64,
``(1 - gamma) · current + gamma · Σ_k ratio[group(tensor)][k] · model_k``; tensors that are not
floating point (e.g. BatchNorm's ``num_batches_tracked``) are taken from the reference model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedblend.blend.spaces import Candidate
from fedblend.errors import FedblendError
from fedblend.weights import Weights

__all__ = ["blend_weights", "tensor_groups"]


def tensor_groups(template: Weights, groups: Mapping[str, Sequence[str]] | None) -> dict[str, str]:
    """Tensor name -> group name (``"all"`` when there are no groups)."""
    if groups is None:
        return {name: "all" for name in template}
    out = {name: g for g, names in groups.items() for name in names}
    missing = [n for n in template if n not in out]
    if missing:
        raise FedblendError(f"blend groups do not cover tensors {missing[:5]}")
    return out


def blend_weights(
    models: Mapping[str, Weights],
    candidate: Candidate,
    *,
    reference: Weights,
    current: Weights | None = None,
    groups: Mapping[str, str] | None = None,
) -> Weights:
    """The candidate model: the sites' ``models`` mixed with ``candidate``'s ratios (see module doc)."""
    gamma = float(candidate.gamma)
    if gamma != 1.0 and current is None:
        raise FedblendError("blend_weights: gamma != 1 needs the current global model")
    out: dict[str, np.ndarray] = {}
    for name, ref in reference.items():
        if ref.dtype.kind != "f":
            out[name] = np.array(ref, copy=True)
            continue
        ratios = candidate.ratios[groups[name] if groups is not None else "all"]
        acc = np.zeros(ref.shape, dtype=np.float64)
        for site, r in ratios.items():
            if r != 0.0:
                acc += r * models[site][name].astype(np.float64, copy=False)
        if gamma != 1.0:
            assert current is not None
            acc = (1.0 - gamma) * current[name].astype(np.float64, copy=False) + gamma * acc
        out[name] = acc.astype(ref.dtype)
    return Weights(out)

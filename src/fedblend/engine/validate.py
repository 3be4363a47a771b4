"""Validation of site updates at the trust boundary: shape, dtype, finiteness, norm, counts.

A rejected update never stops the round; it becomes a SiteFailure with a clear reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedblend.errors import FedblendError
from fedblend.records import SiteFailure, SiteUpdate
from fedblend.weights import Weights

__all__ = ["UpdateValidator", "check_update"]


@dataclass(frozen=True)
class UpdateValidator:
    """Limits an update must respect. ``max_update_norm`` bounds ||update - global||_2."""

    max_update_norm: float = 1e4
    max_examples: int = 10_000_000

    def check(self, update: SiteUpdate, global_weights: Weights, round: int) -> str | None:
        """The reason to reject ``update``, or None when it is acceptable."""
        return check_update(update, global_weights, round, self.max_update_norm, self.max_examples)

    def split(
        self, results: Sequence[SiteUpdate | SiteFailure], global_weights: Weights, round: int
    ) -> tuple[list[SiteUpdate], list[SiteFailure]]:
        accepted: list[SiteUpdate] = []
        failures: list[SiteFailure] = []
        seen: set[str] = set()
        for r in results:
            if isinstance(r, SiteFailure):
                failures.append(r)
                continue
            if r.site_id in seen:  # the same update twice counts once
                continue
            reason = self.check(r, global_weights, round)
            if reason is None:
                accepted.append(r)
                seen.add(r.site_id)
            else:
                failures.append(SiteFailure(r.site_id, round, reason, kind="rejected"))
        return accepted, failures


def check_update(
    update: SiteUpdate, global_weights: Weights, round: int, max_update_norm: float, max_examples: int
) -> str | None:
    if update.round != round:
        return f"update is for round {update.round}, but round {round} is open (stale or early update)"
    n = update.num_examples
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
        return f"num_examples must be a positive integer (got {n!r})"
    if n > max_examples:
        return f"num_examples {n} exceeds the limit {max_examples}; raise max_examples if this is real"
    try:
        global_weights.check_compatible(update.weights, "update")
    except FedblendError as exc:
        return str(exc)
    norm = _distance(update.weights, global_weights)
    if not np.isfinite(norm):  # the global model is finite, so the update is not (or overflows)
        bad = [k for k, v in update.weights.items() if v.dtype.kind == "f" and not np.all(np.isfinite(v))]
        if bad:
            return f"update contains NaN or Inf in {bad}"
    if not np.isfinite(norm) or norm > max_update_norm:
        return f"update norm ||w - w_global|| = {norm:.4g} exceeds max_update_norm {max_update_norm:.4g}"
    return None


def _distance(a: Weights, b: Weights) -> float:
    """||a - b||, one pass per array: a dot product of the difference (BLAS) instead of a float64
    copy of every array; NaN or Inf anywhere makes it non-finite."""
    total = 0.0
    for k, v in a.items():
        d = np.subtract(v, b[k], dtype=v.dtype if v.dtype.kind == "f" else np.float64).ravel()
        total += float(np.dot(d, d))
    return float(np.sqrt(total))

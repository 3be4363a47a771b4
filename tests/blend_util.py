"""A tiny synthetic federation for blend tests: closed-form losses, no torch.

Each site's model is one vector; a site scores a model ``w`` on its validation points ``x_i`` with
per-example loss ``||w - x_i||²`` and counts an example correct when that loss is below 1. The best
blend is the one closest to the mean of all validation points, which FedAvg (weights by training
count) misses on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedblend.records import EvalReport, SiteFailure, SiteUpdate
from fedblend.weights import Weights


class ToyPool:
    def __init__(
        self,
        centers: Sequence[Sequence[float]],
        train_counts: Sequence[int],
        val_counts: Sequence[int],
        seed: int = 0,
        noise: float = 0.3,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.ids = [f"site_{i}" for i in range(len(centers))]
        self.centers = {s: np.asarray(c, dtype=np.float64) for s, c in zip(self.ids, centers, strict=True)}
        self.train_counts = dict(zip(self.ids, train_counts, strict=True))
        self.val = {
            s: self.centers[s] + noise * rng.standard_normal((n, len(self.centers[s])))
            for s, n in zip(self.ids, val_counts, strict=True)
        }
        self.calls: list[tuple[str, str, tuple[str, ...]]] = []
        self.fail: dict[str, int] = {}  # site -> fail on evaluate calls numbered >= this

    def updates(self, round: int = 1) -> list[SiteUpdate]:
        return [
            SiteUpdate(
                s,
                round,
                Weights({"w": self.centers[s].astype(np.float32), "b": np.zeros(1, np.float32)}),
                self.train_counts[s],
            )
            for s in self.ids
        ]

    @staticmethod
    def fedavg(updates: Sequence[SiteUpdate]) -> Weights:
        n = sum(u.num_examples for u in updates)
        acc = sum(u.num_examples / n * u.weights["w"].astype(np.float64) for u in updates)
        return Weights({"w": np.asarray(acc, dtype=np.float32), "b": np.zeros(1, np.float32)})

    def site_ids(self) -> list[str]:
        return list(self.ids)

    def losses(self, weights: Weights, site: str) -> np.ndarray:
        w = weights["w"].astype(np.float64)
        return np.sum((self.val[site] - w) ** 2, axis=1)

    def evaluate(
        self, weights: Weights, site_ids: Sequence[str], split: str, reference: Weights | None = None
    ) -> list[EvalReport | SiteFailure]:
        self.calls.append(("evaluate", split, tuple(site_ids)))
        out: list[EvalReport | SiteFailure] = []
        for s in site_ids:
            if s in self.fail and len(self.calls) > self.fail[s]:
                out.append(SiteFailure(s, 0, "site went offline"))
                continue
            loss = self.losses(weights, s)
            d = loss - self.losses(reference, s) if reference is not None else np.zeros_like(loss)
            out.append(
                EvalReport(
                    s,
                    split,
                    len(loss),
                    float(loss.sum()),
                    float((loss < 1.0).sum()),
                    float(d.sum()),
                    float((d * d).sum()),
                )
            )
        return out


def toy(seed: int = 0) -> ToyPool:
    """3 sites; training counts favour site_0, validation favours site_2: the best blend (about
    0.2 / 0.2 / 0.6) is neither FedAvg (0.8 / 0.1 / 0.1) nor uniform."""
    return ToyPool(
        centers=[[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]], train_counts=[400, 50, 50], val_counts=[40, 40, 120], seed=seed
    )

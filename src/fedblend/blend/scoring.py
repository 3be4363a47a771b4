"""Objectives and the acceptance test, computed from the scalar sums sites return.

A site scores a candidate against the reference (FedAvg) model on its own validation split and
returns five numbers: ``n``, ``Σ loss``, ``Σ correct``, ``Σ d`` and ``Σ d²`` where
``d = loss(candidate) - loss(FedAvg)`` per example. From these alone:

* pooled log-loss ``Σ_s Σ loss / N``; its paired gain over FedAvg is ``-Σ d / N`` with standard
  error ``sqrt(var(d) / N)``, ``var(d) = (Σ d² - N·mean²) / (N - 1)`` over all examples;
* site-balanced loss ``mean_s(loss_s)``; gain ``-mean_s(mean d_s)``, se ``sqrt(Σ_s var_s / n_s) / S``;
* worst-site loss ``max_s loss_s``; gain ``max_s loss_s(FedAvg) - max_s loss_s`` (FedAvg's per-site
  loss is ``(Σ loss - Σ d) / n``), se: that of the paired mean difference at the candidate's worst
  site (the gain is at least that site's paired gain).

Acceptance (``accept``): adopt a candidate only if its gain exceeds both the absolute margin and
k standard errors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fedblend.errors import ConfigError
from fedblend.records import EvalReport

__all__ = ["SiteScore", "Score", "score_reports", "accept", "pareto_front"]


@dataclass(frozen=True)
class SiteScore:
    site_id: str
    n: int
    loss: float
    acc: float
    ref_loss: float  # FedAvg's loss on the same examples
    diff_mean: float
    diff_var: float  # sample variance of the per-example difference

    def to_json(self) -> dict[str, float | int]:
        return {
            "n": self.n,
            "loss": self.loss,
            "acc": self.acc,
            "fedavg_loss": self.ref_loss,
            "diff_mean": self.diff_mean,
        }


def _var(n: int, s1: float, s2: float) -> float:
    if n < 2:
        return 0.0
    mean = s1 / n
    return max(s2 - n * mean * mean, 0.0) / (n - 1)


@dataclass(frozen=True)
class Score:
    """Every objective and its paired gain over FedAvg, for one candidate."""

    sites: dict[str, SiteScore]
    pooled_loss: float
    pooled_acc: float
    balanced_loss: float
    worst_loss: float
    worst_site: str
    mean_site_acc: float
    worst_site_acc: float
    gains: dict[str, tuple[float, float]]  # objective -> (gain, se)

    def value(self, objective: str) -> float:
        if objective == "pooled":
            return self.pooled_loss
        if objective == "balanced":
            return self.balanced_loss
        if objective == "worst":
            return self.worst_loss
        raise ConfigError(f"unknown objective {objective!r}; expected pooled, balanced or worst")

    def values(self, objective: str) -> list[float]:
        """The values the searcher minimizes: one, or (pooled, worst) for ``pooled+worst``."""
        if objective == "pooled+worst":
            return [self.pooled_loss, self.worst_loss]
        return [self.value(objective)]

    def gain(self, objective: str) -> tuple[float, float]:
        """(gain, standard error) over FedAvg; ``pooled+worst`` is tested on the pooled loss."""
        return self.gains["pooled" if objective == "pooled+worst" else objective]

    def to_json(self) -> dict[str, object]:
        return {
            "pooled_loss": self.pooled_loss,
            "pooled_acc": self.pooled_acc,
            "balanced_loss": self.balanced_loss,
            "worst_loss": self.worst_loss,
            "worst_site": self.worst_site,
            "mean_site_acc": self.mean_site_acc,
            "worst_site_acc": self.worst_site_acc,
            "gains": {k: {"gain": g, "se": se} for k, (g, se) in self.gains.items()},
            "sites": {s: sc.to_json() for s, sc in self.sites.items()},
        }


def score_reports(reports: Sequence[EvalReport]) -> Score:
    """Objectives and paired gains from per-site sums (each scored against the FedAvg reference)."""
    reps = [r for r in reports if r.num_examples > 0]
    if not reps:
        raise ConfigError(
            "blend: the sites returned no validation examples, so candidate blends cannot be scored; "
            "set [data].val_fraction > 0 (e.g. 0.2) so each site keeps a validation split"
        )
    sites: dict[str, SiteScore] = {}
    for r in reps:
        n = int(r.num_examples)
        sites[r.site_id] = SiteScore(
            site_id=r.site_id,
            n=n,
            loss=r.loss_sum / n,
            acc=r.correct / n,
            ref_loss=(r.loss_sum - r.diff_sum) / n,
            diff_mean=r.diff_sum / n,
            diff_var=_var(n, r.diff_sum, r.diff_sq_sum),
        )
    big_n = sum(s.n for s in sites.values())
    d1 = sum(r.diff_sum for r in reps)
    d2 = sum(r.diff_sq_sum for r in reps)
    pooled_gain = 0.0 - d1 / big_n
    pooled_se = math.sqrt(_var(big_n, d1, d2) / big_n)
    k = len(sites)
    bal_gain = 0.0 - sum(s.diff_mean for s in sites.values()) / k
    bal_se = math.sqrt(sum(s.diff_var / s.n for s in sites.values())) / k
    worst = max(sites.values(), key=lambda s: (s.loss, s.site_id))
    ref_worst = max(s.ref_loss for s in sites.values())
    worst_gain = ref_worst - worst.loss
    worst_se = math.sqrt(worst.diff_var / worst.n)
    accs = [s.acc for s in sites.values()]
    return Score(
        sites=sites,
        pooled_loss=sum(r.loss_sum for r in reps) / big_n,
        pooled_acc=sum(r.correct for r in reps) / big_n,
        balanced_loss=sum(s.loss for s in sites.values()) / k,
        worst_loss=worst.loss,
        worst_site=worst.site_id,
        mean_site_acc=sum(accs) / k,
        worst_site_acc=min(accs),
        gains={"pooled": (pooled_gain, pooled_se), "balanced": (bal_gain, bal_se), "worst": (worst_gain, worst_se)},
    )


def accept(gain: float, se: float, margin: float, k: float) -> tuple[bool, str]:
    """Adopt only if ``gain > margin`` and ``gain > k · se``; returns (decision, the reason in words)."""
    if not (math.isfinite(gain) and math.isfinite(se)):
        return False, f"gain {gain!r} or its standard error {se!r} is not finite"
    over_margin = gain > margin
    over_se = gain > k * se
    if over_margin and over_se:
        return True, f"gain {gain:.5g} > margin {margin:.5g} and > {k:g} x se = {k * se:.5g}"
    why = []
    if not over_margin:
        why.append(f"gain {gain:.5g} <= margin {margin:.5g}")
    if not over_se:
        why.append(f"gain {gain:.5g} <= {k:g} x se = {k * se:.5g}")
    return False, "; ".join(why)


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points (all objectives minimized), in input order."""
    front = []
    for i, p in enumerate(points):
        dominated = any(
            all(q[j] <= p[j] for j in range(len(p))) and any(q[j] < p[j] for j in range(len(p)))
            for t, q in enumerate(points)
            if t != i
        )
        if not dominated:
            front.append(i)
    return front

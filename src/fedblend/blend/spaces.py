"""Ratio spaces: how a searcher's parameters become the mixing ratios of the sites' models.

* ``tilt`` (default): a tilt around FedAvg, ``w_k ∝ n_k · exp(s_k)`` with ``s_k ∈ [-r, r]``;
  ``s = 0`` is FedAvg. The range widens by itself, when needed, so that uniform weights lie in it.
* ``simplex``: the whole simplex through a uniform-Dirichlet parameterization: ``u_k ∈ (0, 1]``,
  ``e_k = -log u_k``, ``w = e / Σ e`` (uniform ``u`` gives a uniform draw on the simplex).
* ``power``: the one-dimensional family ``w_k ∝ n_k^tau`` (tau = 1 FedAvg, tau = 0 uniform).

Options shared by all three: a global shrink factor ``gamma`` (the candidate is
``(1 - gamma) · current + gamma · blend``), separate ratios for two parameter groups (body and
head), and a ``floor``: every site keeps at least ``floor / K`` of every blend, so a candidate
is never one site's model alone (a site never receives another site's individual model).

Parameter names carry the site ids (``s.cleveland``, ``head.u.site_03``, ``tau``, ``gamma``),
so the best parameters of one synthesis warm-start the next even when the sites change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, FloatDistribution

from fedblend.errors import ConfigError

__all__ = ["Candidate", "RatioSpace", "make_space", "project_floor", "split_groups"]

_U_LOW = 1e-6


@dataclass(frozen=True)
class Candidate:
    """Mixing ratios per parameter group (group -> site -> ratio, each summing to 1) and gamma."""

    ratios: dict[str, dict[str, float]]
    gamma: float = 1.0


def project_floor(w: np.ndarray, floor: float) -> np.ndarray:
    """``w`` normalized, then every entry raised to at least ``floor / K`` keeping the sum 1."""
    w = np.asarray(w, dtype=np.float64)
    k = len(w)
    total = float(w.sum())
    w = np.full(k, 1.0 / k) if not math.isfinite(total) or total <= 0 else w / total
    m = floor / k
    if m <= 0:
        return w
    fixed = np.zeros(k, dtype=bool)
    for _ in range(k):
        low = (w < m) & ~fixed
        if not low.any():
            break
        fixed |= low
        rest = ~fixed
        w = np.where(fixed, m, w)
        free_mass = 1.0 - m * fixed.sum()
        s = w[rest].sum()
        if s > 0:
            w[rest] = w[rest] * free_mass / s
    return w


def split_groups(names: Sequence[str], head: Sequence[str] | None) -> dict[str, list[str]]:
    """Tensor names split into ``body`` and ``head``; default head: the last layer's tensors."""
    names = list(names)
    if not names:
        raise ConfigError("blend groups: the model has no tensors")
    if head is None:
        last = names[-1]
        prefix = last.rsplit(".", 1)[0] if "." in last else last
        head = [prefix]

    def is_head(n: str) -> bool:
        return any(n == p or n.startswith(p + ".") for p in head)

    h = [n for n in names if is_head(n)]
    b = [n for n in names if not is_head(n)]
    if not h or not b:
        raise ConfigError(
            f"[blend].head: prefixes {list(head)} leave the {'head' if not h else 'body'} empty; "
            f"give tensor-name prefixes that select some but not all of the model's tensors ({names[:6]}...)"
        )
    return {"body": b, "head": h}


class RatioSpace:
    """Base class: ``distributions()`` for the searcher, ``candidate(params)`` for the blend."""

    kind = "base"
    letter = "x"

    def __init__(
        self,
        site_ids: Sequence[str],
        counts: Sequence[int],
        *,
        groups: Sequence[str] = ("all",),
        gamma_range: tuple[float, float] | None = None,
        floor: float = 0.25,
    ) -> None:
        if len(site_ids) != len(counts) or len(site_ids) < 1:
            raise ConfigError(f"ratio space: {len(site_ids)} site ids but {len(counts)} example counts")
        if any(c <= 0 for c in counts):
            raise ConfigError(
                f"ratio space: every site needs a positive example count (got {dict(zip(site_ids, counts, strict=True))})"
            )
        self.site_ids = [str(s) for s in site_ids]
        self.counts = np.asarray(counts, dtype=np.float64)
        self.groups = list(groups)
        self.gamma_range = gamma_range
        self.floor = float(floor)

    # per-group hooks ---------------------------------------------------------------------------
    def _dists(self, p: str) -> dict[str, BaseDistribution]:
        raise NotImplementedError

    def _weights(self, params: Mapping[str, Any], p: str) -> np.ndarray:
        raise NotImplementedError

    def _fedavg(self, p: str) -> dict[str, float]:
        raise NotImplementedError

    def _uniform(self, p: str) -> dict[str, float]:
        raise NotImplementedError

    def _extra(self) -> dict[str, Any]:
        return {}

    # public ------------------------------------------------------------------------------------
    def _prefix(self, group: str) -> str:
        return "" if self.groups == ["all"] else group + "."

    def _key(self, p: str, site: str) -> str:
        return f"{p}{self.letter}.{site}"

    def distributions(self) -> dict[str, BaseDistribution]:
        out: dict[str, BaseDistribution] = {}
        for g in self.groups:
            out.update(self._dists(self._prefix(g)))
        if self.gamma_range is not None:
            out["gamma"] = FloatDistribution(*self.gamma_range)
        return out

    def fedavg_params(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for g in self.groups:
            out.update(self._fedavg(self._prefix(g)))
        if self.gamma_range is not None:
            out["gamma"] = 1.0
        return out

    def uniform_params(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for g in self.groups:
            out.update(self._uniform(self._prefix(g)))
        if self.gamma_range is not None:
            out["gamma"] = 1.0
        return out

    def fedavg_ratios(self) -> dict[str, float]:
        return dict(zip(self.site_ids, (self.counts / self.counts.sum()).tolist(), strict=True))

    def candidate(self, params: Mapping[str, Any]) -> Candidate:
        ratios = {}
        for g in self.groups:
            w = project_floor(self._weights(params, self._prefix(g)), self.floor)
            ratios[g] = dict(zip(self.site_ids, w.tolist(), strict=True))
        gamma = float(params.get("gamma", 1.0)) if self.gamma_range is not None else 1.0
        return Candidate(ratios, gamma)

    def warm_params(self, previous: Mapping[str, Any]) -> dict[str, float]:
        """``previous`` best parameters mapped onto this space (missing sites: FedAvg, clipped to range)."""
        base = self.fedavg_params()
        dists = self.distributions()
        out = {}
        for name, default in base.items():
            v = previous.get(name, default)
            d = dists[name]
            assert isinstance(d, FloatDistribution)
            out[name] = float(min(max(float(v), d.low), d.high))
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "groups": self.groups,
            "gamma_range": list(self.gamma_range) if self.gamma_range is not None else None,
            "floor": self.floor,
            "sites": self.site_ids,
            **self._extra(),
        }


class TiltSpace(RatioSpace):
    kind = "tilt"
    letter = "s"

    def __init__(self, site_ids: Sequence[str], counts: Sequence[int], *, tilt_range: float = 2.0, **kw: Any) -> None:
        super().__init__(site_ids, counts, **kw)
        logn = np.log(self.counts)
        self._uniform_s = -(logn - logn.mean())
        need = float(np.max(np.abs(self._uniform_s))) if len(logn) else 0.0
        self.requested_range = float(tilt_range)
        self.range = max(float(tilt_range), need * 1.0001)

    def _dists(self, p: str) -> dict[str, BaseDistribution]:
        return {self._key(p, s): FloatDistribution(-self.range, self.range) for s in self.site_ids}

    def _weights(self, params: Mapping[str, Any], p: str) -> np.ndarray:
        s = np.array([float(params[self._key(p, k)]) for k in self.site_ids])
        z = np.log(self.counts) + s
        return np.exp(z - z.max())

    def _fedavg(self, p: str) -> dict[str, float]:
        return {self._key(p, s): 0.0 for s in self.site_ids}

    def _uniform(self, p: str) -> dict[str, float]:
        return {self._key(p, s): float(v) for s, v in zip(self.site_ids, self._uniform_s, strict=True)}

    def _extra(self) -> dict[str, Any]:
        return {"tilt_range": self.range, "tilt_range_requested": self.requested_range}


class SimplexSpace(RatioSpace):
    kind = "simplex"
    letter = "u"

    def _dists(self, p: str) -> dict[str, BaseDistribution]:
        return {self._key(p, s): FloatDistribution(_U_LOW, 1.0) for s in self.site_ids}

    def _weights(self, params: Mapping[str, Any], p: str) -> np.ndarray:
        u = np.array([float(params[self._key(p, k)]) for k in self.site_ids])
        return -np.log(np.clip(u, _U_LOW, 1.0))

    def _fedavg(self, p: str) -> dict[str, float]:
        share = self.counts / self.counts.max()
        return {self._key(p, s): float(math.exp(-v)) for s, v in zip(self.site_ids, share, strict=True)}

    def _uniform(self, p: str) -> dict[str, float]:
        return {self._key(p, s): float(math.exp(-1.0)) for s in self.site_ids}


class PowerSpace(RatioSpace):
    kind = "power"
    letter = "tau"

    def __init__(
        self, site_ids: Sequence[str], counts: Sequence[int], *, tau_range: tuple[float, float] = (-1.0, 2.0), **kw: Any
    ) -> None:
        super().__init__(site_ids, counts, **kw)
        self.tau_range = (float(tau_range[0]), float(tau_range[1]))

    def _key(self, p: str, site: str = "") -> str:
        return f"{p}tau"

    def _dists(self, p: str) -> dict[str, BaseDistribution]:
        return {self._key(p): FloatDistribution(*self.tau_range)}

    def _weights(self, params: Mapping[str, Any], p: str) -> np.ndarray:
        z = float(params[self._key(p)]) * np.log(self.counts)
        return np.exp(z - z.max())

    def _fedavg(self, p: str) -> dict[str, float]:
        return {self._key(p): 1.0}

    def _uniform(self, p: str) -> dict[str, float]:
        return {self._key(p): 0.0}

    def _extra(self) -> dict[str, Any]:
        return {"tau_range": list(self.tau_range)}


def make_space(
    kind: str,
    site_ids: Sequence[str],
    counts: Sequence[int],
    *,
    groups: Sequence[str] = ("all",),
    gamma_range: tuple[float, float] | None = None,
    floor: float = 0.25,
    tilt_range: float = 2.0,
    tau_range: tuple[float, float] = (-1.0, 2.0),
) -> RatioSpace:
    """The ratio space named ``kind`` over the given sites and their example counts."""
    kw: dict[str, Any] = {"groups": groups, "gamma_range": gamma_range, "floor": floor}
    if kind == "tilt":
        return TiltSpace(site_ids, counts, tilt_range=tilt_range, **kw)
    if kind == "simplex":
        return SimplexSpace(site_ids, counts, **kw)
    if kind == "power":
        return PowerSpace(site_ids, counts, tau_range=tau_range, **kw)
    raise ConfigError(f"[blend].space must be one of 'tilt', 'simplex', 'power' (got {kind!r})")

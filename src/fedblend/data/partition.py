"""Seeded partitioners: split a pooled dataset's indices among simulated sites.

Each takes an explicit ``np.random.Generator`` and returns one sorted int64 index array per site.
``iid``, ``dirichlet``, ``shards`` (with ``shard_size=None``) and ``quantity_skew`` use every index
exactly once. A partition that leaves a site empty raises ``DataError`` naming the site and the fix.

- ``iid``: a random permutation cut into near-equal parts.
- ``dirichlet``: label skew (Hsu et al. 2019, arXiv:1909.06335; Li et al. 2021 NIID-Bench,
  arXiv:2102.02079): each class is divided among sites by proportions drawn from Dir(alpha);
  sites already holding n/num_sites examples get no more; redrawn until every site has
  ``min_size`` examples. Small alpha -> few classes per site; large alpha -> close to iid.
- ``shards``: McMahan et al. (2017), arXiv:1602.05629: sort by label, cut into
  ``num_sites * shards_per_site`` shards, give each site ``shards_per_site`` random shards
  (MNIST: 200 shards of 300 for 100 clients).
- ``quantity_skew``: iid labels, unequal sizes from Dir(alpha) or a power law.
- ``natural``: one site per distinct group value (a writer, a hospital, a column).

Run: ``PYTHONPATH=src python -c "import numpy as np; from fedblend.data.partition import iid;
print(iid(10, 3, np.random.default_rng(0)))"``
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from fedblend.errors import ConfigError, DataError

__all__ = [
    "PARTITIONERS",
    "iid",
    "dirichlet",
    "shards",
    "quantity_skew",
    "natural",
    "match_labels",
    "cap",
    "check_parts",
    "partition",
]

PARTITIONERS = ("iid", "dirichlet", "shards", "quantity_skew")


def _check_sites(num_sites: int, n: int) -> int:
    if isinstance(num_sites, bool) or not isinstance(num_sites, (int, np.integer)) or num_sites < 1:
        raise ConfigError(f"'num_sites' must be a positive int (got {num_sites!r})")
    if num_sites > n:
        raise DataError(
            f"cannot give {num_sites} sites at least one example each from {n} examples; use num_sites <= {n}"
        )
    return int(num_sites)


def _labels(y: Any) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or (len(y) and not np.issubdtype(y.dtype, np.integer)):
        raise ConfigError(f"labels must be a 1-d integer array (got shape {y.shape}, dtype {y.dtype})")
    return y


def _sorted(parts: Iterable[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def check_parts(parts: Sequence[np.ndarray], *, method: str, fix: str) -> list[np.ndarray]:
    """``parts`` unchanged, or a ``DataError`` naming the first empty site and ``fix``."""
    for i, p in enumerate(parts):
        if len(p) == 0:
            raise DataError(f"the {method} partition left site {i} (of {len(parts)}) with no examples; {fix}")
    return list(parts)


def iid(n: int, num_sites: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``range(n)`` shuffled and cut into ``num_sites`` parts whose sizes differ by at most one."""
    num_sites = _check_sites(num_sites, n)
    return _sorted(np.array_split(rng.permutation(n), num_sites))


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total``, proportional to ``weights`` (ties to the lower index)."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))
    exact = w * total
    base = np.floor(exact).astype(np.int64)
    short = total - int(base.sum())
    if short > 0:
        base[np.argsort(-(exact - base), kind="stable")[:short]] += 1
    return base


def dirichlet(
    y: Any, num_sites: int, alpha: float, rng: np.random.Generator, *, min_size: int = 10, max_tries: int = 1000
) -> list[np.ndarray]:
    """Label-skewed parts: each class split among sites by Dir(``alpha``) proportions.

    Redraws until every site has at least ``min_size`` examples (at most ``max_tries`` times).
    """
    y = _labels(y)
    n = len(y)
    num_sites = _check_sites(num_sites, n)
    if not alpha > 0:
        raise ConfigError(f"'alpha' must be > 0 (got {alpha!r}); 0.1 is strongly skewed, 100 is near iid")
    if min_size < 0 or min_size * num_sites > n:
        raise ConfigError(
            f"'min_size' must be in [0, n/num_sites = {n // num_sites}] (got {min_size!r}) "
            f"for {n} examples and {num_sites} sites"
        )
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    fix = f"use a larger alpha (got {alpha}), fewer sites (got {num_sites}) or a smaller min_size (got {min_size})"
    best: list[np.ndarray] = []
    for _ in range(max(1, max_tries)):
        batch: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
        sizes = np.zeros(num_sites, dtype=np.int64)
        for idx in by_class:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(num_sites, float(alpha)))
            masked = p * (sizes < n / num_sites)
            p = masked if masked.sum() > 0 else p
            if not np.isfinite(p).all() or p.sum() <= 0:
                p = np.full(num_sites, 1.0 / num_sites)
            cuts = (np.cumsum(p / p.sum()) * len(idx)).astype(np.int64)[:-1]
            for j, part in enumerate(np.split(idx, cuts)):
                batch[j].append(part)
                sizes[j] += len(part)
        best = [np.concatenate(b) if b else np.zeros(0, dtype=np.int64) for b in batch]
        if sizes.min() >= max(min_size, 1):
            return _sorted(best)
    small = int(np.argmin([len(b) for b in best]))
    raise DataError(
        f"the dirichlet partition left site {small} (of {num_sites}) with {len(best[small])} examples "
        f"(min_size={min_size}) after {max_tries} draws; {fix}"
    )


def shards(
    y: Any, num_sites: int, rng: np.random.Generator, *, shards_per_site: int = 2, shard_size: int | None = None
) -> list[np.ndarray]:
    """McMahan's pathological non-iid split: label-sorted shards, ``shards_per_site`` per site.

    ``shard_size=None`` cuts all examples into ``num_sites * shards_per_site`` near-equal shards
    (every index used once); an explicit ``shard_size`` uses only the first shards of that size.
    """
    y = _labels(y)
    n = len(y)
    num_sites = _check_sites(num_sites, n)
    if not isinstance(shards_per_site, int) or shards_per_site < 1:
        raise ConfigError(f"'shards_per_site' must be a positive int (got {shards_per_site!r})")
    total = num_sites * shards_per_site
    order = np.argsort(y, kind="stable")
    if shard_size is None:
        if total > n:
            raise DataError(
                f"{total} shards ({num_sites} sites x {shards_per_site}) need at least {total} examples, "
                f"got {n}; use fewer sites or fewer shards_per_site"
            )
        pieces = np.array_split(order, total)
    else:
        if shard_size < 1 or total * shard_size > n:
            raise DataError(
                f"{total} shards of {shard_size} need {total * shard_size} examples, got {n}; use a "
                "smaller shard_size, fewer sites or fewer shards_per_site, or shard_size=None"
            )
        pieces = [order[i * shard_size : (i + 1) * shard_size] for i in range(total)]
    owner = rng.permutation(total)
    return _sorted(
        np.concatenate([pieces[s] for s in owner[i * shards_per_site : (i + 1) * shards_per_site]])
        for i in range(num_sites)
    )


def quantity_skew(
    n: int,
    num_sites: int,
    rng: np.random.Generator,
    *,
    alpha: float = 1.0,
    power: float | None = None,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Random (iid-label) parts of unequal size: sizes ~ Dir(``alpha``), or with ``power`` set,
    proportional to ``rank ** -power`` with ranks shuffled among sites. Each gets ``min_size``."""
    num_sites = _check_sites(num_sites, n)
    if min_size < 1 or min_size * num_sites > n:
        raise ConfigError(
            f"'min_size' must be in [1, {n // num_sites}] for {n} examples and {num_sites} sites (got {min_size!r})"
        )
    if power is not None:
        if not power >= 0:
            raise ConfigError(f"'power' must be >= 0 (got {power!r}); 0 gives equal sizes")
        weights = rng.permutation(np.arange(1, num_sites + 1, dtype=np.float64) ** (-float(power)))
    else:
        if not alpha > 0:
            raise ConfigError(f"'alpha' must be > 0 (got {alpha!r}); small alpha gives very unequal sizes")
        weights = rng.dirichlet(np.full(num_sites, float(alpha)))
    sizes = min_size + _largest_remainder(weights, n - min_size * num_sites)
    return _sorted(np.split(rng.permutation(n), np.cumsum(sizes)[:-1]))


def natural(groups: Any) -> list[np.ndarray]:
    """One part per distinct value of ``groups`` (per-example group ids), in ``np.unique`` order."""
    g = np.asarray(groups)
    if g.ndim != 1 or len(g) == 0:
        raise DataError(f"groups must be a non-empty 1-d array of per-example group ids (got shape {g.shape})")
    _, inverse = np.unique(g, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    return _sorted(np.split(order, np.cumsum(np.bincount(inverse))[:-1]))


def match_labels(y: Any, label_counts: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Split ``y``'s indices so each site gets each class in proportion to ``label_counts``.

    ``label_counts`` is ``(num_sites, num_classes)``, e.g. the sites' training label counts: a test
    set split this way follows each site's own label skew. A class absent from every site's counts
    goes to sites in proportion to their sizes.
    """
    y = _labels(y)
    counts = np.asarray(label_counts, dtype=np.float64)
    if counts.ndim != 2 or (len(y) and y.max() >= counts.shape[1]) or (len(y) and y.min() < 0):
        raise ConfigError(
            f"label_counts must be (num_sites, num_classes) covering every label (got shape {counts.shape})"
        )
    parts: list[list[np.ndarray]] = [[] for _ in range(counts.shape[0])]
    for c in range(counts.shape[1]):
        idx = rng.permutation(np.flatnonzero(y == c))
        w = counts[:, c] if counts[:, c].sum() > 0 else counts.sum(axis=1)
        sizes = _largest_remainder(w, len(idx))
        for j, part in enumerate(np.split(idx, np.cumsum(sizes)[:-1])):
            parts[j].append(part)
    return _sorted(np.concatenate(p) if p else np.zeros(0, dtype=np.int64) for p in parts)


def cap(parts: Sequence[np.ndarray], examples_per_site: int | None, rng: np.random.Generator) -> list[np.ndarray]:
    """Keep at most ``examples_per_site`` indices per part, a seeded random subset (None: all)."""
    if examples_per_site is None:
        return list(parts)
    if (
        isinstance(examples_per_site, bool)
        or not isinstance(examples_per_site, (int, np.integer))
        or examples_per_site < 1
    ):
        raise ConfigError(f"'examples_per_site' must be a positive int or None (got {examples_per_site!r})")
    out = []
    for p in parts:
        p = np.asarray(p, dtype=np.int64)
        out.append(
            np.sort(rng.choice(p, size=int(examples_per_site), replace=False)) if len(p) > examples_per_site else p
        )
    return out


def partition(method: str, y: Any, num_sites: int, rng: np.random.Generator, **params: Any) -> list[np.ndarray]:
    """Dispatch on ``method`` (one of ``PARTITIONERS``) with that partitioner's keyword ``params``."""
    y = _labels(y)
    accepted = {
        "iid": set(),
        "dirichlet": {"alpha", "min_size", "max_tries"},
        "shards": {"shards_per_site", "shard_size"},
        "quantity_skew": {"alpha", "power", "min_size"},
    }
    if method not in accepted:
        raise ConfigError(f"unknown partition {method!r}; expected one of {list(PARTITIONERS)}")
    extra = sorted(set(params) - accepted[method])
    if extra:
        raise ConfigError(
            f"partition {method!r} does not take {extra}; it takes {sorted(accepted[method]) or 'no options'}"
        )
    if method == "iid":
        parts = iid(len(y), num_sites, rng)
    elif method == "dirichlet":
        if "alpha" not in params:
            raise ConfigError("partition 'dirichlet' needs 'alpha' (e.g. alpha=0.5)")
        parts = dirichlet(y, num_sites, rng=rng, **params)
    elif method == "shards":
        parts = shards(y, num_sites, rng, **params)
    else:
        parts = quantity_skew(len(y), num_sites, rng, **params)
    return check_parts(parts, method=method, fix="use fewer sites or a less skewed partition")

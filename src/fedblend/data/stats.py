"""Privacy-safe site statistics and label heterogeneity across sites.

``site_stats`` is what a site may report about its data (``fedblend.records.SiteStats``): row
counts per split, training label counts with small cells (0 < count < ``min_cell``) suppressed as
None, and for tabular data per-feature mean / std / missing rate over the training rows (None when
fewer than ``min_cell`` values back them). Images and text get no feature statistics.

``heterogeneity`` measures label skew: the Jensen-Shannon divergence (base 2, so in [0, 1]) of each
site's label distribution from the pooled one. 0 means the site looks like the federation; 1 means
it shares no class with the rest. It needs full counts, so it runs where they are known (a
simulation, or on ``label_counts`` taken before suppression).

Run: ``PYTHONPATH=src python -c "from fedblend.data import load_dataset, heterogeneity, label_counts;
fd = load_dataset('heart_disease'); print(heterogeneity({s: label_counts(d.train, 2) for s, d in
fd.sites.items()}))"``
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedblend.data.base import ArraySplit, SiteData
from fedblend.errors import DataError
from fedblend.records import SiteStats

__all__ = [
    "label_counts",
    "label_distribution",
    "js_divergence",
    "heterogeneity",
    "site_stats",
    "summary_table",
]


def label_counts(split: ArraySplit, num_classes: int) -> np.ndarray:
    """Count of each class id in ``split`` (int64, length ``num_classes``)."""
    y = np.asarray(split.y)
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"labels must be in [0, {num_classes}) (got min {y.min()}, max {y.max()}); check num_classes")
    return np.bincount(y.astype(np.int64), minlength=num_classes).astype(np.int64)


def label_distribution(site: SiteData, num_classes: int, split: str = "train") -> np.ndarray:
    """The site's label distribution on ``split`` (sums to 1; all zeros for an empty split)."""
    c = label_counts(site.split(split), num_classes).astype(np.float64)
    return c / c.sum() if c.sum() > 0 else c


def js_divergence(p: Any, q: Any) -> float:
    """Jensen-Shannon divergence, base 2, between two count or probability vectors: in [0, 1]."""
    a = np.asarray(p, dtype=np.float64)
    b = np.asarray(q, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise DataError(f"distributions must be 1-d and the same length (got shapes {a.shape} and {b.shape})")
    if (a < 0).any() or (b < 0).any() or a.sum() <= 0 or b.sum() <= 0:
        raise DataError("distributions must be non-negative with a positive total")
    a, b = a / a.sum(), b / b.sum()
    m = 0.5 * (a + b)

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return float(min(1.0, max(0.0, 0.5 * kl(a) + 0.5 * kl(b))))


def _as_vector(counts: Mapping[str, int | None] | Sequence[int] | np.ndarray) -> np.ndarray:
    if isinstance(counts, Mapping):
        keys = sorted(counts, key=lambda k: (0, int(k)) if str(k).lstrip("-").isdigit() else (1, str(k)))
        return np.array([counts[k] or 0 for k in keys], dtype=np.float64)  # suppressed (None) -> 0
    return np.asarray(counts, dtype=np.float64)


def heterogeneity(label_counts_by_site: Mapping[str, Any]) -> dict[str, float]:
    """Per site, the JS divergence (base 2) of its label counts from the pooled counts.

    Values may be count vectors, or ``SiteStats.label_counts`` dicts (suppressed cells count as 0,
    which understates small classes: prefer full counts).
    """
    vecs = {s: _as_vector(c) for s, c in label_counts_by_site.items()}
    if not vecs:
        return {}
    lengths = {len(v) for v in vecs.values()}
    if len(lengths) != 1:
        raise DataError(f"every site needs counts over the same classes (got lengths {sorted(lengths)})")
    pooled = np.sum(list(vecs.values()), axis=0)
    return {s: (js_divergence(v, pooled) if v.sum() > 0 else float("nan")) for s, v in vecs.items()}


def _feature_stats(x: np.ndarray, names: Sequence[str], min_cell: int) -> dict[str, dict[str, float | None]]:
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        return {}  # images and token ids: no per-feature statistics
    if names and len(names) != x.shape[1]:
        raise DataError(f"{len(names)} feature names for {x.shape[1]} features")
    out: dict[str, dict[str, float | None]] = {}
    for j in range(x.shape[1]):
        col = x[:, j].astype(np.float64)
        ok = ~np.isnan(col)
        n_ok = int(ok.sum())
        enough = n_ok >= min_cell
        out[names[j] if names else f"x{j}"] = {
            "mean": float(col[ok].mean()) if enough else None,
            "std": float(col[ok].std(ddof=1)) if enough and n_ok > 1 else None,
            "missing": float(1.0 - n_ok / len(col)) if len(col) else None,
        }
    return out


def site_stats(site: SiteData, num_classes: int, feature_names: Sequence[str] = (), min_cell: int = 5) -> SiteStats:
    """The privacy-safe profile a site reports: see the module docstring."""
    counts = label_counts(site.train, num_classes)
    suppressed: dict[str, int | None] = {
        str(c): (int(v) if v == 0 or v >= min_cell else None) for c, v in enumerate(counts)
    }
    return SiteStats(
        site_id=site.site_id,
        num_train=len(site.train),
        num_val=len(site.val),
        num_test=len(site.test),
        label_counts=suppressed,
        features=_feature_stats(np.asarray(site.train.x), tuple(feature_names), min_cell),
        data_version=site.version(),
        min_cell=min_cell,
    )


def summary_table(stats: Sequence[SiteStats], het: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """Rows for a terminal table: site, split sizes, classes seen, largest class share, JS (if given).

    Suppressed cells count toward "classes" but not toward the largest share.
    """
    rows = []
    for s in stats:
        known = [v for v in s.label_counts.values() if v]
        present = sum(1 for v in s.label_counts.values() if v is None or v > 0)
        row: dict[str, Any] = {
            "site": s.site_id,
            "train": s.num_train,
            "val": s.num_val,
            "test": s.num_test,
            "classes": present,
            "top_share": round(max(known) / s.num_train, 3) if known and s.num_train else None,
        }
        if het is not None:
            js = het.get(s.site_id)
            row["js"] = None if js is None else round(js, 4)
        rows.append(row)
    return rows

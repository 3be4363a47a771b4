"""User data as a federation: one CSV/Parquet file per site, numpy arrays, or torch Datasets.

Each site's rows are split on the site itself: a seeded test hold-out (``test_fraction``), then a
seeded validation split (``val_fraction``), both keyed by the site id, so a site that loads only its
own file in a deployment gets the same split as in a simulation with every site.

Labels become int64 class ids. Integer labels (0, 1, ...) are kept as they are; other labels
(strings) are numbered in sorted order over all sites given. In a deployment, where each site sees
only its own file, pass ``classes=[...]`` so every site numbers them the same way.

Run: ``PYTHONPATH=src python -c "from fedblend.data import load_tabular_sites as f;
print(f({'a': 'a.csv', 'b': 'b.parquet'}, label_column='y'))"``
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from fedblend.data.base import ArraySplit, FederatedDataset, SiteData
from fedblend.data.federate import infer_kind
from fedblend.data.partition import natural
from fedblend.data.split import carve_val, check_fraction, holdout, rng_for
from fedblend.errors import ConfigError, DataError

__all__ = ["load_tabular_sites", "from_arrays", "from_torch_dataset", "torch_to_split"]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
_MISSING = ("error", "drop", "keep")


def _read_table(path: Path, site: str) -> Any:
    import pandas as pd  # lazy: only user tabular data needs pandas

    if not path.is_file():
        raise DataError(f"site {site!r}: data file {str(path)!r} does not exist; check the path given for this site")
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        if name.endswith((".csv", ".csv.gz")):
            return pd.read_csv(path)
        if name.endswith((".tsv", ".tsv.gz")):
            return pd.read_csv(path, sep="\t")
    except Exception as e:  # pandas and pyarrow raise many types for a bad file
        raise DataError(f"site {site!r}: cannot read {str(path)!r}: {type(e).__name__}: {e}") from None
    raise DataError(f"site {site!r}: {str(path)!r} must be a .csv, .csv.gz, .tsv or .parquet file")


def _class_ids(
    label_values: Sequence[np.ndarray], classes: Sequence[Any] | None
) -> tuple[list[np.ndarray], tuple[str, ...], int]:
    """Map raw labels of every site to int64 ids; returns (ids per site, class names, num classes)."""
    if classes is not None:
        lookup = {c: i for i, c in enumerate(classes)}
        lookup.update({str(c): i for i, c in enumerate(classes)})
        out = []
        for v in label_values:
            unknown = sorted({str(a) for a in v.tolist() if a not in lookup and str(a) not in lookup})
            if unknown:
                raise DataError(f"labels {unknown[:5]} are not in classes={list(classes)}; add them to 'classes'")
            out.append(np.array([lookup[a] if a in lookup else lookup[str(a)] for a in v.tolist()], dtype=np.int64))
        return out, tuple(str(c) for c in classes), len(classes)
    allv = np.concatenate([np.asarray(v) for v in label_values]) if label_values else np.zeros(0)
    if allv.dtype == bool:
        return [np.asarray(v).astype(np.int64) for v in label_values], ("False", "True"), 2
    if np.issubdtype(allv.dtype, np.number) and len(allv) and np.all(np.isfinite(allv.astype(np.float64))):
        as_int = allv.astype(np.int64)
        if np.all(as_int == allv) and as_int.min() >= 0:
            k = int(as_int.max()) + 1
            return [np.asarray(v).astype(np.int64) for v in label_values], tuple(str(i) for i in range(k)), k
    names = sorted({str(a) for a in allv.tolist()})
    lookup_s = {c: i for i, c in enumerate(names)}
    return (
        [np.array([lookup_s[str(a)] for a in v.tolist()], dtype=np.int64) for v in label_values],
        tuple(names),
        len(names),
    )


def _split_site(sid: str, x: np.ndarray, y: np.ndarray, tf: float, vf: float, seed: int) -> SiteData:
    whole = ArraySplit(x, y)
    keep, held = holdout(len(whole), tf, rng_for(seed, "test", sid))
    train, val = carve_val(whole.subset(keep), vf, rng_for(seed, "val", sid))
    return SiteData(sid, train, val, whole.subset(held))


def _standardize(site: SiteData) -> SiteData:
    """Per-site standardization with the site's own training statistics (as FLamby does)."""
    mean = np.nanmean(site.train.x, axis=0)
    std = np.nanstd(site.train.x, axis=0, ddof=1) if len(site.train) > 1 else np.zeros_like(mean)
    scale = np.where(np.isfinite(std) & (std > 0), std, 1.0)

    def f(s: ArraySplit) -> ArraySplit:
        return ArraySplit(((s.x - mean) / scale).astype(np.float32), s.y)

    return SiteData(site.site_id, f(site.train), f(site.val), f(site.test))


def load_tabular_sites(
    paths: Mapping[str, PathLike] | PathLike,
    label_column: str,
    feature_columns: Sequence[str] | None = None,
    *,
    site_column: str | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
    classes: Sequence[Any] | None = None,
    missing: str = "error",
    standardize: bool = False,
    name: str = "tabular",
) -> FederatedDataset:
    """One site per CSV/Parquet file (``{site_id: path}``), or one file split by ``site_column``.

    ``feature_columns`` defaults to every column except the label (and site) column; they must be
    numeric. ``missing``: ``"error"`` (default) rejects rows with missing values, ``"drop"``
    drops them, ``"keep"`` keeps NaN. ``standardize`` scales each site with its own train stats.
    """
    tf = check_fraction("test_fraction", test_fraction)
    vf = check_fraction("val_fraction", val_fraction)
    if missing not in _MISSING:
        raise ConfigError(f"'missing' must be one of {list(_MISSING)} (got {missing!r})")
    tables: dict[str, Any] = {}
    if isinstance(paths, Mapping):
        if site_column is not None:
            raise ConfigError("'site_column' splits one file into sites; give one path, not a mapping, with it")
        if not paths:
            raise ConfigError("'paths' is empty; give {site_id: path} for at least one site")
        for sid, p in paths.items():
            tables[str(sid)] = _read_table(Path(p), str(sid))
    else:
        if site_column is None:
            raise ConfigError(
                "a single file needs 'site_column' naming the column that holds the site id; or pass {site_id: path}"
            )
        df = _read_table(Path(paths), "<all>")
        if site_column not in df.columns:
            raise DataError(f"{str(paths)!r} has no column {site_column!r}; columns are {list(df.columns)}")
        groups = df[site_column].astype(str).to_numpy()
        for sid, idx in zip(np.unique(groups), natural(groups), strict=True):
            tables[str(sid)] = df.iloc[idx].drop(columns=[site_column])
    xs: dict[str, np.ndarray] = {}
    ys: dict[str, np.ndarray] = {}
    feats: list[str] | None = list(feature_columns) if feature_columns is not None else None
    for sid, df in tables.items():
        cols = list(df.columns)
        if label_column not in cols:
            raise DataError(f"site {sid!r}: no label column {label_column!r}; columns are {cols}")
        use = feats if feats is not None else [c for c in cols if c != label_column]
        if feats is None:
            feats = use
        absent = [c for c in use if c not in cols]
        if absent or (feature_columns is None and use != [c for c in cols if c != label_column]):
            raise DataError(
                f"site {sid!r}: feature columns {absent or use} do not match this site's columns {cols}; "
                "pass feature_columns=[...] naming the shared columns"
            )
        non_numeric = [c for c in use if df[c].dtype.kind not in "biuf"]
        if non_numeric:
            raise DataError(
                f"site {sid!r}: feature columns {non_numeric} are not numeric; encode them "
                "(e.g. one-hot) or leave them out with feature_columns=[...]"
            )
        x = df[use].to_numpy(dtype=np.float64)
        y = df[label_column].to_numpy()
        bad = np.isnan(x).any(axis=1) | df[label_column].isna().to_numpy()
        if bad.any():
            where = [c for c in use if df[c].isna().any()]
            if missing == "error" or df[label_column].isna().any():
                raise DataError(
                    f"site {sid!r}: {int(bad.sum())} rows have missing values (columns {where or [label_column]}); "
                    "pass missing='drop' to drop them, missing='keep' to keep NaN features, or impute them"
                )
            if missing == "drop":
                x, y = x[~bad], y[~bad]
        xs[sid], ys[sid] = x.astype(np.float32), y
    ids, class_names, k = _class_ids([ys[s] for s in tables], classes)
    sites = {}
    for sid, yid in zip(tables, ids, strict=True):
        site = _split_site(sid, xs[sid], yid, tf, vf, seed)
        sites[sid] = _standardize(site) if standardize else site
    return FederatedDataset(
        name=name,
        sites=sites,
        num_classes=k,
        input_shape=(len(feats or []),),
        kind="tabular",
        feature_names=tuple(feats or []),
        class_names=class_names,
    )


def _as_xy(x: Any, y: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    xa, ya = np.asarray(x), np.asarray(y)
    if len(xa) != len(ya):
        raise DataError(f"{where}: {len(xa)} feature rows but {len(ya)} labels")
    if np.issubdtype(xa.dtype, np.floating):
        xa = xa.astype(np.float32)
    elif np.issubdtype(xa.dtype, np.integer) and xa.ndim == 2:
        xa = xa.astype(np.int64)
    else:
        xa = xa.astype(np.float32)
    return xa, ya.reshape(len(ya))


def from_arrays(
    sites: Mapping[str, tuple[Any, Any] | Mapping[str, tuple[Any, Any]]],
    *,
    name: str = "arrays",
    num_classes: int | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
    seed: int = 0,
    kind: str | None = None,
    feature_names: Sequence[str] = (),
    classes: Sequence[Any] | None = None,
) -> FederatedDataset:
    """A federation from per-site arrays: ``{site: (x, y)}`` (split by ``test_fraction`` and
    ``val_fraction``) or ``{site: {"train": (x, y), "test": (x, y)[, "val": (x, y)]}}`` (used as given)."""
    tf = check_fraction("test_fraction", test_fraction)
    vf = check_fraction("val_fraction", val_fraction)
    if not sites:
        raise ConfigError("'sites' is empty; give {site_id: (x, y)} for at least one site")
    raw: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for sid, v in sites.items():
        if isinstance(v, Mapping):
            unknown = sorted(set(v) - {"train", "val", "test"})
            if unknown or "train" not in v:
                raise ConfigError(f"site {sid!r}: expected keys 'train', 'test' and optionally 'val' (got {sorted(v)})")
            raw[str(sid)] = {k: _as_xy(*v[k], where=f"site {sid!r} {k}") for k in v}
        else:
            raw[str(sid)] = {"all": _as_xy(*v, where=f"site {sid!r}")}
    order = [(sid, k) for sid, parts in raw.items() for k in parts]
    ids, class_names, k_found = _class_ids([raw[s][k][1] for s, k in order], classes)
    mapped = {(s, k): (raw[s][k][0], y) for (s, k), y in zip(order, ids, strict=True)}
    out: dict[str, SiteData] = {}
    for sid, parts in raw.items():
        if "all" in parts:
            out[sid] = _split_site(sid, *mapped[(sid, "all")], tf, vf, seed)
        else:
            tr = ArraySplit(*mapped[(sid, "train")])
            te = ArraySplit(*mapped[(sid, "test")]) if "test" in parts else ArraySplit.empty_like(tr)
            if "val" in parts:
                va = ArraySplit(*mapped[(sid, "val")])
            else:
                tr, va = carve_val(tr, vf, rng_for(seed, "val", sid))
            out[sid] = SiteData(sid, tr, va, te)
    first = next(iter(out.values())).train.x
    k = int(num_classes) if num_classes is not None else k_found
    return FederatedDataset(
        name=name,
        sites=out,
        num_classes=k,
        input_shape=tuple(int(d) for d in first.shape[1:]),
        kind=kind or infer_kind(first),
        feature_names=tuple(feature_names),
        class_names=class_names if classes is not None or len(class_names) == k else (),
    )


def _dataset_arrays(ds: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        raise ConfigError("from_torch_dataset needs PyTorch: pip install torch") from None
    n = len(ds)
    if n == 0:
        raise DataError(f"{where}: the dataset is empty")
    xs, ys = [], []
    for i in range(n):
        item = ds[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise DataError(f"{where}: item {i} must be an (x, y) pair (got {type(item).__name__})")
        x, y = item[0], item[1]
        xs.append(x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x))
        ys.append(int(y.item()) if torch.is_tensor(y) else int(y))
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def torch_to_split(dataset: Any) -> ArraySplit:
    """One ``torch.utils.data.Dataset`` of ``(x, y)`` items (y an int class id) as an ``ArraySplit``."""
    return ArraySplit(*_dataset_arrays(dataset, type(dataset).__name__))


@overload
def from_torch_dataset(
    sites: Mapping[str, Any],
    *,
    name: str = ...,
    num_classes: int | None = ...,
    test_fraction: float = ...,
    val_fraction: float = ...,
    seed: int = ...,
    kind: str | None = ...,
) -> FederatedDataset: ...
@overload
def from_torch_dataset(
    sites: Any,
    *,
    name: str = ...,
    num_classes: int | None = ...,
    test_fraction: float = ...,
    val_fraction: float = ...,
    seed: int = ...,
    kind: str | None = ...,
) -> ArraySplit: ...
def from_torch_dataset(
    sites: Mapping[str, Any] | Any,
    *,
    name: str = "torch",
    num_classes: int | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
    seed: int = 0,
    kind: str | None = None,
) -> FederatedDataset | ArraySplit:
    """A federation from a ``torch.utils.data.Dataset`` per site (items ``(x, y)``, y an int
    class id), or a ``(train_dataset, test_dataset)`` pair per site. Materializes to numpy.

    Given a single Dataset instead of a ``{site: dataset}`` mapping, returns its ``ArraySplit``
    (same as ``torch_to_split``); the other arguments are then ignored.
    """
    if not isinstance(sites, Mapping):
        return torch_to_split(sites)
    arrays: dict[str, Any] = {}
    for sid, v in sites.items():
        if isinstance(v, tuple):
            if len(v) != 2:
                raise ConfigError(f"site {sid!r}: expected a Dataset or a (train, test) pair of Datasets")
            arrays[sid] = {
                "train": _dataset_arrays(v[0], f"site {sid!r} train"),
                "test": _dataset_arrays(v[1], f"site {sid!r} test"),
            }
        else:
            arrays[sid] = _dataset_arrays(v, f"site {sid!r}")
    return from_arrays(
        arrays,
        name=name,
        num_classes=num_classes,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        seed=seed,
        kind=kind,
    )

"""UCI Heart Disease split by its 4 hospitals, prepared exactly as FLamby's Fed-Heart-Disease.

Ogier du Terrail et al. (2022), FLamby, NeurIPS Datasets and Benchmarks
(``owkin/FLamby`` ``flamby/datasets/fed_heart_disease/dataset.py``). The protocol, reproduced here
without pandas, scikit-learn or torch:

1. read ``processed.<center>.data``; drop columns slope, ca, thal; drop rows with a ``?``
   (303 / 261 / 46 / 130 = 740 rows);
2. label = ``num > 0`` (int64 0/1);
3. split each hospital with scikit-learn's ``train_test_split(train_size=0.66, test_size=0.34,
   random_state=43, shuffle=True, stratify=label)`` (no stratification when a class has <= 2 rows,
   i.e. Switzerland), re-implemented bit for bit on ``np.random.RandomState(43)``:
   199/104, 172/89, 30/16, 85/45; rows keep their file order within each split;
4. one-hot ``cp`` and ``restecg`` dropping the first level (``pd.get_dummies(drop_first=True)``),
   giving 13 features: 8 numeric columns, then cp_2, cp_3, cp_4, restecg_1, restecg_2;
5. standardize each hospital with the mean and (unbiased) std of *its own* training rows:
   ``(x - mean) / (std + 1e-9)``.

With ``val_fraction > 0`` a seeded validation split is carved from each hospital's training rows
after standardization, so the feature values never depend on ``val_fraction``.

Run: ``PYTHONPATH=src python -c "from fedblend.data import load_heart_disease as f; print(f())"``
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from fedblend.data.base import ArraySplit, FederatedDataset, SiteData
from fedblend.data.datadir import data_file, resolve_data_dir
from fedblend.data.split import carve_val, check_fraction, rng_for
from fedblend.errors import DataError

__all__ = ["HEART_SITES", "HEART_FEATURES", "load_heart_disease", "flamby_split"]

# site id -> file (FLamby's center order: cleveland 0, hungarian 1, switzerland 2, va 3)
HEART_SITES: dict[str, str] = {
    "cleveland": "heart_disease/processed.cleveland.data",
    "hungary": "heart_disease/processed.hungarian.data",
    "switzerland": "heart_disease/processed.switzerland.data",
    "va": "heart_disease/processed.va.data",
}
_RAW_COLUMNS = (
    "age",
    "sex",
    "cp",
    "trestbps",
    "chol",
    "fbs",
    "restecg",
    "thalach",
    "exang",
    "oldpeak",
    "slope",
    "ca",
    "thal",
    "num",
)
_NUMERIC = ("age", "sex", "trestbps", "chol", "fbs", "thalach", "exang", "oldpeak")
_DUMMIES = (("cp", (2.0, 3.0, 4.0), (1.0, 2.0, 3.0, 4.0)), ("restecg", (1.0, 2.0), (0.0, 1.0, 2.0)))
HEART_FEATURES: tuple[str, ...] = _NUMERIC + tuple(f"{col}_{int(v)}" for col, kept, _ in _DUMMIES for v in kept)
_TRAIN_FRACTION = 0.66
_FLAMBY_SEED = 43


def _read_center(path: Path) -> np.ndarray:
    """Complete rows of one processed file as float64 (n, 11): the 10 kept columns and ``num``."""
    keep = [i for i, c in enumerate(_RAW_COLUMNS) if c not in ("slope", "ca", "thal")]
    rows: list[list[float]] = []
    with open(path, encoding="ascii") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            cells = line.split(",")
            if len(cells) != len(_RAW_COLUMNS):
                raise DataError(
                    f"{path}:{lineno}: expected {len(_RAW_COLUMNS)} comma-separated values "
                    f"({', '.join(_RAW_COLUMNS)}), got {len(cells)}; is this a UCI processed.*.data file?"
                )
            kept = [cells[i].strip() for i in keep]
            if "?" in kept:
                continue
            try:
                rows.append([float(c) for c in kept])
            except ValueError as e:
                raise DataError(f"{path}:{lineno}: not a number: {e}") from None
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(keep))


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """scikit-learn's ``utils.extmath._approximate_mode``, same random calls."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            inds = rng.choice(inds, size=add_now, replace=False)
            floored[inds] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def flamby_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FLamby's per-center (train, test) row indices, each in file order.

    Equal to ``sklearn.model_selection.train_test_split(np.arange(n), train_size=0.66,
    test_size=1 - 0.66, random_state=43, shuffle=True, stratify=labels or None)``.
    """
    n = len(labels)
    n_test = math.ceil((1.0 - _TRAIN_FRACTION) * n)
    n_train = math.floor(_TRAIN_FRACTION * n)
    rng = np.random.RandomState(_FLAMBY_SEED)  # FLamby's fixed split seed, not a job seed
    classes, y_idx, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if len(classes) > 1 and bool(np.all(counts > 2)):
        class_indices = np.split(np.argsort(y_idx, kind="stable"), np.cumsum(counts)[:-1])
        n_i = _approximate_mode(counts, n_train, rng)
        t_i = _approximate_mode(counts - n_i, n_test, rng)
        train: list[int] = []
        test: list[int] = []
        for i in range(len(classes)):
            perm = class_indices[i].take(rng.permutation(counts[i]), mode="clip")
            train.extend(perm[: n_i[i]])
            test.extend(perm[n_i[i] : n_i[i] + t_i[i]])
        tr, te = np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64)
    else:
        perm = rng.permutation(n)
        te, tr = perm[:n_test], perm[n_test : n_test + n_train]
    return np.sort(tr).astype(np.int64), np.sort(te).astype(np.int64)


def _features(raw: np.ndarray, where: str) -> np.ndarray:
    cols = [c for c in _RAW_COLUMNS if c not in ("slope", "ca", "thal", "num")]
    out = [raw[:, cols.index(c)] for c in _NUMERIC]
    for col, kept, allowed in _DUMMIES:
        v = raw[:, cols.index(col)]
        bad = sorted(set(np.unique(v).tolist()) - set(allowed))
        if bad:
            raise DataError(f"{where}: column {col!r} must take values {allowed} (got also {bad})")
        out.extend((v == k).astype(np.float64) for k in kept)
    return np.stack(out, axis=1)


def load_heart_disease(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    val_fraction: float = 0.0,
    seed: int = 0,
    normalize: bool = True,
) -> FederatedDataset:
    """The 4-hospital heart disease federation (sites cleveland, hungary, switzerland, va).

    ``val_fraction`` carves a seeded validation split from each hospital's training rows (0.0 keeps
    the FLamby protocol exact); ``normalize=False`` leaves the features unstandardized.
    """
    root = resolve_data_dir(data_dir)
    vf = check_fraction("val_fraction", val_fraction)
    sites: dict[str, SiteData] = {}
    for sid, rel in HEART_SITES.items():
        path = data_file(root, rel, "heart_disease")
        raw = _read_center(path)
        if len(raw) < 3:
            raise DataError(f"{path}: only {len(raw)} complete rows; expected the UCI processed file")
        x = _features(raw, str(path))
        y = (raw[:, -1] != 0).astype(np.int64)
        tr, te = flamby_split(y)
        if normalize:
            mean = x[tr].mean(axis=0)
            std = x[tr].std(axis=0, ddof=1)
            x = (x - mean) / (std + 1e-9)
        x32 = x.astype(np.float32)
        train = ArraySplit(x32[tr], y[tr])
        train, val = carve_val(train, vf, rng_for(seed, "val", sid))
        sites[sid] = SiteData(sid, train, val, ArraySplit(x32[te], y[te]))
    return FederatedDataset(
        name="heart_disease",
        sites=sites,
        num_classes=2,
        input_shape=(len(HEART_FEATURES),),
        kind="tabular",
        feature_names=HEART_FEATURES,
        class_names=("no disease", "disease"),
    )

"""Turn pooled arrays into a federation: partition train, share out test, carve validation.

``federate`` is what MNIST, Fashion-MNIST and any pooled user arrays go through:

1. the pooled training set is split among ``num_sites`` sites by a partitioner
   (``fedblend.data.partition``), then optionally capped at ``examples_per_site`` per site;
2. each site gets a share of the pooled test set: ``test_partition="iid"`` (a seeded iid split,
   the default) or ``"same"`` (each class in proportion to the site's training label counts, so
   the test set follows the site's own label skew). Without a pooled test set, each site holds out
   ``test_fraction`` of its training share instead;
3. a seeded validation split (``val_fraction``) is carved from each site's training share.

Site ids are ``site_00``, ``site_01``, ... (zero-padded so they sort in order).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedblend.data.base import ArraySplit, FederatedDataset, SiteData
from fedblend.data.partition import cap, iid, match_labels, partition
from fedblend.data.split import carve_val, check_fraction, holdout, rng_for
from fedblend.errors import ConfigError

__all__ = ["site_names", "federate", "infer_kind"]

TEST_PARTITIONS = ("iid", "same")


def site_names(num_sites: int) -> list[str]:
    """``["site_00", "site_01", ...]``, padded to at least two digits."""
    width = max(2, len(str(num_sites - 1)))
    return [f"site_{i:0{width}d}" for i in range(num_sites)]


def infer_kind(x: np.ndarray) -> str:
    """``"image"`` for (N, C, H, W) or (N, H, W), ``"text"`` for integer (N, T), else ``"tabular"``."""
    if x.ndim >= 3:
        return "image"
    if x.ndim == 2 and np.issubdtype(x.dtype, np.integer):
        return "text"
    return "tabular"


def federate(
    name: str,
    train: ArraySplit,
    test: ArraySplit | None = None,
    *,
    num_sites: int,
    partition_method: str = "iid",
    seed: int = 0,
    val_fraction: float = 0.0,
    test_fraction: float = 0.2,
    examples_per_site: int | None = None,
    test_partition: str = "iid",
    num_classes: int | None = None,
    kind: str | None = None,
    feature_names: tuple[str, ...] = (),
    class_names: tuple[str, ...] = (),
    **partition_params: Any,
) -> FederatedDataset:
    """A ``FederatedDataset`` from pooled ``train`` (and ``test``) arrays; see the module docstring."""
    vf = check_fraction("val_fraction", val_fraction)
    if test_partition not in TEST_PARTITIONS:
        raise ConfigError(f"'test_partition' must be one of {list(TEST_PARTITIONS)} (got {test_partition!r})")
    if num_classes is not None:
        k = int(num_classes)
    else:
        k = int(max(train.y.max(initial=-1), -1 if test is None else test.y.max(initial=-1))) + 1
    parts = partition(partition_method, train.y, num_sites, rng_for(seed, "partition"), **partition_params)
    parts = cap(parts, examples_per_site, rng_for(seed, "cap"))
    ids = site_names(len(parts))
    train_parts = [train.subset(p) for p in parts]
    if test is not None:
        if test_partition == "iid":
            if len(test) >= len(parts):
                test_idx = iid(len(test), len(parts), rng_for(seed, "test"))
            else:  # fewer test examples than sites: the first sites get one each
                test_idx = [np.arange(i, i + 1) if i < len(test) else np.zeros(0, np.int64) for i in range(len(parts))]
        else:
            counts = np.stack([np.bincount(t.y, minlength=k)[:k] for t in train_parts])
            test_idx = match_labels(test.y, counts, rng_for(seed, "test"))
        test_parts = [test.subset(t) for t in test_idx]
    else:
        tf = check_fraction("test_fraction", test_fraction)
        test_parts = []
        for i, sid in enumerate(ids):
            whole = train_parts[i]
            keep, held = holdout(len(whole), tf, rng_for(seed, "test", sid))
            train_parts[i] = whole.subset(keep)
            test_parts.append(whole.subset(held))
    sites: dict[str, SiteData] = {}
    for sid, tp, te in zip(ids, train_parts, test_parts, strict=True):
        tr, va = carve_val(tp, vf, rng_for(seed, "val", sid))
        sites[sid] = SiteData(sid, tr, va, te)
    input_shape = tuple(int(d) for d in train.x.shape[1:])
    return FederatedDataset(
        name=name,
        sites=sites,
        num_classes=k,
        input_shape=input_shape,
        kind=kind or infer_kind(train.x),
        feature_names=tuple(feature_names),
        class_names=tuple(class_names),
    )

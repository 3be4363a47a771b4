"""The built-in datasets by name, and ``load_dataset``: one call from a job file to a federation.

| name | clients | default partition | default val_fraction |
|---|---|---|---|
| heart_disease | 4 hospitals (FLamby protocol) | natural | 0.0 (FLamby exact) |
| mnist, fashion_mnist | none: partitioned | iid over 10 sites | 0.1 |
| femnist | 105 writers (LEAF sample) | natural | 0.1 |
| shakespeare | 10 speaking roles (LEAF sample) | natural | 0.1 |

Natural datasets can also be pooled and re-partitioned (``partition="iid"`` etc.) for comparison.

Run: ``PYTHONPATH=src python -c "from fedblend.data import load_dataset as f;
print(f('mnist', partition='dirichlet', alpha=0.3, num_sites=20))"``
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedblend.data.base import ArraySplit, FederatedDataset, SiteData
from fedblend.data.federate import federate
from fedblend.data.heart import load_heart_disease
from fedblend.data.idx import FASHION_CLASSES, load_idx_pair
from fedblend.data.leaf import load_femnist, load_shakespeare
from fedblend.data.partition import PARTITIONERS, cap
from fedblend.data.split import rng_for
from fedblend.errors import ConfigError

__all__ = ["DatasetInfo", "DATASETS", "load_dataset"]


@dataclass(frozen=True)
class DatasetInfo:
    """What ``load_dataset`` knows about one built-in dataset."""

    name: str
    description: str
    natural: bool  # True: the data has its own clients; False: it must be partitioned
    default_val_fraction: float
    options: tuple[str, ...] = ()  # dataset-specific keyword options
    load: Callable[..., FederatedDataset] | None = None  # natural datasets: (data_dir, **kw) -> federation


DATASETS: dict[str, DatasetInfo] = {
    "heart_disease": DatasetInfo(
        "heart_disease",
        "UCI heart disease, 4 hospitals, FLamby preprocessing (13 features, binary)",
        natural=True,
        default_val_fraction=0.0,
        options=("normalize",),
        load=load_heart_disease,
    ),
    "mnist": DatasetInfo(
        "mnist", "MNIST digits, 60k train / 10k test, 1x28x28", natural=False, default_val_fraction=0.1
    ),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", "Fashion-MNIST, 60k train / 10k test, 1x28x28", natural=False, default_val_fraction=0.1
    ),
    "femnist": DatasetInfo(
        "femnist",
        "LEAF FEMNIST sample, 105 writers, 62 classes, 1x28x28",
        natural=True,
        default_val_fraction=0.1,
        options=("num_writers", "invert"),
        load=load_femnist,
    ),
    "shakespeare": DatasetInfo(
        "shakespeare",
        "LEAF Shakespeare sample, 10 roles, next character over 80 symbols",
        natural=True,
        default_val_fraction=0.1,
        load=load_shakespeare,
    ),
}

_PARTITION_PARAMS = ("alpha", "min_size", "shards_per_site", "shard_size", "power")


def _pool(fd: FederatedDataset) -> tuple[ArraySplit, ArraySplit]:
    sites = list(fd.sites.values())
    train = ArraySplit.concat([p for s in sites for p in (s.train, s.val)])
    return train, ArraySplit.concat([s.test for s in sites])


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    partition: str | None = None,
    num_sites: int | None = None,
    seed: int = 0,
    val_fraction: float | None = None,
    examples_per_site: int | None = None,
    test_partition: str = "iid",
    alpha: float | None = None,
    min_size: int | None = None,
    shards_per_site: int | None = None,
    shard_size: int | None = None,
    power: float | None = None,
    **options: Any,
) -> FederatedDataset:
    """A built-in dataset as a federation.

    ``partition``: ``"natural"`` (default for datasets with their own clients) or one of
    ``iid``, ``dirichlet`` (needs ``alpha``), ``shards``, ``quantity_skew`` (default ``iid``
    for MNIST and Fashion-MNIST, with ``num_sites`` default 10). For a natural dataset,
    ``num_sites`` keeps its first N clients. ``examples_per_site`` caps each site's training share
    (a seeded subset). Partition parameters left as None take the partitioner's defaults;
    ``options`` are the dataset's own (see ``DATASETS[name].options``).
    """
    info = DATASETS.get(name)
    if info is None:
        raise ConfigError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    bad = sorted(set(options) - set(info.options))
    if bad:
        raise ConfigError(f"dataset {name!r} does not take option(s) {bad}; it takes {list(info.options) or 'none'}")
    method = partition or ("natural" if info.natural else "iid")
    if method != "natural" and method not in PARTITIONERS:
        raise ConfigError(f"unknown partition {method!r}; expected 'natural' or one of {list(PARTITIONERS)}")
    if method == "natural" and not info.natural:
        raise ConfigError(
            f"dataset {name!r} has no natural clients; use partition='iid', 'dirichlet', 'shards' or 'quantity_skew'"
        )
    given = dict(alpha=alpha, min_size=min_size, shards_per_site=shards_per_site, shard_size=shard_size, power=power)
    params: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    vf = info.default_val_fraction if val_fraction is None else val_fraction

    if method == "natural":
        if params:
            raise ConfigError(f"partition 'natural' takes no partition parameters (got {sorted(params)})")
        if name == "femnist" and num_sites is not None and "num_writers" not in options:
            options["num_writers"] = num_sites
        assert info.load is not None
        fd = info.load(data_dir, val_fraction=vf, seed=seed, **options)
        return _restrict(fd, num_sites, examples_per_site, seed)

    if info.natural:
        assert info.load is not None
        pooled = info.load(data_dir, val_fraction=0.0, seed=seed, **options)
        train, test = _pool(pooled)
        meta: dict[str, Any] = dict(
            num_classes=pooled.num_classes,
            kind=pooled.kind,
            feature_names=pooled.feature_names,
            class_names=pooled.class_names,
        )
    else:
        train, test = load_idx_pair(name, data_dir)
        classes = FASHION_CLASSES if name == "fashion_mnist" else tuple(str(d) for d in range(10))
        meta = dict(num_classes=10, kind="image", class_names=classes)
    return federate(
        name,
        train,
        test,
        num_sites=10 if num_sites is None else num_sites,
        partition_method=method,
        seed=seed,
        val_fraction=vf,
        examples_per_site=examples_per_site,
        test_partition=test_partition,
        **meta,
        **params,
    )


def _restrict(
    fd: FederatedDataset, num_sites: int | None, examples_per_site: int | None, seed: int
) -> FederatedDataset:
    ids = fd.site_ids
    if num_sites is not None:
        if isinstance(num_sites, bool) or not isinstance(num_sites, int) or not 1 <= num_sites <= len(ids):
            raise ConfigError(
                f"'num_sites' for dataset {fd.name!r} must be an int in [1, {len(ids)}] (its natural clients) "
                f"(got {num_sites!r}); or pool and re-partition it with partition='iid'"
            )
        ids = ids[:num_sites]
    sites = {sid: fd.sites[sid] for sid in ids}
    if examples_per_site is not None:
        for sid in ids:
            s = sites[sid]
            (keep,) = cap([np.arange(len(s.train))], examples_per_site, rng_for(seed, "cap", sid))
            sites[sid] = SiteData(sid, s.train.subset(keep), s.val, s.test)
    return FederatedDataset(
        name=fd.name,
        sites=sites,
        num_classes=fd.num_classes,
        input_shape=fd.input_shape,
        kind=fd.kind,
        feature_names=fd.feature_names,
        class_names=fd.class_names,
    )

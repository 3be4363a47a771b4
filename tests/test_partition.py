"""Partitioners: deterministic for a seed, exact coverage, the skew they promise, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from fedblend.data import federate, heterogeneity
from fedblend.data.base import ArraySplit
from fedblend.data.partition import (
    cap,
    dirichlet,
    iid,
    match_labels,
    natural,
    partition,
    quantity_skew,
    shards,
)
from fedblend.errors import ConfigError, DataError


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 7]))


Y = np.repeat(np.arange(10), 200)  # 2000 labels, 10 balanced classes


def assert_exact_cover(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n))
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)  # sorted, unique


def counts(parts, y=Y, k=10):
    return {str(i): np.bincount(y[p], minlength=k) for i, p in enumerate(parts)}


@pytest.mark.parametrize(
    "make",
    [
        lambda r: iid(len(Y), 7, r),
        lambda r: dirichlet(Y, 7, 0.5, r, min_size=5),
        lambda r: shards(Y, 7, r, shards_per_site=2),
        lambda r: quantity_skew(len(Y), 7, r, alpha=0.5),
    ],
    ids=["iid", "dirichlet", "shards", "quantity_skew"],
)
def test_deterministic_and_exact_cover(make):
    a, b, c = make(rng(1)), make(rng(1)), make(rng(2))
    assert len(a) == 7
    assert all(np.array_equal(x, z) for x, z in zip(a, b, strict=True))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c, strict=True))
    assert_exact_cover(a, len(Y))


def test_iid_sizes_equal():
    sizes = [len(p) for p in iid(2003, 10, rng())]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 2003


def test_dirichlet_small_alpha_more_skewed_than_large():
    skewed = heterogeneity(counts(dirichlet(Y, 10, 0.1, rng(), min_size=1)))
    mild = heterogeneity(counts(dirichlet(Y, 10, 100.0, rng(), min_size=1)))
    assert np.mean(list(skewed.values())) > 0.3
    assert np.mean(list(mild.values())) < 0.02
    assert min(skewed.values()) > max(mild.values())


def test_dirichlet_min_size_and_error():
    parts = dirichlet(Y, 20, 0.3, rng(), min_size=30)
    assert min(len(p) for p in parts) >= 30
    with pytest.raises(DataError) as e:
        dirichlet(Y, 50, 0.001, rng(), min_size=35, max_tries=3)
    msg = str(e.value)
    assert "site" in msg and "larger alpha" in msg and "fewer sites" in msg
    with pytest.raises(ConfigError, match="alpha"):
        dirichlet(Y, 5, 0.0, rng())


def test_shards_mcmahan_layout():
    y = np.repeat(np.arange(10), 6000)
    parts = shards(y, 100, rng(), shards_per_site=2)  # McMahan: 200 shards of 300
    assert [len(p) for p in parts] == [600] * 100
    assert max(len(np.unique(y[p])) for p in parts) <= 2  # 6000 per class = 20 whole shards
    fixed = shards(np.repeat(np.arange(10), 50), 4, rng(), shards_per_site=2, shard_size=40)
    assert [len(p) for p in fixed] == [80] * 4
    with pytest.raises(DataError, match="smaller shard_size"):
        shards(Y, 10, rng(), shard_size=500)


def test_quantity_skew_sizes():
    d = [len(p) for p in quantity_skew(len(Y), 10, rng(), alpha=0.2, min_size=5)]
    assert sum(d) == len(Y) and min(d) >= 5 and max(d) > 3 * min(d)
    p = sorted(len(x) for x in quantity_skew(1000, 4, rng(), power=1.0, min_size=1))
    assert sum(p) == 1000 and p[-1] > 3 * p[0]  # ~ 1 : 1/2 : 1/3 : 1/4
    eq = [len(x) for x in quantity_skew(1000, 4, rng(), power=0.0)]
    assert eq == [250] * 4


def test_natural_groups():
    g = np.array(["b", "a", "b", "c", "a"])
    assert [p.tolist() for p in natural(g)] == [[1, 4], [0, 2], [3]]
    with pytest.raises(DataError):
        natural(np.array([]))


def test_empty_site_is_a_clear_error():
    with pytest.raises(DataError, match="num_sites <= 5"):
        iid(5, 6, rng())
    with pytest.raises(DataError, match=r"site \d+ \(of 40\)"):
        dirichlet(np.repeat(np.arange(2), 30), 40, 0.01, rng(), min_size=0, max_tries=2)
    with pytest.raises(DataError, match="fewer sites"):
        federate(
            "x",
            ArraySplit(np.zeros((60, 2), np.float32), np.repeat(np.arange(2), 30)),
            num_sites=40,
            partition_method="dirichlet",
            alpha=0.01,
            min_size=0,
            max_tries=2,
        )


def test_cap_and_match_labels():
    parts = iid(len(Y), 4, rng())
    capped = cap(parts, 100, rng(3))
    assert [len(p) for p in capped] == [100] * 4 and all(
        np.isin(c, p).all() for c, p in zip(capped, parts, strict=True)
    )
    assert cap(parts, None, rng()) == parts
    with pytest.raises(ConfigError):
        cap(parts, 0, rng())
    train_counts = np.array([[10, 0, 5], [0, 10, 5]])
    y_test = np.repeat(np.arange(3), 20)
    m = match_labels(y_test, train_counts, rng())
    assert_exact_cover(m, 60)
    assert np.bincount(y_test[m[0]], minlength=3).tolist() == [20, 0, 10]


def test_partition_dispatch_validates():
    assert len(partition("shards", Y, 5, rng(), shards_per_site=3)) == 5
    with pytest.raises(ConfigError, match="expected one of"):
        partition("label_skew", Y, 5, rng())
    with pytest.raises(ConfigError, match="does not take"):
        partition("iid", Y, 5, rng(), alpha=1.0)

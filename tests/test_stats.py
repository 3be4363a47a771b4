"""Site statistics: small-cell suppression, feature summaries, JS-divergence heterogeneity."""

from __future__ import annotations

import numpy as np
import pytest

from fedblend.data import (
    ArraySplit,
    SiteData,
    heterogeneity,
    js_divergence,
    label_counts,
    label_distribution,
    load_dataset,
    site_stats,
    summary_table,
)
from fedblend.errors import DataError
from fedblend.records import SiteStats


def make_site(y, x=None, sid="s"):
    y = np.asarray(y, dtype=np.int64)
    x = np.arange(len(y) * 2, dtype=np.float32).reshape(-1, 2) if x is None else x
    tr = ArraySplit(x, y)
    return SiteData(sid, tr, tr.subset(np.arange(2)), tr.subset(np.arange(3)))


def test_small_cells_suppressed():
    site = make_site([0] * 7 + [1] * 4 + [2] * 5)  # class 3 absent
    st = site_stats(site, num_classes=4, min_cell=5)
    assert st.label_counts == {"0": 7, "1": None, "2": 5, "3": 0}
    assert (st.num_train, st.num_val, st.num_test) == (16, 2, 3)
    assert st.data_version == site.version() and st.min_cell == 5
    assert SiteStats.from_json(st.to_json()) == st
    assert site_stats(site, 4, min_cell=1).label_counts == {"0": 7, "1": 4, "2": 5, "3": 0}


def test_feature_stats_tabular_only():
    x = np.array([[1.0, np.nan], [2.0, 4.0], [3.0, np.nan], [4.0, 6.0], [5.0, 8.0], [6.0, 10.0]], np.float32)
    st = site_stats(make_site([0, 1, 0, 1, 0, 1], x), 2, feature_names=("age", "chol"), min_cell=4)
    assert st.features["age"]["mean"] == pytest.approx(3.5)
    assert st.features["age"]["std"] == pytest.approx(np.std(np.arange(1, 7), ddof=1))
    assert st.features["age"]["missing"] == 0.0
    assert st.features["chol"] == {
        "mean": 7.0,
        "std": pytest.approx(np.std([4, 6, 8, 10], ddof=1)),
        "missing": pytest.approx(2 / 6),
    }
    few = site_stats(make_site([0, 1, 0, 1, 0, 1], x), 2, min_cell=5)
    assert few.features["x1"]["mean"] is None and few.features["x0"]["mean"] == pytest.approx(3.5)
    images = make_site([0, 1, 0], np.zeros((3, 1, 4, 4), np.float32))
    assert site_stats(images, 2).features == {}
    text = make_site([0, 1, 0], np.zeros((3, 5), np.int64))
    assert site_stats(text, 2).features == {}


def test_js_divergence_reference_values():
    assert js_divergence([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0)
    assert js_divergence([5, 0], [0, 3]) == pytest.approx(1.0)
    # JSD([1,0],[.5,.5]) = 0.5*KL([1,0]||[.75,.25]) + 0.5*KL([.5,.5]||[.75,.25]) in bits
    ref = 0.5 * np.log2(1 / 0.75) + 0.5 * (0.5 * np.log2(0.5 / 0.75) + 0.5 * np.log2(0.5 / 0.25))
    assert js_divergence([1, 0], [1, 1]) == pytest.approx(ref)
    scipy_distance = pytest.importorskip("scipy.spatial.distance")
    p, q = np.array([0.1, 0.6, 0.3]), np.array([0.5, 0.2, 0.3])
    assert js_divergence(p, q) == pytest.approx(scipy_distance.jensenshannon(p, q, base=2) ** 2)
    with pytest.raises(DataError):
        js_divergence([1, 2], [1, 2, 3])


def test_heterogeneity_against_pooled():
    h = heterogeneity({"a": [10, 0], "b": [0, 10]})
    assert h["a"] == pytest.approx(js_divergence([1, 0], [1, 1]))
    same = heterogeneity({"a": [3, 3], "b": [5, 5]})
    assert same == {"a": pytest.approx(0.0), "b": pytest.approx(0.0)}
    from_stats = heterogeneity({"a": {"0": 10, "1": None, "10": 0}, "b": {"0": 10, "1": 20, "10": 0}})
    assert set(from_stats) == {"a", "b"} and from_stats["a"] > from_stats["b"]


def test_label_distribution_and_heart_summary():
    fd = load_dataset("heart_disease")
    dists = {s: label_distribution(d, 2) for s, d in fd.sites.items()}
    assert all(v.sum() == pytest.approx(1.0) for v in dists.values())
    h = heterogeneity({s: label_counts(d.train, 2) for s, d in fd.sites.items()})
    assert max(h, key=h.get) == "switzerland"  # 30 of 30 training patients have disease
    stats = [site_stats(d, 2, fd.feature_names) for d in fd.sites.values()]
    assert stats[2].label_counts == {"0": 0, "1": 30}
    assert set(stats[0].features) == set(fd.feature_names)
    rows = summary_table(stats, h)
    assert [r["site"] for r in rows] == fd.site_ids
    assert rows[0]["train"] == 199 and rows[2]["top_share"] == 1.0 and rows[2]["js"] == round(h["switzerland"], 4)
    with pytest.raises(DataError, match="num_classes"):
        label_counts(fd.sites["va"].train, 1)

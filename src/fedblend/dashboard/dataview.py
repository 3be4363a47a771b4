"""The Data page's data: each site's privacy-safe profile from the store's ``site_stats``.

Row counts per split, training label counts (None where a count below ``min_cell`` was
suppressed by the site), the heterogeneity index (JS divergence from the pooled labels) and, for
tabular data, per-feature mean / std / missing rate.
"""

from __future__ import annotations

from fedblend.dashboard.models import DataView, SiteData
from fedblend.dashboard.source import StoreSource
from fedblend.dashboard.util import as_int, finite, run_info

__all__ = ["build_data", "class_sort_key"]


def class_sort_key(c: str) -> tuple[int, int | str]:
    return (0, int(c)) if c.lstrip("-").isdigit() else (1, c)


def build_data(source: StoreSource) -> DataView:
    store = source.get()
    info = run_info(source, store)
    if store is None:
        return DataView(run=info, classes=[], features=[], sites=[])
    classes: set[str] = set()
    features: list[str] = []
    sites = []
    for sid, st in sorted(store.site_stats().items()):
        counts_raw = st.get("label_counts") or {}
        counts = {str(k): as_int(v) for k, v in counts_raw.items()} if isinstance(counts_raw, dict) else {}
        classes |= set(counts)
        feats_raw = st.get("features") or {}
        feats: dict[str, dict[str, float | None]] = {}
        if isinstance(feats_raw, dict):
            for name, summary in feats_raw.items():
                if isinstance(summary, dict):
                    feats[str(name)] = {str(k): finite(v) for k, v in summary.items()}
                    if str(name) not in features:
                        features.append(str(name))
        sites.append(
            SiteData(
                site_id=str(sid),
                num_train=as_int(st.get("num_train")),
                num_val=as_int(st.get("num_val")),
                num_test=as_int(st.get("num_test")),
                label_counts=counts,
                heterogeneity=finite(st.get("heterogeneity")),
                data_version=None if st.get("data_version") in (None, "") else str(st.get("data_version")),
                min_cell=as_int(st.get("min_cell")),
                features=feats,
            )
        )
    return DataView(run=info, classes=sorted(classes, key=class_sort_key), features=features, sites=sites)

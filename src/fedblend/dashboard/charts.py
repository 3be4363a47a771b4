"""Plotly figures of the Overview, Training and Data pages, built from the API's view models.

The same models the JSON API returns feed the figures, so a test can check a chart's numbers
against the store without a browser. Blend and search figures are in ``optcharts.py``.
"""

from __future__ import annotations

from typing import Any

from fedblend.dashboard.figures import STATUS_COLORS, Fig, layout, round_axis, site_color
from fedblend.dashboard.models import DataView, Overview, Training
from fedblend.dashboard.optcharts import blend_charts, search_charts

__all__ = ["overview_charts", "training_charts", "data_charts", "blend_charts", "search_charts"]


# -- overview ----------------------------------------------------------------------------------
def overview_charts(ov: Overview, training: Training) -> dict[str, Fig]:
    names = [n for n in training.global_metric_names if n.endswith("_acc") or n.endswith("_loss")]
    rounds = [r.round for r in training.rounds]
    traces = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": n,
            "x": rounds,
            "y": [r.global_metrics.get(n) for r in training.rounds],
        }
        for n in names
    ]
    return {"overview-global": {"data": traces, "layout": round_axis(layout("round", None, height=260), rounds)}}


# -- training ----------------------------------------------------------------------------------
def training_charts(tr: Training) -> dict[str, Fig]:
    charts: dict[str, Fig] = {}
    rounds = [r.round for r in tr.rounds]
    losses = [n for n in tr.global_metric_names if "loss" in n]
    others = [n for n in tr.global_metric_names if "loss" not in n]
    for cid, names, ytitle in (("global-loss", losses, "loss"), ("global-other", others, "value")):
        charts[cid] = {
            "data": [
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "name": n,
                    "x": rounds,
                    "y": [r.global_metrics.get(n) for r in tr.rounds],
                }
                for n in names
            ],
            "layout": round_axis(layout("round", ytitle), rounds),
        }
    sites = tr.participation.sites
    groups: dict[tuple[str, str], list[Any]] = {}
    for s in tr.site_series:
        groups.setdefault((s.kind, s.metric), []).append(s)
    for (kind, metric), series in groups.items():
        charts[f"site-{kind}-{metric}".replace(":", "-")] = {
            "data": [
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "name": s.site_id,
                    "x": s.rounds,
                    "y": s.values,
                    "line": {"color": site_color(sites, s.site_id)},
                    "marker": {"color": site_color(sites, s.site_id)},
                }
                for s in series
            ],
            "layout": round_axis(layout("round", metric), sorted({r for s in series for r in s.rounds})),
        }
    p = tr.participation
    states = ["trained", "absent", "rejected", "error", "timeout", "offline"]
    code = {s: i for i, s in enumerate(states)}
    n = len(states) - 1
    scale = []
    for i, s in enumerate(states):  # a stepped colour scale: one flat band per status
        scale += [[i / (n + 1), STATUS_COLORS[s]], [(i + 1) / (n + 1), STATUS_COLORS[s]]]
    charts["participation"] = {
        "data": [
            {
                "type": "heatmap",
                "x": p.rounds,
                "y": p.sites,
                "z": [[code.get(v, 1) for v in row] for row in p.status],
                "text": p.status,
                "hovertemplate": "round %{x}<br>%{y}: %{text}<extra></extra>",
                "zmin": -0.5,
                "zmax": n + 0.5,
                "colorscale": scale,
                "showscale": False,
                "xgap": 2,
                "ygap": 2,
            }
        ],
        "layout": round_axis(layout("round", None, height=max(160, 70 + 34 * len(p.sites))), p.rounds),
    }
    charts["participation-count"] = {
        "data": [
            {
                "type": "bar",
                "name": "accepted updates",
                "x": rounds,
                "y": [len(r.participants) for r in tr.rounds],
                "marker": {"color": STATUS_COLORS["trained"]},
            },
            {
                "type": "bar",
                "name": "failed or rejected",
                "x": rounds,
                "y": [len(r.failures) for r in tr.rounds],
                "marker": {"color": STATUS_COLORS["rejected"]},
            },
        ],
        "layout": round_axis(layout("round", "sites", barmode="stack"), rounds),
    }
    charts["round-time"] = {
        "data": [
            {
                "type": "bar",
                "name": "seconds",
                "x": rounds,
                "y": [r.duration_s for r in tr.rounds],
                "marker": {"color": "#64748b"},
            }
        ],
        "layout": round_axis(layout("round", "seconds"), rounds),
    }
    return charts


# -- data --------------------------------------------------------------------------------------
def data_charts(d: DataView) -> dict[str, Fig]:
    sites = [s.site_id for s in d.sites]
    charts: dict[str, Fig] = {
        "data-rows": {
            "data": [
                {"type": "bar", "name": split, "x": sites, "y": [getattr(s, f"num_{split}") for s in d.sites]}
                for split in ("train", "val", "test")
            ],
            "layout": layout("site", "rows", barmode="stack"),
        },
        "data-heterogeneity": {
            "data": [
                {
                    "type": "bar",
                    "name": "JS divergence",
                    "x": sites,
                    "y": [s.heterogeneity for s in d.sites],
                    "marker": {"color": [site_color(sites, x) for x in sites]},
                }
            ],
            "layout": layout(
                "site", "JS divergence", yaxis={"rangemode": "tozero", "gridcolor": "#eef0f3", "automargin": True}
            ),
        },
    }
    counts = [[s.label_counts.get(c) for s in d.sites] for c in d.classes]
    totals = [sum(v or 0 for v in (s.label_counts.get(c) for c in d.classes)) for s in d.sites]
    ratios = [[None if v is None or not totals[j] else v / totals[j] for j, v in enumerate(row)] for row in counts]
    charts["data-class-counts"] = {
        "data": [{"type": "bar", "name": f"class {c}", "x": sites, "y": counts[i]} for i, c in enumerate(d.classes)],
        "layout": layout("site", "training rows", barmode="stack"),
    }
    charts["data-class-ratios"] = {
        "data": [{"type": "bar", "name": f"class {c}", "x": sites, "y": ratios[i]} for i, c in enumerate(d.classes)],
        "layout": layout(
            "site",
            "share of the site's rows",
            barmode="stack",
            yaxis={"range": [0, 1], "gridcolor": "#eef0f3", "automargin": True},
        ),
    }
    z = [[ratios[i][j] for i in range(len(d.classes))] for j in range(len(sites))]
    charts["data-heatmap"] = {
        "data": [
            {
                "type": "heatmap",
                "x": [f"class {c}" for c in d.classes],
                "y": sites,
                "z": z,
                "text": [["suppressed" if v is None else f"{v:.2f}" for v in row] for row in z],
                "texttemplate": "%{text}",
                "colorscale": "Blues",
                "reversescale": True,
                "zmin": 0,
                "zmax": 1,
                "colorbar": {"title": {"text": "share"}},
            }
        ],
        "layout": layout(None, None, height=max(200, 70 + 40 * len(sites))),
    }
    if d.features:
        charts["data-features"] = {
            "data": [
                {
                    "type": "heatmap",
                    "x": d.features,
                    "y": sites,
                    "z": [[s.features.get(f, {}).get("mean") for f in d.features] for s in d.sites],
                    "colorscale": "RdBu",
                    "zmid": 0,
                    "colorbar": {"title": {"text": "mean"}},
                    "hovertemplate": "%{y} · %{x}<br>mean %{z:.3f}<extra></extra>",
                }
            ],
            "layout": layout(None, None, height=max(200, 90 + 40 * len(sites))),
        }
    return charts

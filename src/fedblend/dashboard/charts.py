"""Plotly figures (plain ``{"data": [...], "layout": {...}}`` dicts) for every dashboard page.

The browser draws them with the Plotly JavaScript bundle served from the ``plotly`` package; the
figures are built here, in Python, from the same view models the JSON API returns, so a test can
check a chart's numbers against the store without a browser.
"""

from __future__ import annotations

import math
from typing import Any

from fedblend.dashboard.models import Blends, DataView, Overview, Search, Synthesis, Training

__all__ = ["PALETTE", "overview_charts", "training_charts", "blend_charts", "data_charts", "search_charts", "site_color"]

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
_STATUS_COLORS = {"trained": "#2ca02c", "absent": "#e5e7eb", "rejected": "#d62728", "error": "#f59e0b",
                  "timeout": "#a855f7", "offline": "#6b7280"}

Fig = dict[str, Any]
_OBJECTIVE_TITLES = {"pooled": "pooled val. log-loss", "balanced": "site-balanced val. loss", "worst": "worst-site val. loss",
                     "pooled+worst": "pooled val. log-loss"}


def site_color(sites: list[str], sid: str) -> str:
    return PALETTE[sites.index(sid) % len(PALETTE)] if sid in sites else PALETTE[-1]


def _layout(x_title: str | None = None, y_title: str | None = None, **extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        "height": 300,
        "margin": {"l": 56, "r": 16, "t": 12, "b": 44},
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "#ffffff",
        "font": {"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 12, "color": "#1f2937"},
        "legend": {"orientation": "h", "y": -0.22, "x": 0, "traceorder": "normal"},
        "xaxis": {"gridcolor": "#eef0f3", "zeroline": False, "automargin": True},
        "yaxis": {"gridcolor": "#eef0f3", "zeroline": False, "automargin": True},
        "hovermode": "closest",
    }
    if x_title:
        layout["xaxis"]["title"] = {"text": x_title}
    if y_title:
        layout["yaxis"]["title"] = {"text": y_title}
    layout.update(extra)
    return layout


def _round_axis(layout: dict[str, Any], rounds: list[int]) -> dict[str, Any]:
    """Integer round ticks: every round, or every k-th when there are many."""
    if rounds:
        step = max(1, math.ceil((max(rounds) - min(rounds) + 1) / 12))
        layout["xaxis"].update(tickmode="linear", tick0=min(rounds), dtick=step)
    return layout


# -- overview ----------------------------------------------------------------------------------
def overview_charts(ov: Overview, training: Training) -> dict[str, Fig]:
    names = [n for n in training.global_metric_names if n.endswith("_acc") or n.endswith("_loss")]
    rounds = [r.round for r in training.rounds]
    traces = [
        {"type": "scatter", "mode": "lines+markers", "name": n, "x": rounds,
         "y": [r.global_metrics.get(n) for r in training.rounds]}
        for n in names
    ]
    return {"overview-global": {"data": traces, "layout": _round_axis(_layout("round", None, height=260), rounds)}}


# -- training ----------------------------------------------------------------------------------
def training_charts(tr: Training) -> dict[str, Fig]:
    charts: dict[str, Fig] = {}
    rounds = [r.round for r in tr.rounds]
    losses = [n for n in tr.global_metric_names if "loss" in n]
    others = [n for n in tr.global_metric_names if "loss" not in n]
    for cid, names, ytitle in (("global-loss", losses, "loss"), ("global-other", others, "value")):
        charts[cid] = {
            "data": [{"type": "scatter", "mode": "lines+markers", "name": n, "x": rounds,
                      "y": [r.global_metrics.get(n) for r in tr.rounds]} for n in names],
            "layout": _round_axis(_layout("round", ytitle), rounds),
        }
    sites = tr.participation.sites
    groups: dict[tuple[str, str], list[Any]] = {}
    for s in tr.site_series:
        groups.setdefault((s.kind, s.metric), []).append(s)
    for (kind, metric), series in groups.items():
        charts[f"site-{kind}-{metric}".replace(":", "-")] = {
            "data": [{"type": "scatter", "mode": "lines+markers", "name": s.site_id, "x": s.rounds, "y": s.values,
                      "line": {"color": site_color(sites, s.site_id)}, "marker": {"color": site_color(sites, s.site_id)}}
                     for s in series],
            "layout": _round_axis(_layout("round", metric), sorted({r for s in series for r in s.rounds})),
        }
    p = tr.participation
    states = ["trained", "absent", "rejected", "error", "timeout", "offline"]
    code = {s: i for i, s in enumerate(states)}
    n = len(states) - 1
    scale = []
    for i, s in enumerate(states):  # a stepped colour scale: one flat band per status
        scale += [[i / (n + 1), _STATUS_COLORS[s]], [(i + 1) / (n + 1), _STATUS_COLORS[s]]]
    charts["participation"] = {
        "data": [{
            "type": "heatmap", "x": p.rounds, "y": p.sites, "z": [[code.get(v, 1) for v in row] for row in p.status],
            "text": p.status, "hovertemplate": "round %{x}<br>%{y}: %{text}<extra></extra>",
            "zmin": -0.5, "zmax": n + 0.5, "colorscale": scale, "showscale": False, "xgap": 2, "ygap": 2,
        }],
        "layout": _round_axis(_layout("round", None, height=max(160, 70 + 34 * len(p.sites))), p.rounds),
    }
    charts["participation-count"] = {
        "data": [
            {"type": "bar", "name": "accepted updates", "x": rounds, "y": [len(r.participants) for r in tr.rounds],
             "marker": {"color": _STATUS_COLORS["trained"]}},
            {"type": "bar", "name": "failed or rejected", "x": rounds, "y": [len(r.failures) for r in tr.rounds],
             "marker": {"color": _STATUS_COLORS["rejected"]}},
        ],
        "layout": _round_axis(_layout("round", "sites", barmode="stack"), rounds),
    }
    charts["round-time"] = {
        "data": [{"type": "bar", "name": "seconds", "x": rounds, "y": [r.duration_s for r in tr.rounds],
                  "marker": {"color": "#64748b"}}],
        "layout": _round_axis(_layout("round", "seconds"), rounds),
    }
    return charts


# -- blend -------------------------------------------------------------------------------------
def _synthesis_charts(s: Synthesis) -> dict[str, Fig]:
    key = f"blend-{s.round}"
    sites = s.sites
    out: dict[str, Fig] = {
        f"{key}-ratios": {
            "data": [
                {"type": "bar", "name": "FedAvg", "x": sites, "y": [s.fedavg_ratios.get(x) for x in sites],
                 "marker": {"color": "#94a3b8"}},
                {"type": "bar", "name": "chosen" + ("" if s.accepted else " (not adopted)"), "x": sites,
                 "y": [s.chosen_ratios.get(x) for x in sites], "marker": {"color": "#2563eb" if s.accepted else "#f59e0b"}},
            ],
            "layout": _layout("site", "mixing ratio", barmode="group"),
        }
    }
    done = [t for t in s.trials if t.score is not None]
    if done:
        best: list[float] = []
        for t in done:
            best.append(t.score if not best or t.score < best[-1] else best[-1])  # type: ignore[operator]
        fedavg = next((t.score for t in done if t.label == "fedavg" or t.number == 0), None)
        hist = [
            {"type": "scatter", "mode": "markers", "name": "trial", "x": [t.number for t in done], "y": [t.score for t in done],
             "text": [t.label or "" for t in done], "hovertemplate": "trial %{x} %{text}<br>objective %{y:.5f}<extra></extra>",
             "marker": {"color": "#2563eb", "size": 8}},
            {"type": "scatter", "mode": "lines", "name": "best so far", "x": [t.number for t in done], "y": best,
             "line": {"color": "#16a34a", "shape": "hv"}},
        ]
        if fedavg is not None:
            hist.append({"type": "scatter", "mode": "lines", "name": "FedAvg", "x": [done[0].number, done[-1].number],
                         "y": [fedavg, fedavg], "line": {"color": "#94a3b8", "dash": "dash"}})
        out[f"{key}-history"] = {"data": hist, "layout": _layout("trial", _OBJECTIVE_TITLES.get(s.objective or "", "objective"))}
        dims = [{"label": x, "values": [t.ratios.get(x) for t in done], "range": [0, 1]} for x in sites]
        dims.append({"label": "objective", "values": [t.score for t in done]})
        out[f"{key}-parcoords"] = {
            "data": [{"type": "parcoords", "dimensions": dims,
                      "line": {"color": [t.score for t in done], "colorscale": "Viridis", "reversescale": True,
                               "showscale": True, "colorbar": {"title": {"text": "objective"}}}}],
            "layout": _layout(None, None, height=340, margin={"l": 60, "r": 60, "t": 40, "b": 24}),
        }
    if s.best_trial is not None:
        bt = next((t for t in s.trials if t.number == s.best_trial), None)
        if bt is not None and bt.site_scores:
            ss = sorted(bt.site_scores)
            out[f"{key}-sites"] = {
                "data": [
                    {"type": "bar", "name": "FedAvg", "x": ss, "y": [bt.site_scores[x].get("fedavg_loss") for x in ss],
                     "marker": {"color": "#94a3b8"}},
                    {"type": "bar", "name": "best candidate", "x": ss, "y": [bt.site_scores[x].get("loss") for x in ss],
                     "marker": {"color": "#2563eb"}},
                ],
                "layout": _layout("site", "validation log-loss", barmode="group"),
            }
    return out


def blend_charts(b: Blends) -> dict[str, Fig]:
    charts: dict[str, Fig] = {}
    for s in b.syntheses:
        charts.update(_synthesis_charts(s))
    return charts


# -- data --------------------------------------------------------------------------------------
def data_charts(d: DataView) -> dict[str, Fig]:
    sites = [s.site_id for s in d.sites]
    charts: dict[str, Fig] = {
        "data-rows": {
            "data": [{"type": "bar", "name": split, "x": sites, "y": [getattr(s, f"num_{split}") for s in d.sites]}
                     for split in ("train", "val", "test")],
            "layout": _layout("site", "rows", barmode="stack"),
        },
        "data-heterogeneity": {
            "data": [{"type": "bar", "name": "JS divergence", "x": sites, "y": [s.heterogeneity for s in d.sites],
                      "marker": {"color": [site_color(sites, x) for x in sites]}}],
            "layout": _layout("site", "JS divergence", yaxis={"rangemode": "tozero", "gridcolor": "#eef0f3", "automargin": True}),
        },
    }
    counts = [[s.label_counts.get(c) for s in d.sites] for c in d.classes]
    totals = [sum(v or 0 for v in (s.label_counts.get(c) for c in d.classes)) for s in d.sites]
    ratios = [[None if v is None or not totals[j] else v / totals[j] for j, v in enumerate(row)] for row in counts]
    charts["data-class-counts"] = {
        "data": [{"type": "bar", "name": f"class {c}", "x": sites, "y": counts[i]} for i, c in enumerate(d.classes)],
        "layout": _layout("site", "training rows", barmode="stack"),
    }
    charts["data-class-ratios"] = {
        "data": [{"type": "bar", "name": f"class {c}", "x": sites, "y": ratios[i]} for i, c in enumerate(d.classes)],
        "layout": _layout("site", "share of the site's rows", barmode="stack", yaxis={"range": [0, 1], "gridcolor": "#eef0f3", "automargin": True}),
    }
    z = [[ratios[i][j] for i in range(len(d.classes))] for j in range(len(sites))]
    charts["data-heatmap"] = {
        "data": [{"type": "heatmap", "x": [f"class {c}" for c in d.classes], "y": sites, "z": z,
                  "text": [["suppressed" if v is None else f"{v:.2f}" for v in row] for row in z], "texttemplate": "%{text}",
                  "colorscale": "Blues", "reversescale": True, "zmin": 0, "zmax": 1, "colorbar": {"title": {"text": "share"}}}],
        "layout": _layout(None, None, height=max(200, 70 + 40 * len(sites))),
    }
    if d.features:
        charts["data-features"] = {
            "data": [{"type": "heatmap", "x": d.features, "y": sites,
                      "z": [[s.features.get(f, {}).get("mean") for f in d.features] for s in d.sites],
                      "colorscale": "RdBu", "zmid": 0, "colorbar": {"title": {"text": "mean"}},
                      "hovertemplate": "%{y} · %{x}<br>mean %{z:.3f}<extra></extra>"}],
            "layout": _layout(None, None, height=max(200, 90 + 40 * len(sites))),
        }
    return charts


# -- search ------------------------------------------------------------------------------------
def search_charts(se: Search) -> dict[str, Fig]:
    charts: dict[str, Fig] = {}
    for i, st in enumerate(se.studies):
        key = f"search-{i}"
        metric = st.metrics[0] if st.metrics else "objective"
        minimize = not st.directions or st.directions[0] == "minimize"
        done = [t for t in st.trials if t.values and t.values[0] is not None]
        best: list[float] = []
        for t in done:
            v = t.values[0]
            assert v is not None
            best.append(v if not best or (v < best[-1] if minimize else v > best[-1]) else best[-1])
        charts[f"{key}-history"] = {
            "data": [
                {"type": "scatter", "mode": "markers", "name": "trial", "x": [t.number for t in done],
                 "y": [t.values[0] for t in done], "marker": {"size": 8, "color": "#2563eb"}},
                {"type": "scatter", "mode": "lines", "name": "best so far", "x": [t.number for t in done], "y": best,
                 "line": {"shape": "hv", "color": "#16a34a"}},
            ],
            "layout": _layout("trial", metric),
        }
        names = sorted({k for t in done for k in t.params})
        dims = []
        for k in names:
            vals = [t.params.get(k) for t in done]
            if all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals if v is not None):
                dims.append({"label": k, "values": vals})
            else:
                cats = sorted({str(v) for v in vals})
                dims.append({"label": k, "values": [cats.index(str(v)) for v in vals],
                             "tickvals": list(range(len(cats))), "ticktext": cats})
        if done:
            dims.append({"label": metric, "values": [t.values[0] for t in done]})
            charts[f"{key}-parcoords"] = {
                "data": [{"type": "parcoords", "dimensions": dims,
                          "line": {"color": [t.values[0] for t in done], "colorscale": "Viridis",
                                   "reversescale": minimize, "showscale": True}}],
                "layout": _layout(None, None, height=340, margin={"l": 70, "r": 70, "t": 40, "b": 24}),
            }
        curves = [t for t in st.trials if t.steps]
        if curves:
            charts[f"{key}-curves"] = {
                "data": [{"type": "scatter", "mode": "lines", "name": f"#{t.number} ({t.state})", "x": t.steps,
                          "y": t.intermediate, "line": {"dash": "dot" if t.state == "pruned" else "solid", "width": 1.5}}
                         for t in curves],
                "layout": _round_axis(_layout("round", metric, showlegend=len(curves) <= 12), sorted({r for t in curves for r in t.steps})),
            }
        if st.importances:
            m, shares = next(iter(st.importances.items()))
            ks = sorted(shares, key=lambda k: shares[k])
            charts[f"{key}-importance"] = {
                "data": [{"type": "bar", "orientation": "h", "x": [shares[k] for k in ks], "y": ks, "marker": {"color": "#2563eb"}}],
                "layout": _layout(f"share of variance in {m}", None, height=max(180, 60 + 30 * len(ks)),
                                  margin={"l": 160, "r": 16, "t": 12, "b": 44}),
            }
    return charts

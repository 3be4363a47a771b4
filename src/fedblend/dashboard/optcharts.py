"""Plotly figures of the two searches: blend syntheses (ratios, history, trials) and tune studies."""

from __future__ import annotations

from typing import Any

from fedblend.dashboard.figures import OBJECTIVE_TITLES, Fig, layout, parallel_coordinates, round_axis
from fedblend.dashboard.models import Blends, Search, Synthesis

__all__ = ["blend_charts", "search_charts"]


# -- blend -------------------------------------------------------------------------------------
def _synthesis_charts(s: Synthesis) -> dict[str, Fig]:
    key = f"blend-{s.round}"
    sites = s.sites
    out: dict[str, Fig] = {
        f"{key}-ratios": {
            "data": [
                {
                    "type": "bar",
                    "name": "FedAvg",
                    "x": sites,
                    "y": [s.fedavg_ratios.get(x) for x in sites],
                    "marker": {"color": "#94a3b8"},
                },
                {
                    "type": "bar",
                    "name": "chosen" + ("" if s.accepted else " (not adopted)"),
                    "x": sites,
                    "y": [s.chosen_ratios.get(x) for x in sites],
                    "marker": {"color": "#2563eb" if s.accepted else "#f59e0b"},
                },
            ],
            "layout": layout("site", "mixing ratio", barmode="group"),
        }
    }
    done = [t for t in s.trials if t.score is not None]
    if done:
        best: list[float] = []
        for t in done:
            best.append(t.score if not best or t.score < best[-1] else best[-1])  # type: ignore[operator]
        fedavg = next((t.score for t in done if t.label == "fedavg" or t.number == 0), None)
        hist = [
            {
                "type": "scatter",
                "mode": "markers",
                "name": "trial",
                "x": [t.number for t in done],
                "y": [t.score for t in done],
                "text": [t.label or "" for t in done],
                "hovertemplate": "trial %{x} %{text}<br>objective %{y:.5f}<extra></extra>",
                "marker": {"color": "#2563eb", "size": 8},
            },
            {
                "type": "scatter",
                "mode": "lines",
                "name": "best so far",
                "x": [t.number for t in done],
                "y": best,
                "line": {"color": "#16a34a", "shape": "hv"},
            },
        ]
        if fedavg is not None:
            hist.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "name": "FedAvg",
                    "x": [done[0].number, done[-1].number],
                    "y": [fedavg, fedavg],
                    "line": {"color": "#94a3b8", "dash": "dash"},
                }
            )
        out[f"{key}-history"] = {
            "data": hist,
            "layout": layout("trial", OBJECTIVE_TITLES.get(s.objective or "", "objective")),
        }
        dims = [{"label": x, "values": [t.ratios.get(x) for t in done], "range": [0.0, 1.0]} for x in sites]
        dims.append({"label": "objective", "values": [t.score for t in done]})
        marks = {i: "best" for i, t in enumerate(done) if t.number == s.best_trial}
        marks.update({i: "reference" for i, t in enumerate(done) if t.label == "fedavg"})
        out[f"{key}-parcoords"] = parallel_coordinates(
            dims,
            [t.score for t in done],
            [f"trial {t.number}" + (f" ({t.label})" if t.label else "") for t in done],
            color_title="objective",
            low_is_good=True,
            emphasize=marks,
        )
    if s.best_trial is not None:
        bt = next((t for t in s.trials if t.number == s.best_trial), None)
        if bt is not None and bt.site_scores:
            ss = sorted(bt.site_scores)
            out[f"{key}-sites"] = {
                "data": [
                    {
                        "type": "bar",
                        "name": "FedAvg",
                        "x": ss,
                        "y": [bt.site_scores[x].get("fedavg_loss") for x in ss],
                        "marker": {"color": "#94a3b8"},
                    },
                    {
                        "type": "bar",
                        "name": "best candidate",
                        "x": ss,
                        "y": [bt.site_scores[x].get("loss") for x in ss],
                        "marker": {"color": "#2563eb"},
                    },
                ],
                "layout": layout("site", "validation log-loss", barmode="group"),
            }
    return out


def blend_charts(b: Blends) -> dict[str, Fig]:
    charts: dict[str, Fig] = {}
    for s in b.syntheses:
        charts.update(_synthesis_charts(s))
    return charts


# -- search ------------------------------------------------------------------------------------
def _param_dim(name: str, vals: list[Any]) -> dict[str, Any]:
    """One axis of the search's parallel coordinates: numbers (log-scaled when they span decades) or categories."""
    present = [v for v in vals if v is not None]
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        log = bool(present) and min(present) > 0 and max(present) / min(present) >= 100
        return {"label": name + (" (log)" if log else ""), "values": vals, "log": log}
    cats = sorted({str(v) for v in present})
    return {
        "label": name,
        "values": [None if v is None else cats.index(str(v)) for v in vals],
        "range": [0, max(1, len(cats) - 1)],
        "ticktext": cats,
    }


def search_charts(se: Search) -> dict[str, Fig]:
    charts: dict[str, Fig] = {}
    for i, st in enumerate(se.studies):
        key = f"search-{i}"
        metric = st.metrics[0] if st.metrics else "objective"
        minimize = not st.directions or st.directions[0] == "minimize"
        scored = [t for t in st.trials if t.values and t.values[0] is not None]
        done = [t for t in scored if t.state == "complete"]
        stopped = [t for t in scored if t.state != "complete"]  # pruned: the value where it stopped
        best: list[float] = []
        for t in done:
            v = t.values[0]
            assert v is not None
            best.append(v if not best or (v < best[-1] if minimize else v > best[-1]) else best[-1])
        charts[f"{key}-history"] = {
            "data": [
                {
                    "type": "scatter",
                    "mode": "markers",
                    "name": "complete",
                    "x": [t.number for t in done],
                    "y": [t.values[0] for t in done],
                    "marker": {"size": 8, "color": "#2563eb"},
                },
                {
                    "type": "scatter",
                    "mode": "markers",
                    "name": "pruned (value when stopped)",
                    "x": [t.number for t in stopped],
                    "y": [t.values[0] for t in stopped],
                    "marker": {"size": 8, "color": "#9ca3af", "symbol": "x"},
                },
                {
                    "type": "scatter",
                    "mode": "lines",
                    "name": "best so far",
                    "x": [t.number for t in done],
                    "y": best,
                    "line": {"shape": "hv", "color": "#16a34a"},
                },
            ],
            "layout": layout("trial", metric),
        }
        if done:
            dims = [_param_dim(k, [t.params.get(k) for t in done]) for k in sorted({k for t in done for k in t.params})]
            dims.append({"label": metric, "values": [t.values[0] for t in done]})
            marks = {i: "best" for i, t in enumerate(done) if t.number == st.best_trial}
            charts[f"{key}-parcoords"] = parallel_coordinates(
                dims,
                [t.values[0] for t in done],
                [f"trial {t.number}" for t in done],
                color_title=metric,
                low_is_good=minimize,
                emphasize=marks,
            )
        curves = [t for t in st.trials if t.steps]
        if curves:
            charts[f"{key}-curves"] = {
                "data": [
                    {
                        "type": "scatter",
                        "mode": "lines",
                        "name": f"#{t.number} ({t.state})",
                        "x": t.steps,
                        "y": t.intermediate,
                        "line": {"dash": "dot" if t.state == "pruned" else "solid", "width": 1.5},
                    }
                    for t in curves
                ],
                "layout": round_axis(
                    layout("round", metric, showlegend=len(curves) <= 12), sorted({r for t in curves for r in t.steps})
                ),
            }
        if st.importances:
            m, shares = next(iter(st.importances.items()))
            ks = sorted(shares, key=lambda k: shares[k])
            charts[f"{key}-importance"] = {
                "data": [
                    {
                        "type": "bar",
                        "orientation": "h",
                        "x": [shares[k] for k in ks],
                        "y": ks,
                        "marker": {"color": "#2563eb"},
                    }
                ],
                "layout": layout(
                    f"share of variance in {m}",
                    None,
                    height=max(180, 60 + 30 * len(ks)),
                    margin={"l": 160, "r": 16, "t": 12, "b": 44},
                ),
            }
    return charts

"""Figure helpers shared by the dashboard's charts: layout, colours, round axes, and parallel
coordinates drawn as SVG lines (Plotly's WebGL ``parcoords`` is slow or missing without a GPU).

A figure is a plain ``{"data": [...], "layout": {...}}`` dict, drawn in the browser by the Plotly
bundle of the ``plotly`` package.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "Fig",
    "PALETTE",
    "STATUS_COLORS",
    "OBJECTIVE_TITLES",
    "site_color",
    "layout",
    "round_axis",
    "viridis",
    "parallel_coordinates",
]

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
STATUS_COLORS = {
    "trained": "#2ca02c",
    "absent": "#e5e7eb",
    "rejected": "#d62728",
    "error": "#f59e0b",
    "timeout": "#a855f7",
    "offline": "#6b7280",
}

Fig = dict[str, Any]
OBJECTIVE_TITLES = {
    "pooled": "pooled val. log-loss",
    "balanced": "site-balanced val. loss",
    "worst": "worst-site val. loss",
    "pooled+worst": "pooled val. log-loss",
}


def site_color(sites: list[str], sid: str) -> str:
    return PALETTE[sites.index(sid) % len(PALETTE)] if sid in sites else PALETTE[-1]


def layout(x_title: str | None = None, y_title: str | None = None, **extra: Any) -> dict[str, Any]:
    """The common look of every chart; ``extra`` overrides any top-level key."""
    lay: dict[str, Any] = {
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
        lay["xaxis"]["title"] = {"text": x_title}
    if y_title:
        lay["yaxis"]["title"] = {"text": y_title}
    lay.update(extra)
    return lay


def round_axis(lay: dict[str, Any], rounds: list[int]) -> dict[str, Any]:
    """Integer round ticks: every round, or every k-th when there are many."""
    if rounds:
        step = max(1, math.ceil((max(rounds) - min(rounds) + 1) / 12))
        lay["xaxis"].update(tickmode="linear", tick0=min(rounds), dtick=step)
    return lay


VIRIDIS = ["#440154", "#414487", "#2a788e", "#22a884", "#7ad151", "#fde725"]


def viridis(t: float) -> str:
    """Viridis colour at t in [0, 1] (linear between six stops)."""
    t = min(1.0, max(0.0, t)) * (len(VIRIDIS) - 1)
    i = min(int(t), len(VIRIDIS) - 2)
    a, b = VIRIDIS[i], VIRIDIS[i + 1]
    f = t - i
    rgb = [round(int(a[k : k + 2], 16) * (1 - f) + int(b[k : k + 2], 16) * f) for k in (1, 3, 5)]
    return "#" + "".join(f"{c:02x}" for c in rgb)


def axis_fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def parallel_coordinates(
    dims: list[dict[str, Any]],
    color: list[float | None],
    names: list[str],
    *,
    color_title: str,
    low_is_good: bool = True,
    emphasize: dict[int, str] | None = None,
) -> Fig:
    """Parallel coordinates drawn as SVG lines (Plotly scatter), one line per record.

    ``dims``: {"label", "values", optional "range" [lo, hi], optional "ticktext" (categorical),
    optional "log" (scale by log10)}; each axis is scaled to [0, 1] over its range (default: the
    values' min and max) and labelled with its ends. Plotly's own ``parcoords`` needs WebGL, which
    is slow or missing on machines without a GPU; this draws the same picture with plain SVG.
    """
    k = len(dims)
    scaled: list[list[float | None]] = []
    annotations: list[dict[str, Any]] = []
    for j, d in enumerate(dims):
        vals = [None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v) for v in d["values"]]
        log = bool(d.get("log"))
        if log:
            vals = [None if v is None or v <= 0 else math.log10(v) for v in vals]
        finite_vals = [v for v in vals if v is not None]
        lo, hi = d.get("range") or ((min(finite_vals), max(finite_vals)) if finite_vals else (0.0, 1.0))
        span = (hi - lo) or 1.0
        scaled.append([None if v is None else (v - lo) / span for v in vals])
        if d.get("ticktext"):
            n = max(1, len(d["ticktext"]) - 1)
            for i, tt in enumerate(d["ticktext"]):
                annotations.append(
                    {
                        "x": j,
                        "y": i / n if len(d["ticktext"]) > 1 else 0.5,
                        "text": str(tt),
                        "showarrow": False,
                        "xanchor": "left",
                        "xshift": 4,
                        "font": {"size": 10, "color": "#6b7280"},
                    }
                )
        else:
            for y, v in ((0.0, 10**lo if log else lo), (1.0, 10**hi if log else hi)):
                annotations.append(
                    {
                        "x": j,
                        "y": y,
                        "text": axis_fmt(v),
                        "showarrow": False,
                        "xanchor": "left",
                        "xshift": 4,
                        "yshift": -8 if y == 0 else 8,
                        "font": {"size": 10, "color": "#6b7280"},
                    }
                )
    cvals = [c for c in color if c is not None]
    clo, chi = (min(cvals), max(cvals)) if cvals else (0.0, 1.0)
    traces: list[dict[str, Any]] = []
    order = sorted(
        range(len(names)), key=lambda i: (color[i] is None, -(color[i] or 0) if low_is_good else (color[i] or 0))
    )
    emphasize = emphasize or {}
    for i in order:  # the best lines last, so they are drawn on top
        c = color[i]
        t = 0.5 if c is None or chi == clo else (c - clo) / (chi - clo)
        col = viridis(1 - t if low_is_good else t) if c is not None else "#d1d5db"
        style = emphasize.get(i)
        traces.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "x": list(range(k)),
                "y": [scaled[j][i] for j in range(k)],
                "name": names[i],
                "showlegend": False,
                "connectgaps": False,
                "line": {
                    "color": "#111827" if style == "best" else col,
                    "width": 3.5 if style == "best" else 1.6,
                    "dash": "dash" if style == "reference" else "solid",
                },
                "marker": {"size": 5, "color": col},
                "opacity": 1.0 if style else 0.85,
                "customdata": [d["values"][i] for d in dims],
                "hovertemplate": f"{names[i]}<br>%{{customdata}}<extra></extra>",
            }
        )
    traces.append(
        {  # an invisible trace that carries the colour bar
            "type": "scatter",
            "mode": "markers",
            "x": [None],
            "y": [None],
            "showlegend": False,
            "hoverinfo": "skip",
            "marker": {
                "color": [clo, chi],
                "cmin": clo,
                "cmax": chi,
                "colorscale": "Viridis",
                "reversescale": low_is_good,
                "showscale": True,
                "colorbar": {"title": {"text": color_title}, "thickness": 12},
            },
        }
    )
    lay = layout(
        None,
        None,
        height=340,
        hovermode="closest",
        annotations=annotations,
        shapes=[
            {"type": "line", "x0": j, "x1": j, "y0": 0, "y1": 1, "line": {"color": "#9ca3af", "width": 1}}
            for j in range(k)
        ],
    )
    lay["xaxis"].update(
        tickmode="array",
        tickvals=list(range(k)),
        ticktext=[d["label"] for d in dims],
        range=[-0.2, k - 0.5],
        showgrid=False,
        side="top",
    )
    lay["yaxis"].update(visible=False, range=[-0.08, 1.08])
    lay["margin"] = {"l": 20, "r": 20, "t": 36, "b": 16}
    return {"data": traces, "layout": lay}

"""`fedblend show RUN --blend`: every blend synthesis of a run, its trials, ratios and decision.

Reads the self-describing records in the run store's ``blends`` table (see fedblend.blend.record).
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["print_blends", "format_blend_header"]

_MAX_SITE_COLUMNS = 12


def _f(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def _pm(gain: Any, se: Any) -> str:
    if gain is None:
        return "-"
    return f"{gain:+.4f} ± {se:.4f}" if se is not None else f"{gain:+.4f}"


def _bytes(n: Any) -> str:
    n = float(n or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def format_blend_header(rec: dict[str, Any]) -> str:
    """One line: round, decision, gain ± se against margin and k, search settings, cost."""
    rnd = rec.get("round")
    decision = rec.get("decision", "?")
    color = {"accepted": "green", "not accepted": "yellow"}.get(decision, "dim")
    if decision == "skipped":
        return f"[bold]round {rnd}[/]: blend [{color}]skipped[/] ({rec.get('reason', '')})"
    space = rec.get("space", {})
    comm = rec.get("communication", {})
    timing = rec.get("timing", {})
    return (
        f"[bold]round {rnd}[/]: blend [{color}]{decision}[/] (adopted {rec.get('adopted')}); "
        f"gain {_pm(rec.get('gain'), rec.get('gain_se'))} in {rec.get('objective')} validation log-loss, "
        f"needs > margin {rec.get('margin')} and > k={rec.get('k')} se; {rec.get('reason', '')}\n"
        f"  space {space.get('kind')} (groups {', '.join(space.get('groups', []))}"
        f"{', gamma ' + str(space.get('gamma_range')) if space.get('gamma_range') else ''}, floor {space.get('floor')}), "
        f"searcher {rec.get('searcher')}, signal {rec.get('signal')}, {len(rec.get('trials', []))}/{rec.get('budget')} candidates "
        f"in batches of {rec.get('batch_size')}, best trial {rec.get('best_trial')} ({rec.get('best_label')}), "
        f"{_f(timing.get('total_s'), 2)} s, extra communication {comm.get('models_sent')} model downloads "
        f"({_bytes(comm.get('bytes_sent'))}, {_f(comm.get('vs_round_downloads'), 1)}x a round's)"
    )


def _ratio_table(rec: dict[str, Any], sites: list[str]) -> Table:
    t = Table(title=f"round {rec.get('round')}: ratios", title_justify="left")
    t.add_column("ratios")
    for s in sites:
        t.add_column(s, justify="right")
    t.add_row("fedavg", *[_f(rec.get("fedavg_ratios", {}).get(s), 3) for s in sites])
    t.add_row("chosen", *[_f(rec.get("chosen_ratios", {}).get(s), 3) for s in sites])
    if "chosen_head_ratios" in rec:
        t.add_row("chosen (head)", *[_f(rec["chosen_head_ratios"].get(s), 3) for s in sites])
    return t


def _trial_table(rec: dict[str, Any], sites: list[str]) -> Table:
    two = rec.get("objective") == "pooled+worst"
    front = set(rec.get("pareto_front") or [])
    t = Table(title=f"round {rec.get('round')}: trials", title_justify="left")
    for col in ("#", "label"):
        t.add_column(col)
    shown = sites[:_MAX_SITE_COLUMNS]
    for s in shown:
        t.add_column(s, justify="right")
    if len(sites) > len(shown):
        t.add_column(f"+{len(sites) - len(shown)} sites")
    cols = ["pooled loss", "worst loss", "pooled acc", "worst-site acc", "gain ± se"]
    if two:
        cols.append("pareto")
    for col in cols:
        t.add_column(col, justify="right")
    best = rec.get("best_trial")
    for tr in rec.get("trials", []):
        mark = "*" if tr.get("number") == best else ""
        row = [f"{tr.get('number')}{mark}", tr.get("label", "")]
        row += [_f(tr.get("ratios", {}).get(s), 3) for s in shown]
        if len(sites) > len(shown):
            row.append("…")
        if tr.get("state") != "complete":
            row += [f"failed: {tr.get('reason', '')}", "", "", "", ""]
        else:
            row += [
                _f(tr.get("pooled_loss")),
                _f(tr.get("worst_loss")),
                _f(tr.get("pooled_acc")),
                _f(tr.get("worst_site_acc")),
                _pm(tr.get("gain"), tr.get("gain_se")),
            ]
        if two:
            row.append("yes" if tr.get("number") in front else "")
        t.add_row(*row)
    return t


def _site_table(rec: dict[str, Any]) -> Table | None:
    trials = {tr.get("number"): tr for tr in rec.get("trials", [])}
    ref, best = trials.get(0), trials.get(rec.get("best_trial"))
    if not ref or not best or "site_scores" not in best:
        return None
    t = Table(title=f"round {rec.get('round')}: per-site validation, FedAvg vs best", title_justify="left")
    for col in ("site", "examples", "fedavg loss", "best loss", "fedavg acc", "best acc"):
        t.add_column(col, justify="left" if col == "site" else "right")
    for s, sc in best["site_scores"].items():
        r = ref.get("site_scores", {}).get(s, {})
        t.add_row(s, str(sc.get("n")), _f(r.get("loss")), _f(sc.get("loss")), _f(r.get("acc")), _f(sc.get("acc")))
    return t


def print_blends(store: Any, console: Console) -> None:
    """Print every blend record of the run held by ``store`` (a SqlRunStore)."""
    records = store.blends()
    if not records:
        console.print("no blend syntheses in this run (the job has no [blend] table, or none was due yet)")
        return
    accepted = sum(1 for r in records if r.get("decision") == "accepted")
    console.print(f"[bold]blend syntheses[/]: {len(records)} ({accepted} accepted)")
    for rec in records:
        console.print(format_blend_header(rec))
        if rec.get("decision") == "skipped":
            continue
        sites = list(rec.get("fedavg_ratios", {}))
        console.print(_ratio_table(rec, sites))
        console.print(_trial_table(rec, sites))
        st = _site_table(rec)
        if st is not None:
            console.print(st)

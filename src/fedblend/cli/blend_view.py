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


def _needs(rec: dict[str, Any]) -> str:
    margin, k, se = rec.get("margin"), rec.get("k"), rec.get("gain_se")
    if margin is None or k is None or se is None:
        return "-"
    return f"> {max(float(margin), float(k) * float(se)):.4f}"


def format_blend_header(rec: dict[str, Any]) -> str:
    """A few lines: round and decision; the gain against the acceptance bar; the search; its cost."""
    rnd = rec.get("round")
    decision = rec.get("decision", "?")
    color = {"accepted": "green", "not accepted": "yellow"}.get(decision, "dim")
    if decision == "skipped":
        return f"[bold]round {rnd}[/]: blend [{color}]skipped[/] ({rec.get('reason', '')})"
    space = rec.get("space", {})
    comm = rec.get("communication", {})
    timing = rec.get("timing", {})
    adopted = "adopted the blend" if rec.get("adopted") == "blend" else "kept FedAvg"
    verdict = "passed" if decision == "accepted" else f"failed: {rec.get('reason', '')}"
    gamma = f", gamma in {space.get('gamma_range')}" if space.get("gamma_range") else ""
    warm = rec.get("warm_start_from_round")
    return (
        f"[bold]round {rnd}[/]: blend [{color}]{decision}[/], {adopted}\n"
        f"  gain over FedAvg in {rec.get('objective')} validation log-loss: {_pm(rec.get('gain'), rec.get('gain_se'))} "
        f"(needs > margin {rec.get('margin')} and > k={rec.get('k')} x se): {verdict}\n"
        f"  search: space {space.get('kind')} (groups {', '.join(space.get('groups', []))}{gamma}, floor {space.get('floor')}), "
        f"searcher {rec.get('searcher')}, signal {rec.get('signal')}, {len(rec.get('trials', []))}/{rec.get('budget')} "
        f"candidates in batches of {rec.get('batch_size')}"
        f"{f', warm start from round {warm}' if warm is not None else ''}; "
        f"best trial {rec.get('best_trial')} ({rec.get('best_label')})\n"
        f"  cost: {_f(timing.get('total_s'), 2)} s, {comm.get('models_sent')} candidate downloads "
        f"({_bytes(comm.get('bytes_sent'))}, {_f(comm.get('vs_round_downloads'), 1)}x a round's downloads)"
    )


def _ratio_table(rec: dict[str, Any], sites: list[str]) -> Table:
    t = Table(title=f"round {rec.get('round')}: ratios", title_justify="left")
    t.add_column("ratios")
    for s in sites:
        t.add_column(s, justify="right")
    gamma = "chosen_gamma" in rec
    if gamma:
        t.add_column("gamma", justify="right")
    t.add_row("fedavg", *[_f(rec.get("fedavg_ratios", {}).get(s), 3) for s in sites], *(["1.000"] if gamma else []))
    chosen = [_f(rec.get("chosen_ratios", {}).get(s), 3) for s in sites]
    t.add_row("chosen" + (" (body)" if "chosen_head_ratios" in rec else ""), *chosen,
              *([_f(rec.get("chosen_gamma"), 3)] if gamma else []))
    if "chosen_head_ratios" in rec:
        t.add_row("chosen (head)", *[_f(rec["chosen_head_ratios"].get(s), 3) for s in sites], *([""] if gamma else []))
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
    gamma = bool(rec.get("space", {}).get("gamma_range"))
    cols = (["gamma"] if gamma else []) + ["pooled loss", "worst loss", "pooled acc", "worst acc", "gain ± se"]
    if two:
        cols.append("pareto")
    for col in cols:
        t.add_column(col, justify="right", no_wrap=col == "gain ± se")
    best = rec.get("best_trial")
    for tr in rec.get("trials", []):
        mark = "*" if tr.get("number") == best else ""
        row = [f"{tr.get('number')}{mark}", tr.get("label", "")]
        row += [_f(tr.get("ratios", {}).get(s), 3) for s in shown]
        if len(sites) > len(shown):
            row.append("…")
        if gamma:
            row.append(_f(tr.get("gamma"), 3))
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


def _summary_table(records: list[dict[str, Any]]) -> Table:
    """One row per synthesis: the decision, the gain against the bar, the chosen ratios."""
    sites: list[str] = []
    for rec in records:
        sites += [s for s in rec.get("fedavg_ratios", {}) if s not in sites]
    shown = sites[:_MAX_SITE_COLUMNS]
    gamma = any("chosen_gamma" in r for r in records)
    t = Table(title="blend syntheses (chosen ratios; FedAvg's in the detail below)", title_justify="left")
    for col in ("round", "decision", "best trial", "gain ± se", "needs"):
        t.add_column(col, justify="left" if col in ("decision", "best trial") else "right")
    for s in shown:
        t.add_column(s, justify="right")
    if gamma:
        t.add_column("gamma", justify="right")
    t.add_column("candidates", justify="right")
    for rec in records:
        if rec.get("decision") == "skipped":
            t.add_row(str(rec.get("round")), "skipped", "", "", "", *[""] * len(shown), *([""] if gamma else []), "0")
            continue
        t.add_row(
            str(rec.get("round")),
            str(rec.get("decision")),
            f"{rec.get('best_trial')} ({rec.get('best_label')})",
            _pm(rec.get("gain"), rec.get("gain_se")),
            _needs(rec),
            *[_f(rec.get("chosen_ratios", {}).get(s), 3) for s in shown],
            *([_f(rec.get("chosen_gamma"), 3)] if gamma else []),
            str(len(rec.get("trials", []))),
        )
    return t


def _print_detail(rec: dict[str, Any], console: Console) -> None:
    console.print(format_blend_header(rec))
    if rec.get("decision") == "skipped":
        return
    sites = list(rec.get("fedavg_ratios", {}))
    console.print(_ratio_table(rec, sites))
    console.print(_trial_table(rec, sites))
    st = _site_table(rec)
    if st is not None:
        console.print(st)


def print_blends(store: Any, console: Console, *, details: int = 3) -> None:
    """Print the blend records of the run held by ``store`` (a SqlRunStore).

    With more than ``details`` syntheses: a summary table of all of them, then the full detail
    (decision, ratios, trials, per-site scores) of the last one only."""
    records = store.blends()
    if not records:
        console.print("no blend syntheses in this run (the job has no [blend] table, or none was due yet)")
        return
    accepted = sum(1 for r in records if r.get("decision") == "accepted")
    console.print(f"[bold]blend syntheses[/]: {len(records)} ({accepted} accepted)")
    if len(records) <= details:
        for rec in records:
            _print_detail(rec, console)
        return
    console.print(_summary_table(records))
    console.print(
        f"detail of the last synthesis (round {records[-1].get('round')}); every record is in the run store "
        "(SqlRunStore.blends(), fedblend.blend.study_from_record) and on the dashboard"
    )
    _print_detail(records[-1], console)

"""The Blend page's data: every synthesis from the store's ``blends`` table.

The record format is ``fedblend.blend.record`` (and the synthesizer's ``search``): FedAvg's ratios
beside the chosen ones, every trial (label, parameters, ratios, objective values, paired gain,
per-site scores), the decision with its reason, gain and standard error. The reader is tolerant:
a missing key becomes None or empty, a skipped synthesis (too few sites) has no trials, and a few
alternative spellings (``chosen``/``fedavg`` as ratio maps, ``accepted`` as a bool) are accepted.
"""

from __future__ import annotations

from typing import Any

from fedblend.dashboard.models import Blends, BlendTrial, Synthesis
from fedblend.dashboard.source import StoreSource
from fedblend.dashboard.util import as_int, finite, run_info

__all__ = ["build_blends", "parse_synthesis"]

_SCORES = ("pooled_loss", "pooled_acc", "worst_loss", "mean_site_acc", "worst_site_acc")


def _ratio_map(v: Any) -> dict[str, float | None]:
    if isinstance(v, dict) and all(not isinstance(x, dict) for x in v.values()):
        return {str(k): finite(x) for k, x in v.items()}
    return {}


def _num_map(v: Any) -> dict[str, float | None]:
    if not isinstance(v, dict):
        return {}
    return {str(k): finite(x) for k, x in v.items() if not isinstance(x, dict | list | str)}


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


def _trial(t: dict[str, Any]) -> BlendTrial:
    values_raw = t.get("values")
    if not isinstance(values_raw, list):
        values_raw = [t.get("value", t.get("score"))] if t.get("value", t.get("score")) is not None else []
    values = [finite(v) for v in values_raw]
    sites = t.get("site_scores") if isinstance(t.get("site_scores"), dict) else {}
    return BlendTrial(
        number=as_int(t.get("number")) or 0,
        label=_str(t.get("label")),
        state=str(t.get("state", "complete")),
        ratios=_ratio_map(t.get("ratios")),
        params=_num_map(t.get("params")),
        values=values,
        score=values[0] if values else None,
        gain=finite(t.get("gain")),
        gain_se=finite(t.get("gain_se")),
        site_scores={str(s): _num_map(v) for s, v in sites.items()},
        reason=_str(t.get("reason")),
        **{k: finite(t.get(k)) for k in _SCORES},
    )


def parse_synthesis(rec: dict[str, Any]) -> Synthesis:
    """One stored blend record as the page shows it; missing keys become None or empty."""
    objective = _str(rec.get("objective"))
    trials_raw = rec.get("trials") if isinstance(rec.get("trials"), list) else []
    trials = sorted((_trial(t) for t in trials_raw if isinstance(t, dict)), key=lambda t: t.number)
    fedavg = _ratio_map(rec.get("fedavg_ratios")) or _ratio_map(rec.get("fedavg"))
    chosen = _ratio_map(rec.get("chosen_ratios")) or _ratio_map(rec.get("chosen")) or _ratio_map(rec.get("ratios"))
    sites = rec.get("sites")
    site_list = [str(s) for s in sites] if isinstance(sites, list) else sorted(set(fedavg) | set(chosen))
    decision = rec.get("decision")
    accepted = rec.get("accepted")
    if not isinstance(accepted, bool):
        accepted = None if decision is None else decision == "accepted"
    if decision is None:
        decision = "accepted" if accepted else "not accepted" if accepted is False else "unknown"
    space = rec.get("space")
    space_kind = space.get("kind") if isinstance(space, dict) else space
    pareto = rec.get("pareto_front")
    return Synthesis(
        round=as_int(rec.get("round")) or 0,
        sites=site_list,
        fedavg_ratios=fedavg,
        chosen_ratios=chosen,
        decision=str(decision),
        accepted=accepted,
        adopted=_str(rec.get("adopted")),
        reason=_str(rec.get("reason")),
        gain=finite(rec.get("gain")),
        gain_se=finite(rec.get("gain_se")),
        margin=finite(rec.get("margin")),
        k=finite(rec.get("k")),
        objective=objective,
        searcher=_str(rec.get("searcher")),
        space=_str(space_kind),
        budget=as_int(rec.get("budget")),
        best_trial=as_int(rec.get("best_trial")),
        best_label=_str(rec.get("best_label")),
        fedavg_metrics=_num_map(rec.get("fedavg")),
        best_metrics=_num_map(rec.get("best")),
        pareto_front=[int(n) for n in pareto if as_int(n) is not None] if isinstance(pareto, list) else None,
        timing=_num_map(rec.get("timing")),
        communication=_num_map(rec.get("communication")),
        trials=trials,
    )


def build_blends(source: StoreSource) -> Blends:
    store = source.get()
    info = run_info(source, store)
    if store is None:
        return Blends(run=info, syntheses=[])
    return Blends(run=info, syntheses=[parse_synthesis(r) for r in store.blends() if isinstance(r, dict)])

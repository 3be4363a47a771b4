"""The blend record: one JSON document per synthesis, stored in the run store's ``blends`` table.

It is self-describing (the dashboard and ``fedblend show RUN --blend`` read it without knowing the
search): space (with its Optuna distributions), searcher, objective, budget, every trial (number,
label, parameters, ratios per site, per-site scores, objective values, paired gain and its
standard error), FedAvg's ratios beside the chosen ones, the decision with its reason, gain,
gain_se, margin and k, the Pareto front (two objectives), timing and the extra communication.

``study_from_record`` turns a record back into an (in-memory) Optuna study, so a synthesis stored
in the run can be analysed with Optuna's own tools (``optuna.visualization``, ``trials_dataframe``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedblend.blend.scoring import Score
from fedblend.blend.spaces import Candidate
from fedblend.errors import ConfigError

__all__ = ["trial_entry", "study_from_record"]


def trial_entry(
    number: int,
    label: str,
    params: Mapping[str, Any],
    cand: Candidate,
    score: Score | None,
    state: str,
    reason: str | None,
    objective: str = "pooled",
    batch: int | None = None,
) -> dict[str, Any]:
    """One trial of a synthesis as JSON (``batch``: which ask/tell batch it was proposed in)."""
    groups = list(cand.ratios)
    entry: dict[str, Any] = {
        "number": number,
        "label": label,
        "state": state,
        **({"batch": batch} if batch is not None else {}),
        "params": {k: float(v) for k, v in params.items()},
        "ratios": cand.ratios[groups[0]],
    }
    if "head" in cand.ratios:
        entry["head_ratios"] = cand.ratios["head"]
    if "gamma" in params:
        entry["gamma"] = cand.gamma
    if reason is not None:
        entry["reason"] = reason
    if score is not None:
        gain, se = score.gain(objective)
        entry.update(
            values=score.values(objective),
            gain=gain,
            gain_se=se,
            pooled_loss=score.pooled_loss,
            pooled_acc=score.pooled_acc,
            balanced_loss=score.balanced_loss,
            worst_loss=score.worst_loss,
            worst_site=score.worst_site,
            mean_site_acc=score.mean_site_acc,
            worst_site_acc=score.worst_site_acc,
            site_scores={s: sc.to_json() for s, sc in score.sites.items()},
        )
    return entry


def study_from_record(record: Mapping[str, Any]) -> Any:
    """An in-memory Optuna study holding the record's trials (parameters, values, labels)."""
    import json

    import optuna
    from optuna.distributions import json_to_distribution
    from optuna.trial import TrialState, create_trial

    try:
        dists = {k: json_to_distribution(json.dumps(v)) for k, v in record["space"]["distributions"].items()}
        trials = record["trials"]
    except (KeyError, TypeError) as exc:
        raise ConfigError(
            f"not a blend record with a search (missing {exc}); skipped syntheses hold no study"
        ) from None
    two = record.get("objective") == "pooled+worst"
    study = optuna.create_study(
        study_name=record.get("study_name"), directions=["minimize", "minimize"] if two else ["minimize"]
    )
    frozen = []
    for t in sorted(trials, key=lambda t: t["number"]):
        complete = t.get("state") == "complete"
        frozen.append(
            create_trial(
                state=TrialState.COMPLETE if complete else TrialState.FAIL,
                params=t["params"],
                distributions=dists,
                values=t["values"] if complete else None,
                user_attrs={"label": t["label"], "gain": t.get("gain"), "gain_se": t.get("gain_se")},
            )
        )
    study.add_trials(frozen)
    return study

"""What a tune run leaves behind: the best job file, importances, a summary, and progress snapshots.

``finalize`` reads the study (every worker's trials), writes ``best_job.toml`` (and, for several
objectives, one job per Pareto-optimal trial), ``tune.json``, and the same documents into the run
store for the dashboard. Importances come from ``optuna.importance`` (fANOVA); with fewer than two
finished trials, or parameters that never varied, there is nothing to attribute and the summary says so.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedblend.hpo.objective import best_job
from fedblend.hpo.spec import TuneSpec
from fedblend.jobs import JobSpec

__all__ = ["TuneOutcome", "TrialRow", "finalize", "outcome_from_summary", "progress_snapshot", "trial_rows", "importances",
           "public_url"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str  # complete | pruned | fail | running | waiting
    values: tuple[float, ...] | None
    params: dict[str, Any]
    rounds_done: int | None
    duration_s: float | None
    worker: str | None
    fail_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, "state": self.state, "values": list(self.values) if self.values else None,
                "params": self.params, "rounds_done": self.rounds_done, "duration_s": self.duration_s,
                "worker": self.worker, "fail_reason": self.fail_reason}


@dataclass
class TuneOutcome:
    run_dir: Path
    storage_url: str  # password hidden
    study_name: str
    metrics: list[str]
    directions: list[str]
    best: list[TrialRow]  # one trial, or the Pareto front for several objectives
    best_job_path: Path | None
    importances: dict[str, dict[str, float]]  # metric -> parameter -> share
    importance_note: str
    trials: list[TrialRow] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out


def outcome_from_summary(run_dir: Path, text: str) -> TuneOutcome:
    """The outcome ``finalize`` summarized in ``tune.json`` (for ``fedblend show`` on a finished search)."""
    doc = json.loads(text)

    def row(d: dict[str, Any]) -> TrialRow:
        values = d.get("values")
        return TrialRow(number=int(d["number"]), state=str(d["state"]), values=tuple(values) if values else None,
                        params=dict(d.get("params") or {}), rounds_done=d.get("rounds_done"),
                        duration_s=d.get("duration_s"), worker=d.get("worker"), fail_reason=d.get("fail_reason"))

    best_job_path = run_dir / "best_job.toml" if doc.get("best_job") else None
    return TuneOutcome(run_dir=run_dir, storage_url=str(doc.get("storage", "")), study_name=str(doc.get("study_name", "")),
                       metrics=list(doc["metrics"]), directions=list(doc["directions"]),
                       best=[row(d) for d in doc.get("best", [])], best_job_path=best_job_path,
                       importances=dict(doc.get("importances") or {}), importance_note=str(doc.get("importance_note", "")),
                       trials=[row(d) for d in doc.get("trials", [])])


def public_url(url: str) -> str:
    """The storage URL with any password masked (it goes into files and the dashboard)."""
    if url == "memory" or "@" not in url:
        return url
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _row(t: Any) -> TrialRow:
    vals = tuple(float(v) for v in t.values) if t.values is not None else None
    ua = t.user_attrs
    return TrialRow(number=t.number, state=t.state.name.lower(), values=vals, params=dict(t.params),
                    rounds_done=ua.get("rounds_done"), duration_s=ua.get("duration_s"), worker=ua.get("worker"),
                    fail_reason=ua.get("fail_reason"))


def trial_rows(study: Any) -> list[TrialRow]:
    return [_row(t) for t in study.get_trials(deepcopy=False)]


def progress_snapshot(study: Any, spec: TuneSpec) -> dict[str, Any]:
    """Counts and the best so far, for a progress bar (cheap: one read of the study)."""
    from optuna.trial import TrialState

    from fedblend.hpo.storage import budget_state

    trials = study.get_trials(deepcopy=False)
    counts = budget_state(study)
    done = counts["used"] - counts["running"] - counts["waiting"]  # finished trials that count
    best: float | None = None
    if not spec.multi_objective:
        finished = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        if finished:
            pick = min if spec.directions[0] == "minimize" else max
            best = pick(t.value for t in finished)
    last = next((_row(t) for t in reversed(trials) if t.state.is_finished()), None)
    return {"done": done, "total": _budget(spec), "running": counts["running"], "complete": counts["complete"],
            "pruned": counts["pruned"], "failed": counts["fail"], "best": best, "metric": spec.metrics[0], "last": last}


def _budget(spec: TuneSpec) -> int:
    from fedblend.hpo.worker import effective_budget

    return effective_budget(spec)


def importances(study: Any, spec: TuneSpec) -> tuple[dict[str, dict[str, float]], str]:
    """Per metric, each parameter's share of the variance in that metric (fANOVA), and a note."""
    import optuna
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(done) < 2:
        return {}, f"importances need at least 2 finished trials (got {len(done)})"
    varied = {k for t in done for k in t.params if len({repr(u.params.get(k)) for u in done}) > 1}
    if not varied:
        return {}, "no parameter varied across the finished trials"
    out: dict[str, dict[str, float]] = {}
    for i, metric in enumerate(spec.metrics):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imp = optuna.importance.get_param_importances(
                    study, target=(lambda t, i=i: t.values[i]) if spec.multi_objective else None)
        except (RuntimeError, ValueError) as exc:
            return {}, f"importances could not be computed: {exc}"
        out[metric] = {k: float(v) for k, v in imp.items() if math.isfinite(v)}
    return out, f"fANOVA over {len(done)} finished trials"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def finalize(run_dir: Path, job: JobSpec, spec: TuneSpec, study: Any, url: str) -> TuneOutcome:
    """Write the best job(s), the summary and the store documents; return the outcome."""
    from optuna.trial import TrialState

    from fedblend.store.sqlite import SqlRunStore

    rows = trial_rows(study)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    best_trials: list[Any] = []
    if complete:
        best_trials = [study.best_trial] if not spec.multi_objective else sorted(study.best_trials, key=lambda t: t.number)
    best_rows = [_row(t) for t in best_trials]
    best_path: Path | None = None
    docs: dict[str, str] = {}
    if best_trials:
        primary = next(i for i, m in enumerate(spec.metrics) if m != "bytes")
        sign = 1.0 if spec.directions[primary] == "minimize" else -1.0
        top = min(best_trials, key=lambda t: sign * t.values[primary])
        text = _job_text(job, top, spec)
        best_path = run_dir / "best_job.toml"
        _write(best_path, text)
        docs["best_job.toml"] = text
        if spec.multi_objective:
            for t in best_trials:
                _write(run_dir / "pareto" / f"trial_{t.number:05d}.toml", _job_text(job, t, spec))
    imps, note = importances(study, spec)
    outcome = TuneOutcome(run_dir=run_dir, storage_url=public_url(url), study_name=study.study_name,
                          metrics=spec.metrics, directions=spec.directions, best=best_rows, best_job_path=best_path,
                          importances=imps, importance_note=note, trials=rows)
    summary = json.dumps({
        "study_name": outcome.study_name, "storage": outcome.storage_url, "searcher": spec.searcher,
        "metrics": spec.metrics, "directions": spec.directions, "counts": outcome.counts,
        "best": [r.to_json() for r in best_rows], "best_job": str(best_path) if best_path else None,
        "importances": imps, "importance_note": note, "trials": [r.to_json() for r in rows],
    }, indent=2)
    _write(run_dir / "tune.json", summary)
    docs["tune.json"] = summary
    store = SqlRunStore(run_dir)
    try:
        for name, text in docs.items():
            store.set_document(name, text)
        running = sum(1 for r in rows if r.state in ("running", "waiting"))
        store.set_status("finished" if not running else "running")
    finally:
        store.close()
    return outcome


def _job_text(job: JobSpec, trial: Any, spec: TuneSpec) -> str:
    vals = ", ".join(f"{m} = {v:.6g}" for m, v in zip(spec.metrics, trial.values, strict=True))
    params = ", ".join(f"{k} = {v!r}" for k, v in trial.params.items())
    header = (f"# Best configuration of tune run {job.name!r} (trial {trial.number}: {vals})\n"
              f"# searched: {params}\n# run it: fedblend simulate THIS_FILE\n")
    return header + best_job(job, trial.params).to_toml()

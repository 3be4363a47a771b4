"""The Search page's data: the trials of a ``fedblend tune`` run, read from its Optuna study.

A tune run directory (``fedblend.hpo.tune``) holds ``tune.db`` (Optuna's storage: every trial,
its parameters, values and per-round reports) beside ``run.db`` (meta ``kind = "tune"``,
``study_name``, ``metrics``; documents ``tune.json`` with importances once finished). The study is
read live from the storage when it can be reached (``tune.db``, or the meta's ``tune_storage``
URL unless its password was masked); otherwise the ``tune.json`` summary is shown. A run that is
not a search says "no search in this run".
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from fedblend.dashboard.models import Search, SearchTrial, Study
from fedblend.dashboard.source import StoreSource
from fedblend.dashboard.util import as_int, clean, finite, run_info
from fedblend.store.sqlite import SqlRunStore

__all__ = ["build_search", "NO_SEARCH"]

log = logging.getLogger(__name__)

NO_SEARCH = "no search in this run"
TUNE_DB = "tune.db"  # fedblend.hpo.storage.TUNE_DB (not imported: it would pull the tuner in)

_storages: dict[str, Any] = {}
_lock = threading.Lock()


def _storage(url: str) -> Any:
    """One cached Optuna storage per URL (opening one checks the schema: not per request)."""
    from optuna.storages import RDBStorage

    with _lock:
        if url not in _storages:
            _storages[url] = RDBStorage(
                url, engine_kwargs={"connect_args": {"timeout": 10}} if url.startswith("sqlite") else {}
            )
        return _storages[url]


def _csv(v: Any) -> list[str]:
    if isinstance(v, list):
        return [str(x) for x in v]
    return [x for x in str(v).split(",") if x] if v else []


def _trial(t: Any) -> SearchTrial:
    ua = t.user_attrs or {}
    steps = sorted(t.intermediate_values)
    dur = finite(ua.get("duration_s"))
    if dur is None and t.datetime_start is not None and t.datetime_complete is not None:
        dur = (t.datetime_complete - t.datetime_start).total_seconds()
    return SearchTrial(
        number=int(t.number),
        state=t.state.name.lower(),
        values=[finite(v) for v in (t.values or [])],
        params=clean(dict(t.params)),
        duration_s=dur,
        rounds_done=as_int(ua.get("rounds_done")),
        steps=[int(s) for s in steps],
        intermediate=[finite(t.intermediate_values[s]) for s in steps],
        fail_reason=None if ua.get("fail_reason") is None else str(ua["fail_reason"]),
    )


def _from_storage(url: str, names: list[str], meta: dict[str, Any], summary: dict[str, Any]) -> list[Study]:
    import optuna
    from optuna.trial import TrialState

    storage = _storage(url)
    studies = []
    wanted = names or [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    for name in wanted:
        study = optuna.load_study(study_name=name, storage=storage)
        trials = [_trial(t) for t in study.get_trials(deepcopy=False)]
        directions = [d.name.lower() for d in study.directions]
        best_trial, best_values, best_params, front = None, [], {}, []
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        if complete and len(directions) == 1:
            b = study.best_trial
            best_trial, best_values, best_params = b.number, [finite(v) for v in b.values], clean(dict(b.params))
        elif complete:
            front = sorted(t.number for t in study.best_trials)
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.state] = counts.get(t.state, 0) + 1
        studies.append(
            Study(
                name=name,
                directions=directions,
                metrics=_csv(meta.get("metrics")) or _csv(summary.get("metrics")),
                searcher=None if meta.get("searcher") is None else str(meta["searcher"]),
                budget=as_int(meta.get("n_trials")),
                counts=counts,
                trials=trials,
                best_trial=best_trial,
                best_values=best_values,
                best_params=best_params,
                pareto_front=front,
                importances=_importances(summary),
            )
        )
    return studies


def _importances(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    imp = summary.get("importances")
    if not isinstance(imp, dict):
        return {}
    out = {}
    for metric, shares in imp.items():
        if isinstance(shares, dict):
            out[str(metric)] = {str(k): float(v) for k, v in shares.items() if finite(v) is not None}
    return out


def _from_summary(summary: dict[str, Any], meta: dict[str, Any]) -> list[Study]:
    trials = []
    for t in summary.get("trials") or []:
        if not isinstance(t, dict):
            continue
        trials.append(
            SearchTrial(
                number=as_int(t.get("number")) or 0,
                state=str(t.get("state", "?")),
                values=[finite(v) for v in t.get("values") or []],
                params=clean(t.get("params") or {}),
                duration_s=finite(t.get("duration_s")),
                rounds_done=as_int(t.get("rounds_done")),
                fail_reason=None if t.get("fail_reason") is None else str(t["fail_reason"]),
            )
        )
    best = [b for b in summary.get("best") or [] if isinstance(b, dict)]
    directions = _csv(summary.get("directions")) or _csv(meta.get("directions")) or ["minimize"]
    single = len(directions) == 1
    counts = summary.get("counts") if isinstance(summary.get("counts"), dict) else {}
    return [
        Study(
            name=str(summary.get("study_name") or meta.get("study_name") or "study"),
            directions=directions,
            metrics=_csv(summary.get("metrics")) or _csv(meta.get("metrics")),
            searcher=summary.get("searcher"),
            budget=as_int(meta.get("n_trials")),
            counts={str(k): int(v) for k, v in counts.items()},
            trials=trials,
            best_trial=as_int(best[0].get("number")) if single and best else None,
            best_values=[finite(v) for v in best[0].get("values") or []] if single and best else [],
            best_params=clean(best[0].get("params") or {}) if single and best else {},
            pareto_front=[] if single else [as_int(b.get("number")) or 0 for b in best],
            importances=_importances(summary),
        )
    ]


def _storage_url(run_dir: Path | None, meta: dict[str, Any]) -> str | None:
    if run_dir is not None and (run_dir / TUNE_DB).exists():
        return f"sqlite:///{(run_dir / TUNE_DB).resolve()}"
    url = meta.get("tune_storage")
    if isinstance(url, str) and url not in ("", "memory") and "***" not in url:
        return url
    return None


def build_search(source: StoreSource) -> Search:
    store: SqlRunStore | None = source.get()
    info = run_info(source, store)
    if store is None:
        return Search(run=info, available=False, message=NO_SEARCH, studies=[])
    meta = store.meta()
    try:
        summary = json.loads(store.document("tune.json") or "{}")
    except json.JSONDecodeError:
        summary = {}
    url = _storage_url(source.run_dir, meta)
    if meta.get("kind") != "tune" and url is None and not summary:
        return Search(run=info, available=False, message=NO_SEARCH, studies=[])
    names = [str(meta["study_name"])] if meta.get("study_name") else []
    if url is not None:
        try:
            studies = _from_storage(url, names, meta, summary)
            n = sum(len(s.trials) for s in studies)
            return Search(run=info, available=True, message=f"{n} trial(s)", source="optuna storage", studies=studies)
        except Exception as exc:  # an unreachable or foreign storage must not break the page
            log.warning("search page: cannot read the Optuna storage: %s: %s", type(exc).__name__, exc)
    if summary:
        studies = _from_summary(summary, meta)
        return Search(
            run=info,
            available=True,
            message=f"{len(studies[0].trials)} trial(s) (from tune.json)",
            source="tune.json",
            studies=studies,
        )
    return Search(run=info, available=False, message="a search run, but its trials cannot be read yet", studies=[])

"""Federated hyperparameter search: Optuna studies whose trials are federations.

    from fedblend.jobs import load_job
    from fedblend.hpo import run_tune
    outcome = run_tune(load_job("examples/heart_tune.toml"), workers=2)
    print(outcome.best_job_path, outcome.importances)

The ``[tune]`` table of a job file says what to search (``fedblend.hpo.spec``); each trial trains
the base job with the trial's values and is scored on the sites' validation split, never test.
CLI: ``fedblend tune JOB.toml`` (``--worker`` to join a shared study). See docs/tune.md.
"""

from __future__ import annotations

from fedblend.hpo.objective import FederatedObjective, best_job, trial_job
from fedblend.hpo.results import TrialRow, TuneOutcome
from fedblend.hpo.space import ParamSpec, grid_configs, suggest_params
from fedblend.hpo.spec import PRUNERS, SEARCHERS, VAL_METRICS, TuneSpec, parse_tune, tune_spec_for
from fedblend.hpo.tune import join, run_tune, tune_run_dir

__all__ = [
    "TuneSpec",
    "ParamSpec",
    "parse_tune",
    "tune_spec_for",
    "SEARCHERS",
    "PRUNERS",
    "VAL_METRICS",
    "suggest_params",
    "grid_configs",
    "trial_job",
    "best_job",
    "FederatedObjective",
    "run_tune",
    "join",
    "tune_run_dir",
    "TuneOutcome",
    "TrialRow",
]

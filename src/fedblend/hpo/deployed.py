"""A hyperparameter search on a deployment: trials run on the real sites, one after another.

``fedblend server --job JOB.toml`` with a ``[tune]`` table runs ``DeployedSearch`` instead of the
Coordinator. It waits for the sites as the Coordinator does, then runs the trials through the same
tune worker and ``FederatedObjective`` as ``fedblend tune``, with ``DeploymentBackend``: before each
trial the pool switches to the trial's job (``pool.set_job``; each site reloads it on its next task,
keeping its data split, which depends only on the seed and val_fraction), and the model is built
from the sites' schema. Each trial is scored on federated validation, pruned as in simulation; a
round without quorum fails that trial (recorded with its reason) and the search goes on.

The study lives in the server's state directory, laid out as a ``fedblend tune`` run directory
(``tune.db``, ``tune_job.toml``, ``run.db`` with meta kind="tune", ``best_job.toml``, ``tune.json``),
so ``fedblend show``, ``fedblend runs`` and the dashboard read it the same way. When the search
ends, the sites are told the job is done.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedblend.errors import ConfigError, TransportError
from fedblend.hpo.results import TuneOutcome, finalize
from fedblend.hpo.spec import TuneSpec, tune_spec_for
from fedblend.hpo.tune import JOB_FILE, lock_is_global, setup_search
from fedblend.hpo.worker import effective_budget, run_worker
from fedblend.jobs import JobSpec
from fedblend.net.config import DeploySpec
from fedblend.net.driver import Driver
from fedblend.net.pool import DeploymentPool

__all__ = ["check_deployable", "open_search", "DeploymentBackend", "DeployedSearch"]

log = logging.getLogger(__name__)


def check_deployable(spec: TuneSpec, source: str = "<job>") -> None:
    """Refuse ``[tune]`` options a deployment cannot honour, naming the key and the fix."""
    if spec.repeats > 1:
        raise ConfigError(f"{source}: [tune].repeats = {spec.repeats} cannot run on a deployment: each site holds one "
                          "data split, so a trial cannot be repeated under other seeds. Set [tune].repeats = 1, or "
                          f"search in simulation with `fedblend tune {source}`")
    if spec.workers > 1:
        raise ConfigError(f"{source}: [tune].workers = {spec.workers} cannot run on a deployment: its sites run one "
                          "trial at a time. Set [tune].workers = 1")


def open_search(job: JobSpec, state: Path, *, fresh: bool, source: str) -> tuple[TuneSpec, str, Any, Any]:
    """Validate the search and open its study in ``state`` (resumed unless ``fresh``)."""
    spec = tune_spec_for(job, source)
    check_deployable(spec, source)
    saved = state / JOB_FILE
    if not fresh and (state / "run.db").exists():
        if not saved.exists():
            raise ConfigError(f"{state} holds the state of a federation, not of a search; pass --fresh to start over "
                              "there, or give another --state directory")
        if saved.read_text(encoding="utf-8") != job.to_toml():
            raise ConfigError(f"{state} holds the search of another job (its {JOB_FILE} differs from this one); pass "
                              "--fresh to start over there, or give another --state directory")
    return setup_search(job, state, fresh=True, overwrite=fresh, resume=not fresh, source=source, check_data=False)


class DeploymentBackend:
    """``FederatedObjective`` backend: the trial's job goes to the connected sites; the pool stays open."""

    def __init__(self, pool: DeploymentPool, deploy: DeploySpec, stop: threading.Event) -> None:
        self.pool, self.deploy, self.stop = pool, deploy, stop

    def __call__(self, job: JobSpec) -> tuple[Any, Any, Callable[[], None]]:
        from fedblend.runner import shape_prepared

        need = self.deploy.quorum_count()
        if not self.pool.wait_for(lambda: len(self.pool.site_ids()) >= need and self.pool.schema is not None,
                                  None, self.stop):
            raise TransportError("the server is stopping; the trial did not start")
        self.pool.set_job(job.to_toml())
        return shape_prepared(job, self.pool.schema), self.pool, lambda: None


class DeployedSearch(Driver):
    """The server's driver thread for a search (the Coordinator's counterpart; same control surface)."""

    name = "search"

    def __init__(self, job: JobSpec, spec: TuneSpec, pool: DeploymentPool, deploy: DeploySpec, *, state: Path,
                 url: str, storage: Any, study: Any, store: Any = None) -> None:
        super().__init__(pool, store, deploy)
        self.job, self.tune = job, spec  # the deployment's DeploySpec is self.spec (Driver)
        self.state, self.url, self.storage, self.study = state, url, storage, study
        self._stop_after_trial = threading.Event()  # admin stop
        self.outcome: TuneOutcome | None = None
        self.round = 0
        self.trial: int | None = None

    # -- control (as the Coordinator) -----------------------------------------------------------
    def admin_stop(self) -> None:
        """End the search after the current trial (results are written for the trials so far)."""
        self._stop_after_trial.set()

    def admin_start(self) -> None:
        self._stop_after_trial.clear()

    @property
    def total_rounds(self) -> int:
        return self.job.rounds

    @property
    def cycle(self) -> int:
        return (self.trial or 0) + 1

    # -- the search -----------------------------------------------------------------------------
    def _run(self) -> None:
        if not self.wait_for_sites("the search"):
            return
        self.pool.set_mode("running")
        self.status = "running"
        budget = effective_budget(self.tune)
        self._event("search_started", trials=budget, study=self.study.study_name)
        run_worker(self.job, self.tune, storage=self.storage, study_name=self.study.study_name, index=0,
                   run_dir=self.state, lock_dir=self.state, lock_is_global=lock_is_global(self.url),
                   backend=DeploymentBackend(self.pool, self.spec, self.stop_event), on_trial=self._trial_done,
                   on_round=self._round_done,
                   stop=lambda: self.stop_event.is_set() or self._stop_after_trial.is_set())
        if self.stop_event.is_set():
            return
        self.outcome = finalize(self.state, self.job, self.tune, self.study, self.url)
        self.status = "finished"
        self._event("search_finished", counts=self.outcome.counts,
                    best=self.outcome.best[0].number if self.outcome.best else None)

    def _round_done(self, trial: int, result: Any) -> None:
        self.trial, self.round = trial, result.round

    def _trial_done(self, study: Any) -> None:
        t = study.get_trials(deepcopy=False)[-1]
        self._event("trial_finished", trial=t.number, state=t.state.name.lower(), params=dict(t.params),
                    values=list(t.values) if t.values else None, reason=t.user_attrs.get("fail_reason"))

    def _done_message(self) -> str:
        if self.error is not None:
            return f"the server stopped on an error: {self.error}"
        n = sum(1 for t in self.study.get_trials(deepcopy=False) if t.state.is_finished())
        return f"the search is finished after {n} trial(s)"

"""A tune worker: claims trials from the shared study until the budget is spent, runs each one.

Any number of workers (processes on this machine, or ``fedblend tune JOB --worker`` on others)
share one Optuna storage. A worker claims its next trial under the run directory's lock: it first
fails stale trials (their worker stopped sending heartbeats; Optuna's retry callback re-enqueues
their parameters), then counts the budget, then asks for a trial. Re-enqueued trials are always
taken, even when the budget is otherwise spent, so a killed worker loses at most the trial it was
running. When the budget is spent but other workers' trials still run, the worker waits for them
to finish or go stale, so no trial is left behind.

Spawned by ``fedblend.hpo.tune`` as ``python -m fedblend.hpo.worker --job RUN_DIR/tune_job.toml
--run-dir RUN_DIR --index K``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedblend.errors import FedblendError
from fedblend.hpo.objective import Backend, FederatedObjective
from fedblend.hpo.search import make_pruner, make_tune_sampler, worker_seed
from fedblend.hpo.spec import TuneSpec
from fedblend.hpo.storage import budget_state, claim_lock
from fedblend.jobs import JobSpec

__all__ = ["run_worker", "effective_budget"]

log = logging.getLogger(__name__)


def effective_budget(spec: TuneSpec) -> int:
    """Trials in all: ``n_trials``, or the grid's size when the grid searcher has fewer configurations."""
    if spec.searcher == "grid":
        from fedblend.hpo.space import grid_configs

        return min(spec.n_trials, len(grid_configs(spec.space)))
    return spec.n_trials


def _fail_stale(study: Any, *, locked: bool, grace_s: float) -> None:
    """Fail trials whose worker died: stale heartbeats (Optuna), and claims that never finished.

    A claim (ask, first heartbeat, ``worker`` attribute) happens under the run's lock, so a RUNNING
    trial without a ``worker`` attribute seen while holding the lock lost its worker mid-claim
    (it has no heartbeat for Optuna to notice); without the lock it must also be ``grace_s`` old.
    """
    import datetime

    import optuna
    from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    storage = study._storage  # noqa: SLF001 - Optuna keeps the storage there; no public accessor
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "worker" in t.user_attrs:
            continue
        old = t.datetime_start is not None and (now - t.datetime_start).total_seconds() > grace_s
        if not (locked or old):
            continue
        try:
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):  # noqa: SLF001
                continue
        except UpdateFinishedTrialError:
            continue
        log.warning("trial %d lost its worker while being claimed; marked FAIL", t.number)
        callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
        if callback is not None:
            callback(study, storage.get_trial(t._trial_id))  # noqa: SLF001


def run_worker(
    job: JobSpec,
    spec: TuneSpec,
    *,
    storage: Any,
    study_name: str,
    index: int,
    run_dir: Path | None,
    lock_dir: Path | None,
    lock_is_global: bool = True,
    data_dir: str | Path | None = None,
    on_trial: Callable[[Any], None] | None = None,
    on_round: Callable[[int, Any], None] | None = None,
    backend: Backend | None = None,
    stop: Callable[[], bool] | None = None,
) -> int:
    """Run trials until the shared budget is spent (or ``stop()`` says so); returns how many this worker ran.

    ``lock_dir`` holds the claim lock; ``lock_is_global`` says every worker of the study uses it
    (SQLite in the run directory), not only those on this machine (a shared PostgreSQL storage).
    """
    import optuna

    seed = spec.seed if spec.seed is not None else job.seed
    study = optuna.load_study(
        study_name=study_name,
        storage=storage,
        sampler=make_tune_sampler(spec, worker_seed(seed, index)),
        pruner=make_pruner(spec, job.rounds),
    )
    storage_obj = study._storage  # noqa: SLF001
    objective = FederatedObjective(job, spec, data_dir=data_dir, run_dir=run_dir, worker=str(index), on_round=on_round,
                                   backend=backend)
    budget = effective_budget(spec)
    deadline = time.monotonic() + spec.timeout_s if spec.timeout_s is not None else None
    poll_s = max(0.2, spec.heartbeat_interval / 2)
    ran = 0
    while True:
        if stop is not None and stop():
            log.info("worker %d: stopped after %d trial(s)", index, ran)
            break
        if deadline is not None and time.monotonic() > deadline:
            log.info("worker %d: timeout after %d trial(s)", index, ran)
            break
        with claim_lock(lock_dir) as release:
            _fail_stale(study, locked=lock_dir is not None and lock_is_global, grace_s=spec.grace)
            counts = budget_state(study)
            if counts["waiting"] == 0 and counts["used"] >= budget:
                if counts["running"] == 0:
                    break
                release()
                time.sleep(poll_s)  # others' trials still run: wait for them to end or go stale
                continue

            def claimed(trial: Any) -> Any:
                # finish the claim before letting others in: a first heartbeat, and who runs it
                if hasattr(storage_obj, "record_heartbeat") and storage_obj.get_heartbeat_interval() is not None:
                    storage_obj.record_heartbeat(trial._trial_id)  # noqa: SLF001
                trial.set_user_attr("worker", str(index))
                release()
                return objective(trial)

            try:
                study.optimize(claimed, n_trials=1, catch=(FedblendError,), gc_after_trial=False,
                               show_progress_bar=False)
            except ValueError as exc:
                if not str(exc).startswith("Cannot tell a"):
                    raise
                # another worker took our heartbeat for a dead one's and failed the trial (it is re-run)
                log.warning("worker %d: a trial was marked failed while it ran (%s); its heartbeat came later "
                            "than [tune].grace_period - raise it on a busy machine", index, exc)
        ran += 1
        if on_trial is not None:
            on_trial(study)
    return ran


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fedblend.hpo.worker", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", required=True, help="job file with a [tune] table (RUN_DIR/tune_job.toml)")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--index", type=int, required=True, help="worker index (seeds its sampler)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("-v", "--verbose", action="count", default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if not args.verbose else logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s worker{args.index} %(levelname)s %(name)s: %(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if args.verbose else optuna.logging.WARNING)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    from fedblend.hpo.tune import join

    try:
        join(Path(args.job), run_dir=Path(args.run_dir), index=args.index, data_dir=args.data_dir, write_results=False)
    except FedblendError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(_main())

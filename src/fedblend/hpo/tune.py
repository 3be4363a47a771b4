"""Run a federated hyperparameter search: set up the run directory and study, run workers, report.

    RUN_DIR/                     default OUTPUT_DIR/NAME-tune
      tune.db                    Optuna storage (study NAME): every trial, its values, per-round reports
      tune_job.toml              the job the workers run (base job with its [tune] table)
      run.db                     run store: meta kind="tune", storage URL, study name; documents
                                 tune.json and best_job.toml, for the dashboard
      best_job.toml              the best configuration as a ready-to-run job
      pareto/trial_NNNNN.toml    several objectives: one job per Pareto-optimal trial
      tune.json                  summary: best trial(s), importances, every trial

``run_tune`` runs ``workers`` processes on this machine (or the search in-process for one worker);
``join`` is one more worker on a shared storage (``fedblend tune JOB --worker``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedblend.errors import ConfigError, FedblendError
from fedblend.hpo.results import TuneOutcome, finalize, progress_snapshot
from fedblend.hpo.search import grid_plan
from fedblend.hpo.spec import TuneSpec, tune_spec_for
from fedblend.hpo.storage import TUNE_DB, claim_lock, open_storage, storage_url
from fedblend.hpo.worker import run_worker
from fedblend.jobs import JobSpec, load_job

__all__ = ["run_tune", "join", "tune_run_dir", "open_study", "setup_search", "lock_is_global", "TuneOutcome"]

log = logging.getLogger(__name__)

JOB_FILE = "tune_job.toml"


def tune_run_dir(job: JobSpec, run_dir: str | Path | None = None) -> Path:
    return Path(run_dir) if run_dir is not None else Path(job.output_dir) / f"{job.name}-tune"


def _storage(spec: TuneSpec, run_dir: Path) -> tuple[str, Any]:
    url = storage_url(spec.storage, run_dir)
    return url, open_storage(url, heartbeat_interval=spec.heartbeat_interval, grace_period=spec.grace,
                             max_retry=spec.max_retry)


def open_study(job: JobSpec, spec: TuneSpec, storage: Any) -> Any:
    """Create the study (or load it), enqueueing the grid once; callers hold the run's claim lock."""
    import optuna

    name = spec.study_name or job.name
    study = optuna.create_study(study_name=name, storage=storage, directions=spec.directions, load_if_exists=True)
    if list(study.directions) != [optuna.study.StudyDirection[d.upper()] for d in spec.directions]:
        raise ConfigError(f"study {name!r} in the storage optimizes {[d.name.lower() for d in study.directions]}, "
                          f"but [tune] asks for {spec.directions}; use another study_name or run directory")
    if spec.searcher == "grid" and not study.user_attrs.get("grid_enqueued"):
        seed = spec.seed if spec.seed is not None else job.seed
        for cfg in grid_plan(spec, seed):
            study.enqueue_trial(cfg, skip_if_exists=True)
        study.set_user_attr("grid_enqueued", True)
    return study


def _record_meta(run_dir: Path, job: JobSpec, spec: TuneSpec, url: str, study_name: str) -> None:
    from fedblend.hpo.results import public_url
    from fedblend.store.sqlite import SqlRunStore

    store = SqlRunStore(run_dir)
    try:
        store.set_meta(kind="tune", name=job.name, seed=job.seed, rounds=job.rounds, dataset=job.data.dataset,
                       model=job.model.name, strategy=job.strategy.name, tune_storage=public_url(url),
                       study_name=study_name, searcher=spec.searcher, n_trials=spec.n_trials,
                       metrics=",".join(spec.metrics), directions=",".join(spec.directions))
        store.set_document("job.toml", job.to_toml())
        store.set_status("running")
    finally:
        store.close()


def preflight(job: JobSpec, data_dir: str | Path | None) -> None:
    """Fail before the first trial when the data or model cannot work (not once per trial)."""
    from fedblend.hpo.objective import trial_job
    from fedblend.runner import prepare

    prepared = prepare(trial_job(job, {}, name=f"{job.name}-preflight"[:100]), data_dir=data_dir)
    empty = sorted(s.site_id for s in prepared.dataset.sites.values() if len(s.val) == 0)
    if len(empty) == len(prepared.dataset.sites):
        raise ConfigError("no site has validation examples; raise [data].val_fraction")
    if empty:
        log.warning("sites %s have no validation examples; they do not count in the trials' scores", empty)


def setup_search(job: JobSpec, run_dir: Path, *, fresh: bool, overwrite: bool, resume: bool, source: str,
                 data_dir: str | Path | None = None, check_data: bool = True) -> tuple[TuneSpec, str, Any, Any]:
    """Open (``fresh``: start, refusing a run directory that holds a search unless ``resume`` or
    ``overwrite``) a search in ``run_dir``: its ``[tune]`` spec, storage URL, Optuna storage and
    study. Writes the job file and the run's meta under the directory's lock; used by ``run_tune``,
    ``join`` and the deployed search."""
    spec = tune_spec_for(job, source)
    if check_data:  # a deployment server holds no data: its sites check theirs
        preflight(job, data_dir)
    if fresh:
        if resume and overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; pick one")
        if (run_dir / TUNE_DB).exists() or (run_dir / JOB_FILE).exists():
            if overwrite:
                shutil.rmtree(run_dir)
            elif not resume:
                raise ConfigError(f"run directory {run_dir} already holds a tune run; pass --resume to continue it "
                                  "(finished trials count toward n_trials), --overwrite to start over, or choose --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    # workers starting together must not race to create the databases
    with claim_lock(run_dir):
        if fresh or not (run_dir / JOB_FILE).exists():
            tmp = run_dir / (JOB_FILE + ".tmp")
            tmp.write_text(job.to_toml(), encoding="utf-8")
            os.replace(tmp, run_dir / JOB_FILE)
        url, storage = _storage(spec, run_dir)
        study = open_study(job, spec, storage)
        _record_meta(run_dir, job, spec, url, study.study_name)
    return spec, url, storage, study


def lock_is_global(url: str) -> bool:
    """Whether the run directory's lock file serializes every worker of a study with this storage:
    true for in-memory and SQLite storage (both live in the run directory), not for a server DB."""
    return url == "memory" or url.startswith("sqlite")


def run_tune(
    job: JobSpec,
    *,
    run_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    poll_s: float = 0.5,
    source: str = "<job>",
) -> TuneOutcome:
    """Search ``job``'s ``[tune]`` space; returns the best configuration, importances and trials."""
    rd = tune_run_dir(job, run_dir)
    spec, url, storage, study = setup_search(job, rd, fresh=True, overwrite=overwrite, resume=resume, source=source,
                                            data_dir=data_dir)
    n = workers if workers is not None else spec.workers
    if n < 1:
        raise ConfigError(f"--workers must be >= 1 (got {n})")
    if n > 1 and url == "memory":
        raise ConfigError("[tune].storage = 'memory' cannot be shared by several workers; drop it")

    def progress(_: Any = None, *__: Any) -> None:
        if on_progress is not None:
            on_progress(progress_snapshot(study, spec))

    progress()
    try:
        if n == 1:
            run_worker(job, spec, storage=storage, study_name=study.study_name, index=0, run_dir=rd,
                       lock_dir=rd, lock_is_global=lock_is_global(url), data_dir=data_dir, on_trial=progress)
        else:
            _run_processes(rd, n, data_dir, progress, poll_s)
    except BaseException:
        _set_status(rd, "interrupted")
        raise
    progress()
    return finalize(rd, job, spec, study, url)


def _set_status(run_dir: Path, status: str) -> None:
    from fedblend.store.sqlite import SqlRunStore

    store = SqlRunStore(run_dir)
    try:
        store.set_status(status)
    finally:
        store.close()


def _run_processes(run_dir: Path, n: int, data_dir: str | Path | None, progress: Callable[[], None], poll_s: float) -> None:
    src = str(Path(__file__).resolve().parents[2])  # the directory that holds the fedblend package
    env = dict(os.environ)
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    threads = max(1, (os.cpu_count() or 1) // n)
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    try:
        for k in range(n):
            cmd = [sys.executable, "-m", "fedblend.hpo.worker", "--job", str(run_dir / JOB_FILE),
                   "--run-dir", str(run_dir), "--index", str(k), "--threads", str(threads)]
            if data_dir is not None:
                cmd += ["--data-dir", str(data_dir)]
            err = logs / f"worker{k}.log"
            with open(err, "wb") as fh:
                procs.append((subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT), err))
        while any(p.poll() is None for p, _ in procs):
            progress()
            time.sleep(poll_s)
    except BaseException:
        for p, _ in procs:
            if p.poll() is None:
                p.terminate()
        for p, _ in procs:
            p.wait()
        raise
    bad = [(k, p.returncode, e) for k, (p, e) in enumerate(procs) if p.returncode != 0]
    for k, rc, e in bad:
        log.warning("tune worker %d exited with %s; see %s", k, rc, e)
    if len(bad) == n:
        k, rc, e = bad[0]
        tail = e.read_text(errors="replace")[-2000:]
        raise FedblendError(f"every tune worker failed (worker {k} exit code {rc}); its log {e} ends:\n{tail}")


def join(
    job_path: str | Path | JobSpec,
    *,
    run_dir: str | Path | None = None,
    index: int | None = None,
    data_dir: str | Path | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    write_results: bool = True,
    source: str | None = None,
) -> TuneOutcome | None:
    """Be one more worker on the job's study (created if missing); writes and returns the results
    (best job, summary) when ``write_results``."""
    job = job_path if isinstance(job_path, JobSpec) else load_job(job_path)
    source = source or ("<job>" if isinstance(job_path, JobSpec) else str(job_path))
    rd = tune_run_dir(job, run_dir)
    spec, url, storage, study = setup_search(job, rd, fresh=False, overwrite=False, resume=True, source=source,
                                            data_dir=data_dir)
    if index is None:
        # a worker joining from elsewhere: a distinct, recorded index from the host and process id
        import zlib

        index = zlib.crc32(f"{os.uname().nodename}:{os.getpid()}".encode()) & 0x7FFFFFFF
        log.info("worker index %d (from host and pid)", index)

    def progress(_: Any = None) -> None:
        if on_progress is not None:
            on_progress(progress_snapshot(study, spec))

    run_worker(job, spec, storage=storage, study_name=study.study_name, index=index, run_dir=rd,
               lock_dir=rd, lock_is_global=lock_is_global(url), data_dir=data_dir, on_trial=progress)
    if write_results:
        return finalize(rd, job, spec, study, url)
    return None

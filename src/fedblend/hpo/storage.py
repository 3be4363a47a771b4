"""Where a tune run keeps its trials: an Optuna RDB storage with heartbeats, shared by every worker.

    RUN_DIR/tune.db     Optuna's SQLite storage (default), study named after the job
    RUN_DIR/tune.lock   taken while a worker claims its next trial, so the budget is exact

A worker's heartbeat thread stamps its RUNNING trial every ``heartbeat_interval`` seconds; a trial
whose stamp is older than ``grace_period`` belongs to a dead worker: the next worker that looks
marks it FAIL and (``max_retry`` times) re-enqueues its parameters as a WAITING trial, which the
next free worker takes. A PostgreSQL URL (``postgresql://...``) shares one study across machines.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedblend.errors import ConfigError, StoreError

__all__ = ["TUNE_DB", "storage_url", "open_storage", "claim_lock", "budget_state"]

log = logging.getLogger(__name__)

TUNE_DB = "tune.db"
_LOCK = "tune.lock"


def storage_url(storage: str | None, run_dir: Path) -> str:
    """The storage URL a run uses: the given one, or SQLite in the run directory."""
    if storage is None:
        return f"sqlite:///{(run_dir / TUNE_DB).resolve()}"
    return storage


def open_storage(url: str, *, heartbeat_interval: int, grace_period: int, max_retry: int) -> Any:
    """An Optuna storage for ``url`` (``memory``: in-process only)."""
    import optuna
    from optuna.storages import RDBStorage

    try:  # optuna >= 4.9 renamed the retry callback and its argument
        from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry

        callback_arg = "heartbeat_stale_trial_callback"
    except ImportError:
        from optuna.storages import RetryFailedTrialCallback as Retry  # type: ignore[attr-defined,no-redef]

        callback_arg = "failed_trial_callback"

    if url == "memory":
        return optuna.storages.InMemoryStorage()
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # several worker processes write to one file: wait for the lock instead of failing at once
        engine_kwargs = {"connect_args": {"timeout": 60}}
    try:
        with warnings.catch_warnings():  # heartbeats and the retry callback are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                **{callback_arg: Retry(max_retry=max_retry) if max_retry > 0 else None},
            )
    except ImportError as exc:
        raise ConfigError(f"[tune].storage {url!r}: the database driver is not installed ({exc}); "
                          "for PostgreSQL: pip install psycopg2-binary") from None
    except Exception as exc:  # sqlalchemy errors: bad URL, unreachable server
        raise StoreError(f"[tune].storage {url!r}: cannot open the Optuna storage: {type(exc).__name__}: {exc}") from None


@contextlib.contextmanager
def claim_lock(run_dir: Path | None) -> Iterator[Any]:
    """An exclusive lock over claiming a trial, for workers that share one run directory.

    Yields a callable that releases the lock early (idempotent). Workers on other machines (a
    PostgreSQL storage without a shared run directory) get no lock; the budget then may overshoot by
    at most the number of workers minus one.
    """
    if run_dir is None:
        yield lambda: None
        return
    fd = os.open(run_dir / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            fcntl.flock(fd, fcntl.LOCK_UN)

    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield release
    finally:
        release()
        os.close(fd)


def budget_state(study: Any) -> dict[str, int]:
    """Counts that decide whether a worker may start another trial.

    ``used``: trials that spend the budget (finished, running or waiting; a FAIL that was retried
    does not count, its retry does). ``waiting``: re-enqueued or grid trials not yet taken.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    # a retry carries the numbers of every trial it replaces (Optuna's retry callback writes them)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    counts = {s.name.lower(): 0 for s in TrialState}
    for t in trials:
        counts[t.state.name.lower()] += 1
    failed_counted = sum(1 for t in trials if t.state == TrialState.FAIL and t.number not in retried)
    used = counts["complete"] + counts["pruned"] + counts["running"] + counts["waiting"] + failed_counted
    return {**counts, "used": used}

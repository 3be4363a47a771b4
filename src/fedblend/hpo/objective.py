"""A trial is a federation: the base job with the trial's values, trained and scored on validation.

Each round the trial's validation metric goes to Optuna (``trial.report``) and a bad trial stops
early when the pruner says so. The value returned is the final model's validation metric (and,
for several objectives, the bytes communicated: 2 x model bytes x participants, over the rounds).
With ``[tune].repeats = k`` a trial trains k federations of the same configuration under seeds
seed .. seed+k-1 (each draws its own validation split and training order: repeated random-split
validation) in lockstep, and reports and returns their mean; on small federations this keeps the
search from chasing the noise of one validation split. Test data is never evaluated during a search.

Where the federations run is the ``backend``'s business: ``backend(job) -> (prepared, pool, close)``.
``simulation_backend`` (the default) loads the data and builds a simulation pool per federation; a
deployment (``fedblend.hpo.deployed``) hands the trial's job to its connected sites instead.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedblend.errors import ConfigError, FedblendError
from fedblend.hpo.space import suggest_params
from fedblend.hpo.spec import TuneSpec
from fedblend.jobs import JobSpec, parse_job
from fedblend.records import RoundResult

__all__ = ["trial_job", "best_job", "round_metrics", "FederatedObjective", "Backend", "simulation_backend"]

log = logging.getLogger(__name__)

# where a trial's federation runs: the job -> (Prepared, SitePool, close); ``close()`` after the trial
Backend = Callable[[JobSpec], tuple[Any, Any, Callable[[], None]]]


def simulation_backend(data_dir: str | Path | None = None) -> Backend:
    """Federations in simulation: the job's data under ``data_dir``, its own pool (closed after the trial)."""

    def backend(job: JobSpec) -> tuple[Any, Any, Callable[[], None]]:
        from fedblend.runner import build_pool, prepare

        prepared = prepare(job, data_dir=data_dir)
        if sum(len(s.val) for s in prepared.dataset.sites.values()) == 0:
            raise ConfigError(f"{job.name}: the sites hold no validation examples; raise [data].val_fraction")
        pool = build_pool(job, prepared)
        return prepared, pool, pool.close

    return backend


def _apply(raw: dict[str, Any], values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value


def _fit_strategy(raw: dict[str, Any], base: JobSpec, values: Mapping[str, Any]) -> None:
    """When the trial picks another strategy, drop the base job's parameters it does not take."""
    if "strategy.name" not in values:
        return
    from fedblend.strategies import STRATEGIES

    cls = STRATEGIES.get(str(values["strategy.name"]).lower())
    if cls is None:
        return
    valid = set(cls.param_names())
    searched = {k.split(".", 1)[1] for k in values if k.startswith("strategy.")}
    for k in list(raw["strategy"]):
        if k != "name" and k not in valid and k not in searched and k in base.strategy.params:
            del raw["strategy"][k]


def trial_job(base: JobSpec, values: Mapping[str, Any], *, name: str | None = None) -> JobSpec:
    """The job a trial runs: ``base`` with ``values`` (dotted keys), scored on validation every round."""
    raw = base.model_dump(mode="python")
    _apply(raw, values)
    _fit_strategy(raw, base, values)
    raw["tune"] = None
    raw["eval"] = {**raw["eval"], "every": 1, "splits": ["val"]}
    if name is not None:
        raw["name"] = name
    return parse_job(raw, source=f"trial {name or ''}".strip())


def best_job(base: JobSpec, values: Mapping[str, Any], *, name: str | None = None) -> JobSpec:
    """The ready-to-run job for a configuration: ``base`` with ``values``, its own evaluation, no [tune]."""
    raw = base.model_dump(mode="python")
    _apply(raw, values)
    _fit_strategy(raw, base, values)
    raw["tune"] = None
    raw["name"] = name or f"{base.name}-best"[:100]
    return parse_job(raw, source="best configuration")


def round_metrics(result: RoundResult) -> dict[str, float]:
    """The round's global metrics and ``val_loss_mean_sites``: the mean over sites of each site's
    validation loss (every hospital counts the same, as in a mean-of-sites accuracy)."""
    out = dict(result.global_metrics)
    val = [r for r in result.eval_reports if r.split == "val" and r.num_examples > 0]
    if val:
        out["val_loss_mean_sites"] = sum(r.loss for r in val) / len(val)
    return out


class FederatedObjective:
    """Optuna objective: ``objective(trial)`` runs one federation and returns its score(s).

    ``run_dir`` (optional) receives a sub-run per trial when ``spec.keep_runs`` is set;
    ``on_round(trial_number, result)`` sees every round (progress display); ``backend`` runs the
    federations (default: ``simulation_backend(data_dir)``).
    """

    def __init__(
        self,
        job: JobSpec,
        spec: TuneSpec,
        *,
        data_dir: str | Path | None = None,
        run_dir: Path | None = None,
        worker: str = "0",
        on_round: Callable[[int, RoundResult], None] | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.job = job
        self.spec = spec
        self.data_dir = data_dir
        self.run_dir = run_dir
        self.worker = worker
        self.on_round = on_round
        self.backend = backend if backend is not None else simulation_backend(data_dir)

    def __call__(self, trial: Any) -> float | list[float]:
        import optuna

        from fedblend.runner import build_federation, open_store

        values = suggest_params(trial, self.spec.space)
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("pid", os.getpid())
        name = f"{self.job.name}-trial{trial.number:05d}"[:100]
        t0 = time.perf_counter()
        try:
            job = trial_job(self.job, values, name=name)
        except ConfigError as exc:
            trial.set_user_attr("fail_reason", str(exc))
            raise
        # repeats: the same configuration under seeds seed, seed+1, ... (each its own validation
        # split and training order), stepped in lockstep; the trial scores their mean
        jobs = [job] + [job.with_overrides(seed=job.seed + i) for i in range(1, self.spec.repeats)]
        metrics = self.spec.metrics
        single = not self.spec.multi_objective
        primary = metrics[0] if metrics[0] != "bytes" else metrics[1]
        sent = 0
        rounds_done = 0
        by_round: dict[int, float] = {}
        finals: list[dict[str, float]] = []
        closers: list[Callable[[], None]] = []
        stores: list[Any] = []
        try:
            try:
                feds = []
                for i, j in enumerate(jobs):
                    prepared, pool, close = self.backend(j)
                    closers.append(close)
                    model_bytes = prepared.initial_weights.nbytes
                    store = None
                    if self.spec.keep_runs and self.run_dir is not None:
                        sub = f"trial_{trial.number:05d}" + (f"_seed{j.seed}" if i else "")
                        store = open_store(j, run_dir=self.run_dir / "trials" / sub, overwrite=True)
                        stores.append(store)
                    feds.append(build_federation(j, prepared, pool, store))
                for rnd in range(1, job.rounds + 1):
                    for fed in feds:
                        fed.run(until=rnd)
                    results = [fed.history[-1] for fed in feds]
                    sent += sum(2 * model_bytes * len(r.participants) for r in results)
                    rounds_done = rnd
                    if self.on_round is not None:
                        self.on_round(trial.number, results[0])
                    got = [round_metrics(r).get(primary) for r in results]
                    if any(v is None for v in got):
                        continue
                    v = sum(float(x) for x in got if x is not None) / len(got)
                    by_round[rnd] = v
                    if single:
                        trial.report(v, rnd)
                        if rnd < job.rounds and trial.should_prune():
                            raise optuna.TrialPruned(f"round {rnd}: {primary}={v:.4f}")
                finals = [round_metrics(fed.history[-1]) for fed in feds]
            finally:
                for close in closers:
                    close()
                for store in stores:
                    store.close()
        except FedblendError as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            log.warning("trial %d failed: %s", trial.number, exc)
            raise
        finally:
            trial.set_user_attr("duration_s", round(time.perf_counter() - t0, 3))
            trial.set_user_attr("bytes", int(sent / len(jobs)))
            trial.set_user_attr("rounds_done", rounds_done)
        final = {k: sum(f[k] for f in finals) / len(finals) for k in finals[0] if all(k in f for f in finals)}
        trial.set_user_attr("val_metrics", {k: float(v) for k, v in final.items() if k.startswith("val_")})
        if not single:
            trial.set_user_attr("history", {str(r): v for r, v in by_round.items()})
        out: list[float] = []
        for m in metrics:
            if m == "bytes":
                out.append(float(sent / len(jobs)))  # one federation's communication
            elif m in final:
                out.append(float(final[m]))
            else:
                raise ConfigError(f"trial {trial.number}: metric {m!r} was not measured (got {sorted(final)})")
        return out[0] if single else out

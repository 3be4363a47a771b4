"""Build a run from a JobSpec and run it: dataset -> task -> site runners -> pool -> Federation.

This is the only place that turns names in a job file into objects, so the CLI, the tuner and
the deployment server all build runs the same way.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedblend.data.base import FederatedDataset
from fedblend.engine.federation import Federation, Sampling
from fedblend.engine.ports import SitePool
from fedblend.engine.site import SiteRunner
from fedblend.engine.validate import UpdateValidator
from fedblend.errors import ConfigError, ModelError
from fedblend.jobs import JobSpec
from fedblend.records import EvalReport, RoundResult
from fedblend.store.sqlite import SqlRunStore
from fedblend.strategies import make_strategy
from fedblend.task.base import Task
from fedblend.weights import Weights

__all__ = ["Prepared", "RunOutcome", "prepare", "shape_prepared", "build_dataset", "build_task", "build_pool", "open_store",
           "run_job"]

log = logging.getLogger(__name__)


def build_dataset(job: JobSpec, data_dir: str | Path | None = None) -> FederatedDataset:
    d = job.data
    if d.dataset in ("csv", "parquet"):
        from fedblend.data import load_tabular_sites

        assert d.files is not None and d.label_column is not None  # checked by DataSpec
        return load_tabular_sites(
            d.files, label_column=d.label_column, feature_columns=d.feature_columns,
            test_fraction=d.test_fraction, val_fraction=d.val_fraction or 0.0, seed=job.seed,
        )
    from fedblend.data import load_dataset

    return load_dataset(
        d.dataset,
        data_dir if data_dir is not None else d.dir,
        partition=d.partition,
        num_sites=d.num_sites,
        seed=job.seed,
        val_fraction=d.val_fraction,
        examples_per_site=d.examples_per_site,
        alpha=d.alpha,
        shards_per_site=d.shards_per_site,
        shard_size=d.shard_size,
        **d.options,
    )


def _loss_for(job: JobSpec, dataset: FederatedDataset) -> str:
    if job.train.loss != "auto":
        return job.train.loss
    return "bce" if dataset.num_classes == 2 and job.model.name == "logreg" else "ce"


def model_params(job: JobSpec, dataset: FederatedDataset, binary: bool) -> dict[str, Any]:
    """The built-in model's constructor arguments: shape facts from the data, the rest from [model]."""
    import math

    shape = dataset.input_shape
    name = job.model.name
    derived: dict[str, Any] = {}
    if name == "logreg":
        derived = {"in_features": math.prod(shape), "num_classes": dataset.num_classes, "binary": binary}
    elif name == "mlp":
        derived = {"in_features": math.prod(shape), "num_classes": dataset.num_classes}
    elif name == "cnn":
        derived = {"num_classes": dataset.num_classes, "in_channels": shape[0] if len(shape) == 3 else 1,
                   "image_size": shape[-1]}
    elif name == "char_lstm":
        derived = {"vocab_size": dataset.num_classes}
    return {**derived, **job.model.params}


def build_task(job: JobSpec, dataset: FederatedDataset) -> Task:
    from fedblend.task import MODELS, TorchTask

    if job.model.name not in MODELS:
        raise ConfigError(f"[model].name: unknown model {job.model.name!r}; valid models: {sorted(MODELS)}")
    loss = _loss_for(job, dataset)
    t = job.train
    return TorchTask(
        job.model.name,
        model_params=model_params(job, dataset, loss == "bce"),
        loss=loss,
        optimizer=t.optimizer,
        lr=t.lr,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        local_epochs=t.local_epochs,
        local_steps=t.local_steps,
        batch_size=t.batch_size,
        device=t.device,
    )


@dataclass
class Prepared:
    job: JobSpec
    dataset: FederatedDataset
    task: Task
    runners: list[SiteRunner]
    initial_weights: Weights


def prepare(job: JobSpec, *, data_dir: str | Path | None = None) -> Prepared:
    dataset = build_dataset(job, data_dir)
    task = build_task(job, dataset)
    runners = [
        SiteRunner(s, task, num_classes=dataset.num_classes, feature_names=dataset.feature_names, min_cell=job.data.min_cell)
        for s in dataset.sites.values()
    ]
    initial = task.init_weights(job.seed)
    _preflight(task, dataset, initial)
    return Prepared(job, dataset, task, runners, initial)


def shape_prepared(job: JobSpec, schema: Any) -> Prepared:
    """A Prepared without data (a deployment server): the model is built from the shape facts the
    sites reported (``schema``: input_shape, num_classes, kind, feature_names); the initial weights
    come from the job's seed, as in simulation."""
    shape_only = FederatedDataset(name=job.data.dataset, sites={}, num_classes=schema.num_classes,
                                  input_shape=tuple(schema.input_shape), kind=schema.kind,
                                  feature_names=tuple(schema.feature_names))
    task = build_task(job, shape_only)
    return Prepared(job, shape_only, task, [], task.init_weights(job.seed))


def _preflight(task: Task, dataset: FederatedDataset, weights: Weights) -> None:
    """Fail before round 1, with one clear error, when the model cannot fit the data."""
    first = next(iter(dataset.sites.values()))
    probe = first.train.subset(slice(0, min(8, len(first.train))))  # type: ignore[arg-type]
    try:
        task.evaluate(weights, probe)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(
            f"the model cannot process site {first.site_id!r}'s data (input shape {tuple(probe.x.shape[1:])}, "
            f"{dataset.num_classes} classes): {type(exc).__name__}: {exc}. Pick a model that fits the dataset "
            "([model].name) or adjust its parameters."
        ) from None


def build_pool(job: JobSpec, prepared: Prepared) -> SitePool:
    from fedblend.sim import make_pool

    return make_pool(job.pool.kind, prepared.runners, task=prepared.task, workers=job.pool.workers, device=job.pool.device, job=job)


def open_store(job: JobSpec, *, run_dir: str | Path | None = None, resume: bool = False, overwrite: bool = False) -> SqlRunStore:
    path = Path(run_dir) if run_dir is not None else Path(job.output_dir) / job.name
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pick one")
    if path.exists() and (path / "run.db").exists() and not resume:
        if not overwrite:
            existing = SqlRunStore(path)
            last = existing.last_round()
            existing.close()
            if last > 0:
                raise ConfigError(
                    f"run directory {path} already holds a run (last round {last}); pass --resume to continue it, "
                    "--overwrite to start over, or change the job's name/output_dir"
                )
        shutil.rmtree(path)
    store = SqlRunStore(path)
    if not resume or not store.meta():
        store.set_meta(name=job.name, seed=job.seed, rounds=job.rounds, dataset=job.data.dataset,
                       model=job.model.name, strategy=job.strategy.name)
        store.set_document("job.toml", job.to_toml())
    return store


@dataclass
class RunOutcome:
    run_dir: Path | None
    weights: Weights
    history: list[RoundResult]
    final_reports: list[EvalReport] = field(default_factory=list)
    final_metrics: dict[str, float] = field(default_factory=dict)
    start_round: int = 0


def build_synthesizer(job: JobSpec, *, store: SqlRunStore | None = None, task: Task | None = None) -> Any:
    """The job's blend synthesizer (None without a ``[blend]`` table or with ``enabled = false``).

    The ``[blend]`` table is validated even when disabled, so a typo never hides. ``val_fraction``
    (the job's, else the dataset's default) is checked before training. With ``store``: the
    Optuna studies (``store_study = true``) go into the run's database, and the warm start is
    restored from the run's earlier blend records (a resumed run, a new training cycle). ``task``
    scores ``server_data`` for ``signal = "server"``; without it the task is built from the job.
    """
    if job.blend is None:
        return None
    from fedblend.blend import build_synthesizer as _build
    from fedblend.blend import parse_blend_spec

    spec = parse_blend_spec(job.blend)
    if not spec.enabled:
        return None
    vf = job.data.val_fraction
    if vf is None:
        if job.data.dataset in ("csv", "parquet"):
            vf = 0.0
        else:
            from fedblend.data import DATASETS

            info = DATASETS.get(job.data.dataset)
            vf = info.default_val_fraction if info is not None else None
    if task is None and spec.signal == "server" and spec.server_data is not None:
        task = build_task(job, build_dataset(job))
    return _build(
        spec,
        seed=job.seed,
        storage_url=store.url if store is not None else None,
        val_fraction=vf,
        task=task,
        records=store.blends() if store is not None else (),
    )


def build_federation(job: JobSpec, prepared: Prepared, pool: SitePool, store: SqlRunStore | None,
                     callbacks: Sequence[Callable[[RoundResult], None]] = ()) -> Federation:
    s = job.sampling
    return Federation(
        pool=pool,
        strategy=make_strategy(job.strategy.name, **job.strategy.params),
        initial_weights=prepared.initial_weights,
        rounds=job.rounds,
        seed=job.seed,
        sampling=Sampling(fraction=s.fraction, count=s.count, min_sites=s.min_sites),
        train_config={},
        eval_every=job.eval.every,
        eval_splits=tuple(job.eval.splits),
        store=store,
        synthesizer=build_synthesizer(job, store=store, task=prepared.task),
        validator=UpdateValidator(max_update_norm=job.max_update_norm),
        callbacks=list(callbacks),
    )


def run_job(
    job: JobSpec,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    data_dir: str | Path | None = None,
    persist: bool = True,
    callbacks: Sequence[Callable[[RoundResult], None]] = (),
    until: int | None = None,
    on_start: Callable[[Federation], None] | None = None,
) -> RunOutcome:
    """Run ``job`` in simulation. ``until`` stops after that round (used to test resume)."""
    prepared = prepare(job, data_dir=data_dir)
    store = open_store(job, run_dir=run_dir, resume=resume, overwrite=overwrite) if persist else None
    pool = build_pool(job, prepared)
    try:
        fed = build_federation(job, prepared, pool, store, callbacks)
        start = fed.resume() if resume else 0
        if on_start is not None:
            on_start(fed)
        weights = fed.run(until=until)
        final = fed.history[-1] if fed.history else None
        return RunOutcome(
            run_dir=store.run_dir if store else None,
            weights=weights,
            history=fed.history,
            final_reports=list(final.eval_reports) if final else [],
            final_metrics=dict(final.global_metrics) if final else {},
            start_round=start,
        )
    except BaseException:
        if store is not None:
            store.set_status("interrupted")
        raise
    finally:
        pool.close()
        if store is not None:
            store.close()

"""`fedblend tune JOB.toml`: federated hyperparameter search with a progress bar and a trials table.

    fedblend tune examples/heart_tune.toml                 # search, write RUN_DIR/best_job.toml
    fedblend tune examples/heart_tune.toml --workers 4     # 4 worker processes on this machine
    fedblend tune JOB.toml --worker                        # one more worker on a shared storage
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from fedblend.cli.common import console, fmt


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()  # through the CLI's handler, at its verbosity
    optuna.logging.set_verbosity(logging.getLogger().getEffectiveLevel())


def _value(values: Any, i: int = 0) -> str:
    return fmt(values[i]) if values else "-"


def _param(v: Any) -> str:
    """Searched values: 4 significant digits (learning rates span decades)."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return fmt(v)


def trials_table(outcome: Any, limit: int = 20) -> Table:
    """The trials, best first (finished ones by the first metric), with state, rounds and time."""
    metrics = outcome.metrics
    sign = 1.0 if outcome.directions[0] == "minimize" else -1.0
    keys = list(dict.fromkeys(k for t in outcome.trials for k in t.params))
    best = {t.number for t in outcome.best}

    def order(t: Any) -> tuple[int, float]:
        if t.state == "complete" and t.values:
            return (0, sign * t.values[0])
        if t.state == "pruned" and t.values:
            return (1, sign * t.values[0])
        return (2, float(t.number))

    rows = sorted(outcome.trials, key=order)
    shown = rows[:limit]
    table = Table(title=f"trials ({len(shown)} of {len(rows)}, best first)", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("state")
    for m in metrics:
        table.add_column(m, justify="right")
    for k in keys:
        table.add_column(k, justify="right")
    table.add_column("rounds", justify="right")
    table.add_column("s", justify="right")
    table.add_column("worker", justify="right")
    for t in shown:
        mark = "[bold green]*[/]" if t.number in best else ""
        vals = [(_value(t.values, i) if t.values else "-") for i in range(len(metrics))]
        params = [_param(t.params[k]) if k in t.params else "" for k in keys]
        state = t.state if t.state != "fail" else f"[red]fail[/] {(t.fail_reason or '')[:40]}"
        table.add_row(f"{t.number}{mark}", state, *vals, *params, fmt(t.rounds_done), fmt(t.duration_s, 1), t.worker or "-")
    return table


def importance_table(outcome: Any) -> Table | None:
    if not outcome.importances:
        return None
    table = Table(title=f"hyperparameter importance ({outcome.importance_note})", title_justify="left")
    table.add_column("parameter")
    metrics = list(outcome.importances)
    for m in metrics:
        table.add_column(m, justify="right")
    params = sorted({p for imp in outcome.importances.values() for p in imp},
                    key=lambda p: -outcome.importances[metrics[0]].get(p, 0.0))
    for p in params:
        table.add_row(p, *[fmt(outcome.importances[m].get(p), 3) for m in metrics])
    return table


def show_outcome(outcome: Any) -> None:
    console.print(trials_table(outcome))
    imp = importance_table(outcome)
    if imp is not None:
        console.print(imp)
    elif outcome.importance_note:
        console.print(f"importance: {outcome.importance_note}")
    counts = ", ".join(f"{v} {k}" for k, v in sorted(outcome.counts.items()))
    console.print(f"trials: {counts}")
    for t in outcome.best:
        vals = "  ".join(f"{m}={fmt(v)}" for m, v in zip(outcome.metrics, t.values or (), strict=False))
        console.print(f"[bold]best[/] trial {t.number}: {vals}  " + "  ".join(f"{k}={_param(v)}" for k, v in t.params.items()))
    if outcome.best_job_path is not None:
        console.print(f"best job written to [bold]{outcome.best_job_path}[/]  (fedblend simulate {outcome.best_job_path})")
    else:
        console.print("[yellow]no trial finished; no best job written[/]")
    console.print(f"trials stored in {outcome.storage_url} (study {outcome.study_name!r}); run directory {outcome.run_dir}")


def register(app: typer.Typer) -> None:
    @app.command()
    def tune(
        job_path: Path = typer.Argument(..., metavar="JOB.toml", help="job file with a [tune] table"),
        data_dir: Path | None = typer.Option(None, "--data-dir", help="data directory (default: $FEDBLEND_DATA_DIR or ../shared/data)"),
        run_dir: Path | None = typer.Option(None, "--run-dir", help="where to keep the search (default: OUTPUT_DIR/NAME-tune)"),
        workers: int | None = typer.Option(None, "--workers", "-w", help="worker processes on this machine (default: [tune].workers)"),
        worker: bool = typer.Option(False, "--worker", help="join the study as one more worker (shared storage)"),
        worker_index: int | None = typer.Option(None, "--worker-index", help="with --worker: seeds this worker's searcher"),
        n_trials: int | None = typer.Option(None, "--n-trials", help="override [tune].n_trials"),
        searcher: str | None = typer.Option(None, "--searcher", help="override [tune].searcher"),
        storage: str | None = typer.Option(None, "--storage", help="override [tune].storage (an Optuna storage URL)"),
        resume: bool = typer.Option(False, "--resume", help="continue a search in the same run directory"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier search in the run directory"),
        sets: list[str] = typer.Option([], "--set", help="override any job key, e.g. --set rounds=5"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    ) -> None:
        """Search hyperparameters: each trial is a federation scored on validation; writes the best job."""
        from fedblend.cli.simulate import load_with_overrides
        from fedblend.hpo import join, run_tune

        _quiet_optuna()
        tune_over = {k: v for k, v in {"n_trials": n_trials, "searcher": searcher, "storage": storage}.items() if v is not None}
        job = load_with_overrides(job_path, sets)
        if tune_over and job.tune is not None:
            job = job.with_overrides(**{f"tune.{k}": v for k, v in tune_over.items()})
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=quiet, transient=False,
        ) as progress:
            bar = progress.add_task(f"tune {job.name}", total=None, info="")

            def on_progress(s: dict[str, Any]) -> None:
                best = s["best"]
                info = f"running {s['running']}  pruned {s['pruned']}  failed {s['failed']}"
                if best is not None and not (isinstance(best, float) and math.isnan(best)):
                    info = f"best {s['metric']}={best:.4f}  " + info
                progress.update(bar, total=s["total"], completed=min(s["done"], s["total"]), info=info)

            if worker:
                outcome = join(job, run_dir=run_dir, index=worker_index, data_dir=data_dir, on_progress=on_progress,
                               source=str(job_path))
            else:
                if worker_index is not None:
                    raise typer.BadParameter("--worker-index goes with --worker")
                outcome = run_tune(job, run_dir=run_dir, data_dir=data_dir, workers=workers, overwrite=overwrite,
                                   resume=resume, on_progress=on_progress, source=str(job_path))
        assert outcome is not None
        show_outcome(outcome)

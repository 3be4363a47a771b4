"""`fedblend simulate JOB.toml`: run a job in simulation with a progress bar and a results table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from fedblend.cli.common import console, fmt
from fedblend.errors import ConfigError


def parse_sets(sets: list[str]) -> dict[str, Any]:
    """``--set train.lr=0.1`` -> {"train.lr": 0.1}; values are parsed as TOML scalars."""
    import tomllib

    out: dict[str, Any] = {}
    for s in sets:
        if "=" not in s:
            raise ConfigError(f"--set takes KEY=VALUE, e.g. --set train.lr=0.05 (got {s!r})")
        key, raw = s.split("=", 1)
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw
    return out


def load_with_overrides(job_path: Path, sets: list[str], **direct: Any) -> Any:
    from fedblend.jobs import load_job

    job = load_job(job_path)
    overrides = parse_sets(sets)
    overrides.update({k: v for k, v in direct.items() if v is not None})
    return job.with_overrides(**overrides) if overrides else job


def results_table(outcome: Any, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("site")
    table.add_column("split")
    table.add_column("examples", justify="right")
    table.add_column("loss", justify="right")
    table.add_column("accuracy", justify="right")
    for r in outcome.final_reports:
        table.add_row(r.site_id, r.split, str(r.num_examples), fmt(r.loss), fmt(r.accuracy))
    m = outcome.final_metrics
    for split in sorted({r.split for r in outcome.final_reports}):
        table.add_section()
        table.add_row("[bold]pooled[/]", split, str(sum(r.num_examples for r in outcome.final_reports if r.split == split)),
                      fmt(m.get(f"{split}_loss")), fmt(m.get(f"{split}_acc")))
        table.add_row("[bold]mean of sites[/]", split, "", "", fmt(m.get(f"{split}_acc_mean_sites")))
    return table


def register(app: typer.Typer) -> None:
    @app.command()
    def simulate(
        job_path: Path = typer.Argument(..., metavar="JOB.toml", help="job file"),
        data_dir: Path | None = typer.Option(None, "--data-dir", help="data directory (default: $FEDBLEND_DATA_DIR or ../shared/data)"),
        run_dir: Path | None = typer.Option(None, "--run-dir", help="where to keep the run (default: OUTPUT_DIR/NAME)"),
        resume: bool = typer.Option(False, "--resume", help="continue from the last committed round"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run of the same name"),
        rounds: int | None = typer.Option(None, "--rounds", help="override the job's rounds"),
        seed: int | None = typer.Option(None, "--seed", help="override the job's seed"),
        pool: str | None = typer.Option(None, "--pool", help="auto | sequential | vectorized | process | ray"),
        sets: list[str] = typer.Option([], "--set", help="override any job key, e.g. --set train.lr=0.05"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    ) -> None:
        """Run a federated training job in simulation and print the results."""
        from fedblend.runner import run_job

        job = load_with_overrides(job_path, sets, rounds=rounds, seed=seed, **{"pool.kind": pool})
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=quiet, transient=False,
        ) as progress:
            bar = progress.add_task(f"{job.name}", total=job.rounds, info="")

            def on_round(result: Any) -> None:
                m = result.global_metrics
                info = "  ".join(f"{k}={v:.4f}" for k, v in m.items() if k in ("train_loss", "test_loss", "test_acc"))
                progress.update(bar, completed=result.round, info=info)

            def on_start(fed: Any) -> None:
                progress.update(bar, completed=fed.round)

            outcome = run_job(job, run_dir=run_dir, resume=resume, overwrite=overwrite, data_dir=data_dir,
                              callbacks=[on_round], on_start=on_start)
        if outcome.start_round:
            console.print(f"resumed after round {outcome.start_round}")
        console.print(results_table(outcome, f"{job.name}: final model after {job.rounds} rounds ({job.strategy.name})"))
        last = outcome.history[-1] if outcome.history else None
        if last is not None and last.blend is not None:
            b = last.blend
            console.print(f"blend: {b.get('decision', '?')}  gain={fmt(b.get('gain'))} ± {fmt(b.get('gain_se'))}")
        console.print(f"run stored in [bold]{outcome.run_dir}[/]  (fedblend show {outcome.run_dir})")

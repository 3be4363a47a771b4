"""`fedblend data stats JOB.toml`: per-site data statistics, as the sites would report them."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fedblend.cli.common import console, fmt


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Inspect the data a job would federate.", no_args_is_help=True)
    app.add_typer(data_app, name="data")

    @data_app.command("stats")
    def stats(
        job_path: Path = typer.Argument(..., metavar="JOB.toml"),
        data_dir: Path | None = typer.Option(None, "--data-dir", help="data directory (default: $FEDBLEND_DATA_DIR or ../shared/data)"),
        features: bool = typer.Option(False, "--features", help="also print per-feature mean/std/missing (tabular data)"),
    ) -> None:
        """Print each site's privacy-safe data profile and heterogeneity index."""
        from fedblend.data.stats import heterogeneity, site_stats
        from fedblend.jobs import load_job
        from fedblend.runner import build_dataset

        job = load_job(job_path)
        ds = build_dataset(job, data_dir)
        stats = {sid: site_stats(s, ds.num_classes, ds.feature_names, job.data.min_cell) for sid, s in ds.sites.items()}
        het = heterogeneity({sid: {k: (v or 0) for k, v in st.label_counts.items()} for sid, st in stats.items()})
        labels = sorted({k for st in stats.values() for k in st.label_counts}, key=lambda x: (len(x), x))
        show_labels = labels if len(labels) <= 12 else []
        table = Table(title=f"{ds.name}: {len(stats)} sites, {ds.num_classes} classes (counts < {job.data.min_cell} shown as <{job.data.min_cell})", title_justify="left")
        for col in ["site", "train", "val", "test", *[f"y={lab}" for lab in show_labels], "heterogeneity (JS)"]:
            table.add_column(col, justify="left" if col == "site" else "right")
        for sid, st in stats.items():
            cells = []
            for lab in show_labels:
                v = st.label_counts.get(lab, 0)
                cells.append(f"<{job.data.min_cell}" if v is None else str(v))
            table.add_row(sid, str(st.num_train), str(st.num_val), str(st.num_test), *cells, fmt(het.get(sid)))
        console.print(table)
        if features and ds.feature_names:
            for sid, st in stats.items():
                ft = Table(title=f"{sid}: features", title_justify="left")
                for col in ("feature", "mean", "std", "missing"):
                    ft.add_column(col, justify="left" if col == "feature" else "right")
                for name, f in st.features.items():
                    ft.add_row(name, fmt(f.get("mean")), fmt(f.get("std")), fmt(f.get("missing")))
                console.print(ft)

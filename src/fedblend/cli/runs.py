"""`fedblend runs` and `fedblend show RUN`: list and inspect past runs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fedblend.cli.common import console, fmt
from fedblend.errors import StoreError


def _open(run: Path):  # type: ignore[no-untyped-def]
    from fedblend.store import SqlRunStore

    if not run.exists():
        raise StoreError(f"no run at {run}: the directory does not exist (see `fedblend runs` for the runs under ./runs)")
    return SqlRunStore(run, create=False)


def _show_tune(run: Path, st, meta: dict) -> None:  # type: ignore[no-untyped-def]
    """A search's trials (best first), importances and best configuration, from its tune.json."""
    from fedblend.cli.tune import show_outcome
    from fedblend.hpo.results import outcome_from_summary

    text = st.document("tune.json")
    if text is None:
        console.print(f"search {meta.get('study_name', '')!r} ({meta.get('searcher', '?')}, {meta.get('n_trials', '?')} trials): "
                      "no summary yet (it is written when the search ends; the dashboard shows it live)")
        return
    try:
        outcome = outcome_from_summary(run, text)
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{run}: the search summary (tune.json in run.db) is not readable ({type(exc).__name__}: {exc}); "
                         "rerun the search with --resume (`fedblend tune`) or start its server again to write it anew") from None
    show_outcome(outcome)


def register(app: typer.Typer) -> None:
    @app.command()
    def runs(root: Path = typer.Option(Path("runs"), "--root", help="directory holding run directories")) -> None:
        """List past runs, newest first."""
        from fedblend.store import SqlRunStore, list_runs

        found = list_runs(root)
        if not found:
            console.print(f"no runs under {root}")
            return
        table = Table(title=f"runs under {root}", title_justify="left")
        for col in ("run", "status", "rounds", "dataset", "model", "strategy", "test acc"):
            table.add_column(col, justify="right" if col in ("rounds", "test acc") else "left")
        for path in found:
            st = SqlRunStore(path, create=False)
            meta = st.meta()
            rows = st.rounds()
            last = rows[-1]["global_metrics"] if rows else {}
            if meta.get("kind") == "tune":  # a search: its trials instead of rounds
                from fedblend.hpo.results import outcome_from_summary

                doc = st.document("tune.json")
                try:
                    done = len(outcome_from_summary(path, doc).trials) if doc else "?"
                except (ValueError, KeyError, TypeError):
                    done = "?"
                table.add_row(path.name, str(meta.get("status", "?")), f"search {done}/{meta.get('n_trials', '?')} trials",
                              str(meta.get("dataset", "")), str(meta.get("model", "")), str(meta.get("strategy", "")), "")
                st.close()
                continue
            table.add_row(path.name, str(meta.get("status", "?")), f"{len(rows)}/{meta.get('rounds', '?')}",
                          str(meta.get("dataset", "")), str(meta.get("model", "")), str(meta.get("strategy", "")),
                          fmt(last.get("test_acc")))
            st.close()
        console.print(table)

    @app.command()
    def show(
        run: Path = typer.Argument(..., help="run directory"),
        blend: bool = typer.Option(False, "--blend", help="show every blend synthesis: trials, ratios, decision"),
        sites: bool = typer.Option(True, "--sites/--no-sites", help="per-site table of the last evaluated round"),
    ) -> None:
        """Inspect a run: rounds, per-site metrics, rejected updates, blends; for a search, its trials."""
        st = _open(run)
        meta = st.meta()
        kind = "search of " if meta.get("kind") == "tune" else ""
        console.print(f"[bold]{kind}{meta.get('name', run.name)}[/]  status={meta.get('status', '?')}  "
                      f"dataset={meta.get('dataset')}  model={meta.get('model')}  strategy={meta.get('strategy')}  seed={meta.get('seed')}")
        if meta.get("kind") == "tune":  # a hyperparameter search (fedblend tune, or a server with [tune])
            _show_tune(run, st, meta)
            st.close()
            return
        rows = st.rounds()
        table = Table(title="rounds", title_justify="left")
        keys = ["train_loss", "test_loss", "test_acc", "test_acc_mean_sites"]
        for col in ["round", "sites", "rejected", *keys, "seconds"]:
            table.add_column(col, justify="right")
        for r in rows:
            m = r["global_metrics"] or {}
            table.add_row(str(r["round"]), str(len(r["participants"] or [])), str(len(r["failures"] or [])),
                          *[fmt(m.get(k)) for k in keys], fmt(r["duration_s"], 2))
        console.print(table)
        if sites:
            evals = [m for m in st.site_metrics() if m["kind"].startswith("eval:")]
            if evals:
                last_round = max(m["round"] for m in evals)
                t2 = Table(title=f"per-site evaluation, round {last_round}", title_justify="left")
                for col in ("site", "split", "examples", "loss", "accuracy"):
                    t2.add_column(col, justify="left" if col in ("site", "split") else "right")
                for m in evals:
                    if m["round"] == last_round:
                        t2.add_row(m["site_id"], m["kind"][5:], str(m["num_examples"]), fmt(m["metrics"].get("loss")), fmt(m["metrics"].get("accuracy")))
                console.print(t2)
        rejected = [(r["round"], f) for r in rows for f in (r["failures"] or [])]
        if rejected:
            t3 = Table(title="failed or rejected updates", title_justify="left")
            for col in ("round", "site", "kind", "reason"):
                t3.add_column(col)
            for rnd, f in rejected:
                t3.add_row(str(rnd), f["site_id"], f["kind"], f["reason"])
            console.print(t3)
        if blend:
            from fedblend.cli.blend_view import print_blends

            print_blends(st, console)
        st.close()

"""Tune runs end to end on heart disease (tiny federations): results, best job, grid, pruning, two objectives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest

from fedblend.cli.main import main
from fedblend.errors import ConfigError
from fedblend.hpo import run_tune
from fedblend.jobs import load_job, parse_job
from fedblend.runner import run_job
from fedblend.store.sqlite import SqlRunStore

LR = {"type": "float", "low": 1e-3, "high": 0.5, "log": True}


def tiny_job(tmp_path: Path, tune: dict[str, Any], **top: Any) -> Any:
    return parse_job({
        "name": "tune-test",
        "seed": 2,
        "rounds": 3,
        "output_dir": str(tmp_path / "runs"),
        "data": {"dataset": "heart_disease", "val_fraction": 0.2},
        "model": {"name": "logreg"},
        "train": {"lr": 0.01, "batch_size": 8, "local_steps": 5},
        "strategy": {"name": "fedyogi", "tau": 1e-8},
        "eval": {"splits": ["test"]},
        "pool": {"kind": "sequential"},
        "tune": {"pruner": "none", **tune},
        **top,
    })


def test_tune_end_to_end_writes_a_best_job_that_runs(tmp_path: Path, data_dir: Path) -> None:
    tune = {"searcher": "tpe", "n_trials": 5, "metric": "val_loss", "space": {
        "train.lr": LR,
        "strategy.name": {"type": "categorical", "choices": ["fedavg", "fedyogi"]},
        "strategy.server_lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True,
                               "when": {"strategy.name": ["fedyogi"]}},
    }}
    seen: list[dict[str, Any]] = []
    job = tiny_job(tmp_path, tune)
    out = run_tune(job, data_dir=data_dir, on_progress=seen.append)
    rd = tmp_path / "runs" / "tune-test-tune"
    assert out.run_dir == rd
    assert out.counts == {"complete": 5}
    assert seen[-1]["done"] == 5 and seen[-1]["total"] == 5 and seen[-1]["best"] == pytest.approx(out.best[0].values[0])
    # the study in RUN_DIR/tune.db holds every trial; the best is the minimum validation loss
    study = optuna.load_study(study_name="tune-test", storage=f"sqlite:///{rd / 'tune.db'}")
    assert len(study.trials) == 5
    assert out.best[0].number == study.best_trial.number
    assert study.best_value == min(t.value for t in study.trials)
    for t in study.trials:
        assert set(t.user_attrs["val_metrics"]) >= {"val_loss", "val_acc", "val_loss_mean_sites"}
        assert not [k for k in t.user_attrs["val_metrics"] if not k.startswith("val_")]  # test never evaluated
        assert sorted(t.intermediate_values) == [1, 2, 3]  # reported every round
        assert ("strategy.server_lr" in t.params) == (t.params["strategy.name"] == "fedyogi")
    # the dashboard finds the search through the run store
    store = SqlRunStore(rd)
    meta = store.meta()
    assert meta["kind"] == "tune" and meta["study_name"] == "tune-test"
    assert meta["tune_storage"] == f"sqlite:///{(rd / 'tune.db').resolve()}"
    assert json.loads(store.document("tune.json"))["best"][0]["number"] == out.best[0].number
    store.close()
    assert out.importances or out.importance_note
    # best_job.toml re-loads and runs, with the best trial's values and the base job's own evaluation
    best = load_job(out.best_job_path)
    params = study.best_trial.params
    assert best.train.lr == pytest.approx(params["train.lr"])
    assert best.strategy.name == params["strategy.name"]
    assert best.tune is None and best.eval.splits == ["test"]
    result = run_job(best, data_dir=data_dir, persist=False)
    assert 0.0 <= result.final_metrics["test_acc_mean_sites"] <= 1.0
    # same seed, same search (one worker is deterministic)
    again = run_tune(job, data_dir=data_dir, run_dir=tmp_path / "again")
    assert [(t.params, t.values) for t in again.trials] == [(t.params, t.values) for t in out.trials]


def test_existing_run_needs_resume_or_overwrite(tmp_path: Path, data_dir: Path) -> None:
    job = tiny_job(tmp_path, {"searcher": "random", "n_trials": 2, "space": {"train.lr": LR}})
    run_tune(job, data_dir=data_dir)
    with pytest.raises(ConfigError, match="already holds a tune run; pass --resume"):
        run_tune(job, data_dir=data_dir)
    more = job.with_overrides(**{"tune.n_trials": 3})
    resumed = run_tune(more, data_dir=data_dir, resume=True)
    assert resumed.counts == {"complete": 3}  # the 2 finished trials count toward the budget
    fresh = run_tune(job, data_dir=data_dir, overwrite=True)
    assert fresh.counts == {"complete": 2}


def test_grid_tries_each_configuration_once(tmp_path: Path, data_dir: Path) -> None:
    job = tiny_job(tmp_path, {"searcher": "grid", "n_trials": 50, "space": {
        "strategy.name": {"type": "categorical", "choices": ["fedavg", "fedyogi"]},
        "train.lr": {**LR, "grid": [0.01, 0.1]},
        "strategy.server_lr": {"type": "float", "low": 0.001, "high": 0.1, "grid": [0.01],
                               "when": {"strategy.name": ["fedyogi"]}},
    }})
    out = run_tune(job, data_dir=data_dir)
    configs = sorted(tuple(sorted(t.params.items())) for t in out.trials)
    assert len(configs) == 4 and len(set(configs)) == 4 and out.counts == {"complete": 4}


def test_median_pruner_stops_a_bad_federation_early(tmp_path: Path, data_dir: Path) -> None:
    job = tiny_job(tmp_path, {"searcher": "grid", "n_trials": 4, "pruner": "median",
                              "pruner_options": {"n_startup_trials": 3, "n_warmup_steps": 0},
                              "space": {"train.lr": {**LR, "low": 1e-6, "grid": [0.3, 0.1, 0.05, 1e-6]}}},
                   rounds=4)
    out = run_tune(job, data_dir=data_dir)
    by_lr = {t.params["train.lr"]: t for t in out.trials}
    bad = by_lr[1e-6]
    assert bad.state == "pruned" and bad.rounds_done is not None and bad.rounds_done < 4
    assert all(by_lr[lr].state == "complete" for lr in (0.3, 0.1, 0.05))
    assert out.best[0].params["train.lr"] != 1e-6


def test_two_objectives_write_the_pareto_front(tmp_path: Path, data_dir: Path) -> None:
    job = tiny_job(tmp_path, {"searcher": "random", "n_trials": 4, "metric": ["val_acc", "bytes"], "space": {
        "train.lr": LR,
        "sampling.count": {"type": "int", "low": 1, "high": 4},
    }})
    out = run_tune(job, data_dir=data_dir)
    assert out.directions == ["maximize", "minimize"]
    model_bytes = (13 + 1) * 4  # logistic regression 13 -> 1, float32
    for t in out.trials:
        assert t.values[1] == 2 * model_bytes * t.params["sampling.count"] * 3
    assert out.best and all((out.run_dir / "pareto" / f"trial_{t.number:05d}.toml").exists() for t in out.best)
    assert load_job(out.best_job_path).sampling.count in {t.params["sampling.count"] for t in out.best}


def cli(args: list[str]) -> int:
    try:
        return int(main(args) or 0)
    except SystemExit as e:
        return int(e.code or 0)


def test_cli_tune_prints_trials_and_writes_the_best_job(tmp_path: Path, data_dir: Path, capsys) -> None:
    src = Path(__file__).resolve().parents[1] / "examples" / "heart_tune.toml"
    rd = tmp_path / "cli"
    args = ["tune", str(src), "--run-dir", str(rd), "--data-dir", str(data_dir), "--n-trials", "3", "--workers", "1",
            "--searcher", "random", "--set", "rounds=2", "--set", "train.local_steps=5", "-q"]
    try:
        code = main(args) or 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "trials (3 of 3, best first)" in out and "best job written to" in out
    assert load_job(rd / "best_job.toml").rounds == 2
    # `fedblend show` on the search prints its trials (best first) from the stored summary, not a rounds table
    summary = json.loads((rd / "tune.json").read_text())
    best = summary["best"][0]
    assert cli(["show", str(rd)]) == 0
    out, _ = capsys.readouterr()
    assert "search of heart-tune" in out and "trials (3 of 3, best first)" in out and "rounds" not in out.split("\n")[1]
    assert f"best trial {best['number']}: {summary['metrics'][0]}={best['values'][0]:.4f}" in out.replace("\n", " ")
    assert cli(["runs", "--root", str(tmp_path)]) == 0
    out, _ = capsys.readouterr()
    assert "cli" in out and "search 3/3" in out
    # a damaged summary is a clear error, not a traceback; `runs` still lists the search
    st = SqlRunStore(rd, create=False)
    st.set_document("tune.json", "{not json")
    st.close()
    assert cli(["show", str(rd)]) == 2
    _, err = capsys.readouterr()
    assert "the search summary (tune.json in run.db) is" in err and "--resume" in err
    assert cli(["runs", "--root", str(tmp_path)]) == 0
    out, _ = capsys.readouterr()
    assert "search ?/3" in out
    try:
        code = main(["tune", str(src), "--run-dir", str(rd), "--data-dir", str(data_dir), "--set", "data.val_fraction=0.0", "-q"])
    except SystemExit as e:
        code = int(e.code or 0)
    _, err = capsys.readouterr()
    assert code == 2 and "tuning needs a validation split" in err


def test_missing_data_fails_before_the_first_trial(tmp_path: Path) -> None:
    from fedblend.errors import DataError

    job = tiny_job(tmp_path, {"searcher": "random", "n_trials": 3, "space": {"train.lr": LR}})
    with pytest.raises(DataError, match="FEDBLEND_DATA_DIR|data dir"):
        run_tune(job, data_dir=tmp_path / "no-such-dir")
    assert not (tmp_path / "runs" / "tune-test-tune" / "tune.db").exists()


def test_repeats_score_the_mean_over_seeds(tmp_path: Path, data_dir: Path) -> None:
    from fedblend.hpo import trial_job

    job = tiny_job(tmp_path, {"searcher": "grid", "n_trials": 1, "repeats": 2, "metric": "val_acc_mean_sites",
                              "space": {"train.lr": {**LR, "grid": [0.05]}}})
    out = run_tune(job, data_dir=data_dir)
    (t,) = out.trials
    # reference: the two federations run on their own, seeds 2 and 3 (each its own validation split)
    one = trial_job(job, {"train.lr": 0.05})
    ref = [run_job(one.with_overrides(seed=s), data_dir=data_dir, persist=False).final_metrics["val_acc_mean_sites"]
           for s in (2, 3)]
    assert ref[0] != ref[1]
    assert t.values[0] == pytest.approx(sum(ref) / 2)

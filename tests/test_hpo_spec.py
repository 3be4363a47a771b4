"""The [tune] table and its search space: parsing, grids, conditions, and every kind of bad input."""

from __future__ import annotations

from typing import Any

import pytest

from fedblend.errors import ConfigError
from fedblend.hpo import grid_configs, parse_tune, trial_job, tune_spec_for
from fedblend.hpo.objective import best_job
from fedblend.hpo.search import grid_plan, make_pruner, make_tune_sampler, worker_seed
from fedblend.jobs import parse_job

LR = {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}


def job_with(tune: dict[str, Any] | None, **data: Any) -> Any:
    return parse_job({
        "name": "spec-test",
        "data": {"dataset": "heart_disease", "val_fraction": 0.2, **data},
        "model": {"name": "logreg"},
        "strategy": {"name": "fedyogi", "tau": 1e-8},
        "tune": tune,
    })


def test_space_parses_every_kind_and_infers_direction() -> None:
    spec = parse_tune({
        "searcher": "random",
        "metric": "val_acc",
        "space": {
            "train.lr": LR,
            "train.local_steps": {"type": "int", "low": 10, "high": 200, "step": 10},
            "strategy.name": {"type": "categorical", "choices": ["fedavg", "fedyogi"]},
        },
    })
    assert spec.directions == ["maximize"]
    assert spec.pruner_name == "median"
    assert spec.space["train.lr"].log and spec.space["train.local_steps"].type == "int"
    assert parse_tune({"space": {"train.lr": LR}}).directions == ["minimize"]  # default val_loss


def test_grid_values_and_conditional_grid() -> None:
    spec = parse_tune({
        "searcher": "grid",
        "n_trials": 100,
        "space": {
            "strategy.name": {"type": "categorical", "choices": ["fedavg", "fedyogi"]},
            "train.lr": {**LR, "grid_points": 4},
            "strategy.server_lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True, "grid": [0.01, 0.1],
                                   "when": {"strategy.name": ["fedyogi"]}},
        },
    })
    lrs = spec.space["train.lr"].grid_values()
    assert lrs == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])
    configs = grid_configs(spec.space)
    # fedavg: 4 learning rates; fedyogi: 4 x 2 server learning rates; never a server_lr for fedavg
    assert len(configs) == 4 + 8
    assert all("strategy.server_lr" not in c for c in configs if c["strategy.name"] == "fedavg")
    assert len({tuple(sorted(c.items())) for c in configs}) == len(configs)
    ints = parse_tune({"space": {"train.local_steps": {"type": "int", "low": 1, "high": 3}}}).space["train.local_steps"]
    assert ints.grid_values() == [1, 2, 3]


def test_grid_plan_samples_the_budget_when_the_grid_is_larger() -> None:
    spec = parse_tune({"searcher": "grid", "n_trials": 5, "space": {"train.lr": {**LR, "grid_points": 20}}})
    plan = grid_plan(spec, seed=0)
    assert len(plan) == 5 and plan == grid_plan(spec, seed=0)
    assert len({c["train.lr"] for c in plan}) == 5
    assert plan != grid_plan(spec, seed=1)


@pytest.mark.parametrize(
    ("tune", "fragment"),
    [
        ({"space": {"train.lr": {"type": "float", "low": 0.1, "high": 0.001}}}, 'low must be below high'),
        ({"space": {"train.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}}, "log-scale parameter needs low > 0"),
        ({"space": {"train.lr": {"type": "float", "low": 0.1}}}, "needs both low and high"),
        ({"space": {"train.lr": {"type": "float", "low": 0.01, "high": 0.1, "wat": 1}}}, '[tune].space."train.lr".wat: unknown key'),
        ({"space": {"strategy.name": {"type": "categorical"}}}, "needs choices"),
        ({"space": {"strategy.name": {"type": "categorical", "choices": ["a", "a"]}}}, "choices must be distinct"),
        ({"space": {"train.local_steps": {"type": "int", "low": 1.5, "high": 4}}}, "whole number"),
        ({"searcher": "bayes", "space": {"train.lr": LR}}, "[tune].searcher: unknown searcher 'bayes'; valid searchers: grid"),
        ({"pruner": "asha", "space": {"train.lr": LR}}, "[tune].pruner"),
        ({"metric": "test_acc", "space": {"train.lr": LR}}, "tuning must never see test data"),
        ({"metric": "train_loss", "space": {"train.lr": LR}}, "unknown metric 'train_loss'"),
        ({"metric": "bytes", "space": {"train.lr": LR}}, "at least one metric must be a validation metric"),
        ({"metric": ["val_acc", "bytes"], "pruner": "median", "space": {"train.lr": LR}}, "pruning works with one metric only"),
        ({"metric": ["val_acc", "bytes"], "searcher": "cmaes", "space": {"train.lr": LR}}, "optimizes one metric only"),
        ({"metric": "val_acc", "direction": "up", "space": {"train.lr": LR}}, "must be 'minimize' or 'maximize'"),
        ({"n_trials": 0, "space": {"train.lr": LR}}, "[tune].n_trials"),
        ({"trials": 5, "space": {"train.lr": LR}}, "[tune].trials: unknown key"),
        ({"storage": "memory", "workers": 2, "space": {"train.lr": LR}}, "cannot be shared"),
        ({"space": {}}, "[tune].space"),
        ({}, "[tune].space: required key is missing"),
        ({"space": {"train.lr": {**LR, "when": {"strategy.name": ["fedavg"]}}}}, "must be a parameter declared before"),
    ],
)
def test_bad_tune_tables_are_refused_with_the_key(tune: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        tune_spec_for(job_with(tune), "job.toml")
    assert fragment in str(exc.value)
    assert "job.toml" in str(exc.value)


@pytest.mark.parametrize(
    ("key", "param", "fragment"),
    [
        ("train.lrate", LR, "[train] has no key 'lrate'; valid keys: optimizer, lr"),
        ("trian.lr", LR, "unknown job section 'trian'"),
        ("learning_rate", LR, "unknown job key"),
        ("data.val_fraction", {"type": "float", "low": 0.1, "high": 0.3}, "'data' keys cannot be searched"),
        ("seed", {"type": "int", "low": 0, "high": 3}, "'seed' keys cannot be searched"),
        ("eval.every", {"type": "int", "low": 1, "high": 3}, "'eval' keys cannot be searched"),
        ("strategy.server_lrr", LR, "no strategy among ['fedyogi'] takes a parameter 'server_lrr'"),
        ("model.hidden", {"type": "int", "low": 8, "high": 64}, "no model among ['logreg'] takes a parameter 'hidden'"),
        ("train.momentum", {"type": "float", "low": 0.0, "high": 1.5}, "the value 1.5 makes an invalid job"),
        ("strategy.name", {"type": "categorical", "choices": ["fedavg", "fedsgd"]}, "unknown strategies ['fedsgd']"),
    ],
)
def test_space_keys_are_checked_against_the_job(key: str, param: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        tune_spec_for(job_with({"space": {key: param}}), "job.toml")
    msg = str(exc.value)
    assert fragment in msg
    assert f'[tune].space."{key}"' in msg


def test_model_keys_follow_searched_model_names() -> None:
    job = job_with({"space": {
        "model.name": {"type": "categorical", "choices": ["logreg", "mlp"]},
        "model.hidden": {"type": "int", "low": 8, "high": 64, "when": {"model.name": ["mlp"]}},
    }})
    spec = tune_spec_for(job)
    assert list(spec.space) == ["model.name", "model.hidden"]


def test_tuning_needs_a_validation_split() -> None:
    job = parse_job({"name": "no-val", "data": {"dataset": "heart_disease"}, "model": {"name": "logreg"},
                     "tune": {"space": {"train.lr": LR}}})
    with pytest.raises(ConfigError, match=r"\[data\]\.val_fraction is 0\.0 .* never on test; set e\.g\. \[data\]\.val_fraction = 0\.2"):
        tune_spec_for(job, "job.toml")
    with pytest.raises(ConfigError, match="no \\[tune\\] table"):
        tune_spec_for(job_with(None), "job.toml")


def test_trial_job_evaluates_validation_only_and_fits_the_strategy() -> None:
    job = job_with({"space": {"train.lr": LR}})
    t = trial_job(job, {"train.lr": 0.05, "strategy.name": "fedavg"}, name="x-trial00001")
    assert t.train.lr == 0.05
    assert t.eval.splits == ["val"] and t.eval.every == 1
    assert t.strategy.name == "fedavg" and t.strategy.params == {}  # fedyogi's tau dropped for fedavg
    assert t.tune is None and t.name == "x-trial00001"
    b = best_job(job, {"train.lr": 0.05})
    assert b.eval.splits == job.eval.splits and b.tune is None and b.strategy.params == {"tau": 1e-8}
    assert b.name == "spec-test-best"


def test_samplers_pruners_and_worker_seeds() -> None:
    import optuna

    for name in ("random", "tpe", "cmaes", "gp", "evolutionary", "grid"):
        spec = parse_tune({"searcher": name, "space": {"train.lr": LR}})
        assert isinstance(make_tune_sampler(spec, 0), optuna.samplers.BaseSampler)
    base = {"space": {"train.lr": LR}}
    assert isinstance(make_pruner(parse_tune(base), 15), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner(parse_tune({**base, "pruner": "hyperband"}), 15), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner(parse_tune({**base, "pruner": "successive_halving"}), 15),
                      optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(make_pruner(parse_tune({**base, "pruner": "none"}), 15), optuna.pruners.NopPruner)
    with pytest.raises(ConfigError, match=r"\[tune\]\.pruner_options: not accepted by the 'median' pruner"):
        make_pruner(parse_tune({**base, "pruner_options": {"patience": 3}}), 15)
    with pytest.raises(ConfigError, match="bad sampler option"):
        make_tune_sampler(parse_tune({**base, "sampler_options": {"nope": 1}}), 0)
    assert worker_seed(0, 0) == worker_seed(0, 0) != worker_seed(0, 1)


def test_mean_of_sites_validation_loss_weights_every_site_the_same() -> None:
    from fedblend.hpo.objective import round_metrics
    from fedblend.records import EvalReport, RoundResult
    from fedblend.weights import Weights

    reports = (
        EvalReport("a", "val", 100, loss_sum=10.0, correct=90),  # loss 0.1
        EvalReport("b", "val", 4, loss_sum=4.0, correct=2),  # loss 1.0
        EvalReport("c", "val", 0, loss_sum=0.0, correct=0),  # no validation rows: left out
        EvalReport("a", "test", 50, loss_sum=50.0, correct=0),  # never part of a validation metric
    )
    result = RoundResult(round=1, weights=Weights({}), participants=("a", "b"), failures=(), train_metrics={},
                         eval_reports=reports, global_metrics={"val_loss": 14.0 / 104})
    m = round_metrics(result)
    assert m["val_loss_mean_sites"] == pytest.approx((0.1 + 1.0) / 2)
    assert m["val_loss"] == pytest.approx(14.0 / 104)

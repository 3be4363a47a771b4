"""The blend search on a tiny closed-form problem: every searcher, records, warm start, failures."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest

from blend_util import ToyPool, toy
from fedblend.blend import SEARCHERS, BlendSynthesizer, ServerValidation, make_sampler, study_from_record
from fedblend.blend.searchers import grid_for
from fedblend.errors import ConfigError
from fedblend.task.base import EvalSums


def run(pool: ToyPool, round: int = 5, synth: BlendSynthesizer | None = None, **spec):
    synth = synth or BlendSynthesizer(spec, seed=7)
    ups = pool.updates(round)
    merged = pool.fedavg(ups)
    weights, rec = synth.synthesize(pool, merged, merged, ups, round)
    return synth, merged, weights, rec


@pytest.mark.parametrize("searcher", SEARCHERS)
def test_every_searcher_finds_a_better_blend(searcher):
    pool = toy()
    budget = 6 if searcher == "gp" else 10
    _, merged, weights, rec = run(pool, searcher=searcher, budget=budget, batch_size=3)
    trials = rec["trials"]
    assert [t["number"] for t in trials] == list(range(budget))
    assert trials[0]["label"] == "fedavg" and trials[1]["label"] == "uniform"
    assert trials[0]["gain"] == 0.0 and trials[0]["gain_se"] == 0.0
    np.testing.assert_allclose(list(trials[0]["ratios"].values()), [0.8, 0.1, 0.1])
    assert rec["searcher"] == searcher and rec["decision"] == "accepted" and rec["adopted"] == "blend"
    best = trials[rec["best_trial"]]
    assert best["pooled_loss"] == min(t["pooled_loss"] for t in trials)
    assert rec["gain"] == best["gain"] > rec["margin"] and rec["gain"] > rec["k"] * rec["gain_se"]
    # the adopted model really is the chosen blend, and it scores what the record says
    w = sum(rec["chosen_ratios"][s] * pool.centers[s] for s in pool.ids)
    np.testing.assert_allclose(weights["w"], w, rtol=1e-5)
    loss = np.concatenate([pool.losses(weights, s) for s in pool.ids]).mean()
    assert loss == pytest.approx(best["pooled_loss"], rel=1e-5)
    assert rec["communication"]["models_sent"] == budget * 3
    json.dumps(rec)  # the record is plain JSON


def test_search_beats_both_fixed_points():
    pool = toy()
    _, _, _, rec = run(pool, searcher="tpe", space="simplex", budget=40, batch_size=4, floor=0.0)
    best = rec["trials"][rec["best_trial"]]
    assert best["label"] == "search"
    assert best["pooled_loss"] < rec["trials"][1]["pooled_loss"] < rec["trials"][0]["pooled_loss"]
    assert rec["chosen_ratios"]["site_2"] > 0.45  # the validation mass is at site_2


def test_same_seed_same_search():
    a = run(toy(), searcher="tpe", budget=10)[3]
    b = run(toy(), searcher="tpe", budget=10)[3]
    assert [t["params"] for t in a["trials"]] == [t["params"] for t in b["trials"]]
    c = run(toy(), round=6, searcher="tpe", budget=10)[3]
    assert [t["params"] for t in c["trials"]][3:] != [t["params"] for t in a["trials"]][3:]


def test_not_accepted_keeps_fedavg_with_the_numbers():
    pool = toy()
    _, merged, weights, rec = run(pool, searcher="random", budget=6, margin=10.0)
    assert rec["decision"] == "not accepted" and rec["adopted"] == "fedavg"
    assert weights is merged
    assert rec["gain"] > 0 and "margin" in rec["reason"]


def test_no_real_gain_keeps_fedavg_bit_for_bit():
    pool = ToyPool([[0, 0], [2, 0]], [50, 50], [50, 50])  # equal counts: every n^tau blend is FedAvg
    _, merged, weights, rec = run(pool, space="power", searcher="grid", budget=4)
    assert {round(t["pooled_loss"], 6) for t in rec["trials"]} == {round(rec["trials"][0]["pooled_loss"], 6)}
    assert rec["decision"] == "not accepted" and weights.equal(merged)
    assert abs(rec["gain"]) < 1e-6


def test_warm_start_from_previous_best():
    pool = toy()
    synth, *_, first = run(pool, searcher="tpe", budget=8)
    _, _, _, second = run(pool, round=6, synth=synth)
    warm = second["trials"][2]
    assert warm["label"] == "warm_start"
    best_params = first["trials"][first["best_trial"]]["params"]
    assert warm["params"] == pytest.approx(best_params)


def test_two_objectives_keep_the_pareto_front():
    pool = toy()
    _, _, _, rec = run(pool, objective="pooled+worst", searcher="evolutionary", budget=12)
    front = rec["pareto_front"]
    assert front and rec["best_trial"] in front + [0]
    trials = {t["number"]: t for t in rec["trials"]}
    assert trials[rec["best_trial"]]["worst_loss"] <= trials[0]["worst_loss"]
    assert all(len(t["values"]) == 2 for t in trials.values())
    study = study_from_record(rec)
    assert {t.number for t in study.best_trials} == set(front)


def test_body_head_and_gamma_records():
    pool = toy()
    _, _, _, rec = run(pool, groups="body_head", head=["b"], gamma=True, gamma_range=[0.5, 1.5], budget=6)
    assert "chosen_head_ratios" in rec and "chosen_gamma" in rec
    assert set(rec["trials"][3]["params"]) == {
        "body.s.site_0",
        "body.s.site_1",
        "body.s.site_2",
        "head.s.site_0",
        "head.s.site_1",
        "head.s.site_2",
        "gamma",
    }


def test_a_site_failing_a_candidate_fails_only_that_trial():
    pool = toy()
    pool.fail["site_1"] = 3  # offline from the 4th evaluation on
    _, _, _, rec = run(pool, searcher="random", budget=6, batch_size=2)
    states = [t["state"] for t in rec["trials"]]
    assert states[:3] == ["complete"] * 3 and states[3:] == ["fail"] * 3
    assert "site went offline" in rec["trials"][4]["reason"]
    assert rec["best_trial"] in (0, 1, 2)


def test_no_site_can_score_fedavg_skips_and_keeps_fedavg():
    pool = toy()
    for s in pool.ids:
        pool.fail[s] = 0
    _, merged, weights, rec = run(pool)
    assert rec["decision"] == "skipped" and weights is merged
    assert "site_0: site went offline" in rec["reason"]


def test_fewer_than_min_sites_is_skipped():
    pool = ToyPool([[0, 0]], [10], [10])
    _, merged, weights, rec = run(pool)
    assert rec["decision"] == "skipped" and weights is merged


def test_server_validation_scores_on_the_server():
    pool = toy()

    class Task:
        def evaluate(self, weights, data, reference=None):
            loss = np.sum((data.x - weights["w"]) ** 2, axis=1)
            d = loss - np.sum((data.x - reference["w"]) ** 2, axis=1)
            return EvalSums(len(loss), float(loss.sum()), 0.0, float(d.sum()), float((d * d).sum()))

    x = np.concatenate([pool.val[s] for s in pool.ids])
    sv = ServerValidation(x, np.zeros(len(x)), Task())  # type: ignore[arg-type]
    synth = BlendSynthesizer({"signal": "server", "budget": 6}, seed=0, server_validation=sv)
    _, _, _, rec = run(pool, synth=synth)
    assert pool.calls == [] and rec["signal"] == "server" and rec["eval_sites"] == ["server"]
    assert rec["communication"]["models_sent"] == 0 and rec["decision"] == "accepted"


def test_study_stored_in_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'run.db'}"
    synth = BlendSynthesizer({"store_study": True, "budget": 5}, seed=0, storage_url=url)
    _, _, _, rec = run(toy(), synth=synth)
    study = optuna.load_study(study_name=rec["study_name"], storage=url)
    assert len(study.trials) == 5 and study.best_trial.number == rec["best_trial"]
    run(toy(), synth=synth)  # the same round again (a resumed run) replaces the study
    assert len(optuna.load_study(study_name=rec["study_name"], storage=url).trials) == 5


def test_study_from_record_round_trips():
    _, _, _, rec = run(toy(), searcher="cmaes", budget=8)
    study = study_from_record(json.loads(json.dumps(rec)))
    assert len(study.trials) == 8 and study.best_trial.number == rec["best_trial"]
    assert study.trials[0].user_attrs["label"] == "fedavg"


def test_make_sampler_errors_and_grid():
    with pytest.raises(ConfigError, match="valid searchers"):
        make_sampler("annealing", 0)
    with pytest.raises(ConfigError, match="one objective only"):
        make_sampler("cmaes", 0, two_objective=True)
    with pytest.raises(ConfigError, match="search space"):
        make_sampler("grid", 0)
    with pytest.raises(ConfigError, match="bad sampler option"):
        make_sampler("random", 0, options={"n_startup": 3})
    d = optuna.distributions
    grid = grid_for(
        {
            "x": d.FloatDistribution(-1, 1),
            "lr": d.FloatDistribution(1e-3, 1e-1, log=True),
            "n": d.IntDistribution(1, 3),
            "c": d.CategoricalDistribution(["a", "b"]),
        },
        3,
    )
    assert grid["x"] == [-1.0, 0.0, 1.0] and grid["lr"] == pytest.approx([1e-3, 1e-2, 1e-1])
    assert grid["n"] == [1, 2, 3] and grid["c"] == ["a", "b"]


def test_candidates_are_asked_scored_and_told_in_batches(monkeypatch):
    events: list[tuple[str, int]] = []
    ask, tell = optuna.study.Study.ask, optuna.study.Study.tell

    def spy_ask(self, *a, **kw):
        t = ask(self, *a, **kw)
        events.append(("ask", t.number))
        return t

    def spy_tell(self, trial, *a, **kw):
        events.append(("tell", trial.number))
        return tell(self, trial, *a, **kw)

    monkeypatch.setattr(optuna.study.Study, "ask", spy_ask)
    monkeypatch.setattr(optuna.study.Study, "tell", spy_tell)
    pool = toy()
    _, _, _, rec = run(pool, searcher="tpe", budget=10, batch_size=4)
    # batches 0-3, 4-7, 8-9: every ask of a batch comes before any tell of it
    expect = []
    for batch in ([0, 1, 2, 3], [4, 5, 6, 7], [8, 9]):
        expect += [("ask", n) for n in batch] + [("tell", n) for n in batch]
    assert events == expect
    assert [t["batch"] for t in rec["trials"]] == [0] * 4 + [1] * 4 + [2] * 2 and rec["batches"] == 3
    assert len(pool.calls) == 10  # one scoring request per candidate, all sites in it
    assert all(c == ("evaluate", "val", tuple(pool.ids)) for c in pool.calls)


def test_trial_zero_holds_fedavg_exact_ratios_even_below_the_floor():
    pool = ToyPool([[0, 0], [2, 0], [0, 2]], [900, 50, 50], [30, 30, 30])
    _, _, _, rec = run(pool, budget=4, floor=0.5)  # floor/K = 0.167 > FedAvg's 0.05
    np.testing.assert_allclose(list(rec["trials"][0]["ratios"].values()), [0.9, 0.05, 0.05])
    assert rec["trials"][0]["ratios"] == rec["fedavg_ratios"]
    assert all(min(t["ratios"].values()) >= 0.5 / 3 - 1e-12 for t in rec["trials"][1:])  # the rest keep the floor


def test_restore_warm_start_from_stored_records():
    pool = toy()
    first = run(pool, round=2, searcher="tpe", budget=8)[3]
    assert first["best_trial"] != 0
    fedavg_best = {**first, "round": 3, "best_trial": 0}  # a later synthesis where FedAvg won: no new warm start
    skipped = {"round": 4, "decision": "skipped", "reason": "too few sites"}
    fresh = BlendSynthesizer({"searcher": "tpe", "budget": 8}, seed=7)
    fresh.restore(json.loads(json.dumps([skipped, fedavg_best, first])))  # any order, as stored
    assert fresh.previous_best == pytest.approx(first["trials"][first["best_trial"]]["params"])
    _, _, _, rec = run(pool, round=5, synth=fresh)
    assert rec["trials"][2]["label"] == "warm_start" and rec["warm_start_from_round"] == 2
    assert rec["trials"][2]["params"] == pytest.approx(first["trials"][first["best_trial"]]["params"])
    cold = BlendSynthesizer({"budget": 8, "warm_start": False}, seed=7)
    cold.restore([first])
    assert "warm_start" not in [t["label"] for t in run(pool, round=5, synth=cold)[3]["trials"]]

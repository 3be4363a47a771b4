"""Blending inside real simulated runs on the heart-disease data, and `fedblend show RUN --blend`."""

from __future__ import annotations

import numpy as np
import pytest

from fedblend.blend import study_from_record
from fedblend.cli.main import main
from fedblend.errors import ConfigError
from fedblend.runner import run_job
from fedblend.store import SqlRunStore
from jobs_util import heart_job

FAST_BLEND = {"budget": 6, "batch_size": 3, "searcher": "tpe"}


def test_heart_run_with_blend_at_the_end(tmp_path, capsys):
    job = heart_job(tmp_path, **{"rounds": 3, "data.val_fraction": 0.2, "blend": FAST_BLEND})
    out = run_job(job, run_dir=tmp_path / "run")
    assert [r.blend is not None for r in out.history] == [False, False, True]
    store = SqlRunStore(tmp_path / "run", create=False)
    recs = store.blends()
    ck = store.last_checkpoint()
    store.close()
    assert len(recs) == 1
    rec = recs[0]
    assert rec["round"] == 3 and rec["decision"] in ("accepted", "not accepted")
    assert rec["space"]["kind"] == "tilt" and rec["searcher"] == "tpe" and rec["objective"] == "pooled"
    assert [t["label"] for t in rec["trials"][:2]] == ["fedavg", "uniform"] and len(rec["trials"]) == 6
    assert set(rec["fedavg_ratios"]) == {"cleveland", "hungary", "switzerland", "va"}
    assert set(rec["trials"][3]["site_scores"]) == set(rec["fedavg_ratios"])
    assert rec["communication"]["models_sent"] == 6 * 4 and rec["timing"]["total_s"] > 0
    for key in ("gain", "gain_se", "margin", "k", "chosen_ratios", "budget", "reason"):
        assert key in rec, key
    study_from_record(rec)
    # the committed weights are the adopted ones: FedAvg unless the blend was accepted
    assert ck is not None
    assert ck.weights.equal(out.weights)

    try:
        main(["show", str(tmp_path / "run"), "--blend", "--no-sites"])
    except SystemExit as e:
        assert not e.code
    text = capsys.readouterr().out
    assert "blend syntheses: 1" in text and "round 3: blend" in text
    assert rec["decision"] in text and "fedavg" in text and "chosen" in text and "switzerland" in text
    assert "round 3: trials" in text and "uniform" in text and "gain" in text


def test_blend_every_round_warm_starts(tmp_path):
    job = heart_job(
        tmp_path,
        **{
            "rounds": 3,
            "data.val_fraction": 0.2,
            "blend": {**FAST_BLEND, "schedule": "every_round", "space": "power", "gamma": True},
        },
    )
    out = run_job(job, persist=False)
    recs = [r.blend for r in out.history]
    assert all(r is not None for r in recs)
    for r in recs[1:]:
        labels = [t["label"] for t in r["trials"]]
        warm = "warm_start" in labels
        assert warm == (r["round"] > 1 and recs[r["round"] - 2]["best_trial"] != 0)


def test_blend_with_no_validation_split_is_a_config_error(tmp_path):
    job = heart_job(tmp_path, **{"rounds": 1, "data.val_fraction": 0.0, "blend": FAST_BLEND})
    with pytest.raises(ConfigError) as e:
        run_job(job, persist=False)
    assert "[data].val_fraction" in str(e.value)


def test_show_blend_without_blends(tmp_path, capsys):
    job = heart_job(tmp_path, **{"rounds": 1})
    run_job(job, run_dir=tmp_path / "plain")
    try:
        main(["show", str(tmp_path / "plain"), "--blend", "--no-sites"])
    except SystemExit as e:
        assert not e.code
    assert "no blend syntheses" in capsys.readouterr().out


def test_print_blends_shows_skipped_and_two_objective_records():
    import io

    from rich.console import Console

    from blend_util import toy
    from fedblend.blend import BlendSynthesizer
    from fedblend.cli.blend_view import print_blends

    pool = toy()
    ups = pool.updates(2)
    merged = pool.fedavg(ups)
    _, two = BlendSynthesizer({"objective": "pooled+worst", "budget": 6}, seed=0).synthesize(
        pool, merged, merged, ups, 2
    )
    _, skipped = BlendSynthesizer({}, seed=0).synthesize(pool, merged, merged, ups[:1], 1)

    class Store:
        def blends(self):
            return [{"round": 1, **skipped}, {"round": 2, **two}]

    buf = io.StringIO()
    print_blends(Store(), Console(file=buf, width=200))
    text = buf.getvalue()
    assert "blend syntheses: 2 (" in text and "round 1: blend skipped" in text and "min_sites" in text
    assert "pareto" in text and "round 2: per-site validation" in text and "site_2" in text


def test_bad_blend_table_in_a_job_file_is_a_clear_cli_error(tmp_path, capsys):
    job = heart_job(tmp_path, **{"rounds": 1, "data.val_fraction": 0.2})
    text = job.to_toml() + '\n[blend]\nsercher = "tpe"\nenabled = false\ntau_range = [0.5, 2.0]\n'
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SystemExit) as e:
        main(["simulate", str(path), "-q"])
    assert e.value.code == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "[blend].sercher: unknown key; did you mean 'searcher'?" in err
    assert "[blend].tau_range: must be [lo, hi]" in err and "e.g. tau_range = [-1.0, 2.0]" in err
    assert not (tmp_path / "runs" / "heart-test" / "checkpoints").exists() or not list(
        (tmp_path / "runs" / "heart-test" / "checkpoints").iterdir()
    )  # no round was trained: `enabled = false` does not hide a broken table


def test_server_validation_set_from_a_job_file(tmp_path):
    from fedblend.runner import prepare

    job = heart_job(tmp_path, **{"rounds": 2, "data.val_fraction": 0.2})
    ds = prepare(job).dataset  # the operator's own labelled rows, preprocessed like the sites'
    x = np.concatenate([s.val.x for s in ds.sites.values()])
    y = np.concatenate([s.val.y for s in ds.sites.values()])
    np.savez(tmp_path / "server_val.npz", x=x, y=y)
    blend = {**FAST_BLEND, "signal": "server", "server_data": str(tmp_path / "server_val.npz")}
    # the sites need no validation split: the search runs on the server's data
    job = heart_job(tmp_path, **{"rounds": 2, "data.val_fraction": 0.0, "blend": blend})
    out = run_job(job, persist=False)
    rec = out.history[-1].blend
    assert rec is not None and rec["signal"] == "server" and rec["eval_sites"] == ["server"]
    assert rec["communication"]["models_sent"] == 0 and len(rec["trials"]) == 6
    assert rec["trials"][0]["site_scores"]["server"]["n"] == len(y)
    missing = heart_job(tmp_path, **{"rounds": 1, "blend": {**blend, "server_data": str(tmp_path / "nope.npz")}})
    with pytest.raises(ConfigError, match=r"\[blend\].server_data = .*no such file"):
        run_job(missing, persist=False)


def test_runner_puts_the_study_in_the_run_store_and_restores_the_warm_start(tmp_path):
    import optuna

    from blend_util import toy
    from fedblend.runner import build_synthesizer

    blend = {**FAST_BLEND, "schedule": "every_round", "space": "power", "gamma": True, "gamma_range": [0.5, 4.0]}
    job = heart_job(tmp_path, **{"rounds": 2, "data.val_fraction": 0.2, "blend": {**blend, "store_study": True}})
    run_job(job, run_dir=tmp_path / "run")
    store = SqlRunStore(tmp_path / "run", create=False)
    try:
        recs = store.blends()
        assert recs[0]["best_trial"] != 0  # round 1's blend moved away from FedAvg (seeded)
        synth = build_synthesizer(job, store=store)  # as for a resumed run or the next training cycle
        assert synth.storage_url == store.url
        last = [r for r in recs if r["best_trial"] != 0][-1]
        assert synth.previous_best == pytest.approx(last["trials"][last["best_trial"]]["params"])
        assert synth.previous_best_round == last["round"]
        pool = toy()  # any pool: the warm start maps parameters by name (tau, gamma)
        ups = pool.updates(3)
        _, rec = synth.synthesize(pool, pool.fedavg(ups), pool.fedavg(ups), ups, 3)
        assert rec["trials"][2]["label"] == "warm_start" and rec["warm_start_from_round"] == last["round"]
        study = optuna.load_study(study_name=rec["study_name"], storage=store.url)  # in run.db
        assert len(study.trials) == 6 and study.trials[0].user_attrs["label"] == "fedavg"
        assert len(store.blends()) == 2  # the run store's own tables are untouched
    finally:
        store.close()


def test_a_new_training_cycle_starts_warm_from_the_previous_best(tmp_path):
    blend = {**FAST_BLEND, "space": "power", "gamma": True, "gamma_range": [0.5, 4.0], "store_study": True}
    job = heart_job(tmp_path, **{"rounds": 2, "data.val_fraction": 0.2, "blend": blend})
    run_job(job, run_dir=tmp_path / "run")
    run_job(job.with_overrides(rounds=4), run_dir=tmp_path / "run", resume=True)  # the next cycle
    store = SqlRunStore(tmp_path / "run", create=False)
    try:
        first, second = store.blends()
    finally:
        store.close()
    assert (first["round"], second["round"]) == (2, 4) and first["best_trial"] != 0
    assert second["trials"][2]["label"] == "warm_start" and second["warm_start_from_round"] == 2


def test_body_head_groups_on_a_real_model(tmp_path):
    from fedblend.runner import build_synthesizer, prepare

    blend = {**FAST_BLEND, "groups": "body_head", "gamma": True}
    job = heart_job(tmp_path, **{"rounds": 1, "data.val_fraction": 0.2, "model.name": "mlp", "blend": blend})
    rec = run_job(job, persist=False).history[-1].blend
    assert rec["space"]["groups"] == ["body", "head"] and "chosen_head_ratios" in rec
    assert any(k.startswith("head.s.") for k in rec["trials"][3]["params"])
    # a head prefix that matches nothing fails before training when the runner knows the task
    bad = heart_job(tmp_path, **{"data.val_fraction": 0.2, "blend": {**blend, "head": ["fc9"]}})
    with pytest.raises(ConfigError, match=r"\[blend\].head"):
        build_synthesizer(bad, task=prepare(bad).task)

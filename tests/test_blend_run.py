"""Blending inside real simulated runs on the heart-disease data, and `fedblend show RUN --blend`."""

from __future__ import annotations

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

"""Blend building blocks: the [blend] table, ratio spaces, mixing, objectives and the acceptance test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedblend.blend import (
    BlendSynthesizer,
    Candidate,
    accept,
    blend_weights,
    build_synthesizer,
    load_server_data,
    make_space,
    pareto_front,
    parse_blend_spec,
    score_reports,
)
from fedblend.blend.spaces import project_floor, split_groups
from fedblend.errors import ConfigError
from fedblend.records import EvalReport
from fedblend.weights import Weights

# -- the [blend] table ------------------------------------------------------------------------------


def test_defaults_follow_the_issue():
    s = parse_blend_spec({})
    assert (s.space, s.searcher, s.objective, s.schedule, s.signal) == ("tilt", "tpe", "pooled", "end", "federated")
    assert s.enabled and s.warm_start and not s.gamma and s.groups == "single"


@pytest.mark.parametrize(
    "raw, where, says",
    [
        ({"sercher": "tpe"}, "[blend].sercher", "unknown key"),
        ({"budget": 1}, "[blend].budget", "greater than or equal to 2"),
        ({"searcher": "bayes"}, "[blend].searcher", "'tpe'"),
        ({"objective": "pooled+worst", "searcher": "cmaes"}, "[blend]", "one objective only"),
        ({"tau_range": [0.5, 2.0]}, "[blend].tau_range", "e.g. tau_range = [-1.0, 2.0]"),
        ({"gamma_range": [1.2, 2.0]}, "[blend].gamma_range", "e.g. gamma_range = [0.5, 1.0]"),
        ({"head": ["fc3"]}, "[blend]", 'groups = "body_head"'),
        ({"server_data": "val.npz"}, "[blend]", 'add signal = "server"'),
        ({"budget": "many"}, "[blend].budget", "valid integer"),
    ],
)
def test_bad_blend_tables_name_the_key(raw, where, says):
    with pytest.raises(ConfigError) as e:
        parse_blend_spec(raw)
    msg = str(e.value)
    assert where in msg and says in msg, msg


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError) as e:
        parse_blend_spec({"sercher": "tpe", "budjet": 8})
    msg = str(e.value)
    assert "[blend].sercher: unknown key; did you mean 'searcher'?" in msg
    assert "[blend].budget" not in msg and "did you mean 'budget'?" in msg and "2 problem(s)" in msg


def test_blend_table_must_be_a_table():
    with pytest.raises(ConfigError, match="must be a table"):
        parse_blend_spec(["tpe"])  # type: ignore[arg-type]


def test_blend_needs_a_validation_split():
    with pytest.raises(ConfigError) as e:
        build_synthesizer({}, seed=0, val_fraction=0.0)
    assert "[data].val_fraction" in str(e.value) and "test split is never used" in str(e.value)
    assert build_synthesizer({}, seed=0, val_fraction=0.2).spec.budget == 24


def test_server_signal_needs_data():
    with pytest.raises(ConfigError, match=r"server validation set: in a job file set \[blend\].server_data"):
        BlendSynthesizer({"signal": "server"}, seed=0)
    with pytest.raises(ConfigError, match="needs the job's task"):
        build_synthesizer({"signal": "server", "server_data": "val.npz"}, seed=0)


def test_load_server_data(tmp_path):
    x, y = np.arange(12, dtype=np.float64).reshape(6, 2), np.array([0, 1, 1, 0, 1, 0])
    np.savez(tmp_path / "ok.npz", x=x, y=y)
    gx, gy = load_server_data(tmp_path / "ok.npz")
    assert gx.dtype == np.float32 and gy.dtype == np.int64 and gx.shape == (6, 2) and list(gy) == list(y)
    np.savez(tmp_path / "names.npz", features=x, labels=y)
    np.savez(tmp_path / "labels.npz", x=x, y=y + 0.5)
    (tmp_path / "junk.npz").write_text("not a zip file")
    for name, says in [
        ("missing.npz", "no such file"),
        ("names.npz", "expected 'x' (features) and 'y' (labels)"),
        ("labels.npz", "integer class labels"),
        ("junk.npz", "not a readable .npz file"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_server_data(tmp_path / name)
        assert "[blend].server_data" in str(e.value) and says in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "schedule, every, due_rounds",
    [("end", 5, [10]), ("every_round", 5, list(range(1, 11))), ("every_n", 4, [4, 8, 10])],
)
def test_schedule(schedule, every, due_rounds):
    synth = BlendSynthesizer({"schedule": schedule, "every": every}, seed=0)
    assert [r for r in range(1, 11) if synth.due(r, 10)] == due_rounds


# -- ratio spaces --------------------------------------------------------------------------------

SITES = ["a", "b", "c", "d"]
COUNTS = [400, 100, 50, 10]


@pytest.mark.parametrize("kind", ["tilt", "simplex", "power"])
def test_fedavg_and_uniform_points(kind):
    sp = make_space(kind, SITES, COUNTS, floor=0.0)
    fed = sp.candidate(sp.fedavg_params()).ratios["all"]
    uni = sp.candidate(sp.uniform_params()).ratios["all"]
    np.testing.assert_allclose([fed[s] for s in SITES], np.array(COUNTS) / sum(COUNTS), rtol=1e-9)
    np.testing.assert_allclose([uni[s] for s in SITES], 0.25, rtol=1e-9)
    for name, d in sp.distributions().items():  # both points lie inside the searched box
        assert d.low <= sp.fedavg_params()[name] <= d.high
        assert d.low <= sp.uniform_params()[name] <= d.high


def test_tilt_range_widens_to_hold_uniform():
    sp = make_space("tilt", SITES, [10_000, 10, 10, 10], tilt_range=1.0)
    assert sp.range > 1.0 and sp.describe()["tilt_range_requested"] == 1.0


def test_floor_keeps_every_site_in_every_blend():
    w = project_floor(np.array([1.0, 0.0, 0.0, 0.0]), 0.4)
    assert math.isclose(w.sum(), 1.0) and np.all(w >= 0.1 - 1e-12) and math.isclose(w[0], 0.7)
    sp = make_space("simplex", SITES, COUNTS, floor=0.2)
    extreme = {f"u.{s}": (1e-6 if s == "a" else 1.0) for s in SITES}  # all mass on site a
    r = sp.candidate(extreme).ratios["all"]
    assert min(r.values()) >= 0.2 / 4 - 1e-12 and math.isclose(sum(r.values()), 1.0)


def test_power_family_and_gamma():
    sp = make_space("power", SITES, COUNTS, gamma_range=(0.5, 2.0), floor=0.0)
    assert set(sp.distributions()) == {"tau", "gamma"}
    c = sp.candidate({"tau": 0.5, "gamma": 1.5})
    expect = np.sqrt(COUNTS) / np.sqrt(COUNTS).sum()
    np.testing.assert_allclose([c.ratios["all"][s] for s in SITES], expect)
    assert c.gamma == 1.5


def test_body_head_groups_and_names():
    names = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert split_groups(names, None) == {"body": ["fc1.weight", "fc1.bias"], "head": ["fc2.weight", "fc2.bias"]}
    with pytest.raises(ConfigError, match=r"\[blend\].head"):
        split_groups(names, ["fc"])  # prefix must end at a '.' boundary: matches nothing
    sp = make_space("tilt", SITES, COUNTS, groups=("body", "head"))
    assert "body.s.a" in sp.distributions() and "head.s.d" in sp.distributions()


def test_warm_params_map_by_site_name():
    sp = make_space("tilt", ["a", "b", "e"], [10, 10, 10], tilt_range=2.0)
    warm = sp.warm_params({"s.a": 1.0, "s.b": 9.0, "s.gone": 0.5})
    assert warm == {"s.a": 1.0, "s.b": 2.0, "s.e": 0.0}  # clipped to range; a new site starts at FedAvg


# -- mixing --------------------------------------------------------------------------------------


def test_blend_weights_matches_numpy():
    rng = np.random.default_rng(0)
    models = {
        s: Weights(
            {
                "body.w": rng.standard_normal((3, 2)).astype(np.float32),
                "head.w": rng.standard_normal(2).astype(np.float32),
                "steps": np.array(7, dtype=np.int64),
            }
        )
        for s in "xyz"
    }
    current = Weights({k: np.ones_like(v) for k, v in models["x"].items()})
    rb = {"x": 0.5, "y": 0.3, "z": 0.2}
    rh = {"x": 0.1, "y": 0.1, "z": 0.8}
    groups = {"body.w": "body", "head.w": "head", "steps": "body"}
    out = blend_weights(
        models, Candidate({"body": rb, "head": rh}, gamma=0.5), reference=models["x"], current=current, groups=groups
    )
    body = sum(rb[s] * models[s]["body.w"].astype(np.float64) for s in "xyz")
    head = sum(rh[s] * models[s]["head.w"].astype(np.float64) for s in "xyz")
    np.testing.assert_allclose(out["body.w"], 0.5 * 1 + 0.5 * body, rtol=1e-6)
    np.testing.assert_allclose(out["head.w"], 0.5 * 1 + 0.5 * head, rtol=1e-6)
    assert out["body.w"].dtype == np.float32 and int(out["steps"]) == 7


# -- objectives and the acceptance test ------------------------------------------------------------


def _report(site: str, cand_losses: np.ndarray, ref_losses: np.ndarray, correct: int = 0) -> EvalReport:
    d = cand_losses - ref_losses
    return EvalReport(
        site, "val", len(d), float(cand_losses.sum()), float(correct), float(d.sum()), float((d * d).sum())
    )


def test_paired_gains_match_per_example_reference():
    rng = np.random.default_rng(1)
    ref = {s: rng.uniform(0.2, 1.5, n) for s, n in (("a", 50), ("b", 30), ("c", 7))}
    cand = {s: v - rng.normal(0.05, 0.1, len(v)) for s, v in ref.items()}
    sc = score_reports([_report(s, cand[s], ref[s]) for s in ref])
    d = np.concatenate([cand[s] - ref[s] for s in ref])
    g, se = sc.gains["pooled"]
    assert math.isclose(g, -d.mean()) and math.isclose(se, d.std(ddof=1) / math.sqrt(len(d)))
    g, se = sc.gains["balanced"]
    assert math.isclose(g, -np.mean([(cand[s] - ref[s]).mean() for s in ref]))
    assert math.isclose(se, math.sqrt(sum((cand[s] - ref[s]).var(ddof=1) / len(ref[s]) for s in ref)) / 3)
    worst = max(ref, key=lambda s: cand[s].mean())
    g, se = sc.gains["worst"]
    assert math.isclose(g, max(r.mean() for r in ref.values()) - cand[worst].mean())
    assert math.isclose(se, (cand[worst] - ref[worst]).std(ddof=1) / math.sqrt(len(ref[worst])))
    assert math.isclose(sc.pooled_loss, np.concatenate(list(cand.values())).mean())
    assert sc.sites["a"].ref_loss == pytest.approx(ref["a"].mean())


def test_identical_model_has_zero_gain_and_is_never_accepted():
    x = np.array([0.3, 0.7, 1.1])
    sc = score_reports([_report("a", x, x)])
    assert sc.gains["pooled"] == (0.0, 0.0)
    assert accept(*sc.gains["pooled"], margin=0.0, k=0.0)[0] is False


@pytest.mark.parametrize(
    "gain, se, margin, k, ok, says",
    [
        (0.02, 0.005, 0.001, 2.0, True, "> margin"),
        (0.02, 0.015, 0.001, 2.0, False, "<= 2 x se"),
        (0.0005, 0.0001, 0.001, 2.0, False, "<= margin"),
        (-0.01, 0.001, 0.0, 0.0, False, "<= margin"),
        (float("nan"), 0.1, 0.0, 1.0, False, "not finite"),
    ],
)
def test_acceptance_test(gain, se, margin, k, ok, says):
    got, reason = accept(gain, se, margin, k)
    assert got is ok and says in reason


def test_no_validation_examples_is_a_config_error():
    with pytest.raises(ConfigError, match=r"\[data\].val_fraction"):
        score_reports([EvalReport("a", "val", 0, 0.0, 0.0)])


def test_pareto_front():
    pts = [[1.0, 5.0], [2.0, 2.0], [3.0, 3.0], [5.0, 1.0], [2.0, 2.0]]
    assert pareto_front(pts) == [0, 1, 3, 4]

"""Dashboard: views, API, auth, live stream and mounting, over a run store filled by hand.

The helpers here (``serve``, ``fill_store``, ``blend_record``) are shared with the schemathesis
and browser tests (tests/test_dashboard_api_fuzz.py, tests/test_dashboard_browser.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI

from fedblend.dashboard import DashboardAuth, create_app
from fedblend.dashboard.blendview import parse_synthesis
from fedblend.dashboard.charts import data_charts, training_charts
from fedblend.dashboard.overview import pipeline_from_events
from fedblend.dashboard.source import StoreSource
from fedblend.dashboard.training import build_training
from fedblend.errors import ConfigError, StoreError
from fedblend.records import EvalReport, RoundResult, SiteFailure, SiteStats
from fedblend.store import SqlRunStore
from fedblend.weights import Weights

SITES = ["alpha", "beta", "gamma"]
VIEWER = "viewer-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef-xyz"


# -- helpers shared with the other dashboard test files --------------------------------------------
@contextlib.contextmanager
def serve(app: Any, timeout_s: float = 20.0) -> Iterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1:<free port> in a thread; yield its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:  # readiness: uvicorn sets .started once it listens
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"dashboard server did not start within {timeout_s} s")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def blend_record(rnd: int, sites: list[str]) -> dict[str, Any]:
    """A blend record in the format of fedblend.blend (synthesizer.search / record.trial_entry)."""
    fedavg = {"alpha": 0.5, "beta": 0.3, "gamma": 0.2}
    trials = []
    for n, (label, ratios, loss) in enumerate(
        [
            ("fedavg", fedavg, 0.70),
            ("uniform", {s: 1 / 3 for s in sites}, 0.71),
            ("search", {"alpha": 0.6, "beta": 0.3, "gamma": 0.1}, 0.65),
            ("search", {"alpha": 0.2, "beta": 0.5, "gamma": 0.3}, 0.72),
        ]
    ):
        trials.append(
            {
                "number": n,
                "label": label,
                "state": "complete",
                "params": {f"s.{s}": 0.1 * n for s in sites},
                "ratios": ratios,
                "values": [loss],
                "gain": 0.70 - loss,
                "gain_se": 0.01,
                "pooled_loss": loss,
                "pooled_acc": 0.6 + 0.01 * n,
                "worst_loss": loss + 0.1,
                "mean_site_acc": 0.6,
                "worst_site_acc": 0.5,
                "site_scores": {
                    s: {"n": 10, "loss": loss, "acc": 0.6, "fedavg_loss": 0.70, "diff_mean": loss - 0.7} for s in sites
                },
            }
        )
    trials.append(
        {"number": 4, "label": "search", "state": "fail", "params": {}, "ratios": fedavg, "reason": "gamma: offline"}
    )
    return {
        "version": 1,
        "round": rnd,
        "searcher": "tpe",
        "objective": "pooled",
        "budget": 5,
        "margin": 0.001,
        "k": 2.0,
        "space": {"kind": "tilt", "distributions": {}},
        "sites": sites,
        "fedavg_ratios": fedavg,
        "chosen_ratios": {"alpha": 0.6, "beta": 0.3, "gamma": 0.1},
        "best_trial": 2,
        "best_label": "search",
        "decision": "accepted",
        "adopted": "blend",
        "reason": "gain 0.05 > margin 0.001 and > 2 x se = 0.02",
        "gain": 0.05,
        "gain_se": 0.01,
        "fedavg": {"pooled_loss": 0.70, "pooled_acc": 0.6},
        "best": {"pooled_loss": 0.65, "pooled_acc": 0.62},
        "pareto_front": None,
        "trials": trials,
        "timing": {"total_s": 1.5},
        "communication": {"models_sent": 15},
    }


def fill_store(run_dir: Path, *, rounds: int = 3, finished: bool = True, blend: bool = True) -> SqlRunStore:
    """A run of three sites written by hand: rounds, a rejected update, stats, events, a blend."""
    store = SqlRunStore(run_dir)
    store.set_meta(name="hand-run", seed=7, rounds=rounds, dataset="synthetic", model="logreg", strategy="fedavg")
    store.set_document(
        "job.toml", 'name = "hand-run"\n[deploy]\nadmin_token = "s3cr3t-value"\nurl = "postgresql://u:pw123@db/x"\n'
    )
    store.record_site_stats(
        {
            s: SiteStats(
                site_id=s,
                num_train=100 + 10 * i,
                num_val=20,
                num_test=30 + i,
                label_counts={"0": 60 + i, "1": None if s == "gamma" else 40},
                features={"age": {"mean": 0.1 * i, "std": 1.0, "missing": 0.0}},
                data_version=f"v{i}",
            )
            for i, s in enumerate(SITES)
        },
        {"alpha": 0.01, "beta": 0.02, "gamma": 0.3},
    )
    store.set_status("running", rounds=rounds)
    w = Weights({"w": np.zeros(3, dtype=np.float32)})
    for r in range(1, rounds + 1):
        store.record_event("round_started", round=r, sites=SITES, stage="training")
        failures: tuple[SiteFailure, ...] = ()
        participants = SITES
        if r == 2:
            failures = (SiteFailure("gamma", r, "update norm 1e9 exceeds max_update_norm 100", "rejected"),)
            participants = ["alpha", "beta"]
            store.record_event("update_rejected", round=r, site_id="gamma", reason=failures[0].reason)
        store.record_event("stage", round=r, stage="aggregating")
        if blend and r == rounds:
            store.record_event("stage", round=r, stage="blending")
        store.record_event("stage", round=r, stage="evaluating")
        store.record_event("stage", round=r, stage="committing")
        reports = tuple(
            EvalReport(s, "test", 30 + i, loss_sum=(30 + i) * (0.9 - 0.1 * r), correct=(30 + i) * (0.5 + 0.1 * r) // 1)
            for i, s in enumerate(SITES)
        )
        store.commit_round(
            RoundResult(
                round=r,
                weights=w,
                participants=tuple(participants),
                failures=failures,
                train_metrics={
                    s: {"train_loss": 1.0 / r + 0.01 * i, "num_examples": 100 + 10 * i, "duration_s": 0.1}
                    for i, s in enumerate(participants)
                },
                eval_reports=reports,
                global_metrics={"test_loss": 0.9 - 0.1 * r, "test_acc": 0.5 + 0.1 * r, "odd": math.nan},
                blend=blend_record(r, SITES) if blend and r == rounds else None,
                duration_s=0.5 + r,
            ),
            {},
            {},
        )
    if finished:
        store.set_status("finished")
    return store


def get(base: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.get(base + path, timeout=10, follow_redirects=False, **kw)


@pytest.fixture
def hand_run(tmp_path: Path) -> Iterator[Path]:
    store = fill_store(tmp_path / "run")
    store.close()
    yield tmp_path / "run"


# -- views and API -----------------------------------------------------------------------------
def test_api_shows_what_the_store_holds(hand_run: Path) -> None:
    store = SqlRunStore(hand_run, create=False)
    with serve(create_app(hand_run)) as base:
        ov = get(base, "/api/overview").json()
        tr = get(base, "/api/training").json()
        data = get(base, "/api/data").json()
        blends = get(base, "/api/blends").json()
        events = get(base, "/api/events", params={"after": 3, "limit": 5}).json()
    assert ov["run"]["name"] == "hand-run" and ov["run"]["status"] == "finished" and ov["run"]["round"] == 3
    assert ov["server_state"] == "finished" and {s["status"] for s in ov["pipeline"]["steps"]} == {"done"}
    cards = {c["site_id"]: c for c in ov["sites"]}
    assert sorted(cards) == SITES
    assert cards["gamma"]["rejected"] == 1 and cards["alpha"]["rejected"] == 0
    assert cards["beta"]["num_rows"] == 110 + 20 + 31 and cards["beta"]["data_version"] == "v1"
    assert cards["alpha"]["rounds_participated"] == 3 and cards["gamma"]["rounds_participated"] == 2
    last_eval = [m for m in store.site_metrics("eval:test") if m["site_id"] == "beta" and m["round"] == 3][0]
    assert cards["beta"]["last_eval_accuracy"] == pytest.approx(last_eval["metrics"]["accuracy"])
    # training: every committed round, NaN turned into null, the rejection with its reason
    assert [r["round"] for r in tr["rounds"]] == [1, 2, 3]
    assert [r["global_metrics"]["test_acc"] for r in tr["rounds"]] == [
        r["global_metrics"]["test_acc"] for r in store.rounds()
    ]
    assert tr["rounds"][0]["global_metrics"]["odd"] is None
    assert tr["rejected"] == [
        {"round": 2, "site_id": "gamma", "kind": "rejected", "reason": "update norm 1e9 exceeds max_update_norm 100"}
    ]
    part = tr["participation"]
    assert part["status"][part["sites"].index("gamma")] == ["trained", "rejected", "trained"]
    series = {(s["kind"], s["metric"], s["site_id"]): s for s in tr["site_series"]}
    assert series[("train", "train_loss", "gamma")]["rounds"] == [1, 3]
    assert ("eval:test", "loss_sum", "alpha") not in series  # bookkeeping sums are not charted
    # data: suppressed cell stays null, heterogeneity as recorded
    sites = {s["site_id"]: s for s in data["sites"]}
    assert sites["gamma"]["label_counts"] == {"0": 62, "1": None} and sites["gamma"]["heterogeneity"] == 0.3
    assert data["classes"] == ["0", "1"] and data["features"] == ["age"]
    # blends: the record as written
    (syn,) = blends["syntheses"]
    assert syn["round"] == 3 and syn["decision"] == "accepted" and syn["accepted"] is True
    assert syn["chosen_ratios"] == {"alpha": 0.6, "beta": 0.3, "gamma": 0.1} and syn["fedavg_ratios"]["alpha"] == 0.5
    assert [t["number"] for t in syn["trials"]] == [0, 1, 2, 3, 4] and syn["trials"][4]["state"] == "fail"
    assert syn["trials"][2]["score"] == 0.65 and syn["gain"] == 0.05
    assert [e["id"] for e in events] == [4, 5, 6, 7, 8]
    store.close()


def test_charts_carry_the_store_numbers(hand_run: Path) -> None:
    source = StoreSource(hand_run)
    tr = build_training(source)
    charts = training_charts(tr)
    acc = next(t for t in charts["global-other"]["data"] if t["name"] == "test_acc")
    assert acc["x"] == [1, 2, 3] and acc["y"] == [r.global_metrics["test_acc"] for r in tr.rounds]
    assert charts["round-time"]["data"][0]["y"] == [1.5, 2.5, 3.5]
    assert "site-eval-test-accuracy" in charts and "site-train-train_loss" in charts
    from fedblend.dashboard.dataview import build_data

    d = data_charts(build_data(source))
    class1 = d["data-class-counts"]["data"][1]
    assert class1["name"] == "class 1" and class1["y"] == [40, 40, None]
    json.dumps({**charts, **d}, allow_nan=False)  # every figure is valid JSON (no NaN)
    source.close()


def test_pipeline_marks_the_current_step() -> None:
    def ev(rnd: int, stage: str, kind: str = "stage") -> dict[str, Any]:
        return {"kind": kind, "round": rnd, "payload": {"stage": stage}}

    def marks(p: Any) -> dict[str, str]:
        return {s.id: s.status for s in p.steps}

    p = pipeline_from_events([ev(1, "training", "round_started")], 0, "running")
    assert (
        p.round == 1
        and marks(p)["training"] == "current"
        and marks(p)["waiting"] == "done"
        and marks(p)["blending"] == "pending"
    )
    p = pipeline_from_events(
        [ev(2, "training", "round_started"), ev(2, "aggregating"), ev(2, "evaluating")], 1, "running"
    )
    assert (
        marks(p)["evaluating"] == "current" and marks(p)["blending"] == "skipped" and marks(p)["aggregating"] == "done"
    )
    p = pipeline_from_events(
        [ev(2, "training", "round_started"), ev(2, "aggregating"), ev(2, "blending")], 1, "running"
    )
    assert marks(p)["blending"] == "current"
    p = pipeline_from_events([ev(2, "committing")], 2, "running")  # committed: waiting for the next round
    assert p.round == 3 and marks(p)["waiting"] == "current"
    p = pipeline_from_events([ev(1, "broadcasting")], 0, "running")  # a deployment's own stage name
    assert marks(p)["committing"] == "current"
    assert {s.status for s in pipeline_from_events([], 0, "finished").steps} == {"done"}
    assert {s.status for s in pipeline_from_events([], 0, None).steps} == {"pending"}


def test_site_states_mid_round_and_reported(tmp_path: Path) -> None:
    store = fill_store(tmp_path / "run", rounds=2, finished=False, blend=False)
    store.record_event("round_started", round=3, sites=["alpha", "gamma"], stage="training")
    store.set_site_state("beta", state="online", last_heartbeat=time.time() - 3600, progress=0.5)
    app = create_app(tmp_path / "run", offline_after_s=60)
    with serve(app) as base:
        ov = get(base, "/api/overview").json()
        cards = {c["site_id"]: c for c in ov["sites"]}
        assert cards["alpha"]["state"] == "training" and cards["alpha"]["state_source"] == "derived"
        assert cards["beta"]["state"] == "offline" and cards["beta"]["state_source"] == "reported"  # stale heartbeat
        assert cards["beta"]["progress"] == 0.5
        assert ov["server_state"] == "running · round 3: site training"
        store.record_event("update_rejected", round=3, site_id="gamma", reason="NaN in w")
        store.record_event("stage", round=3, stage="aggregating")
        cards = {c["site_id"]: c for c in get(base, "/api/overview").json()["sites"]}
        assert cards["gamma"]["state"] == "rejected" and cards["gamma"]["rejected"] == 2
        assert cards["alpha"]["state"] == "online"
        rejected = get(base, "/api/training").json()["rejected"]
        assert rejected[-1]["round"] == 3 and rejected[-1]["reason"].startswith("NaN in w")
    store.close()


def test_blend_reader_tolerates_missing_and_other_keys() -> None:
    skipped = parse_synthesis({"round": 4, "decision": "skipped", "reason": "1 site update(s)"})
    assert skipped.decision == "skipped" and skipped.accepted is False and skipped.trials == [] and skipped.sites == []
    odd = parse_synthesis(
        {
            "round": "2",
            "accepted": True,
            "chosen": {"a": 0.7, "b": 0.3},
            "fedavg": {"a": 0.5, "b": 0.5},
            "trials": [{"number": 1, "value": 0.4, "ratios": {"a": 0.7, "b": float("nan")}}, "junk"],
        }
    )
    assert odd.round == 2 and odd.decision == "accepted" and odd.sites == ["a", "b"]
    assert (
        odd.chosen_ratios == {"a": 0.7, "b": 0.3} and odd.trials[0].score == 0.4 and odd.trials[0].ratios["b"] is None
    )
    assert parse_synthesis({}).decision == "unknown"


# -- pages, mounting, auth ---------------------------------------------------------------------
def test_pages_render_under_a_mount_prefix(hand_run: Path) -> None:
    parent = FastAPI()
    parent.mount("/dashboard", create_app(hand_run))
    with serve(parent) as base:
        for path in ("/", "/training", "/blend", "/data", "/search"):
            r = get(base, "/dashboard" + path)
            assert r.status_code == 200, (path, r.text[:500])
            assert (
                'href="/dashboard/static/dashboard.css"' in r.text and 'src="/dashboard/vendor/plotly.min.js"' in r.text
            )
            assert 'data-base="/dashboard"' in r.text and "content-security-policy" in r.headers
        partial = get(base, "/dashboard/training?partial=1").text
        assert "<html" not in partial and 'id="page-data"' in partial and 'id="rounds-table"' in partial
        js = get(base, "/dashboard/vendor/plotly.min.js")
        assert js.status_code == 200 and len(js.content) > 1_000_000 and b"plotly" in js.content[:2000].lower()
        assert get(base, "/dashboard/static/dashboard.js").status_code == 200
        schema = get(base, "/dashboard/openapi.json").json()
        assert {
            "/api/overview",
            "/api/training",
            "/api/blends",
            "/api/data",
            "/api/search",
            "/api/events",
            "/api/job",
        } <= set(schema["paths"])
        assert "/api/stream" not in schema["paths"]
        assert "No search in this run" in get(base, "/dashboard/search").text


def test_store_text_is_escaped_in_pages(tmp_path: Path) -> None:
    evil = "<img src=x onerror=alert(1)>"
    store = fill_store(tmp_path / "run", rounds=1, blend=False)
    store.set_site_state(evil, state="online", data_version=evil)
    store.record_event("update_rejected", round=1, site_id=evil, reason=f"</script>{evil}")
    store.close()
    with serve(create_app(tmp_path / "run")) as base:
        for path in ("/", "/training", "/data"):
            html = get(base, path).text
            assert evil not in html and "</script><img" not in html, path
        assert "&lt;img src=x onerror=alert(1)&gt;" in get(base, "/").text


def test_auth_roles_tokens_and_login(hand_run: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    auth = DashboardAuth(viewer_tokens=[VIEWER], admin_tokens=[ADMIN])
    assert VIEWER not in repr(auth) and ADMIN not in repr(auth)
    with serve(create_app(hand_run, auth=auth)) as base:
        r = get(base, "/api/overview")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = get(base, "/training")
        assert r.status_code == 303 and r.headers["location"] == "/login?next=/training"
        assert get(base, "/api/overview", params={"token": VIEWER}).status_code == 401  # never in a query string
        assert get(base, "/api/overview", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
        v = {"Authorization": f"Bearer {VIEWER}"}
        a = {"Authorization": f"Bearer {ADMIN}"}
        assert get(base, "/api/whoami", headers=v).json() == {"role": "viewer", "auth": True}
        assert get(base, "/api/job", headers=v).status_code == 403
        job = get(base, "/api/job", headers=a).json()["text"]
        assert "s3cr3t-value" not in job and "pw123" not in job and 'admin_token = "***"' in job
        assert get(base, "/openapi.json").status_code == 401
        # login form: a wrong token is refused, a right one sets a signed session cookie (not the token)
        bad = httpx.post(base + "/login", data={"token": "nope", "next": "/data"})
        assert bad.status_code == 401 and "not valid" in bad.text
        good = httpx.post(base + "/login", data={"token": VIEWER, "next": "//evil.example/x"})
        assert good.status_code == 303 and good.headers["location"] == "/"  # no open redirect
        cookie = good.cookies["fedblend_session"]
        assert VIEWER not in cookie and "httponly" in good.headers["set-cookie"].lower()
        assert "samesite=strict" in good.headers["set-cookie"].lower()
        pages = [
            get(base, p, cookies={"fedblend_session": cookie}) for p in ("/", "/training", "/blend", "/data", "/search")
        ]
        assert all(p.status_code == 200 for p in pages)
        assert "Job file" not in pages[0].text  # admin only
        admin_page = get(base, "/", headers=a).text
        assert "Job file" in admin_page and "s3cr3t-value" not in admin_page
        forged = cookie.replace("viewer", "admin", 1)
        assert get(base, "/api/whoami", cookies={"fedblend_session": forged}).status_code == 401
        out = httpx.post(base + "/logout", cookies={"fedblend_session": cookie})
        assert out.status_code == 303 and 'fedblend_session=""' in out.headers["set-cookie"]
        for p in pages + [admin_page]:
            text = p if isinstance(p, str) else p.text
            assert VIEWER not in text and ADMIN not in text
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(("fedblend", "uvicorn")))
    assert "logged in" in logged and VIEWER not in logged and ADMIN not in logged


def test_bad_arguments_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 16 characters"):
        DashboardAuth(viewer_tokens=["short"])
    with pytest.raises(ConfigError, match="list of tokens"):
        DashboardAuth(viewer_tokens=VIEWER)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="both a viewer and an admin"):
        DashboardAuth(viewer_tokens=[VIEWER], admin_tokens=[VIEWER])
    with pytest.raises(ConfigError, match="at least one"):
        DashboardAuth()
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        create_app(tmp_path / "file")
    with pytest.raises(StoreError, match="run directory or a SqlRunStore"):
        create_app(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="DashboardAuth or None"):
        create_app(tmp_path, auth={"viewer": VIEWER})  # type: ignore[arg-type]


# -- live ----------------------------------------------------------------------------------------
def _read_events(resp: httpx.Response, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    kind = None
    for line in resp.iter_lines():
        if line.startswith("event:"):
            kind = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and kind == "update":
            out.append(json.loads(line.split(":", 1)[1]))
            if len(out) == n:
                return out
    return out


def test_stream_reports_store_changes_and_waits_for_the_run(tmp_path: Path) -> None:
    run = tmp_path / "later"
    app = create_app(run, poll_interval_s=0.05)
    with serve(app) as base:
        assert "Waiting for the run to start" in get(base, "/").text
        assert get(base, "/api/run").json()["present"] is False
        with httpx.stream("GET", base + "/api/stream", timeout=10) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            lines = resp.iter_lines()
            first = None
            for line in lines:
                if line.startswith("data:"):
                    first = json.loads(line[5:])
                    break
            assert first is not None and first["last_event"] is None
            store = fill_store(run, rounds=1, blend=False)  # the run starts while the page is open
            for line in lines:
                if line.startswith("data:"):
                    msg = json.loads(line[5:])
                    if msg["status"] == "finished":
                        break
            assert msg["round"] == 1 and msg["version"] != first["version"]
        assert get(base, "/api/run").json()["name"] == "hand-run"
        store.close()


def fill_tune_run(run: Path) -> None:
    """A tune run as fedblend.hpo writes it: run.db meta kind=tune, and tune.db with the Optuna study."""
    import optuna

    store = SqlRunStore(run)
    store.set_meta(
        kind="tune",
        name="heart",
        study_name="heart",
        metrics="val_loss",
        directions="minimize",
        n_trials=4,
        searcher="random",
        rounds=2,
        tune_storage=f"sqlite:///{run / 'tune.db'}",
    )
    store.set_status("running")
    store.close()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="heart", storage=f"sqlite:///{run / 'tune.db'}")
    for i, lr in enumerate([0.1, 0.01, 0.001]):
        study.enqueue_trial({"train.lr": lr, "strategy.name": "fedavg" if i else "fedyogi"})
        t = study.ask(
            {
                "train.lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True),
                "strategy.name": optuna.distributions.CategoricalDistribution(["fedavg", "fedyogi"]),
            }
        )
        for step in (1, 2):
            t.report(1.0 / (step + i), step)
        t.set_user_attr("duration_s", 1.5)
        study.tell(t, 1.0 / (2 + i)) if i < 2 else study.tell(t, state=optuna.trial.TrialState.PRUNED)


def test_search_page_reads_the_optuna_study(tmp_path: Path) -> None:
    run = tmp_path / "tune"
    fill_tune_run(run)
    with serve(create_app(run)) as base:
        s = get(base, "/api/search").json()
        page = get(base, "/search").text
    assert s["available"] is True and s["source"] == "optuna storage"
    (st,) = s["studies"]
    assert st["name"] == "heart" and st["searcher"] == "random" and st["budget"] == 4
    assert [t["state"] for t in st["trials"]] == ["complete", "complete", "pruned"]
    assert st["best_trial"] == 1 and st["best_values"] == [1 / 3] and st["counts"] == {"complete": 2, "pruned": 1}
    assert st["trials"][2]["steps"] == [1, 2] and st["trials"][0]["params"]["train.lr"] == 0.1
    assert 'id="search-trials-0"' in page and "train.lr" in page and 'data-chart="search-0-history"' in page
    # without its Optuna storage, a finished search still shows the summary it wrote (tune.json)
    (run / "tune.db").unlink()
    store = SqlRunStore(run, create=False)
    store.set_meta(tune_storage="postgresql://u:***@db/tune")  # a masked password: not reachable
    summary = {
        "study_name": "heart",
        "metrics": ["val_loss"],
        "directions": ["minimize"],
        "counts": {"complete": 1},
        "best": [{"number": 0, "values": [0.5], "params": {"train.lr": 0.1}}],
        "importances": {"val_loss": {"train.lr": 1.0}},
        "trials": [{"number": 0, "state": "complete", "values": [0.5], "params": {"train.lr": 0.1}}],
    }
    store.set_document("tune.json", json.dumps(summary))
    store.close()
    with serve(create_app(run)) as base:
        s = get(base, "/api/search").json()
    assert s["source"] == "tune.json" and s["studies"][0]["best_trial"] == 0
    assert s["studies"][0]["importances"] == {"val_loss": {"train.lr": 1.0}}


def test_cli_serves_a_run_directory(hand_run: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedblend", "dashboard", str(hand_run), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # readiness: the command prints its URL once it has bound the port
        assert "http://127.0.0.1:" in line, line
        url = line.split("http://", 1)[1].split("/", 1)[0]
        assert httpx.get(f"http://{url}/api/run", timeout=10).json()["name"] == "hand-run"
    finally:
        proc.terminate()
        proc.wait(10)

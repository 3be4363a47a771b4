"""The dashboard in a real browser: headless Debian Chromium driven by Playwright.

Over a real heart-disease simulation with a blend (and one update turned into NaN, so a
rejection shows), every page is loaded, its numbers are checked against the run store, the
charts' data against the store, and a screenshot is saved; any console error fails the test.
A second test watches the overview of a simulation that runs in a thread: the page follows it
round by round over server-sent events, without reloading.

Needs `apt-get install chromium` (the browser at /usr/bin/chromium; `playwright install` is not
used). Screenshots go to the test's tmp directory, and to docs/screenshots/ when
FEDBLEND_DOCS_SCREENSHOTS=1.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedblend.dashboard import DashboardAuth, create_app
from fedblend.jobs import JobSpec, parse_job
from fedblend.records import RoundPlan, SiteUpdate
from fedblend.runner import run_job
from fedblend.store import SqlRunStore
from fedblend.weights import Weights
from jobs_util import heart_job
from test_dashboard import ADMIN, VIEWER, fill_store, fill_tune_run, serve

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("FEDBLEND_CHROMIUM", "/usr/bin/chromium"))
REPO = Path(__file__).resolve().parents[1]
PAGES = {"overview": "/", "training": "/training", "blend": "/blend", "data": "/data", "search": "/search"}
WAIT_MS = 20_000


def blend_job(tmp_path: Path, name: str, rounds: int, seed: int = 3, **blend: Any) -> JobSpec:
    raw = heart_job(tmp_path, **{"data.val_fraction": 0.2, "rounds": rounds}).model_dump(mode="python")
    raw["name"], raw["seed"] = name, seed
    raw["blend"] = {"budget": 12, "batch_size": 4, **blend}
    return parse_job(raw)


class DemoPool:
    """Wraps the simulation's pool: NaN weights from one site in one round (so the validator
    rejects them, with its reason), and optionally a pause at the first blend candidate."""

    def __init__(
        self, pool: Any, bad_site: str, bad_round: int, pause: tuple[threading.Event, threading.Event] | None = None
    ):
        self.pool, self.bad_site, self.bad_round, self.pause = pool, bad_site, bad_round, pause

    def site_ids(self) -> list[str]:
        return self.pool.site_ids()

    def train(self, plan: RoundPlan, weights: Weights) -> list[Any]:
        out = self.pool.train(plan, weights)
        if plan.round != self.bad_round:
            return out
        return [
            dataclasses.replace(u, weights=Weights({k: np.full_like(v, np.nan) for k, v in u.weights.items()}))
            if isinstance(u, SiteUpdate) and u.site_id == self.bad_site
            else u
            for u in out
        ]

    def evaluate(
        self, weights: Weights, site_ids: Sequence[str], split: str, reference: Weights | None = None
    ) -> list[Any]:
        if self.pause is not None and reference is not None:  # a blend candidate is being scored
            reached, resume = self.pause
            self.pause = None
            reached.set()
            assert resume.wait(60), "the test never let the blend go on"
        return self.pool.evaluate(weights, site_ids, split, reference)

    def stats(self) -> Any:
        return self.pool.stats()

    def close(self) -> None:
        self.pool.close()


@pytest.fixture(scope="module")
def heart_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished heart-disease run: 6 rounds, blends at rounds 3 and 6, va's round-2 update rejected.

    Seed 1: the round-3 synthesis is not accepted and the round-6 one is, so the page shows both."""
    tmp = tmp_path_factory.mktemp("heart")
    job = blend_job(tmp, "heart-blend", 6, seed=1, schedule="every_n", every=3)

    def hook(fed: Any) -> None:
        fed.pool = DemoPool(fed.pool, "va", 2)

    run_job(job, run_dir=tmp / "run", on_start=hook)
    return tmp / "run"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: install it (apt-get install -y chromium) or set FEDBLEND_CHROMIUM"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM))
        yield b
        b.close()


@pytest.fixture(scope="module")
def context(browser: Any) -> Iterator[Any]:
    """One browser context for the module: its HTTP and code caches make later page loads fast."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: Any) -> Iterator[Any]:
    """A fresh page (no cookies) that records console errors and uncaught exceptions; none may occur."""
    context.clear_cookies()
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    pg.set_default_timeout(WAIT_MS)
    pg.expected_errors = []  # a test that provokes an error on purpose names it here
    yield pg
    pg.close()
    unexpected = [e for e in errors if not any(x in e for x in pg.expected_errors)]
    assert not unexpected, "browser console errors:\n" + "\n".join(unexpected)


def shot(pg: Any, name: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    if os.environ.get("FEDBLEND_DOCS_SCREENSHOTS") == "1":
        docs = REPO / "docs" / "screenshots"
        docs.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(docs / f"{name}.png"), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def open_page(pg: Any, url: str) -> None:
    pg.goto(url)
    pg.wait_for_function("window.__fedblend && window.__fedblend.connected")  # charts drawn, live stream open


def chart(pg: Any, chart_id: str) -> list[dict[str, Any]]:
    return pg.evaluate(
        "id => document.getElementById('chart-' + id).data.map(t => ({name: t.name, x: t.x, y: t.y}))", chart_id
    )


def text(pg: Any, selector: str) -> str:
    """The element's text as written in the HTML (inner_text would apply CSS text-transform)."""
    return (pg.locator(selector).text_content() or "").strip()


def leave(pg: Any) -> None:
    """Close the page's live stream before its server stops (else Chromium logs a cut stream)."""
    pg.goto("about:blank")


def f4(v: float) -> str:
    return f"{v:.4f}"


def test_every_page_shows_the_store(heart_run: Path, page: Any, tmp_path: Path) -> None:
    store = SqlRunStore(heart_run, create=False)
    rounds = store.rounds()
    evals = store.site_metrics("eval:test")
    stats = store.site_stats()
    blends = store.blends()
    assert len(rounds) == 6 and [b["round"] for b in blends] == [3, 6]
    with serve(create_app(heart_run)) as base:
        # overview: run header, pipeline, one card per hospital with the stored numbers
        open_page(page, base + PAGES["overview"])
        assert text(page, "#run-round") == "6" and text(page, "#run-status") == "finished"
        assert page.locator(".pipeline .step-done").count() == 6
        for sid in ("cleveland", "hungary", "switzerland", "va"):
            card = page.locator(f'[data-site="{sid}"]')
            st = stats[sid]
            assert card.locator('[data-field="num_rows"]').text_content().strip() == str(
                st["num_train"] + st["num_val"] + st["num_test"]
            )
            assert card.locator('[data-field="data_version"]').text_content().strip() == st["data_version"]
            last = [m for m in evals if m["site_id"] == sid and m["round"] == 6][0]
            assert card.locator('[data-field="last_eval_accuracy"]').text_content().strip() == f4(
                last["metrics"]["accuracy"]
            )
            assert card.locator('[data-field="rejected"]').text_content().strip() == ("1" if sid == "va" else "0")
            assert card.locator('[data-field="rounds_participated"]').text_content().strip() == (
                "5" if sid == "va" else "6"
            )
        shot(page, "overview", tmp_path)

        # training: the rounds table and the charts hold the stored metrics; the rejection and its reason
        open_page(page, base + PAGES["training"])
        for r in rounds:
            row = page.locator(f'#rounds-table tr[data-round="{r["round"]}"]')
            assert row.locator('[data-metric="test_acc"]').text_content().strip() == f4(r["global_metrics"]["test_acc"])
            assert row.locator('[data-metric="test_loss"]').text_content().strip() == f4(
                r["global_metrics"]["test_loss"]
            )
        acc = next(t for t in chart(page, "global-other") if t["name"] == "test_acc")
        assert acc["x"] == [1, 2, 3, 4, 5, 6] and acc["y"] == [r["global_metrics"]["test_acc"] for r in rounds]
        va_acc = next(t for t in chart(page, "site-eval-test-accuracy") if t["name"] == "va")
        assert va_acc["y"] == [m["metrics"]["accuracy"] for m in evals if m["site_id"] == "va"]
        times = chart(page, "round-time")[0]["y"]
        assert times == pytest.approx([r["duration_s"] for r in rounds])
        reason = rounds[1]["failures"][0]["reason"]
        rejected = page.locator("#rejected-table tbody tr")
        assert (
            rejected.count() == 1
            and "va" in rejected.text_content().strip()
            and reason in rejected.text_content().strip()
        )
        shot(page, "training", tmp_path)

        # blend: each synthesis with its decision, gain, ratios and every trial
        open_page(page, base + PAGES["blend"])
        for b in blends:
            r = b["round"]
            assert text(page, f"#decision-{r}") == b["decision"]
            assert text(page, f"#gain-{r}") == f"{b['gain']:.5f}"
            assert page.locator(f"#trials-{r} tbody tr").count() == len(b["trials"])
            best = page.locator(f'#trials-{r} tr[data-trial="{b["best_trial"]}"]')
            for sid, ratio in b["chosen_ratios"].items():
                assert best.locator(f'[data-site="{sid}"]').text_content().strip() == f"{ratio:.3f}"
            fedavg, chosen = chart(page, f"blend-{r}-ratios")
            assert fedavg["y"] == [b["fedavg_ratios"][s] for s in b["sites"]]
            assert chosen["y"] == [b["chosen_ratios"][s] for s in b["sites"]]
            scores = chart(page, f"blend-{r}-history")[0]["y"]
            assert scores == [t["values"][0] for t in b["trials"] if t["state"] == "complete"]
            lines = page.evaluate(f"document.getElementById('chart-blend-{r}-parcoords').data.map(t => t.customdata)")
            assert sorted(line[-1] for line in lines[:-1]) == sorted(scores)  # one line per trial, ending at its score
        shot(page, "blend", tmp_path)

        # data: row and class counts, heterogeneity
        open_page(page, base + PAGES["data"])
        for sid, st in stats.items():
            row = page.locator(f'#sites-table tr[data-site="{sid}"]')
            assert row.locator('[data-field="num_train"]').text_content().strip() == str(st["num_train"])
            for c, n in st["label_counts"].items():
                assert row.locator(f'[data-class="{c}"]').text_content().strip() == (
                    str(n) if n is not None else f"<{st['min_cell']}"
                )
            assert row.locator('[data-field="heterogeneity"]').text_content().strip() == f4(st["heterogeneity"])
        het = chart(page, "data-heterogeneity")[0]
        assert het["y"] == [stats[s]["heterogeneity"] for s in het["x"]]
        assert page.locator("#features tbody tr").count() == len(stats["cleveland"]["features"])
        shot(page, "data", tmp_path)

        open_page(page, base + PAGES["search"])
        assert text(page, "#search-message") == "No search in this run."
        shot(page, "search-empty", tmp_path)
        leave(page)
    store.close()


def test_search_page_shows_the_study(tmp_path: Path, page: Any) -> None:
    import optuna

    fill_tune_run(tmp_path / "tune")
    study = optuna.load_study(study_name="heart", storage=f"sqlite:///{tmp_path / 'tune' / 'tune.db'}")
    with serve(create_app(tmp_path / "tune")) as base:
        open_page(page, base + PAGES["search"])
        rows = page.locator("#search-trials-0 tbody tr")
        assert rows.count() == len(study.trials)
        for t in study.trials:
            row = page.locator(f'#search-trials-0 tr[data-trial="{t.number}"]')
            assert row.locator('[data-field="values"]').text_content().strip().startswith(f"{t.value:.5f}")
        assert page.locator("#search-trials-0 tr.best").get_attribute("data-trial") == str(study.best_trial.number)
        history = chart(page, "search-0-history")
        assert history[0]["y"] == [t.value for t in study.trials if t.state.name == "COMPLETE"]
        curves = chart(page, "search-0-curves")
        assert [c["y"] for c in curves] == [[t.intermediate_values[s] for s in (1, 2)] for t in study.trials]
        shot(page, "search-study", tmp_path)
        leave(page)


def test_dashboard_follows_a_running_simulation(tmp_path: Path, page: Any) -> None:
    """The overview of a running simulation updates round by round over SSE, without a reload."""
    rounds = 3
    job = blend_job(tmp_path, "heart-live", rounds)
    run_dir = tmp_path / "live"
    opened, go = threading.Event(), threading.Event()
    committed = {r: threading.Event() for r in range(1, rounds + 1)}
    seen = {r: threading.Event() for r in range(1, rounds + 1)}
    blending, resume = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def on_start(fed: Any) -> None:
        fed.pool = DemoPool(fed.pool, "va", 2, pause=(blending, resume))
        opened.set()
        assert go.wait(60)

    def after_round(result: Any) -> None:
        committed[result.round].set()
        assert seen[result.round].wait(60), f"the page never showed round {result.round}"

    def simulate() -> None:
        try:
            run_job(job, run_dir=run_dir, on_start=on_start, callbacks=[after_round])
        except BaseException as exc:  # reported by the test below
            failure.append(exc)

    sim = threading.Thread(target=simulate, daemon=True)
    sim.start()
    try:
        assert opened.wait(60), "the simulation did not start"
        with serve(create_app(run_dir, poll_interval_s=0.1)) as base:
            open_page(page, base + "/")
            page.evaluate("window.__marker = 'same page'")
            go.set()
            for r in range(1, rounds + 1):
                if r == rounds:  # the last round pauses while its blend candidates are scored
                    assert blending.wait(60), "the blend never started"
                    page.wait_for_function("document.getElementById('step-blending').dataset.status === 'current'")
                    assert text(page, "#run-status") == "running"
                    assert text(page, "#server-state") == f"running · round {rounds}: blending"
                    assert page.locator(".badge-online").count() == 4
                    shot(page, "overview-live", tmp_path)
                    resume.set()
                assert committed[r].wait(60), f"round {r} was never committed"
                page.wait_for_function(f"document.getElementById('run-round').textContent === '{r}'")
                if r == 2:
                    page.wait_for_function(
                        "document.querySelector('[data-site=va] [data-field=rejected]').textContent === '1'"
                    )
                seen[r].set()
            page.wait_for_function("document.getElementById('run-status').textContent === 'finished'")
            assert page.evaluate("window.__marker") == "same page"  # updated in place, never reloaded
            assert page.evaluate("window.__fedblend.updates") >= rounds
            leave(page)
    finally:
        for e in (go, resume, *seen.values()):
            e.set()
        sim.join(60)
    assert not failure, failure
    assert SqlRunStore(run_dir, create=False).meta()["status"] == "finished"


def test_login_then_browse_under_a_prefix(tmp_path: Path, page: Any) -> None:
    from fastapi import FastAPI

    fill_store(tmp_path / "run").close()
    parent = FastAPI()
    parent.mount(
        "/dashboard", create_app(tmp_path / "run", auth=DashboardAuth(viewer_tokens=[VIEWER], admin_tokens=[ADMIN]))
    )
    with serve(parent) as base:
        page.goto(base + "/dashboard/blend")
        assert page.url.endswith("/dashboard/login?next=/blend")
        page.expected_errors.append("the server responded with a status of 401")  # the refused login below
        page.fill("#token", "not-the-token-at-all")
        page.click("button[type=submit]")
        assert "not valid" in text(page, ".error")
        page.fill("#token", VIEWER)
        page.click("button[type=submit]")
        page.wait_for_url("**/dashboard/blend")
        page.wait_for_function("window.__fedblend && window.__fedblend.connected")
        assert text(page, "#decision-3") == "accepted" and text(page, ".role") == "viewer"
        html = page.content()
        assert VIEWER not in html and ADMIN not in html
        page.click("#nav-training")
        page.wait_for_function("window.__fedblend && window.__fedblend.connected")
        assert page.locator("#rounds-table tbody tr").count() == 3
        page.click("text=log out")
        page.wait_for_url("**/dashboard/login")
        leave(page)

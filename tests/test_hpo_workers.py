"""Several workers on one storage: they split the trials exactly, and a killed worker loses at most its trial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from fedblend.hpo import run_tune
from fedblend.jobs import parse_job

REPO = Path(__file__).resolve().parents[1]

JOB = """
name = "workers"
seed = 5
rounds = {rounds}
output_dir = "{out}"
[data]
dataset = "heart_disease"
val_fraction = 0.2
[model]
name = "logreg"
[train]
lr = 0.01
batch_size = 8
local_steps = {steps}
[strategy]
name = "fedavg"
[tune]
searcher = "random"
n_trials = {n}
pruner = "none"
heartbeat_interval = 1
grace_period = 6
[tune.space]
"train.lr" = {{ type = "float", low = 1e-3, high = 0.5, log = true }}
"train.batch_size" = {{ type = "int", low = 2, high = 16 }}
"""


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90.0) -> Any:
    """Poll ``check`` until it returns something truthy (awaiting a state, not sleeping for one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def load(rd: Path) -> Any:
    try:
        return optuna.load_study(study_name="workers", storage=f"sqlite:///{rd / 'tune.db'}")
    except Exception:  # not created yet
        return None


def counted(study: Any) -> list[Any]:
    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def test_two_worker_processes_split_the_trials_exactly(tmp_path: Path, data_dir: Path) -> None:
    import tomllib

    raw = tomllib.loads(JOB.format(rounds=3, steps=10, n=8, out=tmp_path / "runs"))
    out = run_tune(parse_job(raw), data_dir=data_dir, workers=2, poll_s=0.1)
    study = load(out.run_dir)
    trials = study.trials
    assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials)  # exact budget, no extra trial
    assert sorted(t.number for t in trials) == list(range(8))
    by_worker = {w: [t.number for t in trials if t.user_attrs["worker"] == w] for w in ("0", "1")}
    assert by_worker["0"] and by_worker["1"], by_worker  # both workers took trials
    assert not set(by_worker["0"]) & set(by_worker["1"])
    configs = {tuple(sorted(t.params.items())) for t in trials}
    assert len(configs) == 8  # differently seeded searchers: no configuration twice
    assert out.best_job_path is not None and out.best_job_path.exists()
    assert {t.worker for t in out.trials} == {"0", "1"}


def test_killed_worker_loses_at_most_its_running_trial(tmp_path: Path, data_dir: Path) -> None:
    rd = tmp_path / "shared"
    job = tmp_path / "job.toml"
    job.write_text(JOB.format(rounds=4, steps=15, n=6, out=tmp_path / "runs"))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}

    def start(k: int) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "fedblend", "tune", str(job), "--worker", "--worker-index", str(k),
               "--run-dir", str(rd), "--data-dir", str(data_dir), "-q"]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    victim, survivor = start(0), start(1)
    try:
        def victim_running() -> Any:
            study = load(rd)
            if study is None:
                return None
            mine = [t for t in study.trials if t.user_attrs.get("worker") == "0"]
            both = {t.user_attrs.get("worker") for t in study.trials} >= {"0", "1"}
            running = [t for t in mine if t.state == TrialState.RUNNING]
            return running if (running and both) else None

        wait_for("worker 0 to run a trial while worker 1 also works", victim_running)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        lost = [t for t in load(rd).trials if t.user_attrs.get("worker") == "0" and t.state == TrialState.RUNNING]
        assert len(lost) == 1  # killed mid-trial (a trial takes far longer than the poll that saw it running)
        _, err = survivor.communicate(timeout=240)
        assert survivor.returncode == 0, err.decode()[-3000:]
    finally:
        for p in (victim, survivor):
            if p.poll() is None:
                p.kill()
                p.wait()
    study = load(rd)
    trials = study.trials
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    done = counted(study)
    assert len(done) == 6  # the budget is met in full: nothing was lost
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [t.number for t in lost]  # only the killed trial failed
    for f in failed:  # ... and it was run again, with the same values, by the survivor
        retries = [t for t in done if f.number in t.system_attrs.get("retry_history", [])]
        assert len(retries) == 1 and retries[0].params == f.params and retries[0].user_attrs["worker"] == "1"
    assert len({t.number for t in done}) == len(done)
    # no configuration was run twice (a retry replaces its failed trial, it does not add one)
    assert len({tuple(sorted(t.params.items())) for t in done}) == len(done)
    assert (rd / "best_job.toml").exists()  # the last worker out writes the results


@pytest.mark.parametrize("n", [1])
def test_memory_storage_runs_in_process(tmp_path: Path, data_dir: Path, n: int) -> None:
    import tomllib

    raw = tomllib.loads(JOB.format(rounds=2, steps=5, n=2, out=tmp_path / "runs"))
    raw["tune"]["storage"] = "memory"
    out = run_tune(parse_job(raw), data_dir=data_dir, workers=n)
    assert out.storage_url == "memory" and out.counts == {"complete": 2}

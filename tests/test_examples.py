"""The example scripts run as the README shows them (shortened jobs; real processes on 127.0.0.1)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shortened(src: str, dest: Path, **changes: str) -> Path:
    """A copy of an example job with some top-level or table keys replaced (``"[tune].n_trials": "3"``)."""
    text = (ROOT / src).read_text()
    for key, value in changes.items():
        table, _, name = key.rpartition(".")
        section = re.escape(table) + r"\n(?:(?!\n\[).)*?" if table else ""
        pattern = re.compile(r"(" + section + r"^" + re.escape(name) + r" = )[^\n#]*", re.M | re.S)
        text, n = pattern.subn(lambda m, v=value: m.group(1) + v + " ", text, count=1)
        assert n == 1, f"{key} not found in {src}"
    dest.write_text(text)
    return dest


def run_script(job: Path, work: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WORK": str(work), "FEDBLEND_DATA_DIR": str(data_dir), "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", "examples/deploy_local.sh", str(job)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_deploy_local_runs_the_job_and_prints_each_hospital(tmp_path: Path, data_dir: Path) -> None:
    job = shortened("examples/heart_deploy.toml", tmp_path / "job.toml", rounds="3")
    res = run_script(job, tmp_path / "work", data_dir)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "final model after round 3 (3 rounds" in res.stdout
    for hospital in ("cleveland", "hungary", "switzerland", "va", "pooled"):
        assert re.search(rf"^{hospital}\s.*\s0\.\d{{4}}$", res.stdout, re.M), hospital


def test_deploy_local_runs_a_search_on_the_agents(tmp_path: Path, data_dir: Path) -> None:
    job = shortened("examples/heart_deploy_tune.toml", tmp_path / "job.toml", rounds="3", **{"[tune].n_trials": "3"})
    res = run_script(job, tmp_path / "work", data_dir)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "search of heart-deploy-tune" in res.stdout and "trials (3 of 3, best first)" in res.stdout
    best = tmp_path / "work" / "state" / "best_job.toml"
    from fedblend.jobs import load_job

    assert load_job(best).tune is None and load_job(best).rounds == 3


def test_deploy_local_refuses_a_missing_job(tmp_path: Path, data_dir: Path) -> None:
    res = run_script(tmp_path / "nope.toml", tmp_path / "work", data_dir)
    assert res.returncode == 2 and "no job file" in res.stderr

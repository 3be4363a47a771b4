"""The benchmark programs run, shortened, and print what docs/benchmarks.md says they print.

They are not timed here (speed is measured by running them, see docs/benchmarks.md); these tests
keep the programs that produce the published figures from rotting: each runs as a subprocess on
tiny settings, writes its results only under tmp_path, and its ``--json`` line is checked for the
keys the issues ask for and for values that hold by construction.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def bench(script: str, *args: str, data_dir: Path, timeout: float = 300) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "FEDBLEND_DATA_DIR": str(data_dir)}
    res = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args, "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_vs_flower_reports_the_issue_keys_for_fedblend(tmp_path: Path, data_dir: Path) -> None:
    out = bench(
        "vs_flower.py",
        *("--rounds", "3", "--clients", "20", "--per-client", "100", "--clients-per-round", "10"),
        *("--skip-flower", "--data-dir", str(data_dir), "--workdir", str(tmp_path)),
        data_dir=data_dir,
    )
    assert out["rounds"] == 3
    assert out["fedblend_s_per_round"] > 0
    assert out["fedblend_peak_mb"] > 50  # a Python process with torch and the data
    assert 0.3 < out["fedblend_acc"] <= 1.0  # 3 rounds of the 2NN on 1,000 images: 0.55 here; chance is 0.1
    assert (tmp_path / "fedblend_final.safetensors").is_file()


def test_scaling_reports_time_and_memory_per_configuration(tmp_path: Path, data_dir: Path) -> None:
    out = bench(
        "scaling.py",
        *("--sweep", "total", "--rounds", "2", "--threads", "1", "--data-dir", str(data_dir)),
        data_dir=data_dir,
    )
    rows = out["rows"]
    totals = sorted(r["num_clients"] for r in rows)
    assert totals == [100, 1000]
    for r in rows:
        assert r["s_per_round"] > 0 and r["peak_mb"] > 0
        assert len(r["rss_per_round_mb"]) == 3  # before round 1 and after each round
    big, small = sorted(rows, key=lambda r: -r["num_clients"])
    assert big["data_mb"] > 5 * small["data_mb"]  # ten times the clients' data


def test_fedavg_mnist_counts_rounds_against_the_paper(tmp_path: Path, data_dir: Path) -> None:
    out = bench(
        "fedavg_mnist.py",
        *("--setting", "iid", "--max-rounds-iid", "2", "--threads", "1", "--data-dir", str(data_dir)),
        data_dir=data_dir,
    )
    (row,) = out["rows"]
    assert row["setting"] == "iid" and row["paper"] == 87
    assert row["rounds_run"] == 2
    assert row["rounds_to_97"] is None  # two rounds cannot reach 97%
    assert 0.5 < row["best_acc"] < 0.97


def test_blend_heart_json_line_and_the_oracle_bound(tmp_path: Path, data_dir: Path) -> None:
    results = tmp_path / "blend.json"
    out = bench(
        "blend.py",
        *("--dataset", "heart", "--seeds", "1", "--oracle", "--out", str(results), "--data-dir", str(data_dir)),
        data_dir=data_dir,
    )
    for key in ("fedavg_acc", "uniform_acc", "blend_acc"):
        assert 0.4 < out[key] < 1.0, key
    lo, hi = out["blend_vs_fedavg_logloss_ci"]
    assert lo <= hi
    (cell,) = json.loads(results.read_text())["settings"]["heart"]["per_seed"]
    # FedAvg's own ratios are among the oracle's candidates, scored on the same test splits (the
    # strategy's aggregate and the oracle's rebuild of it may differ by float rounding)
    base = cell["fedavg (train only)"]
    assert cell["oracle: best mean-site acc †"]["test_acc_mean_sites"] >= base["test_acc_mean_sites"] - 1e-9
    assert cell["oracle: best log-loss †"]["test_loss"] <= base["test_loss"] + 1e-6

    # summarizing the file again, with a paired comparison of two rows, trains nothing
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    res = subprocess.run(
        [sys.executable, "benchmarks/blend.py", "--merge", str(results), "--out", str(tmp_path / "merged.json")]
        + ["--compare", "tilt gp", "fedavg (train only)"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    diff = cell["tilt gp"]["test_loss"] - cell["fedavg (train only)"]["test_loss"]
    assert f"test_loss {diff:+.4f}" in " ".join(res.stdout.split())
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged["settings"]["heart"]["per_seed"] == [cell]


def test_flamby_heart_strategies(tmp_path: Path, data_dir: Path) -> None:
    out = bench(
        "flamby_heart.py",
        *("--seeds", "1", "--out", str(tmp_path / "f.json"), "--data-dir", str(data_dir)),
        data_dir=data_dir,
    )
    assert {k.lower() for k in out} == {"fedavg", "fedprox", "fedadam", "fedyogi"}
    for name, acc in out.items():
        assert 0.5 < acc < 0.9, name  # mean-of-hospitals test accuracy of one seed

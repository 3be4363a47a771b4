"""The CLI and job files, bad input included: each problem is one clear error naming the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedblend.cli.main import main
from fedblend.errors import ConfigError
from fedblend.jobs import load_job

GOOD = """
name = "cli-test"
seed = 1
rounds = 2
output_dir = "{out}"
[data]
dataset = "heart_disease"
[model]
name = "logreg"
[train]
lr = 0.01
batch_size = 8
local_steps = 5
[strategy]
name = "fedavg"
"""


def write(tmp_path: Path, text: str, name: str = "job.toml") -> Path:
    p = tmp_path / name
    p.write_text(text.replace("{out}", str(tmp_path / "runs")))
    return p


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = main(args)
        code = 0 if rc is None else int(rc)
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_show_runs_and_stats(tmp_path, capsys):
    job = write(tmp_path, GOOD)
    code, out, _ = run_cli(["simulate", str(job), "-q"], capsys)
    assert code == 0
    assert "cleveland" in out and "mean of sites" in out
    run_dir = tmp_path / "runs" / "cli-test"
    code, out, _ = run_cli(["show", str(run_dir)], capsys)
    assert code == 0 and "per-site evaluation, round 2" in out
    code, out, _ = run_cli(["runs", "--root", str(tmp_path / "runs")], capsys)
    assert code == 0 and "cli-test" in out and "2/2" in out
    code, out, _ = run_cli(["data", "stats", str(job), "--features"], capsys)
    assert code == 0 and "switzerland" in out and "chol" in out


def test_set_overrides(tmp_path, capsys):
    job = write(tmp_path, GOOD)
    code, out, _ = run_cli(["simulate", str(job), "-q", "--rounds", "1", "--set", "train.lr=0.05", "--set", "name=\"other\""], capsys)
    assert code == 0
    assert (tmp_path / "runs" / "other").is_dir()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name = [unclosed", "not valid TOML"),
        (GOOD.replace('name = "fedavg"', 'name = "fedmagic"'), "unknown strategy"),
        (GOOD.replace('dataset = "heart_disease"', 'dataset = "imagenet"'), "unknown dataset"),
        (GOOD.replace("rounds = 2", "rounds = -1"), "rounds"),
        (GOOD.replace("lr = 0.01", "lr = \"fast\""), "train.lr"),
        (GOOD.replace("[train]", "[train]\nlearning_rate = 0.1"), "train.learning_rate: unknown key"),
        (GOOD.replace('name = "logreg"', 'name = "resnet"'), "unknown model"),
        (GOOD.replace('name = "fedavg"', 'name = "fedadam"\nserver_lrr = 0.1'), "server_lrr"),
        (GOOD.replace('[data]\ndataset = "heart_disease"', '[data]\ndataset = "mnist"\npartition = "natural"'), "no natural clients"),
        (GOOD.replace('[data]', '[data]\nnum_sites = 0'), "num_sites"),
        (GOOD.replace('[data]\ndataset = "heart_disease"', '[data]\ndataset = "csv"'), "files"),
    ],
)
def test_bad_job_files_give_clear_errors(tmp_path, capsys, text, expected):
    job = write(tmp_path, text)
    code, out, err = run_cli(["simulate", str(job), "-q"], capsys)
    assert code == 2, out + err
    assert "error:" in err and expected in " ".join(err.split()), err
    assert not (tmp_path / "runs" / "cli-test" / "checkpoints").exists() or not any((tmp_path / "runs" / "cli-test" / "checkpoints").iterdir())


def test_missing_data_dir_names_the_setting(tmp_path, capsys):
    job = write(tmp_path, GOOD)
    code, _, err = run_cli(["simulate", str(job), "-q", "--data-dir", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "FEDBLEND_DATA_DIR" in err


def test_partition_that_leaves_a_site_empty(tmp_path, capsys):
    text = GOOD.replace('[data]\ndataset = "heart_disease"',
                        '[data]\ndataset = "mnist"\npartition = "shards"\nnum_sites = 50\nshard_size = 30000\nshards_per_site = 1')
    code, _, err = run_cli(["simulate", str(write(tmp_path, text)), "-q"], capsys)
    assert code == 2
    assert "site" in err and ("empty" in err or "no training examples" in err or "shards" in err), err


def test_model_whose_output_does_not_fit_the_labels(tmp_path, capsys):
    text = GOOD.replace('name = "logreg"', 'name = "logreg"\nnum_classes = 1\nbinary = false')
    code, _, err = run_cli(["simulate", str(write(tmp_path, text)), "-q"], capsys)
    assert code == 2 and "class" in err, err


def test_missing_job_and_missing_run(tmp_path, capsys):
    code, _, err = run_cli(["simulate", str(tmp_path / "nope.toml")], capsys)
    assert code == 2 and "job file not found" in err
    code, _, err = run_cli(["show", str(tmp_path / "nope")], capsys)
    assert code == 2 and "no run at" in err


def test_job_round_trips_through_toml(tmp_path):
    job = load_job(write(tmp_path, GOOD.replace('name = "fedavg"', 'name = "fedyogi"\nserver_lr = 0.02')))
    again = load_job(write(tmp_path, job.to_toml(), "again.toml"))
    assert again == job
    assert again.strategy.params == {"server_lr": 0.02}
    with pytest.raises(ConfigError, match="sampling"):
        job.with_overrides(**{"sampling.fraction": 0.5, "sampling.count": 2})


def test_console_script_runs(tmp_path):
    exe = Path(sys.executable).parent / "fedblend"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "fedblend"]
    res = subprocess.run([*cmd, "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "simulate" in res.stdout
    res = subprocess.run([*cmd, "simulate"], capture_output=True, text=True)
    assert res.returncode == 2 and "JOB.toml" in (res.stdout + res.stderr)


def test_user_csv_sites_job(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    files = {}
    for site in ("north", "south"):
        x = rng.normal(size=(120, 3))
        y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
        path = tmp_path / f"{site}.csv"
        lines = ["a,b,c,label"] + [f"{r[0]:.5f},{r[1]:.5f},{r[2]:.5f},{t}" for r, t in zip(x, y, strict=False)]
        path.write_text("\n".join(lines) + "\n")
        files[site] = str(path)
    text = GOOD.replace('[data]\ndataset = "heart_disease"',
                        f'[data]\ndataset = "csv"\nlabel_column = "label"\nfiles = {{ north = "{files["north"]}", south = "{files["south"]}" }}')
    text = text.replace("local_steps = 5", "local_steps = 30").replace("lr = 0.01", "lr = 0.5")
    code, out, err = run_cli(["simulate", str(write(tmp_path, text)), "-q"], capsys)
    assert code == 0, err
    assert "north" in out and "south" in out
    from fedblend.store import SqlRunStore

    st = SqlRunStore(tmp_path / "runs" / "cli-test", create=False)
    assert st.rounds()[-1]["global_metrics"]["test_acc"] > 0.8  # a linear rule is learnable
    st.close()
    bad = text.replace('label_column = "label"', 'label_column = "target"')
    code, _, err = run_cli(["simulate", str(write(tmp_path, bad, "bad.toml")), "-q", "--overwrite"], capsys)
    assert code == 2 and "target" in err

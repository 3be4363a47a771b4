"""FLamby's Fed-Heart-Disease protocol, reproduced with fedblend.

Protocol (Ogier du Terrail et al., FLamby, NeurIPS 2022 Datasets and Benchmarks): the 4 hospitals
as sites, Linear(13->1) with a sigmoid (BCE), client SGD, batch 4, 100 local steps per round, 15
rounds, FLamby's tuned learning rates; the metric is the mean over hospitals of the test accuracy
of the final global model, averaged over seeds.

    python benchmarks/flamby_heart.py            # table
    python benchmarks/flamby_heart.py --json     # ... and a JSON object as the last line
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from fedblend.jobs import parse_job
from fedblend.runner import run_job

PUBLISHED = {"FedAvg": 0.685, "FedProx": 0.685, "FedAdam": 0.726, "FedYogi": 0.731}

# FLamby's server optimizers: beta1 0.9, beta2 0.999, tau 1e-8, no bias correction.
_ADAPTIVE = {"beta1": 0.9, "beta2": 0.999, "tau": 1e-8}
STRATEGIES = {
    "FedAvg": ({"name": "fedavg"}, 1e-3),
    "FedProx": ({"name": "fedprox", "mu": 0.01}, 1e-3),
    "FedAdam": ({"name": "fedadam", "server_lr": 0.01, **_ADAPTIVE}, 0.01),
    "FedYogi": ({"name": "fedyogi", "server_lr": 0.01, **_ADAPTIVE}, 0.003162),
}


def job_for(strategy: dict, client_lr: float, seed: int, data_dir: str | None) -> object:
    return parse_job(
        {
            "name": f"flamby-{strategy['name']}-{seed}",
            "seed": seed,
            "rounds": 15,
            "data": {"dataset": "heart_disease", "partition": "natural", **({"dir": data_dir} if data_dir else {})},
            "model": {"name": "logreg"},
            "train": {"optimizer": "sgd", "lr": client_lr, "batch_size": 4, "local_steps": 100, "loss": "bce"},
            "strategy": strategy,
            "eval": {"every": 0, "splits": ["test"]},
            "pool": {"kind": "sequential"},
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    ap.add_argument("--out", default="benchmarks/results/flamby_heart.json")
    args = ap.parse_args()
    console = Console(width=120)
    results: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    for name, (strategy, lr) in STRATEGIES.items():
        for seed in range(args.seeds):
            out = run_job(job_for(strategy, lr, seed, args.data_dir), persist=False)  # type: ignore[arg-type]
            results.setdefault(name, []).append(out.final_metrics["test_acc_mean_sites"])
    table = Table(title=f"FLamby Fed-Heart-Disease, mean-of-hospitals test accuracy ({args.seeds} seeds)", title_justify="left")
    for col in ("strategy", "fedblend mean", "± std", "FLamby published", "difference"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    summary = {}
    for name, accs in results.items():
        m = float(np.mean(accs))
        summary[name] = round(m, 4)
        table.add_row(name, f"{m:.3f}", f"{np.std(accs):.3f}", f"{PUBLISHED[name]:.3f}", f"{m - PUBLISHED[name]:+.3f}")
    console.print(table)
    console.print(f"{time.perf_counter() - t0:.1f} s in all")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"mean_of_hospitals_test_acc": summary, "per_seed": results, "published": PUBLISHED}, indent=2))
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()

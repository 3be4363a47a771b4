"""McMahan et al. 2017 (arXiv:1602.05629), Table 1/2: FedAvg with the 2NN on MNIST, B=10, E=1,
C=0.1 (10 of 100 clients per round): the number of rounds until the global model first reaches
97% test accuracy, for IID data (paper: 87 rounds) and pathological non-IID data (paper: 664),
each client holding 600 examples (non-IID: two label-sorted shards of 300).

Runs through the job-file path (JobSpec -> prepare -> pool -> Federation), evaluating the global
model on the 10,000 test images after every round. The paper tuned the client learning rate per
setting; ``--lr`` sets ours (default 0.1). Long: cap with ``--max-rounds``.

    python benchmarks/fedavg_mnist.py --json                       # both settings
    python benchmarks/fedavg_mnist.py --setting iid --max-rounds 150
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

PAPER = {"iid": 87, "noniid": 664}
TARGET = 0.97


def job_for(setting: str, args: argparse.Namespace) -> object:
    from fedblend.jobs import parse_job

    data: dict = {"dataset": "mnist", "num_sites": 100, "val_fraction": 0.0}
    if setting == "iid":
        data["partition"] = "iid"
    else:
        data.update({"partition": "shards", "shards_per_site": 2, "shard_size": 300})
    if args.data_dir:
        data["dir"] = args.data_dir
    return parse_job(
        {
            "name": f"fedavg-mnist-{setting}",
            "seed": args.seed,
            "rounds": args.max_rounds[setting],
            "data": data,
            "model": {"name": "mlp"},
            "train": {"optimizer": "sgd", "lr": args.lr, "batch_size": 10, "local_epochs": 1, "loss": "ce"},
            "strategy": {"name": "fedavg"},
            "sampling": {"fraction": 0.1},
            "eval": {"every": 1, "splits": ["test"]},
            "pool": {"kind": args.pool, "device": args.device},
        }
    )


def rounds_to_target(setting: str, args: argparse.Namespace, console: object) -> dict:
    from fedblend.runner import build_federation, build_pool, prepare

    job = job_for(setting, args)
    prepared = prepare(job)  # type: ignore[arg-type]
    pool = build_pool(job, prepared)  # type: ignore[arg-type]
    fed = build_federation(job, prepared, pool, None)  # type: ignore[arg-type]
    history: list[float] = []
    reached = None
    t0 = time.perf_counter()
    try:
        while fed.round < job.rounds:  # type: ignore[attr-defined]
            acc = fed.step().global_metrics["test_acc"]
            history.append(acc)
            if fed.round % 25 == 0:
                console.print(f"  {setting}: round {fed.round}, test accuracy {acc:.4f}")  # type: ignore[attr-defined]
            if acc >= TARGET:
                reached = fed.round
                break
    finally:
        pool.close()
    return {
        "setting": setting,
        "rounds_to_97": reached,
        "paper": PAPER[setting],
        "rounds_run": fed.round,
        "best_acc": max(history),
        "final_acc": history[-1],
        "seconds": time.perf_counter() - t0,
        "pool": type(pool).__name__,
        "lr": args.lr,
        "ratio_to_paper": (reached / PAPER[setting]) if reached else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", action="append", choices=["iid", "noniid"], help="default: both")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--max-rounds-iid", type=int, default=400)
    ap.add_argument("--max-rounds-noniid", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    args.max_rounds = {"iid": args.max_rounds_iid, "noniid": args.max_rounds_noniid}
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=args.json, width=120)
    rows = [rounds_to_target(s, args, console) for s in (args.setting or ["iid", "noniid"])]
    table = Table(
        title=f"FedAvg, MNIST 2NN, B=10 E=1 C=0.1, lr={args.lr}: rounds to {TARGET:.0%} test accuracy",
        title_justify="left",
    )
    for col in ("data", "fedblend", "paper", "ratio", "best accuracy", "rounds run", "seconds"):
        table.add_column(col, justify="left" if col == "data" else "right")
    for r in rows:
        table.add_row(
            r["setting"],
            str(r["rounds_to_97"] or f"> {r['rounds_run']}"),
            str(r["paper"]),
            f"{r['ratio_to_paper']:.2f}" if r["ratio_to_paper"] else "-",
            f"{r['best_acc']:.4f}",
            str(r["rounds_run"]),
            f"{r['seconds']:.0f}",
        )
    console.print(table)
    if args.json:
        print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()

"""fedblend vs Flower on one workload: seconds per round, peak memory, test accuracy.

Workload (issue 3; McMahan et al. 2017, arXiv:1602.05629): FedAvg on MNIST, the 2NN
(784-200-200-10), 100 IID clients of 500 examples, 10 clients per round, 1 local epoch, batch 10,
SGD lr 0.1. Both sides read the same partition files, start from the same initial weights
(written once here) and use the same hyperparameters; each runs in its own subprocess, whose
process tree is watched for the peak RSS of its largest process. Seconds per round are measured
from just before round 1 to the end of round R (start-up is reported apart); test accuracy is of
the final global model on the 10,000 MNIST test images, scored here by the same code for both.

Flower 1.41 runs its Simulation Engine (Ray) from an interpreter with ``flwr[simulation]``; by
default the separate venv ``.venv/flower`` (docs/benchmarks/sim.md says how to make it).

    python benchmarks/vs_flower.py --rounds 20 --json
    python benchmarks/vs_flower.py --rounds 5 --skip-flower      # fedblend only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO,
    accuracy,
    env_with_src,
    federation_child,
    first_round_s,
    flower_python,
    per_round_s,
    prepare_mnist,
    run_measured,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--per-client", type=int, default=500)
    ap.add_argument("--clients-per-round", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", default="auto", help="fedblend pool kind (default: auto)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=0, help="fedblend pool workers (vectorized: >= 2 worker processes)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for fedblend (0: torch's default)")
    ap.add_argument("--flower-python", default=None, help="interpreter with flwr[simulation] (default: see docs)")
    ap.add_argument("--flower-cpus-per-client", type=float, default=1.0)
    ap.add_argument("--skip-flower", action="store_true")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--workdir", default=None, help="where the workload files go (default: a temporary directory)")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--side", choices=["fedblend"], help=argparse.SUPPRESS)
    ap.add_argument("--cfg", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side == "fedblend":
        print(json.dumps(federation_child(Path(args.workdir), json.loads(args.cfg))))
        return

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=args.json, width=120)
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="fedblend-vs-flower-")
    workdir = Path(args.workdir or tmp.name)  # type: ignore[union-attr]
    cfg = {
        "rounds": args.rounds,
        "num_clients": args.clients,
        "per_client": args.per_client,
        "clients_per_round": args.clients_per_round,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "local_epochs": args.local_epochs,
        "seed": args.seed,
        "pool": args.pool,
        "device": args.device,
        "threads": args.threads,
        "workers": args.workers,
    }
    prepare_mnist(workdir, num_clients=args.clients, per_client=args.per_client, seed=args.seed, data_dir=args.data_dir)
    sys.path.insert(0, str(REPO / "src"))
    from fedblend.task import TorchTask

    init = TorchTask("mlp", model_params={"in_features": 784, "num_classes": 10}).init_weights(args.seed)
    (workdir / "initial.safetensors").write_bytes(init.to_bytes())

    console.print(f"fedblend: {args.rounds} rounds ...")
    fb = run_measured(
        [sys.executable, __file__, "--side", "fedblend", "--workdir", str(workdir), "--cfg", json.dumps(cfg)],
        env=env_with_src(),
    )
    fb_out = fb.json_tail()
    result = {
        "fedblend_s_per_round": per_round_s(fb_out["stamps"]),
        "fedblend_peak_mb": fb.peak_largest_mb,
        "fedblend_acc": accuracy(workdir / "fedblend_final.safetensors", workdir),
        "fedblend_pool": fb_out["pool"],
        "fedblend_train_path": fb_out.get("train_path", ""),
        "fedblend_startup_s": fb_out["startup_s"],
        "fedblend_first_round_s": first_round_s(fb_out["stamps"]),
        "fedblend_wall_s": fb.wall_s,
        "fedblend_cpu_s_per_round": fb.cpu_per_round(fb_out["stamps"]),
        "rounds": args.rounds,
    }
    if not args.skip_flower:
        py = flower_python(args.flower_python)
        if py is None:
            raise SystemExit(
                "no interpreter with flwr[simulation] found; see docs/benchmarks/sim.md or pass --flower-python"
            )
        console.print(f"Flower ({py}): {args.rounds} rounds ...")
        env = dict(os.environ, FB_FLOWER_WORKDIR=str(workdir), FB_FLOWER_CFG=json.dumps(cfg))
        env.pop("PYTHONPATH", None)
        fl = run_measured(
            [
                py,
                str(Path(__file__).with_name("_flower_app.py")),
                str(workdir),
                "--num-cpus-per-client",
                str(args.flower_cpus_per_client),
            ],
            env=env,
        )
        fl_out = fl.json_tail()
        result.update(
            {
                "flower_s_per_round": per_round_s(fl_out["stamps"]),
                "flower_peak_mb": fl.peak_largest_mb,
                "flower_acc": accuracy(workdir / "flower_final.safetensors", workdir),
                "flower_startup_s": fl_out["stamps"][0][1] - fl_out["t0"],
                "flower_first_round_s": first_round_s(fl_out["stamps"]),
                "flower_wall_s": fl.wall_s,
                "flower_cpu_s_per_round": fl.cpu_per_round(fl_out["stamps"]),
                "flower_peak_total_mb": fl.peak_total_mb,
                "flower_largest_process": fl.largest_name,
            }
        )
        result["speedup"] = result["flower_s_per_round"] / result["fedblend_s_per_round"]
        result["speedup_end_to_end"] = result["flower_wall_s"] / result["fedblend_wall_s"]
        result["cpu_ratio"] = result["flower_cpu_s_per_round"] / result["fedblend_cpu_s_per_round"]
        result["memory_ratio"] = result["flower_peak_mb"] / result["fedblend_peak_mb"]
        result["acc_diff_points"] = 100 * (result["fedblend_acc"] - result["flower_acc"])
    result["fedblend_peak_total_mb"] = fb.peak_total_mb
    result["load_average"] = os.getloadavg()[0]

    table = Table(
        title=f"FedAvg, MNIST 2NN, {args.clients} IID clients x {args.per_client}, {args.clients_per_round}/round, "
        f"E={args.local_epochs} B={args.batch_size} lr={args.lr}, {args.rounds} rounds",
        title_justify="left",
    )
    cols = (
        "",
        "s / round",
        "CPU s / round",
        "round 1 s",
        "wall s",
        "peak MB (largest process)",
        "peak MB (all)",
        "test accuracy",
    )
    for col in cols:
        table.add_column(col, justify="left" if not col else "right")
    table.add_row(
        f"fedblend ({result['fedblend_pool']}; {result['fedblend_train_path']})",
        f"{result['fedblend_s_per_round']:.3f}",
        f"{result['fedblend_cpu_s_per_round']:.3f}",
        f"{result['fedblend_first_round_s']:.1f}",
        f"{result['fedblend_wall_s']:.1f}",
        f"{result['fedblend_peak_mb']:.0f}",
        f"{fb.peak_total_mb:.0f}",
        f"{result['fedblend_acc']:.4f}",
    )
    if "flower_s_per_round" in result:
        table.add_row(
            "Flower 1.41 (Ray)",
            f"{result['flower_s_per_round']:.3f}",
            f"{result['flower_cpu_s_per_round']:.3f}",
            f"{result['flower_first_round_s']:.1f}",
            f"{result['flower_wall_s']:.1f}",
            f"{result['flower_peak_mb']:.0f}",
            f"{result['flower_peak_total_mb']:.0f}",
            f"{result['flower_acc']:.4f}",
        )
        table.add_section()
        table.add_row(
            "Flower / fedblend",
            f"{result['speedup']:.1f}x",
            f"{result['cpu_ratio']:.1f}x",
            "",
            f"{result['speedup_end_to_end']:.1f}x",
            f"{result['memory_ratio']:.1f}x",
            f"{result['flower_peak_total_mb'] / fb.peak_total_mb:.1f}x",
            f"{result['acc_diff_points']:+.2f} points",
        )
    console.print(
        f"per round: mean over rounds 2..{args.rounds} (round 1, with lazy start-up, apart); CPU s: all processes; "
        f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    console.print(table)
    if tmp is not None:
        tmp.cleanup()
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()

"""How fedblend's simulation scales: seconds per round and memory as clients per round grow, as
the model grows, and across rounds.

Workload: MNIST, clients of 50 examples (IID), FedAvg, 1 local epoch, batch 10, SGD lr 0.1. Each
configuration runs in its own process; we report the mean seconds per round, the peak RSS of that
process, its RSS after the first and the last round (flat means memory does not grow with rounds),
and the size of the clients' training data (which a simulation must hold; everything else should
not grow with the number of clients).

Sweeps (``--sweep``):
  clients  2NN, 1000 clients in all, 10 / 50 / 200 / 1000 of them per round
  model    2NN vs McMahan's CNN, 1000 clients, 50 per round
  total    2NN, 50 per round, 100 vs 1000 clients in all
  accept   the acceptance run: 1000 clients, 50 per round, 10 rounds, RSS after every round

    python benchmarks/scaling.py                      # all sweeps, 5 rounds each (accept: 10)
    python benchmarks/scaling.py --sweep accept --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import env_with_src, federation_child, per_round_s, prepare_mnist, run_measured  # noqa: E402

PER_CLIENT = 50


def configs(sweep: str, rounds: int) -> list[dict]:
    base = {
        "per_client": PER_CLIENT,
        "lr": 0.1,
        "batch_size": 10,
        "local_epochs": 1,
        "seed": 0,
        "model": "mlp",
        "num_clients": 1000,
        "clients_per_round": 50,
        "rounds": rounds,
    }
    if sweep == "clients":
        return [{**base, "clients_per_round": k} for k in (10, 50, 200, 1000)]
    if sweep == "model":
        return [{**base, "model": m, "rounds": rounds if m == "mlp" else max(2, rounds // 2)} for m in ("mlp", "cnn")]
    if sweep == "total":
        return [{**base, "num_clients": n} for n in (100, 1000)]
    if sweep == "accept":
        return [{**base, "rounds": max(rounds, 10)}]
    raise SystemExit(f"unknown sweep {sweep!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--sweep",
        action="append",
        choices=["clients", "model", "total", "accept"],
        help="which sweep(s) to run (default: all)",
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pool", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument(
        "--keep-history",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the engine keeps every round's result in memory (as it does today); "
        "--no-keep-history shows the pool's own memory",
    )
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--cfg", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        print(json.dumps(federation_child(Path(args.side), json.loads(args.cfg))))
        return

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=args.json, width=140)
    sweeps = args.sweep or ["clients", "model", "total", "accept"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedblend-scaling-") as tmp:
        for total in sorted({c["num_clients"] for s in sweeps for c in configs(s, args.rounds)}):
            prepare_mnist(
                Path(tmp) / str(total), num_clients=total, per_client=PER_CLIENT, seed=0, data_dir=args.data_dir
            )
        for sweep in sweeps:
            for cfg in configs(sweep, args.rounds):
                cfg = {
                    **cfg,
                    "pool": args.pool,
                    "device": args.device,
                    "threads": args.threads,
                    "keep_history": args.keep_history,
                }
                console.print(
                    f"{sweep}: {cfg['model']}, {cfg['num_clients']} clients, {cfg['clients_per_round']}/round, "
                    f"{cfg['rounds']} rounds ..."
                )
                workdir = Path(tmp) / str(cfg["num_clients"])
                m = run_measured(
                    [sys.executable, __file__, "--side", str(workdir), "--cfg", json.dumps(cfg)], env=env_with_src()
                )
                out = m.json_tail()
                rows.append(
                    {
                        "sweep": sweep,
                        "model": cfg["model"],
                        "num_clients": cfg["num_clients"],
                        "clients_per_round": cfg["clients_per_round"],
                        "rounds": cfg["rounds"],
                        "pool": out["pool"],
                        "s_per_round": per_round_s(out["stamps"]),
                        "peak_mb": m.peak_largest_mb,
                        "rss_after_round1_mb": out["rss_mb"][1],
                        "rss_after_last_mb": out["rss_mb"][-1],
                        "rss_per_round_mb": [round(r, 1) for r in out["rss_mb"]],
                        "data_mb": out["data_mb"],
                    }
                )
    table = Table(
        title=f"fedblend simulation scaling (MNIST, clients of {PER_CLIENT} examples, FedAvg E=1 B=10)",
        title_justify="left",
    )
    for col in (
        "sweep",
        "model",
        "clients",
        "per round",
        "pool",
        "s / round",
        "peak MB",
        "RSS round 1",
        "RSS last",
        "data MB",
    ):
        table.add_column(col, justify="left" if col in ("sweep", "model", "pool") else "right")
    for r in rows:
        table.add_row(
            r["sweep"],
            r["model"],
            str(r["num_clients"]),
            str(r["clients_per_round"]),
            r["pool"],
            f"{r['s_per_round']:.3f}",
            f"{r['peak_mb']:.0f}",
            f"{r['rss_after_round1_mb']:.0f}",
            f"{r['rss_after_last_mb']:.0f}",
            f"{r['data_mb']:.0f}",
        )
    console.print(table)
    for r in rows:
        if r["sweep"] == "accept":
            growth = r["rss_after_last_mb"] - r["rss_after_round1_mb"]
            console.print(
                f"acceptance: RSS after each round (MB) {r['rss_per_round_mb']}; growth after round 1: {growth:+.1f} MB"
            )
    if args.json:
        print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()

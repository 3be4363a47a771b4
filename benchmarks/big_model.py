"""A 100 MB model over the real deployment stack: server memory stays a small multiple of one model.

One server process and N site processes (default 4) on 127.0.0.1, mutual TLS, chunked streaming
both ways with sha256 per chunk, FedAvg for R rounds (default 3) and an evaluation at the end.
The model is synthetic (25 float32 tensors of 4 MiB, like the blocks of a transformer) and the
sites' "training" is a deterministic perturbation, so the figure measures transport and server
memory, not learning. The server runs the real Federation, DeploymentPool, FastAPI app, uvicorn
and SQLite run store (checkpoints included).

Server memory: peak RSS (the kernel's VmHWM) minus the RSS of the started server before the model
exists (Python, numpy, torch, FastAPI imported), divided by the model size.

    PYTHONPATH=src python benchmarks/big_model.py                 # table
    PYTHONPATH=src python benchmarks/big_model.py --sites 8 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

MIB = 1024 * 1024


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def model(mb: float, seed: int = 0) -> Any:
    from fedblend.weights import Weights

    rng = np.random.default_rng(seed)
    per = 4 * MIB // 4
    n = max(1, round(mb * MIB / (per * 4)))
    arrays = {f"block{i:02d}.weight": rng.standard_normal(per, dtype=np.float32).reshape(1024, -1) for i in range(n)}
    arrays["head.bias"] = np.zeros(16, np.float32)
    return Weights(arrays)


# -- server role ------------------------------------------------------------------------------------
def run_server(args: argparse.Namespace) -> None:
    from fedblend.engine.federation import Federation
    from fedblend.net.ca import CertificateAuthority, RevocationList
    from fedblend.net.config import parse_deploy
    from fedblend.net.coordinator import Coordinator
    from fedblend.net.pool import DeploymentPool
    from fedblend.net.server import create_app, serve, tune_malloc
    from fedblend.store import SqlRunStore
    from fedblend.strategies import make_strategy

    if not args.no_tune:
        tune_malloc()  # as `fedblend server` does

    work = Path(args.dir)
    ca = CertificateAuthority(work / "ca")
    sites = [f"site{i}" for i in range(args.sites)]
    spec = parse_deploy(
        {
            "sites": sites,
            "deadline_s": 3600,
            "heartbeat_s": 2,
            "missed_heartbeats": 30,
            "max_update_mb": 4 * args.mb,
            "linger_s": 30,
        }
    )
    store = SqlRunStore(work / "state")
    baseline = _status("VmRSS")
    pool = DeploymentPool(spec, spool_dir=work / "state" / "spool", job_toml='name = "big-model"', store=store)
    init = model(args.mb)
    marks: dict[str, int] = {"after_model": _status("VmRSS")}
    model_bytes = init.nbytes
    del init  # the Federation builds its own copy below; keep only one

    def make_federation(total: int) -> Federation:
        return Federation(
            pool=pool,
            strategy=make_strategy("fedavg"),
            initial_weights=model(args.mb),
            rounds=total,
            seed=0,
            eval_every=0,
            eval_splits=("test",),
            store=store,
        )

    coord = Coordinator(pool, store, make_federation, spec=spec, rounds=args.rounds)
    app = create_app(
        pool, revocations=RevocationList([ca.revoked_path]), admin_token_hash=ca.admin_token_hash, coordinator=coord
    )
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            samples.append((time.time(), _status("VmRSS")))

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.time()

    def started(port: int) -> None:
        (work / "ready.json").write_text(json.dumps({"port": port}))

    coord.start()
    serve(
        app,
        host="127.0.0.1",
        port=0,
        cert=str(ca.server_cert_path),
        key=str(ca.server_key_path),
        ca=str(ca.ca_cert_path),
        on_started=started,
        until=lambda: coord.finished.is_set() and pool.all_told_done(),
    )
    stop.set()
    wall = time.time() - t0
    rounds = store.rounds()
    out = {
        "model_bytes": model_bytes,
        "baseline_rss": baseline,
        "peak_rss": _status("VmHWM"),
        "after_model_rss": marks["after_model"],
        "rounds": len(rounds),
        "round_s": [r["duration_s"] for r in rounds],
        "wall_s": wall,
        "error": None if coord.error is None else str(coord.error),
        "t0": t0,
        "timeline": [(round(t - t0, 2), r) for t, r in samples],
    }
    pool.close()
    store.close()
    (work / "server.json").write_text(json.dumps(out))


# -- site role --------------------------------------------------------------------------------------
class _Perturb:
    """A stand-in Task: 'training' returns 0.999 * w + 0.001 (deterministic), evaluation fixed sums."""

    def init_weights(self, seed: int) -> Any:
        raise NotImplementedError

    def train(self, weights: Any, data: Any, config: Any, seed: int) -> Any:
        from fedblend.task.base import TrainOutput

        return TrainOutput(
            weights=weights.map(lambda v: (v * np.float32(0.999) + np.float32(0.001)).astype(v.dtype)),
            num_examples=100,
            metrics={"train_loss": 1.0},
        )

    def evaluate(self, weights: Any, data: Any, reference: Any = None) -> Any:
        from fedblend.task.base import EvalSums

        return EvalSums(num_examples=10, loss_sum=5.0, correct=7.0)


def run_site(args: argparse.Namespace) -> int:
    from fedblend.data.base import ArraySplit, SiteData
    from fedblend.engine.site import SiteRunner
    from fedblend.net.agent import LocalSite, SiteAgent
    from fedblend.net.identity import load_bundle
    from fedblend.net.wire import Schema

    def load_site(job_toml: str, name: str) -> LocalSite:
        split = ArraySplit(np.zeros((20, 13), np.float32), np.arange(20) % 2)
        runner = SiteRunner(SiteData(name, split, ArraySplit.empty_like(split), split), _Perturb(), num_classes=2)  # type: ignore[arg-type]
        return LocalSite(runner, Schema(input_shape=[13], num_classes=2), "v1", 40, lambda: "v1")

    agent = SiteAgent(load_bundle(args.bundle), load_site, server_url=args.server)
    return agent.run()


# -- orchestration ----------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=100.0, help="model size in MiB")
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--role", choices=["main", "server", "site"], default="main", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--bundle", help=argparse.SUPPRESS)
    ap.add_argument("--server", help=argparse.SUPPRESS)
    ap.add_argument("--keep", help=argparse.SUPPRESS)
    ap.add_argument(
        "--no-tune", action="store_true", help="leave glibc malloc at its defaults in the server"
    )  # keep the work directory here (debugging)
    args = ap.parse_args()
    if args.role == "server":
        run_server(args)
        return
    if args.role == "site":
        raise SystemExit(run_site(args))

    from fedblend.net.ca import CertificateAuthority

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="fedblend-bigmodel-") as d:
        if args.keep:
            d = args.keep
            Path(d).mkdir(parents=True, exist_ok=True)
        work = Path(d)
        ca = CertificateAuthority.init(work / "ca", server_url="https://127.0.0.1:1")
        bundles = [ca.issue_site(f"site{i}") for i in range(args.sites)]
        me = [
            sys.executable,
            __file__,
            "--mb",
            str(args.mb),
            "--sites",
            str(args.sites),
            "--rounds",
            str(args.rounds),
            "--dir",
            d,
            *(["--no-tune"] if args.no_tune else []),
        ]
        t0 = time.monotonic()
        server = subprocess.Popen([*me, "--role", "server"], env=env)
        while not (work / "ready.json").exists():
            if server.poll() is not None:
                raise SystemExit(f"the server exited with {server.returncode}")
            time.sleep(0.1)
        url = f"https://127.0.0.1:{json.loads((work / 'ready.json').read_text())['port']}"
        sites = [
            subprocess.Popen([*me, "--role", "site", "--bundle", str(b), "--server", url], env=env) for b in bundles
        ]
        codes = [p.wait() for p in sites]
        server.wait()
        wall = time.monotonic() - t0
        res = json.loads((work / "server.json").read_text())
    if res["error"] or any(codes):
        raise SystemExit(f"run failed: server error {res['error']!r}, site exit codes {codes}")
    model_b = res["model_bytes"]
    delta = res["peak_rss"] - res["baseline_rss"]
    moved = (
        args.rounds * args.sites * 2 * model_b + args.sites * model_b
    )  # up and down each round, plus the final evaluation
    row = {
        "model_mib": round(model_b / MIB, 1),
        "sites": args.sites,
        "rounds": res["rounds"],
        "server_baseline_rss_mib": round(res["baseline_rss"] / MIB, 1),
        "server_peak_rss_mib": round(res["peak_rss"] / MIB, 1),
        "server_peak_over_baseline_mib": round(delta / MIB, 1),
        "peak_over_baseline_x_model": round(delta / model_b, 2),
        "mean_round_s": round(float(np.mean(res["round_s"])), 2),
        "wall_s": round(wall, 1),
        "throughput_mib_s": round(moved / MIB / max(1e-9, sum(res["round_s"])), 1),
    }
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{row['model_mib']} MiB model, {args.sites} sites, {args.rounds} rounds over mutual-TLS loopback"
    )
    for k in row:
        table.add_column(k.replace("_", " "), justify="right")
    table.add_row(*(str(v) for v in row.values()))
    Console(width=200).print(table)
    if args.json:
        print(json.dumps(row))


if __name__ == "__main__":
    main()

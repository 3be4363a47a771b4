"""Shared helpers for the simulation benchmarks: run a command while tracking the peak memory of
its largest process (children included), prepare the MNIST workload files, score a model.

Peak memory is the largest resident set size (RSS) any single process of the tree reached,
sampled every ``poll_s`` seconds with psutil (a spike shorter than that can be missed), cross-checked
with ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` for the direct child. The sum over the tree's
processes at the same instant is reported too.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MB = 2**20


@dataclass
class Measured:
    rc: int
    wall_s: float
    stdout: str
    stderr: str
    peak_largest_mb: float  # the largest single process, at its peak
    peak_total_mb: float  # the whole process tree, at its peak
    largest_name: str = ""
    # (time.perf_counter(), largest RSS MB, CPU seconds used so far by the whole tree)
    samples: list[tuple[float, float, float]] = field(default_factory=list)

    def json_tail(self) -> dict[str, Any]:
        """The JSON object on the last line of stdout."""
        lines = [ln for ln in self.stdout.strip().splitlines() if ln.strip()]
        if self.rc != 0 or not lines:
            raise RuntimeError(f"command failed (exit {self.rc}):\n{self.stderr[-4000:]}\n{self.stdout[-2000:]}")
        out: dict[str, Any] = json.loads(lines[-1])
        return out

    def cpu_at(self, t: float) -> float:
        """CPU seconds the tree had used at ``time.perf_counter() == t`` (any process's clock:
        on Linux it is the system-wide monotonic clock), interpolated between samples."""
        ts = [s[0] for s in self.samples]
        return float(np.interp(t, ts, [s[2] for s in self.samples])) if ts else float("nan")

    def cpu_per_round(self, stamps: list[Any], skip_first: bool = True) -> float:
        """CPU seconds per round between the round stamps, as ``per_round_s`` measures wall time:
        the work done, whatever share of the CPUs the run got on a busy machine."""
        start = 1 if skip_first and len(stamps) > 2 else 0
        rounds = max(1, stamps[-1][0] - stamps[start][0])
        return (self.cpu_at(stamps[-1][1]) - self.cpu_at(stamps[start][1])) / rounds


def _scan(root: Any, cpu: dict[int, float]) -> tuple[float, float, str]:
    """Largest and total RSS (MB) of the tree, largest's name; updates ``cpu`` (pid -> CPU s)."""
    import psutil

    largest, total, name = 0.0, 0.0, ""
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0.0, ""
    for p in procs:
        try:
            with p.oneshot():
                rss = p.memory_info().rss / MB
                t = p.cpu_times()
            cpu[p.pid] = max(cpu.get(p.pid, 0.0), t.user + t.system)
            if rss > largest:
                largest, name = rss, p.name()
            total += rss
        except psutil.Error:
            continue
    return largest, total, name


def run_measured(
    cmd: list[str],
    *,
    env: dict[str, str] | None = None,
    poll_s: float = 0.05,
    timeout_s: float | None = None,
    cwd: Path | None = None,
) -> Measured:
    """Run ``cmd``; return its output, wall time, peak memory (largest process / whole tree) and
    the tree's CPU time over time.

    Every process of the tree is kept at this process's scheduling priority (``nice``): some
    launchers (Ray's raylet) reset their workers to 0, which would skew a run started with
    ``nice -n -10`` on a busy machine."""
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = psutil.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state: dict[str, Any] = {"largest": 0.0, "total": 0.0, "name": "", "samples": [], "cpu": {}}
    stop = threading.Event()
    niceness = os.nice(0)

    def poll() -> None:
        while not stop.is_set():
            _same_priority(proc, niceness)
            largest, total, name = _scan(proc, state["cpu"])
            if largest > state["largest"]:
                state["largest"], state["name"] = largest, name
            state["total"] = max(state["total"], total)
            state["samples"].append((time.perf_counter(), largest, sum(state["cpu"].values())))
            stop.wait(poll_s)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        for child in proc.children(recursive=True):
            child.kill()
        proc.kill()
        out, err = proc.communicate()
    stop.set()
    th.join()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    largest = max(state["largest"], (after / 1024) if after > before else 0.0)
    return Measured(proc.returncode, wall, out, err, largest, state["total"], state["name"], state["samples"])


def _same_priority(root: Any, niceness: int) -> None:
    import psutil

    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for p in procs:
        try:
            if p.nice() != niceness:
                p.nice(niceness)
        except psutil.Error:
            continue


def self_rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss / MB)


def flower_python(explicit: str | None = None) -> str | None:
    """An interpreter that can import flwr: --flower-python, $FEDBLEND_FLOWER_PYTHON, this one, or
    the benchmark venv ``.venv/flower`` (see docs/benchmarks/sim.md for why it is separate)."""
    candidates = [
        explicit,
        os.environ.get("FEDBLEND_FLOWER_PYTHON"),
        sys.executable,
        str(REPO / ".venv/flower/bin/python"),
    ]
    for c in candidates:
        if not c or not (Path(c).exists() or shutil.which(c)):
            continue
        ok = subprocess.run([c, "-c", "import flwr, ray, torch"], capture_output=True).returncode == 0
        if ok:
            return c
    return None


def prepare_mnist(
    workdir: Path, *, num_clients: int, per_client: int, seed: int, data_dir: str | None = None, partition: str = "iid"
) -> dict[str, Any]:
    """Write the workload: ``train_x.npy`` (clients' examples in client order, float32 (N, 784) in
    [0, 1]), ``train_y.npy``, ``test_x.npy``, ``test_y.npy``; client ``i`` owns rows
    ``[i*per_client, (i+1)*per_client)``. ``iid``: a seeded permutation; ``shards``: McMahan's
    label-sorted shards, two per client."""
    sys.path.insert(0, str(REPO / "src"))
    from fedblend.data.idx import load_idx_pair

    train, test = load_idx_pair("mnist", data_dir)
    n = num_clients * per_client
    if n > len(train):
        raise SystemExit(f"{num_clients} clients x {per_client} examples = {n} > {len(train)} MNIST training examples")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB5]))
    if partition == "iid":
        idx = rng.permutation(len(train))[:n]
    else:  # shards: sort by label, cut into 2*num_clients shards, two random shards per client
        order = np.argsort(train.y[:n], kind="stable")
        shards = order.reshape(2 * num_clients, per_client // 2)
        idx = shards[rng.permutation(2 * num_clients)].reshape(-1)
    workdir.mkdir(parents=True, exist_ok=True)
    np.save(workdir / "train_x.npy", np.ascontiguousarray(train.x[idx].reshape(n, -1), dtype=np.float32))
    np.save(workdir / "train_y.npy", train.y[idx].astype(np.int64))
    np.save(workdir / "test_x.npy", np.ascontiguousarray(test.x.reshape(len(test), -1), dtype=np.float32))
    np.save(workdir / "test_y.npy", test.y.astype(np.int64))
    meta = {"num_clients": num_clients, "per_client": per_client, "seed": seed, "partition": partition}
    (workdir / "meta.json").write_text(json.dumps(meta))
    return meta


def accuracy(weights_file: Path, workdir: Path) -> float:
    """Test accuracy of the 2NN in ``weights_file`` (safetensors) on ``workdir``'s test set."""
    import torch
    from safetensors.torch import load_file

    sys.path.insert(0, str(REPO / "src"))
    from fedblend.task.models import mlp_2nn

    model = mlp_2nn()
    model.load_state_dict(load_file(str(weights_file)))
    x = torch.from_numpy(np.load(workdir / "test_x.npy"))
    y = torch.from_numpy(np.load(workdir / "test_y.npy"))
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 2000]).argmax(1) for i in range(0, len(x), 2000)])
    return float((pred == y).double().mean())


def env_with_src(threads: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def federation_child(workdir: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Run FedAvg on the workload in ``workdir`` in this process; per-round times and RSS.

    ``cfg``: num_clients, per_client, clients_per_round, rounds, lr, batch_size, local_epochs, seed,
    model ("mlp" | "cnn"), pool, workers, device, threads. Sites hold views of one array (no copies). The
    final weights go to ``workdir/fedblend_final.safetensors``.
    """
    import torch

    from fedblend.data.base import ArraySplit, SiteData
    from fedblend.engine.federation import Federation, Sampling
    from fedblend.engine.site import SiteRunner
    from fedblend.sim import make_pool
    from fedblend.strategies import make_strategy
    from fedblend.task import TorchTask
    from fedblend.weights import Weights

    t_boot = time.perf_counter()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    x = np.load(workdir / "train_x.npy")
    y = np.load(workdir / "train_y.npy")
    n = int(cfg["per_client"])
    model = cfg.get("model", "mlp")
    params = {"in_features": 784, "num_classes": 10} if model == "mlp" else {"num_classes": 10}
    task = TorchTask(
        model, model_params=params, lr=cfg["lr"], batch_size=cfg["batch_size"], local_epochs=cfg["local_epochs"]
    )
    runners = []
    for i in range(int(cfg["num_clients"])):
        tr = ArraySplit(x[i * n : (i + 1) * n], y[i * n : (i + 1) * n])  # views, no copies
        site = SiteData(f"c{i:04d}", tr, ArraySplit.empty_like(tr), ArraySplit.empty_like(tr))
        runners.append(SiteRunner(site, task, num_classes=10))
    pool = make_pool(
        cfg.get("pool", "auto"),
        runners,
        task=task,
        device=cfg.get("device", "auto"),
        workers=int(cfg.get("workers", 0)),
    )
    init_file = workdir / "initial.safetensors"
    initial = Weights.from_bytes(init_file.read_bytes()) if init_file.exists() else task.init_weights(int(cfg["seed"]))
    stamps: list[tuple[int, float]] = []
    rss: list[float] = []

    def on_round(result: Any) -> None:
        if not cfg.get("keep_history", True):
            del fed.history[:-1]  # what a long run would do: the store has the rounds
        stamps.append((result.round, time.perf_counter()))
        rss.append(self_rss_mb())

    fed = Federation(
        pool=pool,
        strategy=make_strategy("fedavg"),
        initial_weights=initial,
        rounds=int(cfg["rounds"]),
        seed=int(cfg["seed"]),
        sampling=Sampling(count=int(cfg["clients_per_round"])),
        eval_splits=(),
        callbacks=[on_round],
    )
    rss.append(self_rss_mb())
    stamps.append((0, time.perf_counter()))
    final = fed.run()
    pool.close()
    (workdir / "fedblend_final.safetensors").write_bytes(final.to_bytes())
    return {
        "stamps": stamps,
        "rss_mb": rss,
        "startup_s": stamps[0][1] - t_boot,
        "pool": type(pool).__name__,
        "train_path": train_path(pool),
        "data_mb": (x.nbytes + y.nbytes) / MB,
    }


def train_path(pool: Any) -> str:
    """Which local-training path a VectorizedPool took: "chain" (hand-written Linear/ReLU, no
    autograd, in ``threads`` client groups), "fused", "vmap"; "" for other pools."""
    trainer = getattr(pool, "trainer", None)
    if trainer is None:
        return ""
    import torch

    chain = getattr(trainer, "chain", None)
    if chain is not None and chain.reason is None and chain.verified and all(chain.verified.values()):
        return f"chain, {torch.get_num_threads()} thread(s)"
    return "fused" if getattr(trainer, "fused", None) is not None and trainer.fused.verified else "vmap"


def per_round_s(stamps: list[Any], skip_first: bool = True) -> float:
    """Mean seconds per round from (round, time) stamps, the first taken just before round 1.

    ``skip_first``: measure from the end of round 1 (steady state; round 1 also pays lazy
    start-up such as Ray's or torch's first-use costs), when there are at least two rounds."""
    start = 1 if skip_first and len(stamps) > 2 else 0
    return float((stamps[-1][1] - stamps[start][1]) / max(1, stamps[-1][0] - stamps[start][0]))


def first_round_s(stamps: list[Any]) -> float:
    return float(stamps[1][1] - stamps[0][1]) if len(stamps) > 1 else float("nan")

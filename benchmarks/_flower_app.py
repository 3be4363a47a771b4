"""The Flower side of ``benchmarks/vs_flower.py``: FedAvg in Flower's Simulation Engine (Ray).

Run by vs_flower.py in a subprocess with an interpreter that has ``flwr[simulation]``; it does not
import fedblend. A standard Flower app (Message API, as in Flower's quickstart-pytorch): a
ClientApp that trains McMahan's 2NN with plain SGD on its partition through a shuffling
DataLoader, a ServerApp running ``FedAvg`` from the initial weights vs_flower.py wrote. The
timestamps of the rounds come from ``evaluate_fn`` (Flower calls it before round 1 and after
every round); it does no work.

    python benchmarks/_flower_app.py WORKDIR --rounds 20 --clients-per-round 10
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

WORKDIR = Path(os.environ.get("FB_FLOWER_WORKDIR", "."))
CFG = json.loads(os.environ.get("FB_FLOWER_CFG", "{}"))


class Net(nn.Module):
    """McMahan's 2NN, 784-200-200-10 (same parameter names as fedblend's ``mlp``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 200)
        self.fc2 = nn.Linear(200, 200)
        self.fc3 = nn.Linear(200, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc3(torch.relu(self.fc2(x)))


client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    n = int(CFG["per_client"])
    xs = np.load(WORKDIR / "train_x.npy", mmap_mode="r")[pid * n : (pid + 1) * n]
    ys = np.load(WORKDIR / "train_y.npy", mmap_mode="r")[pid * n : (pid + 1) * n]
    data = TensorDataset(torch.from_numpy(np.array(xs)), torch.from_numpy(np.array(ys)))
    server_round = int(msg.content["config"]["server-round"])
    gen = torch.Generator().manual_seed(int(CFG["seed"]) * 100_003 + server_round * 1009 + pid)
    loader = DataLoader(data, batch_size=int(CFG["batch_size"]), shuffle=True, generator=gen)
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=float(CFG["lr"]))
    model.train()
    total, steps = 0.0, 0
    for _ in range(int(CFG["local_epochs"])):
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss)
            steps += 1
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"train_loss": total / max(1, steps), "num-examples": n}),
        }
    )
    return Message(content=content, reply_to=msg)


server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    random.seed(int(CFG["seed"]))  # Flower samples clients with the random module
    initial = ArrayRecord(load_file(str(WORKDIR / "initial.safetensors")))
    fraction = float(CFG["clients_per_round"]) / float(CFG["num_clients"])
    strategy = FedAvg(fraction_train=fraction, fraction_evaluate=0.0, min_available_nodes=int(CFG["num_clients"]))
    stamps: list[tuple[int, float]] = []

    def mark(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        stamps.append((server_round, time.perf_counter()))
        return None

    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=int(CFG["rounds"]), evaluate_fn=mark)
    save_file(
        {k: v.contiguous() for k, v in result.arrays.to_torch_state_dict().items()},
        str(WORKDIR / "flower_final.safetensors"),
    )
    (WORKDIR / "flower_stamps.json").write_text(json.dumps(stamps))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir")
    ap.add_argument("--num-cpus-per-client", type=float, default=1.0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=int(CFG["num_clients"]),
        backend_config={"client_resources": {"num_cpus": args.num_cpus_per_client, "num_gpus": 0.0}},
    )
    stamps = json.loads((WORKDIR / "flower_stamps.json").read_text())
    print(json.dumps({"wall_s": time.perf_counter() - t0, "stamps": stamps, "t0": t0}))

"""Quickstart: TensorFlow Federated's "federated EMNIST" tutorial, rewritten for fedblend.

TFF's tutorial (Federated Learning for Image Classification) trains a single dense softmax layer,
784 inputs with zero-initialized weights, on the EMNIST clients with FedAvg and prints the
training loss each round. Here: the LEAF FEMNIST sample by writer (3 writers), 62 classes,
client SGD with learning rate 0.1, batch 20, 5 local epochs, server SGD 1.0, 5 rounds.

    python examples/quickstart.py            (data from $FEDBLEND_DATA_DIR or ../shared/data)
"""

from __future__ import annotations

import torch

import fedblend.learning as fl
from fedblend.data import load_dataset

NUM_WRITERS = 3
NUM_ROUNDS = 5


def model_fn() -> torch.nn.Module:
    layer = torch.nn.Linear(784, 62)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    return torch.nn.Sequential(torch.nn.Flatten(), layer)  # softmax lives in the cross-entropy loss


def main() -> list[float]:
    femnist = load_dataset("femnist", num_writers=NUM_WRITERS)
    client_datasets = [site.train for site in femnist.sites.values()]
    print(f"{len(client_datasets)} writers: " + ", ".join(f"{sid} ({len(s.train)} images)" for sid, s in femnist.sites.items()))

    process = fl.build_fedavg(
        model_fn,
        client_optimizer=fl.sgd(learning_rate=0.1),
        server_optimizer=fl.sgd(learning_rate=1.0),
        local_epochs=5,
        batch_size=20,
    )
    state = process.initialize()
    losses = []
    for round_num in range(1, NUM_ROUNDS + 1):
        state, metrics = process.next(state, client_datasets)
        loss = metrics["client_work"]["train"]["loss"]
        losses.append(loss)
        print(f"round {round_num:2d}, loss={loss:.4f}")
    return losses


if __name__ == "__main__":
    main()

"""FedProx: FedAvg aggregation, plus a proximal term ``mu/2 * ||w - w_global||^2`` in local training.

Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020 (arXiv:1812.06127).
The server side is FedAvg; the strategy only tells sites ``proximal_mu`` each round.

    strategy = make_strategy("fedprox", mu=0.01)
"""

from __future__ import annotations

from typing import Any

from fedblend.strategies._params import check_number
from fedblend.strategies.fedavg import FedAvg

__all__ = ["FedProx"]


class FedProx(FedAvg):
    """FedAvg whose sites add ``mu/2 * ||w - w_global||^2`` to their loss (``mu = 0`` is FedAvg)."""

    name = "fedprox"

    def __init__(self, mu: float = 0.01) -> None:
        check_number("FedProx", "mu", mu, low=0.0)
        self.mu = mu

    def configure(self, round: int) -> dict[str, Any]:
        return {"proximal_mu": float(self.mu)}

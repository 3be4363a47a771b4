"""FedAvg: the sample-weighted mean of the sites' models.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS 2017 (arXiv:1602.05629). ``w <- sum_k n_k w_k / sum_k n_k``.

    from fedblend.strategies import make_strategy
    strategy = make_strategy("fedavg")
"""

from __future__ import annotations

from collections.abc import Sequence

from fedblend.records import SiteUpdate
from fedblend.strategies.aggregate import weighted_average
from fedblend.strategies.base import Strategy, check_updates
from fedblend.weights import Weights

__all__ = ["FedAvg"]


class FedAvg(Strategy):
    """Sample-weighted model averaging; stateless."""

    name = "fedavg"

    def __init__(self) -> None:
        pass

    def aggregate(self, current: Weights, updates: Sequence[SiteUpdate]) -> Weights:
        check_updates(current, updates)
        return weighted_average([u.weights for u in updates], [u.num_examples for u in updates])

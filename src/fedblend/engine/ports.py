"""The two ports the round loop talks through: a SitePool (who trains) and a RunStore (where
rounds are committed). Simulation pools (sim/), the deployment pool (net/) and the SQLite store
(store/) implement them; the engine never knows which one it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from fedblend.records import EvalReport, RoundPlan, RoundResult, SiteFailure, SiteStats, SiteUpdate
from fedblend.weights import Weights

__all__ = ["SitePool", "RunStore", "Checkpoint"]


@runtime_checkable
class SitePool(Protocol):
    """Where sites live. Three calls and a close."""

    def site_ids(self) -> list[str]:
        """Sites that can currently take part, in a stable order."""
        ...

    def train(self, plan: RoundPlan, weights: Weights) -> list[SiteUpdate | SiteFailure]:
        """Ask every site in ``plan.site_ids`` to train from ``weights``; one entry per site."""
        ...

    def evaluate(
        self,
        weights: Weights,
        site_ids: Sequence[str],
        split: str,
        reference: Weights | None = None,
    ) -> list[EvalReport | SiteFailure]:
        """Ask sites to score ``weights`` on their ``split``; scalar sums only come back."""
        ...

    def stats(self) -> dict[str, SiteStats]:
        """Each site's privacy-safe data profile."""
        ...

    def close(self) -> None: ...


class Checkpoint(Protocol):
    round: int
    weights: Weights
    strategy_state: dict[str, Weights]
    extra: dict[str, Any]


@runtime_checkable
class RunStore(Protocol):
    """Durable record of one run. ``commit_round`` is atomic: all of a round, or none of it."""

    def commit_round(self, result: RoundResult, strategy_state: dict[str, Weights], extra: dict[str, Any]) -> None: ...

    def last_checkpoint(self) -> Checkpoint | None: ...

    def record_event(self, kind: str, *, round: int | None = None, site_id: str | None = None, **payload: Any) -> None: ...

    def record_site_stats(self, stats: dict[str, SiteStats], heterogeneity: dict[str, float]) -> None: ...

    def set_site_state(self, site_id: str, **fields: Any) -> None: ...

    def set_status(self, status: str, **fields: Any) -> None: ...

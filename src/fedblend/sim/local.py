"""SequentialPool: every site's SiteRunner in this process, one after another.

The reference pool: simplest, slowest, and the one every other pool must agree with.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fedblend.engine.site import SiteRunner
from fedblend.records import EvalReport, RoundPlan, SiteFailure, SiteStats, SiteUpdate
from fedblend.weights import Weights

__all__ = ["SequentialPool"]

log = logging.getLogger(__name__)


class SequentialPool:
    def __init__(self, runners: Sequence[SiteRunner]) -> None:
        self.runners = {r.site_id: r for r in runners}

    def site_ids(self) -> list[str]:
        return list(self.runners)

    def train(self, plan: RoundPlan, weights: Weights) -> list[SiteUpdate | SiteFailure]:
        out: list[SiteUpdate | SiteFailure] = []
        for sid in plan.site_ids:
            try:
                out.append(self.runners[sid].fit(plan, weights))
            except Exception as exc:  # a crashing site must not kill the round
                log.exception("site %s failed in round %d", sid, plan.round)
                out.append(SiteFailure(sid, plan.round, f"{type(exc).__name__}: {exc}"))
        return out

    def evaluate(
        self, weights: Weights, site_ids: Sequence[str], split: str, reference: Weights | None = None
    ) -> list[EvalReport | SiteFailure]:
        out: list[EvalReport | SiteFailure] = []
        for sid in site_ids:
            try:
                out.append(self.runners[sid].evaluate(weights, split, reference))
            except Exception as exc:  # a site that cannot score must not kill the round either
                log.warning("site %s could not evaluate: %s: %s", sid, type(exc).__name__, exc)
                out.append(SiteFailure(sid, 0, f"{type(exc).__name__}: {exc}"))
        return out

    def stats(self) -> dict[str, SiteStats]:
        return {sid: r.stats() for sid, r in self.runners.items()}

    def close(self) -> None:
        pass

"""Federation: the one round loop, for simulation and deployment alike.

    plan = strategy.configure(round) + sampled sites
    results = pool.train(plan, weights)            -> SiteUpdate | SiteFailure per site
    accepted = validator.split(results)            (rejects recorded, round goes on)
    merged = strategy.aggregate(weights, accepted)
    merged = synthesizer.synthesize(...)           (optimal-ratio blend, when due)
    reports = pool.evaluate(merged, ...)           (every ``eval_every`` rounds and at the end)
    store.commit_round(...)                        (atomic; resume starts after the last commit)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from fedblend.engine.ports import RunStore, SitePool
from fedblend.engine.validate import UpdateValidator
from fedblend.errors import ConfigError, QuorumError
from fedblend.records import EvalReport, RoundPlan, RoundResult, SiteUpdate
from fedblend.strategies.base import Strategy
from fedblend.weights import Weights

__all__ = ["Federation", "Sampling", "Synthesizer", "summarize_reports"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    """Which sites train each round: a fraction or a count of the available ones, at least ``min_sites``."""

    fraction: float | None = None
    count: int | None = None
    min_sites: int = 1

    def __post_init__(self) -> None:
        if self.fraction is not None and not (0.0 < self.fraction <= 1.0):
            raise ConfigError(f"sampling.fraction must be in (0, 1] (got {self.fraction!r})")
        if self.count is not None and self.count < 1:
            raise ConfigError(f"sampling.count must be >= 1 (got {self.count!r})")
        if self.min_sites < 1:
            raise ConfigError(f"sampling.min_sites must be >= 1 (got {self.min_sites!r})")

    def choose(self, available: Sequence[str], seed: int, round: int) -> tuple[str, ...]:
        n_avail = len(available)
        if n_avail < self.min_sites:
            raise QuorumError(
                f"round {round}: {n_avail} site(s) available, but min_sites is {self.min_sites}"
            )
        if self.count is not None:
            k = min(self.count, n_avail)
        elif self.fraction is not None:
            k = max(1, int(math.floor(self.fraction * n_avail + 1e-9)))
        else:
            k = n_avail
        k = max(k, self.min_sites)
        if k >= n_avail:
            return tuple(available)
        rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, round, 0x5A11]))
        idx = np.sort(rng.choice(n_avail, size=k, replace=False))
        return tuple(available[i] for i in idx)


class Synthesizer(Protocol):
    """Optimal-ratio blending, seen from the round loop (implemented in fedblend.blend)."""

    def due(self, round: int, last_round: int) -> bool: ...

    def synthesize(
        self, pool: SitePool, current: Weights, merged: Weights, updates: Sequence[SiteUpdate], round: int
    ) -> tuple[Weights, dict[str, Any]]:
        """The weights to adopt and a JSON-able record of the search and its decision."""
        ...


def summarize_reports(reports: Sequence[EvalReport], prefix: str) -> dict[str, float]:
    """Pooled and mean-of-sites loss/accuracy from per-site sums."""
    reps = [r for r in reports if r.num_examples > 0]
    if not reps:
        return {}
    n = sum(r.num_examples for r in reps)
    return {
        f"{prefix}_loss": sum(r.loss_sum for r in reps) / n,
        f"{prefix}_acc": sum(r.correct for r in reps) / n,
        f"{prefix}_acc_mean_sites": float(np.mean([r.accuracy for r in reps])),
        f"{prefix}_acc_worst_site": float(np.min([r.accuracy for r in reps])),
    }


@dataclass
class Federation:
    pool: SitePool
    strategy: Strategy
    initial_weights: Weights
    rounds: int
    seed: int = 0
    sampling: Sampling = field(default_factory=Sampling)
    train_config: dict[str, Any] = field(default_factory=dict)
    eval_every: int = 1  # also at the last round; 0: only at the last round
    eval_splits: tuple[str, ...] = ("test",)
    store: RunStore | None = None
    synthesizer: Synthesizer | None = None
    validator: UpdateValidator = field(default_factory=UpdateValidator)
    callbacks: list[Callable[[RoundResult], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1 (got {self.rounds!r})")
        if self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0 (got {self.eval_every!r})")
        self.weights = self.initial_weights
        self.round = 0  # last completed round
        # every round's result; only the latest keeps its weights (the store has every checkpoint)
        self.history: list[RoundResult] = []

    # -- lifecycle ------------------------------------------------------------------------------
    def resume(self) -> int:
        """Continue after the store's last committed round; returns that round (0 if none)."""
        if self.store is None:
            return 0
        ck = self.store.last_checkpoint()
        if ck is None:
            return 0
        self.initial_weights.check_compatible(ck.weights, "checkpoint")
        self.weights = ck.weights
        self.strategy.load_state_dict(ck.strategy_state)
        self.round = ck.round
        self._event("resumed", round=ck.round)
        return ck.round

    def run(self, *, until: int | None = None) -> Weights:
        """Run rounds ``self.round + 1 .. until`` (default: all); returns the global weights."""
        last = self.rounds if until is None else min(until, self.rounds)
        if self.round == 0 and self.store is not None:
            self._record_stats()
        if self.store is not None:
            self.store.set_status("running", rounds=self.rounds)
        while self.round < last:
            self.step()
        if self.store is not None and self.round >= self.rounds:
            self.store.set_status("finished")
        return self.weights

    # -- one round ------------------------------------------------------------------------------
    def step(self) -> RoundResult:
        rnd = self.round + 1
        t0 = time.perf_counter()
        chosen = self.sampling.choose(self.pool.site_ids(), self.seed, rnd)
        config = {**self.train_config, **self.strategy.configure(rnd)}
        plan = RoundPlan(round=rnd, site_ids=chosen, config=config, seed=self.seed)
        self._event("round_started", round=rnd, sites=list(chosen), stage="training")
        results = self.pool.train(plan, self.weights)
        accepted, failures = self.validator.split(results, self.weights, rnd)
        for f in failures:
            self._event("update_" + f.kind, round=rnd, site_id=f.site_id, reason=f.reason)
            log.warning("round %d: site %s %s: %s", rnd, f.site_id, f.kind, f.reason)
        if len(accepted) < self.sampling.min_sites:
            self._event("round_failed", round=rnd, accepted=len(accepted))
            raise QuorumError(
                f"round {rnd}: {len(accepted)} usable update(s), fewer than min_sites={self.sampling.min_sites}; "
                f"failures: {[(f.site_id, f.reason) for f in failures]}"
            )
        self._event("stage", round=rnd, stage="aggregating")
        merged = self.strategy.aggregate(self.weights, accepted)
        blend_record = None
        if self.synthesizer is not None and self.synthesizer.due(rnd, self.rounds):
            self._event("stage", round=rnd, stage="blending")
            merged, blend_record = self.synthesizer.synthesize(self.pool, self.weights, merged, accepted, rnd)
        reports: list[EvalReport] = []
        global_metrics: dict[str, float] = {}
        if self.eval_splits and (rnd == self.rounds or (self.eval_every and rnd % self.eval_every == 0)):
            self._event("stage", round=rnd, stage="evaluating")
            for split in self.eval_splits:
                got = self.pool.evaluate(merged, self.pool.site_ids(), split)
                reps = [r for r in got if isinstance(r, EvalReport)]
                reports.extend(reps)
                global_metrics.update(summarize_reports(reps, split))
        train_losses = [u.metrics["train_loss"] for u in accepted if "train_loss" in u.metrics]
        if train_losses:
            w = [u.num_examples for u in accepted if "train_loss" in u.metrics]
            global_metrics["train_loss"] = float(np.average(train_losses, weights=w))
        result = RoundResult(
            round=rnd,
            weights=merged,
            participants=tuple(u.site_id for u in accepted),
            failures=tuple(failures),
            train_metrics={u.site_id: {**u.metrics, "num_examples": u.num_examples, "duration_s": u.duration_s} for u in accepted},
            eval_reports=tuple(reports),
            global_metrics=global_metrics,
            blend=blend_record,
            duration_s=time.perf_counter() - t0,
        )
        if self.store is not None:
            self._event("stage", round=rnd, stage="committing")
            self.store.commit_round(result, self.strategy.state_dict(), {"seed": self.seed})
        self.weights = merged
        self.round = rnd
        if self.history:  # earlier rounds keep their metrics, not their weights (memory flat over rounds)
            self.history[-1] = replace(self.history[-1], weights=Weights({}))
        self.history.append(result)
        for cb in self.callbacks:
            cb(result)
        return result

    # -- helpers --------------------------------------------------------------------------------
    def _event(self, kind: str, *, round: int | None = None, site_id: str | None = None, **payload: Any) -> None:
        if self.store is not None:
            self.store.record_event(kind, round=round, site_id=site_id, **payload)

    def _record_stats(self) -> None:
        from fedblend.data.stats import heterogeneity

        assert self.store is not None
        stats = self.pool.stats()
        # suppressed (small) cells count as zero here: the index is approximate by design
        counts = {sid: {k: (v or 0) for k, v in st.label_counts.items()} for sid, st in stats.items()}
        self.store.record_site_stats(stats, heterogeneity(counts) if counts else {})


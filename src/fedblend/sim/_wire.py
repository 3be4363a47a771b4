"""What crosses between a pool and its workers (processes or Ray actors): plain dicts of
numbers and strings, with weights as safetensors bytes. Never a pickled Weights object.

The worker side (``SiteHost``) runs its share of the sites and answers with these dicts; the
pool side turns them back into SiteUpdate / EvalReport / SiteFailure records.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fedblend.engine.site import SiteRunner
from fedblend.records import EvalReport, RoundPlan, SiteFailure, SiteStats, SiteUpdate
from fedblend.weights import Weights

__all__ = ["SiteHost", "plan_to_dict", "plan_from_dict", "decode_train", "decode_eval"]

log = logging.getLogger(__name__)


def plan_to_dict(plan: RoundPlan, site_ids: Sequence[str]) -> dict[str, Any]:
    return {"round": plan.round, "site_ids": list(site_ids), "config": dict(plan.config), "seed": plan.seed}


def plan_from_dict(d: dict[str, Any]) -> RoundPlan:
    return RoundPlan(
        round=int(d["round"]), site_ids=tuple(d["site_ids"]), config=dict(d["config"]), seed=int(d["seed"])
    )


def _failure(sid: str, round: int, exc: BaseException) -> dict[str, Any]:
    return {"site_id": sid, "ok": False, "round": round, "reason": f"{type(exc).__name__}: {exc}"}


class SiteHost:
    """The worker side: a share of the sites behind an in-process pool (``sequential`` runs each
    SiteRunner in turn, ``vectorized`` trains them side by side), answering requests as dicts."""

    def __init__(self, runners: Sequence[SiteRunner], inner: str = "sequential", device: str = "cpu") -> None:
        from fedblend.sim.local import SequentialPool

        self.runners = {r.site_id: r for r in runners}
        if inner == "vectorized":
            from fedblend.sim.vectorized import VectorizedPool

            self.pool: Any = VectorizedPool(list(runners), device=device)
        elif inner == "sequential":
            self.pool = SequentialPool(list(runners))
        else:
            raise ValueError(f"inner pool must be 'sequential' or 'vectorized' (got {inner!r})")

    def train(self, plan_d: dict[str, Any], weights_bytes: bytes) -> list[dict[str, Any]]:
        plan = plan_from_dict(plan_d)
        try:
            weights = Weights.from_bytes(weights_bytes)
        except Exception as exc:
            return [_failure(sid, plan.round, exc) for sid in plan.site_ids]
        out: list[dict[str, Any]] = []
        for sid, u in zip(plan.site_ids, self.pool.train(plan, weights), strict=True):
            if isinstance(u, SiteFailure):
                out.append({"site_id": sid, "ok": False, "round": plan.round, "reason": u.reason, "kind": u.kind})
                continue
            try:
                blob = u.weights.to_bytes()
            except Exception as exc:
                out.append(_failure(sid, plan.round, exc))
                continue
            out.append(
                {
                    "site_id": sid,
                    "ok": True,
                    "round": u.round,
                    "weights": blob,
                    "num_examples": int(u.num_examples),
                    "metrics": {k: float(v) for k, v in u.metrics.items()},
                    "duration_s": float(u.duration_s),
                }
            )
        return out

    def evaluate(
        self, weights_bytes: bytes, site_ids: Sequence[str], split: str, reference_bytes: bytes | None
    ) -> list[dict[str, Any]]:
        try:
            weights = Weights.from_bytes(weights_bytes)
            reference = Weights.from_bytes(reference_bytes) if reference_bytes is not None else None
        except Exception as exc:
            return [_failure(sid, 0, exc) for sid in site_ids]
        out: list[dict[str, Any]] = []
        for sid, r in zip(site_ids, self.pool.evaluate(weights, list(site_ids), split, reference), strict=True):
            if isinstance(r, SiteFailure):
                out.append({"site_id": sid, "ok": False, "round": 0, "reason": r.reason, "kind": r.kind})
                continue
            out.append(
                {
                    "site_id": sid,
                    "ok": True,
                    "split": r.split,
                    "num_examples": int(r.num_examples),
                    "loss_sum": float(r.loss_sum),
                    "correct": float(r.correct),
                    "diff_sum": float(r.diff_sum),
                    "diff_sq_sum": float(r.diff_sq_sum),
                }
            )
        return out

    def stats(self) -> list[dict[str, Any]]:
        return [r.stats().to_json() for r in self.runners.values()]


def decode_train(d: dict[str, Any]) -> SiteUpdate | SiteFailure:
    if not d.get("ok"):
        return SiteFailure(d["site_id"], int(d["round"]), str(d["reason"]), kind=str(d.get("kind", "error")))
    try:
        weights = Weights.from_bytes(d["weights"])
    except Exception as exc:
        return SiteFailure(d["site_id"], int(d["round"]), f"undecodable weights from worker: {exc}")
    return SiteUpdate(
        site_id=d["site_id"],
        round=int(d["round"]),
        weights=weights,
        num_examples=int(d["num_examples"]),
        metrics=dict(d["metrics"]),
        duration_s=float(d["duration_s"]),
    )


def decode_eval(d: dict[str, Any]) -> EvalReport | SiteFailure:
    if not d.get("ok"):
        return SiteFailure(d["site_id"], int(d["round"]), str(d["reason"]), kind=str(d.get("kind", "error")))
    return EvalReport(
        site_id=d["site_id"],
        split=d["split"],
        num_examples=int(d["num_examples"]),
        loss_sum=float(d["loss_sum"]),
        correct=float(d["correct"]),
        diff_sum=float(d["diff_sum"]),
        diff_sq_sum=float(d["diff_sq_sum"]),
    )


def decode_stats(items: Sequence[dict[str, Any]]) -> dict[str, SiteStats]:
    return {d["site_id"]: SiteStats.from_json(d) for d in items}

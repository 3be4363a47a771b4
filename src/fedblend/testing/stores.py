"""Contract every RunStore must honour: atomic rounds, checkpoints that resume, events, sites."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fedblend.records import EvalReport, RoundResult, SiteFailure, SiteStats
from fedblend.weights import Weights

__all__ = ["check_store_contract"]


def _result(rnd: int) -> RoundResult:
    w = Weights({"w": np.full((2, 2), rnd, np.float32)})
    return RoundResult(
        round=rnd, weights=w, participants=("a", "b"), failures=(SiteFailure("c", rnd, "NaN", "rejected"),),
        train_metrics={"a": {"train_loss": 0.5, "num_examples": 10}, "b": {"train_loss": 0.7, "num_examples": 5}},
        eval_reports=(EvalReport("a", "test", 4, 2.0, 3.0),), global_metrics={"test_acc": 0.75}, blend={"decision": "accepted"},
    )


def check_store_contract(factory: Callable[[], Any]) -> None:
    store = factory()
    assert store.last_checkpoint() is None
    state = {"m": Weights({"w": np.ones((2, 2))})}
    for rnd in (1, 2, 3):
        store.commit_round(_result(rnd), state, {"seed": 7})
    ck = store.last_checkpoint()
    assert ck.round == 3 and ck.weights.equal(_result(3).weights)
    assert ck.strategy_state["m"].equal(state["m"]) and ck.extra == {"seed": 7}
    assert [r["round"] for r in store.rounds()] == [1, 2, 3]
    assert store.rounds()[0]["failures"][0]["reason"] == "NaN"
    assert {m["site_id"] for m in store.site_metrics("train")} == {"a", "b"}
    assert store.blends()[-1]["decision"] == "accepted"
    # re-committing a round replaces it, never duplicates it
    store.commit_round(_result(3), state, {"seed": 7})
    assert [r["round"] for r in store.rounds()] == [1, 2, 3]
    assert len([m for m in store.site_metrics("train") if m["round"] == 3]) == 2
    store.record_site_stats({"a": SiteStats("a", 10, 0, 4, {"0": 6, "1": None})}, {"a": 0.1})
    assert store.site_stats()["a"]["label_counts"] == {"0": 6, "1": None}
    store.set_site_state("a", state="training", progress=0.5)
    store.set_site_state("a", state="idle")
    assert store.sites()[0]["state"] == "idle" and store.sites()[0]["progress"] == 0.5
    store.record_event("update_rejected", round=3, site_id="a", reason="NaN")
    ev = store.events()
    assert ev[-1]["kind"] == "update_rejected" and ev[-1]["payload"] == {"reason": "NaN"}
    assert store.sites()[0]["rejected"] == 1
    assert store.events(after_id=ev[-1]["id"]) == []
    store.close()

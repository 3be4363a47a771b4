"""DeploymentPool: the SitePool of a real deployment. The round loop asks it to train or evaluate;
it turns each request into one task per site, hands the tasks to site agents when they poll, and
blocks until every planned site answered, failed, went offline, or the deadline passed.

Fault rules, all here:
- a round closes when every planned site answered, or at ``deadline_s`` with what arrived; fewer
  than ``quorum`` usable updates then raise QuorumError (the coordinator retries the round);
- a site whose heartbeats stop for ``heartbeat_s * missed_heartbeats`` is offline: its open tasks
  fail at once, so the round closes with the rest;
- an update for a task whose round closed is *late*, one for a task the server does not know (an
  older round, or before a server restart) is *stale*: both are refused and recorded;
- the same update sent twice counts once (same sha256: "duplicate"; a different one: refused);
- uploads stream to the spool on disk; an update is a ``DiskWeights`` (tensors read on access).

Sessions and shared state live in ``net.fleet``, task answers and their rules in ``net.answers``.
Site-facing methods (``register``, ``heartbeat``, ``next_work``, ``begin_upload`` ...) raise
``WireError`` with a clear reason; the server turns those into HTTP answers.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence

from fedblend.errors import QuorumError, TransportError
from fedblend.net.answers import TaskAnswers
from fedblend.net.fleet import Result, _Batch, _Task
from fedblend.net.wire import ModelRef
from fedblend.records import EvalReport, RoundPlan, SiteFailure, SiteStats, SiteUpdate
from fedblend.weights import Weights

__all__ = ["DeploymentPool"]

log = logging.getLogger(__name__)
_RefCache = tuple[Weights, ModelRef]


class DeploymentPool(TaskAnswers):
    """SitePool over site agents. ``store`` (optional) receives site states and events.

    ``DeploymentPool(spec, spool_dir=..., job_toml=..., store=..., schema=..., on_schema=...)``
    """

    _ref_cache: _RefCache | None = None  # the last reference model sent (a blend's FedAvg merge)

    def train(self, plan: RoundPlan, weights: Weights) -> list[SiteUpdate | SiteFailure]:
        with self._lock:
            self._round = plan.round
            self._ref_cache = None
            old = [u.path for u in self._uploads.values()]
            self._uploads.clear()
            self._tasks = {k: t for k, t in self._tasks.items() if t.kind != "train"}
        self._spool.discard(old)
        ref = self._publish(weights)
        batch = self._open_batch("train", plan.round, plan.site_ids, self.spec.deadline_s,
                                 lambda b, s: _Task(secrets.token_hex(12), s, "train", plan.round, b, ref,
                                                    config=dict(plan.config), seed=plan.seed))
        results = self._await(batch)
        usable = sum(isinstance(r, SiteUpdate) for r in results)
        need = min(self.spec.quorum or 1, len(plan.site_ids)) if plan.site_ids else 1
        if usable < need:
            reasons = [(r.site_id, r.reason) for r in results if isinstance(r, SiteFailure)]
            self._emit("record_event", "round_failed", round=plan.round, usable=usable, quorum=need,
                       failures=[{"site_id": s, "reason": why} for s, why in reasons])
            raise QuorumError(f"round {plan.round}: {usable} usable update(s) by the deadline, quorum is {need}; failures: {reasons}")
        return results  # type: ignore[return-value]

    def evaluate(self, weights: Weights, site_ids: Sequence[str], split: str,
                 reference: Weights | None = None) -> list[EvalReport | SiteFailure]:
        ref = self._publish(weights)
        refref = None
        if reference is not None:  # a blend scores many candidates against one reference: send it once
            cached = self._ref_cache
            if cached is not None and cached[0] is reference:
                refref = cached[1]
            else:
                refref = self._publish(reference, retire=False)
                self._ref_cache = (reference, refref)
        with self._lock:
            rnd = self._round
        deadline = self.spec.eval_deadline_s or self.spec.deadline_s
        batch = self._open_batch("evaluate", rnd, list(site_ids), deadline,
                                 lambda b, s: _Task(secrets.token_hex(12), s, "evaluate", rnd, b, ref, reference=refref, split=split))
        return self._await(batch)  # type: ignore[return-value]

    def stats(self) -> dict[str, SiteStats]:
        with self._lock:
            return {s: x.stats for s in self.site_ids() if (x := self._sessions[s]).stats is not None}

    def _publish(self, weights: Weights, retire: bool = True) -> ModelRef:
        if retire:
            with self._lock:
                keep = {t.model.model_id for t in self._tasks.values() if not self._batches[t.batch_id].closed}
                if self._ref_cache is not None:
                    keep.add(self._ref_cache[1].model_id)
            self._spool.retire_models(keep)
        return self._spool.publish(weights)

    def _open_batch(self, kind: str, rnd: int, sites: Sequence[str], deadline_s: float,
                    make: Callable[[str, str], _Task]) -> _Batch:
        batch_id = secrets.token_hex(8)
        batch = _Batch(batch_id, kind, rnd, time.monotonic() + deadline_s, list(sites), {})
        woken = []
        with self._cond:
            if self._closed:
                raise TransportError("the deployment pool is closed")
            self._batches = {k: b for k, b in self._batches.items() if not b.closed or any(
                t.batch_id == k for t in self._tasks.values())}
            self._batches[batch_id] = batch
            for s in sites:
                t = make(batch_id, s)
                t.job_id = self.job_id if self._announce_job else None
                batch.tasks[s] = t
                self._tasks[t.task_id] = t
                sess = self._sessions.get(s)
                if sess is None or not sess.registered or sess.state == "offline":
                    why = "never registered" if sess is None else "is offline (missed heartbeats)" if sess.state == "offline" else "is not registered"
                    t.result = SiteFailure(s, rnd, f"site {why}", kind="offline")
                else:
                    sess.queue.append(t.task_id)
                    woken.append(s)
        for s in woken:
            self._wake(s)
        return batch

    def _await(self, batch: _Batch) -> list[Result]:
        what = "update" if batch.kind == "train" else "evaluation"
        deadline_s = self.spec.deadline_s if batch.kind == "train" else (self.spec.eval_deadline_s or self.spec.deadline_s)
        with self._cond:
            while True:
                if self._closed:
                    raise TransportError("the deployment pool was closed while waiting for sites")
                pending = [t for t in batch.tasks.values() if t.result is None]
                if not pending:
                    break
                now = time.monotonic()
                if now >= batch.deadline:
                    for t in pending:
                        t.result = SiteFailure(t.site, batch.round, f"no {what} within the deadline of {deadline_s:g}s", kind="timeout")
                    break
                self._cond.wait(timeout=min(batch.deadline - now, 0.5))
            batch.closed = True
            return [batch.tasks[s].result for s in batch.order]  # type: ignore[misc]

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

Site-facing methods (``register``, ``heartbeat``, ``next_work``, ``begin_upload`` ...) raise
``WireError`` with a clear reason; the server turns those into HTTP answers.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedblend.errors import QuorumError, TransportError
from fedblend.net.config import DeploySpec
from fedblend.net.spool import Spool, Upload
from fedblend.net.wire import (
    ChunkAck,
    EvalResult,
    Heartbeat,
    HeartbeatReply,
    Hello,
    ModelRef,
    Receipt,
    Registered,
    Registration,
    Schema,
    SiteView,
    UploadManifest,
    UploadTicket,
    WireError,
    WorkItem,
)
from fedblend.records import EvalReport, RoundPlan, SiteFailure, SiteStats, SiteUpdate
from fedblend.weights import Weights

__all__ = ["DeploymentPool"]

log = logging.getLogger(__name__)
Result = SiteUpdate | EvalReport | SiteFailure


@dataclass
class _Task:
    task_id: str
    site: str
    kind: str  # "train" | "evaluate"
    round: int
    batch_id: str
    model: ModelRef
    reference: ModelRef | None = None
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    split: str | None = None
    fetched: bool = False
    result: Result | None = None
    upload: Upload | None = None
    committed_sha: str | None = None

    def work_item(self) -> WorkItem:
        return WorkItem(kind=self.kind, task_id=self.task_id, round=self.round, model=self.model,  # type: ignore[arg-type]
                        reference=self.reference, config=self.config, seed=self.seed, split=self.split)


@dataclass
class _Batch:
    batch_id: str
    kind: str
    round: int
    deadline: float
    order: list[str]
    tasks: dict[str, _Task]
    closed: bool = False


@dataclass
class _Session:
    site: str
    registered: bool = False
    state: str = "offline"
    last_seen: float = 0.0
    last_store_write: float = 0.0
    data_version: str = ""
    num_rows: int = 0
    schema: Schema | None = None
    stats: SiteStats | None = None
    queue: deque[str] = field(default_factory=deque)


class DeploymentPool:
    """SitePool over site agents. ``store`` receives site states and events (optional)."""

    def __init__(self, spec: DeploySpec, *, spool_dir: str | Path, job_toml: str, store: Any = None,
                 schema: Schema | None = None, on_schema: Callable[[Schema], None] | None = None) -> None:
        self.spec = spec
        self.job_toml = job_toml
        self.server_id = secrets.token_hex(8)
        self._spool = Spool(spool_dir, spec.chunk_bytes)
        self._schema = schema
        self._on_schema = on_schema
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._sessions: dict[str, _Session] = {}
        self._tasks: dict[str, _Task] = {}
        self._batches: dict[str, _Batch] = {}
        self._uploads: dict[str, Upload] = {}
        self._waiters: dict[str, dict[int, Callable[[], None]]] = {}
        self._round = 0
        self._told_done: set[str] = set()
        self._mode = "running"  # running | idle | done
        self._mode_message = ""
        self._closed = False
        self._store = store
        self._writes: queue.Queue[tuple[str, tuple[Any, ...], dict[str, Any]] | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="fedblend-pool-store", daemon=True)
        self._writer.start()
        self._monitor = threading.Thread(target=self._monitor_loop, name="fedblend-pool-monitor", daemon=True)
        self._monitor.start()

    # == SitePool ====================================================================================
    def site_ids(self) -> list[str]:
        with self._lock:
            names = self.spec.sites or sorted(self._sessions)
            return [s for s in names if (x := self._sessions.get(s)) is not None and x.registered and x.state != "offline"]

    def train(self, plan: RoundPlan, weights: Weights) -> list[SiteUpdate | SiteFailure]:
        with self._lock:
            self._round = plan.round
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
        refref = self._publish(reference, retire=False) if reference is not None else None
        with self._lock:
            rnd = self._round
        deadline = self.spec.eval_deadline_s or self.spec.deadline_s
        batch = self._open_batch("evaluate", rnd, list(site_ids), deadline,
                                 lambda b, s: _Task(secrets.token_hex(12), s, "evaluate", rnd, b, ref, reference=refref, split=split))
        return self._await(batch)  # type: ignore[return-value]

    def stats(self) -> dict[str, SiteStats]:
        with self._lock:
            return {s: x.stats for s in self.site_ids() if (x := self._sessions[s]).stats is not None}

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._wake(None)
        self._writes.put(None)
        self._writer.join(timeout=10)
        self._spool.close()

    # == coordinator-facing ==========================================================================
    @property
    def schema(self) -> Schema | None:
        with self._lock:
            return self._schema

    def wait_for(self, predicate: Callable[[], bool], timeout: float | None = None, stop: threading.Event | None = None) -> bool:
        """Block until ``predicate()`` (checked under the lock) holds; False on timeout, stop or close."""
        end = None if not timeout else time.monotonic() + timeout
        with self._cond:
            while not predicate():
                if self._closed or (stop is not None and stop.is_set()):
                    return False
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(timeout=0.5 if left is None else min(left, 0.5))
            return True

    def offload(self, weights: Weights, tag: str) -> Weights:
        """The same weights, kept on disk (read a tensor at a time when used)."""
        return self._spool.keep(weights, tag)

    def set_mode(self, mode: str, message: str = "") -> None:
        """``running``: hand out tasks; ``idle``: sites wait (continuous federation); ``done``: sites exit."""
        with self._cond:
            self._mode, self._mode_message = mode, message
            self._cond.notify_all()
        self._wake(None)

    def all_told_done(self) -> bool:
        """Every online site has been told the job is done (so the server may exit)."""
        with self._lock:
            return set(self.site_ids()) <= self._told_done

    def data_versions(self) -> dict[str, str]:
        with self._lock:
            return {s: x.data_version for s, x in self._sessions.items() if x.registered}

    def sites_view(self) -> list[SiteView]:
        with self._lock:
            now, wall = time.monotonic(), time.time()
            return [SiteView(site=s, state=x.state, last_heartbeat=wall - (now - x.last_seen) if x.last_seen else None,
                             data_version=x.data_version or None, num_rows=x.num_rows) for s, x in sorted(self._sessions.items())]

    def drop_site(self, site: str, reason: str) -> None:
        """Forget a site (revoked): its open tasks fail and it must register again."""
        with self._cond:
            sess = self._sessions.get(site)
            if sess is None:
                return
            sess.registered, sess.state = False, "rejected"
            self._fail_open_tasks(site, reason, "rejected")
            self._cond.notify_all()
        self._emit("set_site_state", site, state="rejected")

    # == site-facing =================================================================================
    def hello(self, site: str) -> Hello:
        self._check_expected(site)
        return Hello(site=site, server_id=self.server_id, job_toml=self.job_toml, heartbeat_s=self.spec.heartbeat_s,
                     chunk_bytes=self.spec.chunk_bytes, max_update_bytes=self.spec.max_update_bytes,
                     data_check_s=self.spec.data_check_s)

    def register(self, site: str, reg: Registration) -> Registered:
        self._check_expected(site)
        if reg.site_id is not None and reg.site_id != site:
            raise WireError("forbidden", f"the certificate is for site {site!r} but the request claims to be {reg.site_id!r}; "
                            "a site can only speak for itself", record=True)
        stats = None
        if reg.stats:
            try:
                stats = SiteStats.from_json({**reg.stats, "site_id": site})
            except TypeError as exc:
                raise WireError("bad_request", f"stats are not a SiteStats record: {exc}", record=True) from None
        with self._cond:
            if self._schema is None:
                self._schema = reg.schema_
                if self._on_schema is not None:
                    self._on_schema(reg.schema_)
            elif reg.schema_ != self._schema:
                raise WireError("conflict", f"site {site!r} has data of another shape than the federation: "
                                f"{_schema_text(reg.schema_)} vs {_schema_text(self._schema)}; every site must "
                                "use the same features and classes (set [deploy].classes for user data)", record=True)
            sess = self._sessions.setdefault(site, _Session(site))
            sess.registered, sess.state, sess.last_seen = True, "online", time.monotonic()
            sess.data_version, sess.num_rows, sess.schema, sess.stats = reg.data_version, reg.num_rows, reg.schema_, stats
            sess.queue.clear()
            for t in self._open_tasks(site):  # a restarted agent lost what it fetched: hand it out again
                t.fetched = False
                sess.queue.append(t.task_id)
            self._cond.notify_all()
        self._emit("set_site_state", site, state="online", last_heartbeat=time.time(), data_version=reg.data_version,
                   num_rows=reg.num_rows, progress=0.0, info={"agent": reg.agent})
        self._emit("record_event", "site_registered", site_id=site, data_version=reg.data_version, num_rows=reg.num_rows)
        self._wake(site)
        return Registered(site=site, server_id=self.server_id, heartbeat_s=self.spec.heartbeat_s)

    def heartbeat(self, site: str, hb: Heartbeat) -> HeartbeatReply:
        now = time.monotonic()
        came_back = False
        with self._cond:
            sess = self._sessions.get(site)
            if sess is None or not sess.registered:
                return HeartbeatReply(server_id=self.server_id, registered=False)
            came_back = sess.state == "offline"
            if came_back or sess.state not in ("training", "evaluating") or not self._open_tasks(site):
                sess.state = "idle" if came_back or sess.state != "online" else "online"
            state = sess.state  # the server's view; the agent's own report only adds progress
            changed = came_back or (hb.data_version is not None and hb.data_version != sess.data_version)
            sess.last_seen = now
            if hb.data_version is not None:
                sess.data_version = hb.data_version
            if hb.num_rows is not None:
                sess.num_rows = hb.num_rows
            progress = hb.progress if state in ("training", "evaluating") else (1.0 if state == "idle" else 0.0)
            write = changed or now - sess.last_store_write >= max(1.0, self.spec.heartbeat_s)
            if write:
                sess.last_store_write = now
            cancel = hb.task_id is not None and (t := self._tasks.get(hb.task_id)) is not None and t.result is not None
            self._cond.notify_all()
        if came_back:
            self._emit("record_event", "site_online", site_id=site)
        if write:
            self._emit("set_site_state", site, state=state, progress=progress, last_heartbeat=time.time(),
                       data_version=sess.data_version, num_rows=sess.num_rows)
        return HeartbeatReply(server_id=self.server_id, registered=True, cancel_task=cancel)

    def next_work(self, site: str) -> WorkItem | None:
        """The site's next task; a ``done`` item when the job is over; None when there is nothing yet."""
        with self._cond:
            sess = self._registered(site)
            while sess.queue:
                t = self._tasks.get(sess.queue.popleft())
                if t is None or t.result is not None or self._batches[t.batch_id].closed:
                    continue
                t.fetched = True
                sess.state = "training" if t.kind == "train" else "evaluating"
                item, first_done = t.work_item(), False
                break
            else:
                if self._mode != "done":
                    return None
                first_done = site not in self._told_done
                self._told_done.add(site)
                sess.state = "offline"
                item = WorkItem(kind="done", message=self._mode_message or "the job is finished")
        if item.kind == "done":
            if first_done:
                self._emit("set_site_state", site, state="offline")
                self._emit("record_event", "site_done", site_id=site)
        else:
            self._emit("set_site_state", site, state=sess.state, progress=0.0)
        return item

    def add_waiter(self, site: str, wake: Callable[[], None]) -> int:
        token = id(wake)
        with self._lock:
            self._waiters.setdefault(site, {})[token] = wake
        return token

    def remove_waiter(self, site: str, token: int) -> None:
        with self._lock:
            self._waiters.get(site, {}).pop(token, None)

    @property
    def mode_message(self) -> str:
        return self._mode_message

    def read_chunk(self, site: str, model_id: str, index: int) -> bytes:
        with self._lock:
            self._registered(site)
        return self._spool.read_chunk(model_id, index)

    def begin_upload(self, site: str, task_id: str, manifest: UploadManifest) -> UploadTicket:
        with self._cond:
            t = self._task_for(site, task_id, "train")
            if t.result is not None:
                if isinstance(t.result, SiteUpdate) and t.committed_sha == manifest.sha256 and t.upload is not None:
                    return UploadTicket(upload_id=t.upload.upload_id, chunk_bytes=t.upload.chunk_bytes,
                                        received=list(range(t.upload.num_chunks)))
                self._raise_closed(t)
            if manifest.round != t.round:
                raise WireError("stale", f"the update is for round {manifest.round} but task {task_id} is round {t.round} "
                                "(a stale update)", record=True)
            if t.upload is not None and t.upload.manifest == manifest and not t.upload.done:
                up = t.upload
                return UploadTicket(upload_id=up.upload_id, chunk_bytes=up.chunk_bytes, received=sorted(up.received))
        up = self._spool.open_upload(task_id, site, manifest, self.spec.max_update_bytes)
        with self._cond:
            if t.upload is not None:
                self._uploads.pop(t.upload.upload_id, None)
                self._spool.discard([t.upload.path])
            t.upload = up
            self._uploads[up.upload_id] = up
        return UploadTicket(upload_id=up.upload_id, chunk_bytes=up.chunk_bytes, received=[])

    def put_chunk(self, site: str, upload_id: str, index: int, data: bytes) -> ChunkAck:
        up = self._upload_for(site, upload_id)
        if up.done:
            return ChunkAck(index=index, received=up.num_chunks, total=up.num_chunks)
        self._spool.put_chunk(up, index, data)
        return ChunkAck(index=index, received=len(up.received), total=up.num_chunks)

    def commit_upload(self, site: str, upload_id: str) -> Receipt:
        up = self._upload_for(site, upload_id)
        with self._cond:
            t = self._tasks.get(up.task_id)
            if t is None:
                raise WireError("stale", f"task {up.task_id} is over; the update is not counted", record=True)
            if t.result is not None:
                if up.done and isinstance(t.result, SiteUpdate):
                    return Receipt(status="duplicate", detail="this update was already received; it counts once")
                self._raise_closed(t)
        try:
            weights = self._spool.finish(up)
        except WireError as exc:
            if exc.code == "rejected":
                with self._cond:
                    if t.result is None:
                        self._resolve(t, SiteFailure(site, t.round, exc.detail, kind="rejected"))
                exc.record = False  # the round loop records the rejected update against the site
            raise
        m = up.manifest
        update = SiteUpdate(site_id=site, round=m.round, weights=weights, num_examples=m.num_examples,
                            metrics=dict(m.metrics), duration_s=m.duration_s)
        with self._cond:
            if t.result is not None:
                if isinstance(t.result, SiteUpdate):
                    return Receipt(status="duplicate", detail="this update was already received; it counts once")
                self._raise_closed(t)
            up.done = True
            t.committed_sha = m.sha256
            self._resolve(t, update)
        return Receipt(status="accepted", detail=f"update for round {t.round} received")

    def submit_eval(self, site: str, task_id: str, res: EvalResult) -> Receipt:
        with self._cond:
            t = self._task_for(site, task_id, "evaluate")
            if t.result is not None:
                if isinstance(t.result, EvalReport):
                    return Receipt(status="duplicate", detail="this evaluation was already received; it counts once")
                self._raise_closed(t)
            if res.split != t.split:
                raise WireError("bad_request", f"task {task_id} asked for split {t.split!r}, the result is for {res.split!r}", record=True)
            if res.correct > res.num_examples:
                raise WireError("bad_request", f"correct ({res.correct}) cannot exceed num_examples ({res.num_examples})", record=True)
            self._resolve(t, EvalReport(site_id=site, split=res.split, num_examples=res.num_examples, loss_sum=res.loss_sum,
                                        correct=res.correct, diff_sum=res.diff_sum, diff_sq_sum=res.diff_sq_sum))
        return Receipt(status="accepted")

    def fail_task(self, site: str, task_id: str, reason: str) -> Receipt:
        with self._cond:
            t = self._task_for(site, task_id, None)
            if t.result is None:
                self._resolve(t, SiteFailure(site, t.round, f"site reported an error: {reason}", kind="error"))
        return Receipt(status="accepted")

    def record_rejection(self, site: str | None, code: str, detail: str, path: str = "") -> None:
        self._emit("record_event", "request_rejected", site_id=site, code=code, detail=detail[:500], path=path)

    # == internals ===================================================================================
    def _publish(self, weights: Weights, retire: bool = True) -> ModelRef:
        if retire:
            with self._lock:
                keep = {t.model.model_id for t in self._tasks.values() if not self._batches[t.batch_id].closed}
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

    def _resolve(self, t: _Task, result: Result) -> None:
        t.result = result
        sess = self._sessions.get(t.site)
        if sess is not None and sess.state in ("training", "evaluating"):
            sess.state = "idle"
        self._cond.notify_all()
        self._emit("set_site_state", t.site, state="idle", progress=1.0)

    def _open_tasks(self, site: str) -> list[_Task]:
        return [t for t in self._tasks.values() if t.site == site and t.result is None and not self._batches[t.batch_id].closed]

    def _fail_open_tasks(self, site: str, reason: str, kind: str) -> None:
        for t in self._open_tasks(site):
            t.result = SiteFailure(site, t.round, reason, kind=kind)

    def _registered(self, site: str) -> _Session:
        sess = self._sessions.get(site)
        if sess is None or not sess.registered:
            raise WireError("not_registered", f"site {site!r} is not registered with this server (it may have restarted); register again")
        return sess

    def _check_expected(self, site: str) -> None:
        if self.spec.sites and site not in self.spec.sites:
            raise WireError("forbidden", f"site {site!r} is not part of this job (its [deploy].sites are {self.spec.sites})", record=True)

    def _task_for(self, site: str, task_id: str, kind: str | None) -> _Task:
        self._registered(site)
        t = self._tasks.get(task_id)
        if t is None:
            raise WireError("stale", f"task {task_id!r} is unknown: it belongs to a round that is over, or the server "
                            "restarted since; the answer is not counted; fetch new work", record=True)
        if t.site != site:
            raise WireError("forbidden", f"task {task_id!r} was given to another site; a site can only answer its own tasks", record=True)
        if kind is not None and t.kind != kind:
            raise WireError("bad_request", f"task {task_id!r} is a {t.kind} task, not {kind}", record=True)
        return t

    def _raise_closed(self, t: _Task) -> None:
        r = t.result
        if isinstance(r, SiteFailure) and r.kind == "timeout":
            raise WireError("late", f"round {t.round} closed at its deadline before this answer arrived; it is not counted", record=True)
        if isinstance(r, SiteFailure):
            raise WireError("late", f"task {t.task_id} was already closed for this site ({r.kind}: {r.reason}); not counted", record=True)
        raise WireError("conflict", f"an answer for task {t.task_id} was already received; a different second answer is refused", record=True)

    def _upload_for(self, site: str, upload_id: str) -> Upload:
        with self._lock:
            self._registered(site)
            up = self._uploads.get(upload_id)
            if up is None:
                raise WireError("stale", f"upload {upload_id!r} is unknown (its round is over or the server restarted)", record=True)
            if up.site != site:
                raise WireError("forbidden", f"upload {upload_id!r} belongs to another site", record=True)
            return up

    def _wake(self, site: str | None) -> None:
        with self._lock:
            if site is None:
                calls = [w for ws in self._waiters.values() for w in ws.values()]
            else:
                calls = list(self._waiters.get(site, {}).values())
        for w in calls:
            try:
                w()
            except RuntimeError:  # the waiter's event loop is gone
                pass

    def _emit(self, method: str, *args: Any, **kwargs: Any) -> None:
        if self._store is not None:
            self._writes.put((method, args, kwargs))

    def _write_loop(self) -> None:
        while True:
            item = self._writes.get()
            if item is None:
                return
            method, args, kwargs = item
            try:
                getattr(self._store, method)(*args, **kwargs)
            except Exception:  # the store must never take the fleet down
                log.exception("run store write %s failed", method)

    def _monitor_loop(self) -> None:
        tick = min(1.0, self.spec.heartbeat_s / 2)
        limit = self.spec.offline_after_s
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                gone = []
                for s, sess in self._sessions.items():
                    if sess.registered and sess.state != "offline" and now - sess.last_seen > limit:
                        sess.state = "offline"
                        silent = now - sess.last_seen
                        self._fail_open_tasks(s, f"site went offline: no heartbeat for {silent:.1f}s (limit {limit:g}s)", "offline")
                        gone.append((s, silent))
                if gone:
                    self._cond.notify_all()
                self._cond.wait(timeout=tick)
            for s, silent in gone:
                log.warning("site %s is offline (no heartbeat for %.1fs)", s, silent)
                self._emit("set_site_state", s, state="offline")
                self._emit("record_event", "site_offline", site_id=s, silent_s=round(silent, 2))


def _schema_text(s: Schema) -> str:
    return f"input shape {tuple(s.input_shape)}, {s.num_classes} classes, {s.kind}"

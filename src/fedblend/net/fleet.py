"""Fleet: what the server knows about its sites, and the state every request shares.

Sessions (one per site certificate that registered: state, last heartbeat, data version, row
count, schema, stats, queue of tasks), the tasks and batches of the current request, uploads in
flight, long-poll waiters, the run mode (running, idle, done), a writer thread that puts site
states and events into the run store, and a monitor thread that marks silent sites offline and
fails their open tasks at once. ``TaskAnswers`` (net.answers) and ``DeploymentPool`` (net.pool)
build on it; every method that changes state holds ``self._cond``.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedblend.errors import FedblendError
from fedblend.net.config import DeploySpec
from fedblend.net.spool import Spool, Upload
from fedblend.net.wire import (
    Heartbeat,
    HeartbeatReply,
    Hello,
    ModelRef,
    Registered,
    Registration,
    Schema,
    SiteView,
    WireError,
    WorkItem,
    job_id_of,
)
from fedblend.records import EvalReport, SiteFailure, SiteStats, SiteUpdate
from fedblend.weights import Weights

__all__ = ["Fleet"]

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
    job_id: str | None = None  # set once the server switched jobs (see Fleet.set_job)

    def work_item(self) -> WorkItem:
        return WorkItem(kind=self.kind, task_id=self.task_id, round=self.round, model=self.model,  # type: ignore[arg-type]
                        reference=self.reference, config=self.config, seed=self.seed, split=self.split, job_id=self.job_id)


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


class Fleet:
    """Sessions, tasks and shared state of the deployment server (see the module docstring)."""

    def __init__(self, spec: DeploySpec, *, spool_dir: str | Path, job_toml: str, store: Any = None,
                 schema: Schema | None = None, on_schema: Callable[[Schema], None] | None = None) -> None:
        self.spec = spec
        self.job_toml = job_toml
        self.job_id = job_id_of(job_toml)
        self._announce_job = False  # tasks carry job_id once set_job was called (old agents never see it otherwise)
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

    def site_ids(self) -> list[str]:
        with self._lock:
            names = self.spec.sites or sorted(self._sessions)
            return [s for s in names if (x := self._sessions.get(s)) is not None and x.registered and x.state != "offline"]

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

    def set_job(self, job_toml: str) -> bool:
        """Switch the job the sites run, between rounds only (no request may be open); True if it changed.

        From then on every task carries the job's id: a site holding another job fetches /v1/hello
        again, reloads its site from the new job and registers again before it does the task.
        """
        with self._cond:
            if self._closed:
                raise FedblendError("the deployment pool is closed")
            open_ = sorted({b.kind for b in self._batches.values() if not b.closed})
            if open_:
                raise FedblendError(f"the job cannot change while a {'/'.join(open_)} request is open; switch between rounds")
            changed = job_toml != self.job_toml
            self.job_toml, self.job_id, self._announce_job = job_toml, job_id_of(job_toml), True
        if changed:
            self._emit("record_event", "job_switched", job_id=self.job_id)
        return changed

    def hello(self, site: str) -> Hello:
        self._check_expected(site)
        with self._lock:
            job_toml = self.job_toml
        return Hello(site=site, server_id=self.server_id, job_toml=job_toml, heartbeat_s=self.spec.heartbeat_s,
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
            if self._mode == "done" and site in self._told_done:
                # told the job is done and leaving: a heartbeat sent on its way out does not bring it back
                sess.last_seen = now
                return HeartbeatReply(server_id=self.server_id, registered=True)
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

    def record_rejection(self, site: str | None, code: str, detail: str, path: str = "") -> None:
        self._emit("record_event", "request_rejected", site_id=site, code=code, detail=detail[:500], path=path)

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

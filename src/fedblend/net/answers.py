"""TaskAnswers: how sites take tasks and answer them, with the rules at the trust boundary.

- a site gets only its own tasks; answering another site's task is refused;
- a task whose round closed makes its answer *late*; a task the server does not know (an older
  round, or before a restart) makes it *stale*; a manifest for another round is *stale* too;
- the same update (same sha256) sent twice counts once (``duplicate``); a different second
  answer is refused (``conflict``);
- an upload is a manifest, chunks (each checked against its sha256) and a commit (the whole file
  checked, then parsed as safetensors); a file that is not valid weights fails the task as
  *rejected*, with the reason, and the round goes on.
"""

from __future__ import annotations

from pathlib import Path

from fedblend.net.fleet import Fleet, Result, _Task
from fedblend.net.spool import ChunkWriter, Upload
from fedblend.net.wire import ChunkAck, EvalResult, Receipt, UploadManifest, UploadTicket, WireError, WorkItem
from fedblend.records import EvalReport, SiteFailure, SiteUpdate

__all__ = ["TaskAnswers"]


class TaskAnswers(Fleet):
    """Site-facing task handling on top of the fleet state."""

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
        w = self.chunk_writer(site, upload_id, index)
        w.write(data)
        w.finish()
        return self.chunk_ack(upload_id, index)

    def chunk_writer(self, site: str, upload_id: str, index: int) -> ChunkWriter:
        """A writer that streams chunk ``index`` of an upload to disk (see ``spool.ChunkWriter``)."""
        return self._spool.chunk_writer(self._upload_for(site, upload_id), index)

    def chunk_ack(self, upload_id: str, index: int) -> ChunkAck:
        up = self._uploads.get(upload_id)
        n = up.num_chunks if up is not None else 0
        return ChunkAck(index=index, received=len(up.received) if up is not None else 0, total=n)

    def chunk_span(self, site: str, model_id: str, index: int) -> tuple[Path, int, int]:
        with self._lock:
            self._registered(site)
        return self._spool.chunk_span(model_id, index)

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

    def _resolve(self, t: _Task, result: Result) -> None:
        t.result = result
        sess = self._sessions.get(t.site)
        if sess is not None and sess.state in ("training", "evaluating"):
            sess.state = "idle"
        self._cond.notify_all()
        self._emit("set_site_state", t.site, state="idle", progress=1.0)

"""SiteAgent: what runs at each institution, beside its data. Outbound HTTPS only.

    hello (get the job) -> load local data -> register (schema, stats, data version)
    heartbeat thread every heartbeat_s
    loop: fetch work (long poll) -> train | evaluate | wait | done
      train:    stream the global model down (chunks, sha256 each and whole), SiteRunner.fit,
                stream the update up (manifest, chunks, commit)
      evaluate: stream the model (and reference) down, SiteRunner.evaluate, send the scalar sums
      wait:     re-hash the data manifest every data_check_s; new data -> reload and register again
      a task whose job_id differs from the job this site loaded (the server switched jobs, e.g.
      between the trials of a search): fetch hello again, reload the site from the new job,
      register again, then do the task (the data split depends only on the seed and val_fraction)

The agent does not know job files: ``load_site(job_toml)`` (given by the CLI) builds the site's
SiteRunner from the job the server sent. Exit codes: 0 done, 3 certificate rejected or server not
trusted, 1 anything else fatal.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedblend.errors import FedblendError, TransportError
from fedblend.net.client import ApiError, CertificateRejected, FleetClient, ServerUntrusted
from fedblend.net.codec import file_digests, write_weights
from fedblend.net.identity import SiteBundle
from fedblend.net.wire import Hello, ModelRef, Registration, Schema, UploadManifest, WorkItem, job_id_of
from fedblend.records import RoundPlan
from fedblend.weights import Weights

if TYPE_CHECKING:
    from fedblend.engine.site import SiteRunner

__all__ = ["SiteAgent", "LocalSite", "EXIT_DONE", "EXIT_REJECTED", "EXIT_ERROR"]

log = logging.getLogger(__name__)
EXIT_DONE, EXIT_ERROR, EXIT_REJECTED = 0, 1, 3
_RELOAD = object()


@dataclass
class LocalSite:
    """A site's runner over its local data, and how to tell that the data changed."""

    runner: SiteRunner  # noqa: F821 - imported for type checking only (keeps torch out until the job is known)
    schema: Schema
    data_version: str
    num_rows: int
    current_version: Callable[[], str]


class SiteAgent:
    def __init__(self, bundle: SiteBundle, load_site: Callable[[str, str], LocalSite], *, server_url: str | None = None,
                 give_up_s: float = 600.0, delay_train_s: float = 0.0, long_poll_s: float = 15.0) -> None:
        self.bundle = bundle
        self.name = bundle.site
        self.load_site = load_site
        self.client = FleetClient(bundle, server_url, give_up_s=give_up_s)
        self.beat_client = FleetClient(bundle, server_url, give_up_s=give_up_s, timeout=30.0)
        self.delay_train_s = delay_train_s
        self.long_poll_s = long_poll_s
        self.site: LocalSite | None = None
        self.hello: Hello | None = None
        self.job_id: str | None = None  # id of the job the site was loaded from
        self.state, self.progress, self.task_id = "online", 0.0, None
        self._stop = threading.Event()
        self._need_register = threading.Event()
        self._last_check = 0.0
        self._models: dict[str, Weights] = {}
        self.message = ""

    # -- lifecycle ------------------------------------------------------------------------------
    def run(self) -> int:
        beat = threading.Thread(target=self._beat_loop, name="fedblend-heartbeat", daemon=True)
        try:
            self._check_validity()
            self._enroll()
            beat.start()
            return self._work_loop()
        except (CertificateRejected, ServerUntrusted) as exc:
            self.message = str(exc)
            log.error("%s", exc)
            return EXIT_REJECTED
        except (TransportError, FedblendError) as exc:
            self.message = str(exc)
            log.error("site %s stops: %s", self.name, exc)
            return EXIT_ERROR
        finally:
            self._stop.set()
            if beat.is_alive():
                beat.join(timeout=5)
            self.client.close()
            self.beat_client.close()

    def _check_validity(self) -> None:
        import datetime as dt

        from cryptography import x509

        cert = x509.load_pem_x509_certificate(self.bundle.cert.encode())
        now = dt.datetime.now(dt.UTC)
        if now > cert.not_valid_after_utc:
            raise CertificateRejected(f"certificate rejected: this site's certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
                                      "ask the federation operator for a new site bundle")
        if now < cert.not_valid_before_utc:
            raise CertificateRejected(f"certificate rejected: this site's certificate is not valid before "
                                      f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check this machine's clock)")

    def stop(self) -> None:
        self._stop.set()

    def _enroll(self) -> None:
        self.hello = Hello.model_validate(self.client.json("GET", "/v1/hello"))
        job_id = job_id_of(self.hello.job_toml)
        if self.site is None or self.site.current_version() != self.site.data_version or job_id != self.job_id:
            self.site = self.load_site(self.hello.job_toml, self.name)
            self.job_id = job_id
        self._register()

    def follow_job(self, item: WorkItem) -> bool:
        """Make sure the site runs the job ``item`` belongs to; False when the item is stale.

        An item without ``job_id`` (a server that never switched jobs) or with the loaded job's id
        needs nothing. Otherwise the server switched jobs: fetch hello, reload, register again.
        """
        if item.job_id is None or item.job_id == self.job_id:
            return True
        log.info("site %s: the server switched jobs (%s -> %s); reloading", self.name,
                 (self.job_id or "-")[:12], item.job_id[:12])
        self._enroll()
        if self.job_id != item.job_id:  # the job moved on again: the item belongs to a finished one
            log.warning("site %s: task %s belongs to job %s, no longer the server's; skipped", self.name,
                        item.task_id, item.job_id[:12])
            return False
        return True

    def _register(self) -> None:
        assert self.site is not None
        s = self.site
        reg = Registration(data_version=s.data_version, num_rows=s.num_rows, schema=s.schema,
                           stats=s.runner.stats().to_json(), agent="fedblend-site/1")
        self.client.call("POST", "/v1/register", json=reg.model_dump(mode="json", by_alias=True))
        self._need_register.clear()
        self.state = "online"
        log.info("site %s registered (data version %s, %d rows)", self.name, s.data_version, s.num_rows)

    def _work_loop(self) -> int:
        while not self._stop.is_set():
            if self._need_register.is_set():
                self._enroll()
            try:
                item = WorkItem.model_validate(self.client.json("GET", "/v1/work", params={"wait": self.long_poll_s},
                                                                timeout=self.long_poll_s + 60))
                if item.kind == "done":
                    self.message = item.message or "the job is finished"
                    log.info("server says: %s", self.message)
                    return EXIT_DONE
                if item.kind == "wait":
                    self._maybe_reload()
                    if item.retry_after_s:
                        self._stop.wait(item.retry_after_s)
                    continue
                if self.follow_job(item):
                    self._do(item)
            except ApiError as exc:
                if exc.code == "not_registered":
                    log.info("the server does not know this site (restarted?); registering again")
                    self._enroll()
                elif exc.code in ("stale", "late", "gone", "conflict"):
                    log.warning("task dropped: %s", exc.detail)
                else:
                    raise
            finally:
                self.state, self.task_id = "idle", None
        return EXIT_DONE

    # -- tasks ----------------------------------------------------------------------------------
    def _do(self, item: WorkItem) -> None:
        assert self.site is not None and item.task_id is not None and item.model is not None
        self.task_id, self.progress = item.task_id, 0.0
        self.state = "training" if item.kind == "train" else "evaluating"
        try:
            weights = self._download(item.model)
            self.progress = 0.1
            if item.kind == "train":
                if self.delay_train_s:
                    self._stop.wait(self.delay_train_s)
                plan = RoundPlan(round=int(item.round or 0), site_ids=(self.name,), config=dict(item.config), seed=item.seed)
                update = self.site.runner.fit(plan, weights)
                self.progress = 0.8
                self._upload(item, update.weights, update.num_examples, update.metrics, update.duration_s)
            else:
                ref = self._download(item.reference) if item.reference is not None else None
                rep = self.site.runner.evaluate(weights, str(item.split), ref)
                body = {"split": rep.split, "num_examples": rep.num_examples, "loss_sum": rep.loss_sum,
                        "correct": rep.correct, "diff_sum": rep.diff_sum, "diff_sq_sum": rep.diff_sq_sum}
                self.client.call("POST", f"/v1/tasks/{item.task_id}/eval", json=body)
            self.progress = 1.0
        except (ApiError, CertificateRejected, ServerUntrusted):
            raise
        except TransportError:
            raise
        except Exception as exc:  # the site's own failure: tell the server, keep serving
            log.exception("task %s failed", item.task_id)
            self.client.call("POST", f"/v1/tasks/{item.task_id}/fail", json={"reason": f"{type(exc).__name__}: {exc}"[:1900]})

    def _download(self, ref: ModelRef) -> Weights:
        cached = self._models.get(ref.sha256)
        if cached is not None:  # e.g. the blend's reference, scored against many candidates
            return cached
        w = self._fetch(ref)
        self._models = {ref.sha256: w, **dict(list(self._models.items())[:1])}  # the last two models
        return w

    def _fetch(self, ref: ModelRef) -> Weights:
        buf = bytearray()
        whole = hashlib.sha256()
        for i, want in enumerate(ref.chunks):
            for attempt in range(3):
                data = self.client.call("GET", f"/v1/models/{ref.model_id}/chunks/{i}").content
                if hashlib.sha256(data).hexdigest() == want:
                    break
                log.warning("model %s chunk %d failed its checksum (attempt %d)", ref.model_id, i, attempt + 1)
            else:
                raise TransportError(f"model {ref.model_id} chunk {i} failed its checksum 3 times")
            buf += data
            whole.update(data)
        if len(buf) != ref.size or whole.hexdigest() != ref.sha256:
            raise TransportError(f"model {ref.model_id} does not match its sha256 after download")
        return Weights.from_bytes(bytes(buf))

    def _upload(self, item: WorkItem, weights: Weights, num_examples: int, metrics: dict[str, float], duration_s: float) -> None:
        assert self.hello is not None
        chunk = self.hello.chunk_bytes
        with tempfile.TemporaryDirectory(prefix="fedblend-up-") as d:
            path = Path(d) / "update.safetensors"
            write_weights(weights, path)
            dig = file_digests(path, chunk)
            man = UploadManifest(round=int(item.round or 0), size=dig.size, sha256=dig.sha256, chunks=list(dig.chunks),
                                 num_examples=num_examples, metrics={k: float(v) for k, v in metrics.items()},
                                 duration_s=duration_s)
            ticket = self.client.json("POST", f"/v1/tasks/{item.task_id}/upload", json=man.model_dump(mode="json"))
            done = set(ticket["received"])
            with open(path, "rb") as f:
                for i in range(len(dig.chunks)):
                    if i in done:
                        continue
                    f.seek(i * chunk)
                    data = f.read(chunk)
                    for attempt in range(3):
                        try:
                            self.client.call("PUT", f"/v1/uploads/{ticket['upload_id']}/chunks/{i}", content=data)
                            break
                        except ApiError as exc:
                            if exc.code != "bad_chunk" or attempt == 2:
                                raise
                    self.progress = 0.8 + 0.2 * (i + 1) / len(dig.chunks)
            receipt = self.client.json("POST", f"/v1/uploads/{ticket['upload_id']}/commit")
            log.info("round %s: update %s", item.round, receipt.get("status"))

    # -- background -----------------------------------------------------------------------------
    def _maybe_reload(self) -> None:
        assert self.hello is not None and self.site is not None
        now = time.monotonic()
        if now - self._last_check < self.hello.data_check_s:
            return
        self._last_check = now
        version = self.site.current_version()
        if version != self.site.data_version:
            log.info("site %s: new data (version %s -> %s); reloading", self.name, self.site.data_version, version)
            self.site = self.load_site(self.hello.job_toml, self.name)
            self._register()

    def _beat_loop(self) -> None:
        assert self.hello is not None
        period = self.hello.heartbeat_s
        server_id = self.hello.server_id
        while not self._stop.wait(period):
            site = self.site
            body: dict[str, Any] = {"state": self.state if self.state in ("online", "training", "evaluating", "idle") else "idle",
                                    "progress": min(1.0, max(0.0, self.progress)), "task_id": self.task_id}
            if site is not None:
                body.update(data_version=site.data_version, num_rows=site.num_rows)
            try:
                reply = self.beat_client.call("POST", "/v1/heartbeat", json=body, retry=False)
                data = reply.json()
                if not data.get("registered", True) or data.get("server_id") != server_id:
                    server_id = data.get("server_id", server_id)
                    self._need_register.set()
            except (CertificateRejected, ServerUntrusted) as exc:
                log.error("%s", exc)
                return
            except TransportError as exc:
                log.debug("heartbeat failed: %s", exc)

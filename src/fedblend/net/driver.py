"""Driver: the skeleton of the server's driver thread, shared by what a server runs.

A ``fedblend server`` runs one driver beside its HTTP app: the ``Coordinator`` (a federation,
cycle after cycle) or a search whose trials run on the sites (``fedblend.hpo.deployed``). Both
wait for the sites the same way, stop the same way and end the same way; this class holds that:

- ``start()`` runs ``_run()`` in a daemon thread; ``shutdown()`` closes the pool and joins it;
- ``wait_for_sites(what)`` waits until ``min_sites_to_start`` sites registered (False on shutdown;
  an error naming ``start_timeout_s`` when they do not come);
- an error in ``_run`` is kept in ``error`` and recorded (event ``server_error``, status
  ``failed``); a transport error during shutdown is not an error;
- at the end the sites are told ``_done_message()`` and ``finished`` is set.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from fedblend.errors import FedblendError, TransportError
from fedblend.net.config import DeploySpec
from fedblend.net.pool import DeploymentPool

__all__ = ["Driver"]

log = logging.getLogger(__name__)


class Driver:
    """Subclasses implement ``_run()`` and ``_done_message()`` (and the admin actions)."""

    name = "driver"

    def __init__(self, pool: DeploymentPool, store: Any, spec: DeploySpec) -> None:
        self.pool, self.store, self.spec = pool, store, spec
        self.stop_event = threading.Event()  # shutdown
        self.finished = threading.Event()
        self.completed = False  # ran to its end (not stopped by a shutdown)
        self.error: BaseException | None = None
        self.status = "starting"
        self._thread = threading.Thread(target=self._main, name=f"fedblend-{self.name}", daemon=True)

    # -- control --------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop: work in progress is abandoned (the pool is closed); nothing is committed for it."""
        self.stop_event.set()
        self.pool.close()
        self._thread.join(timeout)

    # -- for subclasses -------------------------------------------------------------------------
    def _run(self) -> None:
        raise NotImplementedError

    def _done_message(self) -> str:
        raise NotImplementedError

    def wait_for_sites(self, what: str) -> bool:
        """Wait for ``min_sites_to_start`` registered sites; False when the server is shutting down."""
        need = self.spec.start_count()
        self.status = "waiting"
        self._event("waiting_for_sites", need=need)
        log.info("waiting for %d site(s) to register", need)
        if self.pool.wait_for(lambda: len(self.pool.site_ids()) >= need, self.spec.start_timeout_s or None,
                              self.stop_event):
            return True
        if self.stop_event.is_set():
            return False
        raise FedblendError(f"only {len(self.pool.site_ids())} of {need} site(s) registered within "
                            f"start_timeout_s={self.spec.start_timeout_s:g}s; {what} did not start")

    def _event(self, kind: str, **payload: Any) -> None:
        if self.store is not None:
            try:
                self.store.record_event(kind, **payload)
            except Exception:
                log.exception("could not record event %s", kind)

    # -- the thread -----------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            self._run()
            self.completed = not self.stop_event.is_set()
        except TransportError as exc:
            if not self.stop_event.is_set():
                self.error = exc
                log.error("%s stopped: %s", self.name, exc)
        except BaseException as exc:  # recorded; the server exits with an error
            self.error = exc
            log.exception("%s failed", self.name)
            self._event("server_error", error=f"{type(exc).__name__}: {exc}")
            if self.store is not None:
                self.store.set_status("failed", error=str(exc))
        finally:
            if not self.stop_event.is_set():
                self.pool.set_mode("done", self._done_message())
            self.finished.set()

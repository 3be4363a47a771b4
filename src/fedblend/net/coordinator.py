"""Coordinator: the server's driver thread. It runs the same Federation round loop as the
simulator over the DeploymentPool, cycle after cycle, with nobody in the loop.

- waits until ``min_sites_to_start`` sites registered, then runs the job's rounds;
- resumes from the run store: a restarted server continues after the last committed round (the
  Federation reloads weights and strategy state) and reaches the same final model;
- a round without quorum is retried once enough sites are back (the failure is recorded), after a
  pause that doubles with each failure in a row (so a round whose updates are all rejected does
  not spin);
- continuous federation: after a cycle, the next one (``rounds`` more rounds from the last global
  model) starts on a schedule (``cycle.every_s``) or when ``cycle.new_data_sites`` sites report a
  data version different from the one they had when the previous cycle started;
- admin ``stop`` ends the run after the current round; ``start`` resumes it or starts a cycle now.

The Federation is built by a factory given by the caller (the CLI builds it from the job file), so
this module knows nothing of job files.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from fedblend.engine.federation import Federation
from fedblend.errors import QuorumError
from fedblend.net.config import DeploySpec
from fedblend.net.driver import Driver
from fedblend.net.pool import DeploymentPool

__all__ = ["Coordinator"]

log = logging.getLogger(__name__)


class Coordinator(Driver):
    name = "coordinator"
    # a round that fails for want of quorum while enough sites are online (e.g. every update was
    # rejected) is retried after a pause that doubles each time, up to RETRY_MAX_S; never in a spin
    RETRY_BASE_S = 0.5
    RETRY_MAX_S = 30.0

    def __init__(self, pool: DeploymentPool, store: Any, make_federation: Callable[[int], Federation], *,
                 spec: DeploySpec, rounds: int) -> None:
        super().__init__(pool, store, spec)
        self.make_federation, self.rounds = make_federation, rounds
        self._paused = threading.Event()  # admin stop
        self._start_now = threading.Event()  # admin start
        self.federation: Federation | None = None
        meta = store.meta() if store is not None else {}
        self.cycle = int(meta.get("cycle") or 1)
        # data versions the sites had when the current cycle started ("new data" = different now)
        self._baseline: dict[str, str] | None = dict(meta["cycle_data_versions"]) if meta.get("cycle_data_versions") else None

    # -- control --------------------------------------------------------------------------------
    def admin_stop(self) -> None:
        self._paused.set()

    def admin_start(self) -> None:
        self._paused.clear()
        self._start_now.set()

    @property
    def round(self) -> int:
        fed = self.federation
        return fed.round if fed is not None else (self.store.last_round() if self.store is not None else 0)

    @property
    def total_rounds(self) -> int:
        return self.cycle * self.rounds

    # -- the loop -------------------------------------------------------------------------------
    def _run(self) -> None:
        if not self.wait_for_sites("the job"):
            return
        while not self.stop_event.is_set():
            self._run_cycle()
            if self.stop_event.is_set() or self.spec.cycle is None:
                return
            if self.spec.cycle.max_cycles is not None and self.cycle >= self.spec.cycle.max_cycles:
                return
            self.status = "idle"
            self.pool.set_mode("idle", f"cycle {self.cycle} finished; waiting for the next one")
            if not self._wait_for_trigger():
                return
            self.cycle += 1
            self._baseline = None

    def _run_cycle(self) -> None:
        total = self.total_rounds
        if self._baseline is None:
            self._baseline = self.pool.data_versions()
        if self.store is not None:
            self.store.set_meta(cycle=self.cycle, cycle_data_versions=self._baseline)
        fed = self.make_federation(total)
        start = fed.resume()
        self._offload(fed)
        self.federation = fed
        if start >= total:
            return
        self.pool.set_mode("running")
        self.status = "running"
        self._event("cycle_started", round=start, cycle=self.cycle, until=total)
        failures = 0  # rounds failed in a row
        while fed.round < total and not self.stop_event.is_set():
            if self._paused.is_set():
                self._pause(fed)
                continue
            try:
                fed.run(until=fed.round + 1)
                self._offload(fed)
                failures = 0
            except QuorumError as exc:
                if self.stop_event.is_set():
                    return
                failures += 1
                delay = min(self.RETRY_MAX_S, self.RETRY_BASE_S * 2 ** (failures - 1))
                log.warning("%s; retrying when enough sites are online, after %.1f s (failure %d in a row)",
                            exc, delay, failures)
                self._event("round_retry", round=fed.round + 1, reason=str(exc), attempt=failures, delay_s=delay)
                need = self.spec.quorum_count()
                self.pool.wait_for(lambda n=need: len(self.pool.site_ids()) >= n, None, self.stop_event)
                if self.stop_event.wait(delay):
                    return
        if fed.round >= total:
            self._event("cycle_finished", round=fed.round, cycle=self.cycle)

    def _offload(self, fed: Federation) -> None:
        """Between rounds the models the Federation keeps live on disk, not in memory: the global
        model, the initial one (kept for resume checks) and no per-round history (the store has it).
        Values are unchanged, so results are too; memory stays a small multiple of one model."""
        fed.history.clear()
        fed.initial_weights = self.pool.offload(fed.initial_weights, "initial")
        fed.weights = self.pool.offload(fed.weights, "global")

    def _pause(self, fed: Federation) -> None:
        self.status = "stopped"
        if self.store is not None:
            self.store.set_status("stopped", round=fed.round)
        self._event("stopped", round=fed.round)
        self.pool.set_mode("idle", "stopped by the administrator")
        while self._paused.is_set() and not self.stop_event.wait(0.2):
            pass
        self._start_now.clear()
        self.status = "running"
        self.pool.set_mode("running")
        self._event("started", round=fed.round)

    def _wait_for_trigger(self) -> bool:
        assert self.spec.cycle is not None
        c = self.spec.cycle
        ended = time.monotonic()
        base = dict(self._baseline or {})
        while not self.stop_event.wait(0.2):
            if self._start_now.is_set() and not self._paused.is_set():
                self._start_now.clear()
                self._event("cycle_trigger", reason="admin")
                return True
            if self._paused.is_set():
                continue
            if c.every_s is not None and time.monotonic() - ended >= c.every_s:
                self._event("cycle_trigger", reason="schedule")
                return True
            if c.new_data_sites is not None:
                now = self.pool.data_versions()
                changed = sorted(s for s, v in now.items() if v and base.get(s) not in (None, v))
                new = sorted(s for s in now if s not in base)
                if len(changed) + len(new) >= c.new_data_sites:
                    self._event("cycle_trigger", reason="new_data", sites=changed + new)
                    return True
        return False

    def _done_message(self) -> str:
        if self.error is not None:
            return f"the server stopped on an error: {self.error}"
        return f"the job is finished after round {self.round}"

"""StoreSource: the dashboard's one handle on a run store, opened lazily and read only.

``StoreSource(run_dir)`` opens ``RUN_DIR/run.db`` the first time it exists, so ``fedblend dashboard
RUN_DIR`` may start before the simulation that fills it; ``StoreSource(store)`` wraps a store a
caller already holds (the deployment server). The dashboard never writes: it only calls the
store's read methods (meta, rounds, site_metrics, blends, site_stats, sites, events, document).

``version()`` is a cheap fingerprint of everything a page shows; the live stream sends an update
whenever it changes, so a round committed without a trailing event still reaches the browser.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from fedblend.errors import StoreError
from fedblend.store import schema as t
from fedblend.store.sqlite import DB_NAME, SqlRunStore

__all__ = ["StoreSource"]

log = logging.getLogger(__name__)


class StoreSource:
    """A run directory (opened when its run.db appears) or an already open SqlRunStore."""

    def __init__(self, run_dir_or_store: str | Path | SqlRunStore) -> None:
        self._lock = threading.Lock()
        self._owned = False
        if isinstance(run_dir_or_store, str | Path):
            self.run_dir: Path | None = Path(run_dir_or_store)
            if self.run_dir.exists() and not self.run_dir.is_dir():
                raise StoreError(
                    f"dashboard: {self.run_dir} is a file; pass a run directory (the one holding {DB_NAME})"
                )
            self._store: SqlRunStore | None = None
        elif hasattr(run_dir_or_store, "rounds") and hasattr(run_dir_or_store, "events"):
            self._store = run_dir_or_store
            self.run_dir = getattr(run_dir_or_store, "run_dir", None)
        else:
            raise StoreError(
                "dashboard: create_app needs a run directory or a SqlRunStore "
                f"(got {run_dir_or_store!r} that is a {type(run_dir_or_store).__name__!r})"
            )

    @property
    def label(self) -> str:
        return self.run_dir.name if self.run_dir is not None else "run"

    def get(self) -> SqlRunStore | None:
        """The store, or None while the run directory holds no run.db yet."""
        if self._store is not None:
            return self._store
        assert self.run_dir is not None
        if not (self.run_dir / DB_NAME).exists():
            return None
        with self._lock:
            if self._store is None:
                try:
                    self._store = SqlRunStore(self.run_dir, create=False)
                    self._owned = True
                except OperationalError as exc:  # the writer is creating the tables right now
                    log.debug("run store at %s not ready yet: %s", self.run_dir, exc)
                    return None
        return self._store

    def version(self) -> tuple[Any, ...]:
        """Changes whenever anything shown changes: events, rounds, run status, site rows."""
        store = self.get()
        if store is None:
            return ("absent",)
        try:
            with store.engine.connect() as c:
                last_event = c.execute(select(func.max(t.events.c.id))).scalar()
                last_round = c.execute(select(func.max(t.rounds.c.round))).scalar()
                meta = {
                    r.key: r.value
                    for r in c.execute(select(t.run_meta).where(t.run_meta.c.key.in_(("status", "updated_at"))))
                }
                sites = tuple(tuple(r) for r in c.execute(select(t.sites).order_by(t.sites.c.site_id)))
                n_stats = c.execute(select(func.count()).select_from(t.site_stats)).scalar()
        except OperationalError as exc:
            log.debug("run store busy: %s", exc)
            return ("busy",)
        return (last_event, last_round, meta.get("status"), meta.get("updated_at"), n_stats, hash(repr(sites)))

    def close(self) -> None:
        if self._owned and self._store is not None:
            self._store.close()
            self._store = None
            self._owned = False

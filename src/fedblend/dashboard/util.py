"""Small helpers shared by the dashboard's views: finite numbers, run header, latest events."""

from __future__ import annotations

import math
import time
from typing import Any

from sqlalchemy import select

from fedblend.dashboard.models import EventOut, RunInfo
from fedblend.dashboard.source import StoreSource
from fedblend.store import schema as t
from fedblend.store.sqlite import SqlRunStore

__all__ = ["finite", "clean", "as_int", "run_info", "latest_events", "event_out", "metric_sort_key"]


def finite(v: Any) -> float | None:
    """``v`` as a float, or None when it is missing, not a number, NaN or infinite."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def as_int(v: Any) -> int | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def clean(obj: Any, depth: int = 0) -> Any:
    """A JSON-safe copy: non-finite floats become None, tuples lists, unknown objects strings."""
    if depth > 20:
        return None
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, dict):
        return {str(k): clean(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v, depth + 1) for v in obj]
    if hasattr(obj, "item"):  # numpy scalars
        try:
            return clean(obj.item(), depth + 1)
        except (TypeError, ValueError):
            pass
    return str(obj)


def run_info(source: StoreSource, store: SqlRunStore | None) -> RunInfo:
    if store is None:
        return RunInfo(label=source.label, present=False, server_time=time.time())
    meta = store.meta()
    return RunInfo(
        label=source.label,
        present=True,
        name=None if meta.get("name") is None else str(meta["name"]),
        kind=str(meta.get("kind") or "federation"),
        status=None if meta.get("status") is None else str(meta["status"]),
        round=as_int(meta.get("last_round")) or store.last_round(),
        rounds=as_int(meta.get("rounds")),
        dataset=None if meta.get("dataset") is None else str(meta["dataset"]),
        model=None if meta.get("model") is None else str(meta["model"]),
        strategy=None if meta.get("strategy") is None else str(meta["strategy"]),
        seed=as_int(meta.get("seed")),
        updated_at=finite(meta.get("updated_at")),
        server_time=time.time(),
    )


def latest_events(store: SqlRunStore, n: int) -> list[dict[str, Any]]:
    """The ``n`` newest events, oldest first."""
    with store.engine.connect() as c:
        rows = [dict(r._mapping) for r in c.execute(select(t.events).order_by(t.events.c.id.desc()).limit(n))]
    return rows[::-1]


def event_out(e: dict[str, Any]) -> EventOut:
    payload = e.get("payload")
    return EventOut(
        id=int(e["id"]),
        ts=finite(e.get("ts")) or 0.0,
        kind=str(e.get("kind")),
        round=as_int(e.get("round")),
        site_id=None if e.get("site_id") is None else str(e["site_id"]),
        payload=clean(payload) if isinstance(payload, dict) else {},
    )


def metric_sort_key(name: str) -> tuple[int, str]:
    """Losses first, then accuracies, then the rest, each alphabetically."""
    if "loss" in name:
        return (0, name)
    if "acc" in name:
        return (1, name)
    return (2, name)

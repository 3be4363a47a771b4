"""SqlRunStore: one run = one directory with ``run.db`` (SQLite via SQLAlchemy) and checkpoints.

Layout::

    RUN_DIR/run.db                         job, rounds, per-site metrics and stats, events, blends
    RUN_DIR/checkpoints/round_00012.safetensors   global weights + strategy state of round 12

A round is committed by writing its checkpoint to a temporary file, renaming it into place, then
inserting all of the round's rows in one transaction. Older checkpoints are deleted only after
that transaction, so ``last_checkpoint`` always finds the file of the last committed round.
Any SQLAlchemy URL works (PostgreSQL for shared deployments); checkpoints stay in RUN_DIR.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, delete, event, insert, select, update
from sqlalchemy.engine import Engine

from fedblend.errors import StoreError
from fedblend.records import RoundResult, SiteStats
from fedblend.store import schema as t
from fedblend.weights import Weights

__all__ = ["SqlRunStore", "StoredCheckpoint", "list_runs", "DB_NAME"]

DB_NAME = "run.db"
_STATE_PREFIX = "__state__/"


@dataclass(frozen=True)
class StoredCheckpoint:
    round: int
    weights: Weights
    strategy_state: dict[str, Weights]
    extra: dict[str, Any]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


class SqlRunStore:
    """The default RunStore. ``SqlRunStore(run_dir)`` opens or creates a run."""

    def __init__(self, run_dir: str | Path, *, url: str | None = None, keep_checkpoints: int = 2, create: bool = True) -> None:
        self.run_dir = Path(run_dir)
        db_path = self.run_dir / DB_NAME
        if not create and url is None and not db_path.exists():
            raise StoreError(f"no run at {self.run_dir}: {DB_NAME} not found (is this a run directory?)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "checkpoints").mkdir(exist_ok=True)
        self.url = url or f"sqlite:///{db_path}"
        self.keep_checkpoints = max(1, keep_checkpoints)
        self.engine: Engine = create_engine(self.url, future=True)
        if self.url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        t.metadata.create_all(self.engine)

    # -- run metadata ---------------------------------------------------------------------------
    def set_meta(self, **values: Any) -> None:
        with self.engine.begin() as c:
            for k, v in values.items():
                c.execute(delete(t.run_meta).where(t.run_meta.c.key == k))
                c.execute(insert(t.run_meta).values(key=k, value=v))

    def meta(self) -> dict[str, Any]:
        with self.engine.connect() as c:
            return {r.key: r.value for r in c.execute(select(t.run_meta))}

    def set_document(self, name: str, text: str) -> None:
        with self.engine.begin() as c:
            c.execute(delete(t.documents).where(t.documents.c.name == name))
            c.execute(insert(t.documents).values(name=name, text=text))

    def document(self, name: str) -> str | None:
        with self.engine.connect() as c:
            row = c.execute(select(t.documents.c.text).where(t.documents.c.name == name)).first()
        return None if row is None else row[0]

    def set_status(self, status: str, **fields: Any) -> None:
        self.set_meta(status=status, updated_at=time.time(), **fields)

    # -- rounds ---------------------------------------------------------------------------------
    def _ckpt_path(self, rnd: int) -> Path:
        return self.run_dir / "checkpoints" / f"round_{rnd:05d}.safetensors"

    def commit_round(self, result: RoundResult, strategy_state: dict[str, Weights], extra: dict[str, Any]) -> None:
        arrays: dict[str, Any] = dict(result.weights.items())
        for group, w in strategy_state.items():
            for k, v in w.items():
                arrays[f"{_STATE_PREFIX}{group}/{k}"] = v
        path = self._ckpt_path(result.round)
        tmp = path.with_suffix(".tmp")
        # straight to disk: encoding into bytes first would hold a second copy of the model
        Weights(arrays).save_file(
            tmp, {"round": str(result.round), "extra": json.dumps(extra), "groups": json.dumps(list(strategy_state))}
        )
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        now = time.time()
        with self.engine.begin() as c:
            c.execute(delete(t.rounds).where(t.rounds.c.round == result.round))
            c.execute(delete(t.site_metrics).where(t.site_metrics.c.round == result.round))
            c.execute(delete(t.blends).where(t.blends.c.round == result.round))
            c.execute(
                insert(t.rounds).values(
                    round=result.round,
                    committed_at=now,
                    duration_s=result.duration_s,
                    participants=list(result.participants),
                    failures=[{"site_id": f.site_id, "reason": f.reason, "kind": f.kind} for f in result.failures],
                    global_metrics=result.global_metrics,
                    checkpoint=path.name,
                    digest=result.weights.digest(),
                )
            )
            rows = [
                {"round": result.round, "site_id": sid, "kind": "train", "num_examples": int(m.get("num_examples", 0)), "metrics": m}
                for sid, m in result.train_metrics.items()
            ]
            rows += [
                {
                    "round": result.round,
                    "site_id": r.site_id,
                    "kind": f"eval:{r.split}",
                    "num_examples": r.num_examples,
                    "metrics": {"loss": r.loss, "accuracy": r.accuracy, "loss_sum": r.loss_sum, "correct": r.correct},
                }
                for r in result.eval_reports
            ]
            if rows:
                c.execute(insert(t.site_metrics), rows)
            if result.blend is not None:
                c.execute(insert(t.blends).values(round=result.round, record=result.blend))
            c.execute(delete(t.run_meta).where(t.run_meta.c.key == "last_round"))
            c.execute(insert(t.run_meta).values(key="last_round", value=result.round))
        self._prune(result.round)

    def _prune(self, rnd: int) -> None:
        ckpts = sorted((self.run_dir / "checkpoints").glob("round_*.safetensors"))
        for p in ckpts[: -self.keep_checkpoints]:
            if p != self._ckpt_path(rnd):
                p.unlink(missing_ok=True)

    def last_round(self) -> int:
        with self.engine.connect() as c:
            row = c.execute(select(t.rounds.c.round).order_by(t.rounds.c.round.desc()).limit(1)).first()
        return 0 if row is None else int(row[0])

    def last_checkpoint(self) -> StoredCheckpoint | None:
        rnd = self.last_round()
        if rnd == 0:
            return None
        return self.load_checkpoint(rnd)

    def load_checkpoint(self, rnd: int) -> StoredCheckpoint:
        path = self._ckpt_path(rnd)
        if not path.exists():
            raise StoreError(f"checkpoint of round {rnd} is missing: {path}")
        arrays, meta = Weights.load_file_with_metadata(path)
        weights = Weights((k, v) for k, v in arrays.items() if not k.startswith(_STATE_PREFIX))
        state: dict[str, dict[str, Any]] = {g: {} for g in json.loads(meta.get("groups", "[]"))}
        for k, v in arrays.items():
            if k.startswith(_STATE_PREFIX):
                group, name = k[len(_STATE_PREFIX) :].split("/", 1)
                state.setdefault(group, {})[name] = v
        return StoredCheckpoint(rnd, weights, {g: Weights(d) for g, d in state.items()}, json.loads(meta.get("extra", "{}")))

    def final_weights(self) -> Weights | None:
        ck = self.last_checkpoint()
        return None if ck is None else ck.weights

    def rounds(self) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(select(t.rounds).order_by(t.rounds.c.round))]

    def site_metrics(self, kind: str | None = None) -> list[dict[str, Any]]:
        q = select(t.site_metrics).order_by(t.site_metrics.c.round, t.site_metrics.c.site_id)
        if kind is not None:
            q = q.where(t.site_metrics.c.kind == kind)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def blends(self) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            return [{"round": r.round, **(r.record or {})} for r in c.execute(select(t.blends).order_by(t.blends.c.round))]

    # -- sites, stats, events -------------------------------------------------------------------
    def record_site_stats(self, stats: dict[str, SiteStats], heterogeneity: dict[str, float]) -> None:
        with self.engine.begin() as c:
            for sid, st in stats.items():
                c.execute(delete(t.site_stats).where(t.site_stats.c.site_id == sid))
                c.execute(insert(t.site_stats).values(site_id=sid, stats=st.to_json(), heterogeneity=heterogeneity.get(sid)))

    def site_stats(self) -> dict[str, dict[str, Any]]:
        with self.engine.connect() as c:
            return {r.site_id: {**r.stats, "heterogeneity": r.heterogeneity} for r in c.execute(select(t.site_stats))}

    def set_site_state(self, site_id: str, **fields: Any) -> None:
        allowed = {"state", "progress", "last_heartbeat", "data_version", "num_rows", "rejected", "info"}
        bad = set(fields) - allowed
        if bad:
            raise StoreError(f"unknown site fields {sorted(bad)}; allowed: {sorted(allowed)}")
        with self.engine.begin() as c:
            exists = c.execute(select(t.sites.c.site_id).where(t.sites.c.site_id == site_id)).first()
            if exists:
                if fields:
                    c.execute(update(t.sites).where(t.sites.c.site_id == site_id).values(**fields))
            else:
                c.execute(insert(t.sites).values(site_id=site_id, rejected=0, **fields))

    def sites(self) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(select(t.sites).order_by(t.sites.c.site_id))]

    def record_event(self, kind: str, *, round: int | None = None, site_id: str | None = None, **payload: Any) -> None:
        with self.engine.begin() as c:
            c.execute(insert(t.events).values(ts=time.time(), kind=kind, round=round, site_id=site_id, payload=payload))
            if kind == "update_rejected" and site_id is not None:
                c.execute(update(t.sites).where(t.sites.c.site_id == site_id).values(rejected=t.sites.c.rejected + 1))

    def events(self, after_id: int = 0, limit: int = 1000, kind: str | None = None) -> list[dict[str, Any]]:
        q = select(t.events).where(t.events.c.id > after_id).order_by(t.events.c.id).limit(limit)
        if kind is not None:
            q = q.where(t.events.c.kind == kind)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def close(self) -> None:
        self.engine.dispose()


def list_runs(root: str | Path) -> list[Path]:
    """Run directories directly under ``root`` (those holding a run.db), newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if (p / DB_NAME).exists()]
    return sorted(runs, key=lambda p: (p / DB_NAME).stat().st_mtime, reverse=True)

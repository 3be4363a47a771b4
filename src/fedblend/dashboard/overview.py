"""The Overview page's data: site cards, the server's state and the round pipeline.

A deployment reports each site's state into the store's ``sites`` table (heartbeats, progress);
a simulation does not, so a site's state is then derived from the round loop's events: the latest
``round_started`` / ``stage`` event says which step the round is in and which sites it sampled;
``update_rejected`` (and other ``update_*``) events mark sites whose update was turned away.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select

from fedblend.dashboard.models import Overview, Pipeline, PipelineStep, SiteCard
from fedblend.dashboard.source import StoreSource
from fedblend.dashboard.util import as_int, event_out, finite, latest_events, run_info
from fedblend.store import schema as t
from fedblend.store.sqlite import SqlRunStore

__all__ = ["STEPS", "build_overview", "pipeline_from_events"]

# The round pipeline: step id, label, and the stage names (as recorded in events) that belong to it.
STEPS: list[tuple[str, str, tuple[str, ...]]] = [
    ("waiting", "Waiting for sites", ("waiting", "waiting_for_sites", "enrolling")),
    ("training", "Site training", ("training",)),
    ("aggregating", "Aggregating", ("aggregating",)),
    ("blending", "Blending", ("blending",)),
    ("evaluating", "Evaluating", ("evaluating",)),
    ("committing", "Committing & broadcasting", ("committing", "broadcasting")),
]
_STEP_OF = {alias: sid for sid, _, aliases in STEPS for alias in aliases}
_ACTIVE = ("online", "training", "evaluating", "idle")


def _stage_of(e: dict[str, Any]) -> str | None:
    payload = e.get("payload") or {}
    stage = payload.get("stage") if isinstance(payload, dict) else None
    return str(stage) if stage is not None else None


def pipeline_from_events(events: list[dict[str, Any]], last_round: int, status: str | None) -> Pipeline:
    """Which step the current round is in, from the newest events that carry a ``stage``."""
    staged = [e for e in events if _stage_of(e) is not None and e.get("round") is not None]
    current: str | None = None
    rnd: int | None = None
    seen: set[str] = set()
    stage: str | None = None
    if staged:
        rnd = int(staged[-1]["round"])
        stage = _stage_of(staged[-1])
        seen = {_STEP_OF.get(_stage_of(e) or "", "") for e in staged if e.get("round") == rnd}
    finished = status == "finished"
    if finished:
        steps = [PipelineStep(id=sid, label=label, status="done") for sid, label, _ in STEPS]
        return Pipeline(round=last_round or rnd, stage="finished", steps=steps)
    in_round = rnd is not None and rnd > last_round
    if in_round:
        current = _STEP_OF.get(stage or "")
    elif status == "running" or status is None and rnd is not None:
        current = "waiting"
        stage = "waiting"
        rnd = last_round + 1
    order = [sid for sid, _, _ in STEPS]
    cur_idx = order.index(current) if current in order else -1
    steps = []
    for i, (sid, label, _) in enumerate(STEPS):
        if cur_idx < 0:
            st = "pending"
        elif i < cur_idx:
            st = "skipped" if in_round and sid == "blending" and "blending" not in seen else "done"
        elif i == cur_idx:
            st = "current"
        else:
            st = "pending"
        steps.append(PipelineStep(id=sid, label=label, status=st))  # type: ignore[arg-type]
    return Pipeline(round=rnd, stage=stage, steps=steps)


def _server_state(meta: dict[str, Any], status: str | None, pipe: Pipeline, failed: bool) -> str:
    if meta.get("server_state"):
        return str(meta["server_state"])
    if status is None:
        return "waiting for the run to start"
    if status == "finished":
        return "finished"
    if status == "running":
        if failed:
            return f"running · round {pipe.round} failed (too few usable updates)"
        label = next((s.label for s in pipe.steps if s.status == "current"), pipe.stage or "?")
        return f"running · round {pipe.round}: {label.lower()}"
    return str(status)


def _rejection_counts(store: SqlRunStore) -> dict[str, int]:
    with store.engine.connect() as c:
        q = (
            select(t.events.c.site_id, func.count())
            .where(t.events.c.kind == "update_rejected")
            .group_by(t.events.c.site_id)
        )
        return {str(sid): int(n) for sid, n in c.execute(q) if sid is not None}


def build_overview(source: StoreSource, *, offline_after_s: float = 60.0, n_events: int = 300) -> Overview:
    store = source.get()
    info = run_info(source, store)
    if store is None:
        pipe = pipeline_from_events([], 0, None)
        return Overview(
            run=info, server_state="waiting for the run to start", pipeline=pipe, sites=[], recent_events=[]
        )
    meta = store.meta()
    events = latest_events(store, n_events)
    rounds = store.rounds()
    last_round = rounds[-1]["round"] if rounds else 0
    pipe = pipeline_from_events(events, last_round, info.status)
    failed = bool(events) and events[-1]["kind"] == "round_failed"
    now = time.time()

    rows = {r["site_id"]: r for r in store.sites()}
    stats = store.site_stats()
    rejected_events = _rejection_counts(store)
    site_ids: set[str] = set(rows) | set(stats)
    # the sites of the round in progress, and what happened to them
    cur_round = pipe.round if pipe.round is not None and pipe.round > last_round else None
    cur_sites: set[str] = set()
    cur_fail: dict[str, str] = {}
    last_seen: dict[str, float] = {}
    for e in events:
        sid = e.get("site_id")
        if sid is not None:
            last_seen[sid] = max(last_seen.get(sid, 0.0), float(e["ts"]))
            site_ids.add(sid)
        if cur_round is not None and e.get("round") == cur_round:
            payload = e.get("payload") or {}
            if e["kind"] == "round_started" and isinstance(payload, dict):
                cur_sites |= {str(s) for s in payload.get("sites") or []}
            if str(e["kind"]).startswith("update_") and sid is not None:
                cur_fail[sid] = str(e["kind"])[len("update_") :]
    site_ids |= cur_sites
    # each site's latest committed involvement
    latest: dict[str, tuple[int, str]] = {}
    participated: dict[str, int] = {}
    for r in rounds:
        for sid in r["participants"] or []:
            latest[sid] = (r["round"], "trained")
            participated[sid] = participated.get(sid, 0) + 1
            last_seen[sid] = max(last_seen.get(sid, 0.0), float(r["committed_at"] or 0.0))
        for f in r["failures"] or []:
            latest[f["site_id"]] = (r["round"], str(f.get("kind", "error")))
        site_ids |= set(r["participants"] or []) | {f["site_id"] for f in r["failures"] or []}
    train_loss: dict[str, float | None] = {}
    eval_last: dict[str, tuple[str, dict[str, Any]]] = {}
    for m in store.site_metrics():
        sid, kind, metrics = m["site_id"], m["kind"], m["metrics"] or {}
        site_ids.add(sid)
        if kind == "train":
            train_loss[sid] = finite(metrics.get("train_loss"))
        elif kind.startswith("eval:"):
            prev = eval_last.get(sid)
            if prev is None or kind == "eval:test" or prev[0] != "eval:test":
                eval_last[sid] = (kind, metrics)

    cards = []
    for sid in sorted(site_ids):
        row = rows.get(sid) or {}
        st = stats.get(sid) or {}
        reported = row.get("state")
        hb = finite(row.get("last_heartbeat"))
        if reported:
            state = str(reported)
            if state in _ACTIVE and info.status == "running" and hb is not None and now - hb > offline_after_s:
                state = "offline"
            source_kind = "reported"
        else:
            source_kind = "derived"
            state = "idle"
            past = latest.get(sid)
            if past is not None and past[1] == "rejected":
                state = "rejected"
            elif past is not None and past[1] in ("offline", "timeout"):
                state = "offline"
            if info.status == "running":
                if cur_round is not None:
                    if sid in cur_fail:
                        state = (
                            "rejected"
                            if cur_fail[sid] == "rejected"
                            else "offline"
                            if cur_fail[sid] in ("offline", "timeout")
                            else state
                        )
                    elif pipe.stage == "training" and sid in cur_sites:
                        state = "training"
                    elif pipe.stage == "evaluating":
                        state = "evaluating"
                    elif sid in cur_sites:
                        state = "online"
                elif state == "idle":
                    state = "online"
        if state not in ("online", "training", "evaluating", "idle", "offline", "rejected"):
            state = "unknown"
        progress = finite(row.get("progress"))
        if progress is None and not reported:  # a simulation: done once its update is in
            if cur_round is not None and info.status == "running":
                trained = sid in cur_sites and sid not in cur_fail and pipe.stage != "training"
                progress = 1.0 if trained else None
            else:
                done = latest.get(sid)
                progress = 1.0 if done is not None and done[1] == "trained" else None
        sizes = [as_int(st.get(k)) for k in ("num_train", "num_val", "num_test")]
        num_rows = as_int(row.get("num_rows"))
        if num_rows is None and any(s is not None for s in sizes):
            num_rows = sum(s or 0 for s in sizes)
        ev = eval_last.get(sid, ("", {}))[1]
        cards.append(
            SiteCard(
                site_id=sid,
                state=state,  # type: ignore[arg-type]
                state_source=source_kind,  # type: ignore[arg-type]
                progress=None if progress is None else min(1.0, max(0.0, progress)),
                last_seen=hb if hb is not None else last_seen.get(sid),
                data_version=row.get("data_version") or st.get("data_version") or None,
                num_rows=num_rows,
                rejected=as_int(row.get("rejected")) or rejected_events.get(sid, 0),
                rounds_participated=participated.get(sid, 0),
                last_train_loss=train_loss.get(sid),
                last_eval_loss=finite(ev.get("loss")),
                last_eval_accuracy=finite(ev.get("accuracy")),
            )
        )
    recent = [event_out(e) for e in events[-15:]][::-1]
    return Overview(
        run=info,
        server_state=_server_state(meta, info.status, pipe, failed),
        pipeline=pipe,
        sites=cards,
        recent_events=recent,
    )

"""The Training page's data: global and per-site metrics per round, participation, rejections.

Per-site series come from the store's ``site_metrics`` rows: ``train`` rows carry what each site
reported after local training (``train_loss``, ``duration_s``, ...); ``eval:<split>`` rows carry the
scored model's loss and accuracy. Bookkeeping fields (counts and sums) are left out of the charts.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from fedblend.dashboard.models import Failure, Participation, RoundRow, Series, Training
from fedblend.dashboard.source import StoreSource
from fedblend.dashboard.util import finite, metric_sort_key, run_info
from fedblend.store import schema as t
from fedblend.store.sqlite import SqlRunStore

__all__ = ["build_training", "HIDDEN_METRICS"]

# Counters and sums that are not worth a chart of their own.
HIDDEN_METRICS = frozenset({"num_examples", "loss_sum", "correct", "diff_sum", "diff_sq_sum"})


def _failure(rnd: int, f: dict[str, Any]) -> Failure:
    return Failure(
        round=rnd, site_id=str(f.get("site_id", "?")), kind=str(f.get("kind", "error")), reason=str(f.get("reason", ""))
    )


def build_training(source: StoreSource) -> Training:
    store = source.get()
    info = run_info(source, store)
    if store is None:
        return Training(
            run=info,
            rounds=[],
            global_metric_names=[],
            site_series=[],
            participation=Participation(sites=[], rounds=[], status=[]),
            rejected=[],
        )
    rows = store.rounds()
    rounds: list[RoundRow] = []
    names: set[str] = set()
    for r in rows:
        gm = {str(k): finite(v) for k, v in (r["global_metrics"] or {}).items() if not isinstance(v, dict | list | str)}
        names |= set(gm)
        rounds.append(
            RoundRow(
                round=int(r["round"]),
                committed_at=finite(r["committed_at"]),
                duration_s=finite(r["duration_s"]),
                participants=[str(s) for s in r["participants"] or []],
                failures=[_failure(int(r["round"]), f) for f in r["failures"] or [] if isinstance(f, dict)],
                global_metrics=gm,
            )
        )
    # per-site series: (kind, metric, site) -> {round: value}
    acc: dict[tuple[str, str, str], dict[int, float | None]] = {}
    sites: set[str] = set()
    for m in store.site_metrics():
        sid, kind, rnd = str(m["site_id"]), str(m["kind"]), int(m["round"])
        sites.add(sid)
        for k, v in (m["metrics"] or {}).items():
            if k in HIDDEN_METRICS or isinstance(v, dict | list | str | bool):
                continue
            acc.setdefault((kind, str(k), sid), {})[rnd] = finite(v)
    series = [
        Series(kind=kind, metric=metric, site_id=sid, rounds=sorted(vals), values=[vals[k] for k in sorted(vals)])
        for (kind, metric, sid), vals in sorted(
            acc.items(), key=lambda kv: (kv[0][0] != "train", kv[0][0], metric_sort_key(kv[0][1]), kv[0][2])
        )
    ]
    # participation matrix
    for r in rounds:
        sites |= set(r.participants) | {f.site_id for f in r.failures}
    site_list = sorted(sites)
    status = []
    for sid in site_list:
        row = []
        for r in rounds:
            if sid in r.participants:
                row.append("trained")
            else:
                f = next((f for f in r.failures if f.site_id == sid), None)
                row.append(f.kind if f is not None else "absent")
        status.append(row)
    rejected = [f for r in rounds for f in r.failures]
    # failures of the round in progress are in the events only
    last = rounds[-1].round if rounds else 0
    rejected += _uncommitted_failures(store, last)
    return Training(
        run=info,
        rounds=rounds,
        global_metric_names=sorted(names, key=metric_sort_key),
        site_series=series,
        participation=Participation(sites=site_list, rounds=[r.round for r in rounds], status=status),
        rejected=rejected,
    )


def _uncommitted_failures(store: SqlRunStore, last_round: int) -> list[Failure]:
    q = select(t.events).where(t.events.c.kind.like("update_%"), t.events.c.round > last_round).order_by(t.events.c.id)
    out = []
    with store.engine.connect() as c:
        for e in c.execute(q):
            payload = e.payload if isinstance(e.payload, dict) else {}
            out.append(
                Failure(
                    round=int(e.round),
                    site_id=str(e.site_id),
                    kind=str(e.kind)[len("update_") :],
                    reason=str(payload.get("reason", "")) + " (round in progress)",
                )
            )
    return out

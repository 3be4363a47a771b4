"""ProcessPool: the sites spread over worker processes, for models too large to vectorize.

Each worker (``spawn`` context, one per core by default) holds a fixed share of the sites (site
``i`` goes to worker ``i % workers``) and runs their SiteRunners exactly as SequentialPool does,
so the two agree up to float rounding. The runners reach a worker once, when it starts: either
pickled (our own processes on one machine) or built in the worker by a picklable ``recipe``
(``recipe(site_ids) -> list[SiteRunner]``, e.g. a ``functools.partial`` over a job dict) so the
worker loads its own data. Per round only control dicts and safetensors bytes cross the pipes.

``inner="vectorized"`` makes each worker train its share side by side (``VectorizedPool``, one
torch thread per worker): process-level parallelism for vectorizable models, which on a busy
CPU scales better than several torch threads in one process.

A worker that dies or overruns ``timeout_s`` turns into SiteFailures for its sites that round
and is restarted on the next call; the round goes on with the others.

    pool = ProcessPool(runners, workers=4)
    try:
        updates = pool.train(plan, weights)
    finally:
        pool.close()
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
import weakref
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from fedblend.engine.site import SiteRunner
from fedblend.errors import ConfigError
from fedblend.records import EvalReport, RoundPlan, SiteFailure, SiteStats, SiteUpdate
from fedblend.sim._wire import SiteHost, decode_eval, decode_stats, decode_train, plan_to_dict
from fedblend.weights import Weights

__all__ = ["ProcessPool"]

log = logging.getLogger(__name__)

Recipe = Callable[[Sequence[str]], Sequence[SiteRunner]]


def _worker_main(
    conn: Connection, share: Any, site_ids: list[str], recipe: Recipe | None, threads: int, inner: str, device: str
) -> None:
    """Worker process: build the share's runners, then answer requests until told to stop."""
    import torch

    torch.set_num_threads(max(1, threads))
    try:
        host = SiteHost(list(recipe(site_ids)) if recipe is not None else share, inner=inner, device=device)
        missing = sorted(set(site_ids) - set(host.runners))
        if missing:
            raise ConfigError(f"the recipe built no runner for site(s) {missing}")
        conn.send({"op": "ready"})
    except Exception as exc:
        conn.send({"op": "failed", "reason": f"{type(exc).__name__}: {exc}"})
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        op = msg.get("op")
        if op == "close":  # skip the interpreter's slow teardown: nothing here needs flushing
            conn.close()
            os._exit(0)
        try:
            if op == "train":
                result: Any = host.train(msg["plan"], msg["weights"])
            elif op == "evaluate":
                result = host.evaluate(msg["weights"], msg["site_ids"], msg["split"], msg["reference"])
            elif op == "stats":
                result = host.stats()
            else:
                raise ConfigError(f"unknown request {op!r}")
            conn.send({"op": "result", "result": result})
        except Exception as exc:  # an answer always goes back
            conn.send({"op": "failed", "reason": f"{type(exc).__name__}: {exc}"})


class _Worker:
    def __init__(self, index: int, sites: list[str]) -> None:
        self.index = index
        self.sites = sites
        self.proc: Any = None
        self.conn: Connection | None = None
        self.ready = False


def _shutdown(workers: list[_Worker], force: bool = False) -> None:
    for w in workers:
        if (force or not w.ready) and w.proc is not None and w.proc.pid is not None and w.proc.is_alive():
            w.proc.terminate()
        elif w.conn is not None:
            try:
                w.conn.send({"op": "close"})
            except (OSError, ValueError):
                pass
    for w in workers:
        if w.proc is not None and w.proc.pid is not None:  # started
            w.proc.join(timeout=5)
            if w.proc.is_alive():
                w.proc.terminate()
                w.proc.join(timeout=5)
        if w.conn is not None:
            w.conn.close()
        w.proc, w.conn, w.ready = None, None, False


class ProcessPool:
    """Sites in worker processes; see the module docstring."""

    def __init__(
        self,
        runners: Sequence[SiteRunner],
        *,
        workers: int = 0,
        recipe: Recipe | None = None,
        threads_per_worker: int = 0,
        timeout_s: float | None = None,
        start_timeout_s: float = 300.0,
        inner: str = "sequential",
        device: str = "cpu",
    ) -> None:
        if not runners:
            raise ConfigError("ProcessPool needs at least one SiteRunner (got none)")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ConfigError(f"ProcessPool: 'workers' must be an integer >= 0, 0 for one per core (got {workers!r})")
        self._runners = {r.site_id: r for r in runners}
        if len(self._runners) != len(runners):
            raise ConfigError("ProcessPool: site ids must be unique")
        self._order = [r.site_id for r in runners]
        cores = os.cpu_count() or 1
        n = min(workers or cores, len(self._order))
        self.threads = threads_per_worker or max(1, cores // n)
        if inner not in ("sequential", "vectorized"):
            raise ConfigError(f"ProcessPool: 'inner' must be 'sequential' or 'vectorized' (got {inner!r})")
        self.recipe = recipe
        self.inner = inner
        self.device = device
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self._ctx = mp.get_context("spawn")
        self._workers = [_Worker(i, self._order[i::n]) for i in range(n)]
        self._home = {sid: w for w in self._workers for sid in w.sites}
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)
        for w in self._workers:
            self._start(w)

    # -- SitePool -------------------------------------------------------------------------------
    def site_ids(self) -> list[str]:
        return list(self._order)

    def train(self, plan: RoundPlan, weights: Weights) -> list[SiteUpdate | SiteFailure]:
        blob = weights.to_bytes()
        requests = {
            w.index: {"op": "train", "plan": plan_to_dict(plan, sids), "weights": blob}
            for w, sids in self._split(plan.site_ids).items()
        }
        answers = self._call(requests)
        got: dict[str, SiteUpdate | SiteFailure] = {}
        for w, sids in self._split(plan.site_ids).items():
            ans = answers[w.index]
            if isinstance(ans, SiteFailure):
                got.update({sid: SiteFailure(sid, plan.round, ans.reason, ans.kind) for sid in sids})
            else:
                got.update({d["site_id"]: decode_train(d) for d in ans})
        return [got.get(sid) or _unknown(sid, plan.round) for sid in plan.site_ids]

    def evaluate(
        self, weights: Weights, site_ids: Sequence[str], split: str, reference: Weights | None = None
    ) -> list[EvalReport | SiteFailure]:
        blob = weights.to_bytes()
        ref = reference.to_bytes() if reference is not None else None
        requests = {
            w.index: {"op": "evaluate", "weights": blob, "site_ids": sids, "split": split, "reference": ref}
            for w, sids in self._split(site_ids).items()
        }
        answers = self._call(requests)
        got: dict[str, EvalReport | SiteFailure] = {}
        for w, sids in self._split(site_ids).items():
            ans = answers[w.index]
            if isinstance(ans, SiteFailure):
                got.update({sid: SiteFailure(sid, 0, ans.reason, ans.kind) for sid in sids})
            else:
                got.update({d["site_id"]: decode_eval(d) for d in ans})
        return [got.get(sid) or _unknown(sid, 0) for sid in site_ids]

    def stats(self) -> dict[str, SiteStats]:
        if self.recipe is None:  # the runners are here too: no need to ask
            return {sid: r.stats() for sid, r in self._runners.items()}
        answers = self._call({w.index: {"op": "stats"} for w in self._workers})
        out: dict[str, SiteStats] = {}
        for ans in answers.values():
            if isinstance(ans, SiteFailure):
                raise ConfigError(f"a worker could not report its sites' statistics: {ans.reason}")
            out.update(decode_stats(ans))
        return {sid: out[sid] for sid in self._order if sid in out}

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- workers --------------------------------------------------------------------------------
    def _start(self, w: _Worker) -> None:
        parent, child = self._ctx.Pipe()
        share = None if self.recipe is not None else [self._runners[s] for s in w.sites]
        w.proc = self._ctx.Process(
            target=_worker_main,
            args=(child, share, w.sites, self.recipe, self.threads, self.inner, self.device),
            name=f"fedblend-site-worker-{w.index}",
            daemon=True,
        )
        w.proc.start()
        child.close()
        w.conn, w.ready = parent, False

    def _stop(self, w: _Worker, force: bool = False) -> None:
        _shutdown([w], force)

    def _split(self, site_ids: Sequence[str]) -> dict[_Worker, list[str]]:
        out: dict[_Worker, list[str]] = {}
        for sid in dict.fromkeys(site_ids):
            w = self._home.get(sid)
            if w is not None:
                out.setdefault(w, []).append(sid)
        return out

    def _call(self, requests: dict[int, dict[str, Any]]) -> dict[int, Any]:
        """Send each worker its request, then gather the answers (a SiteFailure per broken worker)."""
        answers: dict[int, Any] = {}
        waiting: dict[Connection, _Worker] = {}
        for idx, msg in requests.items():
            w = self._workers[idx]
            if w.proc is None or not w.proc.is_alive():
                self._stop(w)
                self._start(w)
            problem = self._await_ready(w)
            if problem is not None:
                answers[idx] = problem
                continue
            try:
                assert w.conn is not None
                w.conn.send(msg)
                waiting[w.conn] = w
            except (OSError, ValueError) as exc:
                answers[idx] = self._broken(w, f"could not reach worker {w.index}: {exc}")
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        while waiting:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait(list(waiting), timeout=left)
            if not ready:  # timed out: the slow workers are restarted next time
                for w in list(waiting.values()):
                    answers[w.index] = self._broken(
                        w, f"worker {w.index} did not answer within {self.timeout_s} s", "timeout", force=True
                    )
                break
            for conn in ready:
                w = waiting.pop(conn)  # type: ignore[arg-type]
                try:
                    reply = w.conn.recv()  # type: ignore[union-attr]
                except (EOFError, OSError):
                    answers[w.index] = self._broken(w, self._death(w))
                    continue
                if reply.get("op") == "result":
                    answers[w.index] = reply["result"]
                else:
                    answers[w.index] = SiteFailure("", 0, f"worker {w.index}: {reply.get('reason')}")
        return answers

    def _await_ready(self, w: _Worker) -> SiteFailure | None:
        if w.ready:
            return None
        assert w.conn is not None
        try:
            if not w.conn.poll(self.start_timeout_s):
                return self._broken(
                    w, f"worker {w.index} did not start within {self.start_timeout_s} s", "timeout", force=True
                )
            msg = w.conn.recv()
        except (EOFError, OSError):
            return self._broken(w, self._death(w))
        if msg.get("op") != "ready":
            return self._broken(w, f"worker {w.index} could not set up its sites: {msg.get('reason')}")
        w.ready = True
        return None

    def _death(self, w: _Worker) -> str:
        code = None
        if w.proc is not None:
            w.proc.join(timeout=5)
            code = w.proc.exitcode
        return f"worker process {w.index} exited unexpectedly (exit code {code}); it is restarted for the next round"

    def _broken(self, w: _Worker, reason: str, kind: str = "error", force: bool = False) -> SiteFailure:
        log.warning("%s", reason)
        self._stop(w, force)
        return SiteFailure("", 0, reason, kind)


def _unknown(sid: str, round: int) -> SiteFailure:
    return SiteFailure(sid, round, f"KeyError: site {sid!r} is not in this pool")

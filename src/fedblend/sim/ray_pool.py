"""RayPool: the sites spread over Ray actors, on one machine or a Ray cluster (``fedblend[ray]``).

Like ProcessPool, each actor hosts a fixed share of the sites (site ``i`` on actor
``i % workers``) and runs their SiteRunners unchanged, so the result equals SequentialPool's up
to float rounding. Weights go out once per call through Ray's object store as safetensors bytes
and come back the same way. ``address`` joins an existing cluster (``"auto"`` or
``"ray://head:10001"``); without it a local Ray instance is started and stopped with the pool.

    pool = RayPool(runners, workers=8, address="auto")

Ray is imported only when a RayPool is built; without it you get an install hint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from fedblend.engine.site import SiteRunner
from fedblend.errors import ConfigError
from fedblend.records import EvalReport, RoundPlan, SiteFailure, SiteStats, SiteUpdate
from fedblend.sim._wire import SiteHost, decode_eval, decode_stats, decode_train, plan_to_dict
from fedblend.weights import Weights

__all__ = ["RayPool", "import_ray"]

log = logging.getLogger(__name__)

Recipe = Callable[[Sequence[str]], Sequence[SiteRunner]]


def import_ray() -> Any:
    """The ``ray`` module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "pool kind 'ray' needs Ray, which is not installed; install it with "
            "`pip install 'fedblend[ray]'` (or `pip install ray`), or use pool kind 'process' on one machine"
        ) from None
    return ray


class _Host:
    """The actor class: a SiteHost built from runners or from a recipe."""

    def __init__(self, share: Any, site_ids: list[str], recipe: Recipe | None, threads: int, inner: str) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.host = SiteHost(list(recipe(site_ids)) if recipe is not None else share, inner=inner)

    def train(self, plan_d: dict[str, Any], weights: bytes) -> list[dict[str, Any]]:
        return self.host.train(plan_d, weights)

    def evaluate(
        self, weights: bytes, site_ids: list[str], split: str, reference: bytes | None
    ) -> list[dict[str, Any]]:
        return self.host.evaluate(weights, site_ids, split, reference)

    def stats(self) -> list[dict[str, Any]]:
        return self.host.stats()


class RayPool:
    """Sites on Ray actors; see the module docstring."""

    def __init__(
        self,
        runners: Sequence[SiteRunner],
        *,
        workers: int = 0,
        address: str | None = None,
        recipe: Recipe | None = None,
        cpus_per_worker: float = 1.0,
        timeout_s: float | None = None,
        init_kwargs: dict[str, Any] | None = None,
        inner: str = "sequential",
    ) -> None:
        if not runners:
            raise ConfigError("RayPool needs at least one SiteRunner (got none)")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ConfigError(f"RayPool: 'workers' must be an integer >= 0, 0 for one per CPU (got {workers!r})")
        if inner not in ("sequential", "vectorized"):
            raise ConfigError(f"RayPool: 'inner' must be 'sequential' or 'vectorized' (got {inner!r})")
        ray = import_ray()
        self._ray = ray
        self._runners = {r.site_id: r for r in runners}
        if len(self._runners) != len(runners):
            raise ConfigError("RayPool: site ids must be unique")
        self._order = [r.site_id for r in runners]
        self.timeout_s = timeout_s
        self._owns_ray = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if address is None:
                kwargs["num_cpus"] = max(workers, os.cpu_count() or 1)
            kwargs.update(init_kwargs or {})
            ray.init(address=address, **kwargs)
            self._owns_ray = True
        cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
        n = min(workers or max(1, int(cpus // cpus_per_worker)), len(self._order))
        actor_cls = ray.remote(num_cpus=cpus_per_worker, max_restarts=3)(_Host)
        self._shares = [self._order[i::n] for i in range(n)]
        self._home = {sid: i for i, share in enumerate(self._shares) for sid in share}
        threads = max(1, int(cpus_per_worker))
        self._actors = [
            actor_cls.remote(
                None if recipe is not None else [self._runners[s] for s in share], share, recipe, threads, inner
            )
            for share in self._shares
        ]
        self.recipe = recipe

    # -- SitePool -------------------------------------------------------------------------------
    def site_ids(self) -> list[str]:
        return list(self._order)

    def train(self, plan: RoundPlan, weights: Weights) -> list[SiteUpdate | SiteFailure]:
        ref = self._ray.put(weights.to_bytes())
        groups = self._split(plan.site_ids)
        futures = {i: self._actors[i].train.remote(plan_to_dict(plan, sids), ref) for i, sids in groups.items()}
        got: dict[str, SiteUpdate | SiteFailure] = {}
        for i, ans in self._gather(futures).items():
            if isinstance(ans, SiteFailure):
                got.update({sid: SiteFailure(sid, plan.round, ans.reason, ans.kind) for sid in groups[i]})
            else:
                got.update({d["site_id"]: decode_train(d) for d in ans})
        return [got.get(sid) or _unknown(sid, plan.round) for sid in plan.site_ids]

    def evaluate(
        self, weights: Weights, site_ids: Sequence[str], split: str, reference: Weights | None = None
    ) -> list[EvalReport | SiteFailure]:
        wref = self._ray.put(weights.to_bytes())
        rref = self._ray.put(reference.to_bytes()) if reference is not None else None
        groups = self._split(site_ids)
        futures = {i: self._actors[i].evaluate.remote(wref, sids, split, rref) for i, sids in groups.items()}
        got: dict[str, EvalReport | SiteFailure] = {}
        for i, ans in self._gather(futures).items():
            if isinstance(ans, SiteFailure):
                got.update({sid: SiteFailure(sid, 0, ans.reason, ans.kind) for sid in groups[i]})
            else:
                got.update({d["site_id"]: decode_eval(d) for d in ans})
        return [got.get(sid) or _unknown(sid, 0) for sid in site_ids]

    def stats(self) -> dict[str, SiteStats]:
        if self.recipe is None:
            return {sid: r.stats() for sid, r in self._runners.items()}
        out: dict[str, SiteStats] = {}
        for ans in self._gather({i: a.stats.remote() for i, a in enumerate(self._actors)}).values():
            if isinstance(ans, SiteFailure):
                raise ConfigError(f"a Ray actor could not report its sites' statistics: {ans.reason}")
            out.update(decode_stats(ans))
        return {sid: out[sid] for sid in self._order if sid in out}

    def close(self) -> None:
        for a in getattr(self, "_actors", []):
            try:
                self._ray.kill(a)
            except Exception:  # already gone
                pass
        self._actors = []
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns_ray = False

    # -- helpers --------------------------------------------------------------------------------
    def _split(self, site_ids: Sequence[str]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for sid in dict.fromkeys(site_ids):
            if sid in self._home:
                out.setdefault(self._home[sid], []).append(sid)
        return out

    def _gather(self, futures: dict[int, Any]) -> dict[int, Any]:
        out: dict[int, Any] = {}
        for i, fut in futures.items():
            try:
                out[i] = self._ray.get(fut, timeout=self.timeout_s)
            except self._ray.exceptions.GetTimeoutError:
                self._ray.cancel(fut, force=True)
                out[i] = SiteFailure("", 0, f"Ray actor {i} did not answer within {self.timeout_s} s", "timeout")
            except Exception as exc:  # actor died, task raised: the round goes on without its sites
                log.warning("Ray actor %d failed: %s", i, exc)
                out[i] = SiteFailure("", 0, f"Ray actor {i} failed: {type(exc).__name__}: {exc}")
        return out


def _unknown(sid: str, round: int) -> SiteFailure:
    return SiteFailure(sid, round, f"KeyError: site {sid!r} is not in this pool")

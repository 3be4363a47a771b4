"""Simulation pools: many sites on one machine (in-process, vectorized, worker processes) or on a
Ray cluster. All of them implement ``fedblend.engine.ports.SitePool`` and pass the contract
suite in ``fedblend.testing.pools``; for the same seed they give the same model (SequentialPool,
the reference, up to float rounding).

| kind | what | when ``auto`` picks it |
|---|---|---|
| ``sequential`` | every site in this process, one after another | small work (e.g. 4 hospitals, logistic regression) |
| ``vectorized`` | all chosen sites at once: stacked weights, ``torch.func`` + ``vmap``, GPU when present | a TorchTask whose model vectorizes, with >= 8 sites (>= 2 on a GPU) |
| ``process`` | sites spread over worker processes, one per core | models that do not vectorize (LSTM, BatchNorm, dropout) with enough work |
| ``ray`` | sites on Ray actors, one machine or a cluster (``fedblend[ray]``, ``RAY_ADDRESS``) | never: ask for it |

``workers``: for ``process`` and ``ray`` the number of workers (0: one per core); for
``vectorized``, ``workers >= 2`` runs that many worker processes that each vectorize their share
with one torch thread (often faster on a multi-core CPU than one process with several threads).

Choose in the job file (``[pool] kind = "process"``) or on the command line (``--pool process``).

    from fedblend.sim import make_pool
    pool = make_pool("auto", runners)
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Sequence
from typing import Any

from fedblend.engine.site import SiteRunner
from fedblend.errors import ConfigError
from fedblend.sim.local import SequentialPool

__all__ = ["SequentialPool", "VectorizedPool", "ProcessPool", "RayPool", "make_pool", "choose_pool", "POOL_KINDS"]

log = logging.getLogger(__name__)

POOL_KINDS = ("auto", "sequential", "vectorized", "process", "ray")

VECTORIZE_MIN_SITES = 8  # on the CPU; on a GPU two sites are enough
PROCESS_MIN_FLOP = 5e10  # ~ a few core-seconds of local training per round


def __getattr__(name: str) -> Any:  # heavy pools load on first use
    if name == "VectorizedPool":
        from fedblend.sim.vectorized import VectorizedPool

        return VectorizedPool
    if name == "ProcessPool":
        from fedblend.sim.process import ProcessPool

        return ProcessPool
    if name == "RayPool":
        from fedblend.sim.ray_pool import RayPool

        return RayPool
    raise AttributeError(f"module 'fedblend.sim' has no attribute {name!r}")


def _round_flop(runners: Sequence[SiteRunner], task: Any, job: Any) -> float:
    """Rough floating-point work of one round of local training (6 FLOP per parameter per example)."""
    try:
        n_params = sum(int(v.size) for v in task.init_weights(0).values())
    except Exception:
        return 0.0
    sizes = [len(r.site.train) for r in runners]
    try:
        cfg = task.train_config()
    except Exception:
        cfg = None
    steps = getattr(cfg, "local_steps", None)
    if steps:
        examples = float(steps * getattr(cfg, "batch_size", 32) * len(sizes))
    else:
        examples = float(sum(sizes) * getattr(cfg, "local_epochs", 1))
    sampling = getattr(job, "sampling", None)
    if sampling is not None and getattr(sampling, "fraction", None):
        examples *= float(sampling.fraction)
    elif sampling is not None and getattr(sampling, "count", None):
        examples *= min(1.0, sampling.count / max(1, len(sizes)))
    return 6.0 * n_params * examples


def _picklable(task: Any) -> bool:
    try:
        pickle.dumps(task)
    except Exception:
        return False
    return True


def choose_pool(
    runners: Sequence[SiteRunner], task: Any = None, device: str = "auto", job: Any = None
) -> tuple[str, str]:
    """The pool kind ``auto`` means for these sites, and why."""
    from fedblend.sim.vectorized import resolve_device, vmap_blocker

    if not runners:
        return "sequential", "no sites"
    task = task if task is not None else runners[0].task
    n = len(runners)
    gpu = resolve_device(device).type == "cuda"
    blocker = vmap_blocker(task)
    if blocker is None and n >= (2 if gpu else VECTORIZE_MIN_SITES):
        return "vectorized", f"{n} sites of one vectorizable model{' on the GPU' if gpu else ''}"
    cores = os.cpu_count() or 1
    flop = _round_flop(runners, task, job)
    if cores > 1 and n >= 2 and flop >= PROCESS_MIN_FLOP and _picklable(task):
        why = blocker or f"only {n} sites"
        return "process", f"{why}; ~{flop:.1e} FLOP per round spread over {cores} cores"
    return "sequential", blocker or f"{n} sites, ~{flop:.1e} FLOP per round: too little work to spread"


def make_pool(
    kind: str,
    runners: Sequence[SiteRunner],
    *,
    task: Any = None,
    workers: int = 0,
    device: str = "auto",
    job: Any = None,
) -> Any:
    """The pool named ``kind``; ``auto`` picks the fastest one that can run this task (see the table above)."""
    if kind not in POOL_KINDS:
        raise ConfigError(f"pool kind must be one of {list(POOL_KINDS)} (got {kind!r}); set [pool] kind or --pool")
    if kind == "auto":
        kind, why = choose_pool(runners, task, device, job)
        log.info("pool: %s (%s)", kind, why)
    if kind == "sequential":
        return SequentialPool(runners)
    if kind == "vectorized":
        from fedblend.sim.vectorized import VectorizedPool

        if workers >= 2:  # vectorized inside each of `workers` processes (checked here, built there)
            from fedblend.sim.process import ProcessPool

            VectorizedPool(runners[:1], task=task, device="cpu", warm_up=False)  # the same clear error, early
            return ProcessPool(runners, workers=workers, inner="vectorized", device=device)
        return VectorizedPool(runners, task=task, device=device)
    if kind == "process":
        from fedblend.sim.process import ProcessPool

        return ProcessPool(runners, workers=workers)
    from fedblend.sim.ray_pool import RayPool

    return RayPool(runners, workers=workers)

"""The searcher and pruner of a tune run, by name.

Searchers share their names and samplers with the blend (``fedblend.blend.searchers``): grid,
random, tpe, cmaes, gp, evolutionary (NSGA-II). The grid is the one exception: a tune space may be
conditional (``when``), which Optuna's GridSampler cannot express, so the grid searcher enqueues
every distinct configuration up front (``grid_configs``) and workers take them in turn.

Pruners stop bad federations early on the per-round validation metric: ``median`` (a trial below
the median of earlier trials at the same round), ``successive_halving`` (asynchronous successive
halving, Li et al. 2020, arXiv:1810.05934) and ``hyperband`` (Li et al. 2018, arXiv:1603.06560).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fedblend.errors import ConfigError
from fedblend.hpo.space import grid_configs
from fedblend.hpo.spec import TuneSpec

__all__ = ["make_tune_sampler", "make_pruner", "worker_seed", "grid_plan", "distributions"]

log = logging.getLogger(__name__)


def worker_seed(seed: int, index: int) -> int:
    """The sampler seed of worker ``index`` (distinct workers never draw the same sequence)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, index & 0xFFFFFFFF, 0x7E2E]).generate_state(1)[0])


def distributions(spec: TuneSpec) -> dict[str, Any]:
    """The space as Optuna distributions (the searcher's hint: CMA-ES centre, GA population size)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for key, p in spec.space.items():
        if p.type == "categorical":
            out[key] = CategoricalDistribution(p.choices or [])
        elif p.type == "int":
            assert p.low is not None and p.high is not None
            out[key] = IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            assert p.low is not None and p.high is not None
            out[key] = FloatDistribution(float(p.low), float(p.high), log=p.log, step=p.step)
    return out


def make_tune_sampler(spec: TuneSpec, seed: int, budget: int | None = None) -> Any:
    """The Optuna sampler for ``spec.searcher`` (grid: random, for anything past the enqueued grid)."""
    from fedblend.blend.searchers import make_sampler

    name = "random" if spec.searcher == "grid" else spec.searcher
    options = dict(spec.sampler_options)
    if name in ("cmaes", "gp"):
        # categorical and conditional parameters are sampled independently by design: no warning per trial
        options.setdefault("warn_independent_sampling", False)
    if name == "tpe" and any(p.when for p in spec.space.values()):
        options.setdefault("group", True)  # multivariate TPE over each conditional sub-space
    return make_sampler(name, seed, distributions(spec), budget=budget or spec.n_trials,
                        two_objective=spec.multi_objective, options=options)


def grid_plan(spec: TuneSpec, seed: int) -> list[dict[str, Any]]:
    """The grid configurations to enqueue: all of them, or a seeded sample of ``n_trials`` when larger."""
    configs = grid_configs(spec.space)
    if len(configs) <= spec.n_trials:
        return configs
    rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, 0x6121D]))
    idx = np.sort(rng.choice(len(configs), size=spec.n_trials, replace=False))
    log.info("grid of %d configurations is larger than n_trials=%d: trying a seeded sample", len(configs), spec.n_trials)
    return [configs[i] for i in idx]


def make_pruner(spec: TuneSpec, rounds: int) -> Any:
    import optuna

    name = spec.pruner_name
    opts = dict(spec.pruner_options)
    try:
        if name == "none":
            if opts:
                raise ConfigError(f"[tune].pruner_options {sorted(opts)} given, but pruner is 'none'")
            return optuna.pruners.NopPruner()
        if name == "median":
            opts.setdefault("n_startup_trials", 5)
            opts.setdefault("n_warmup_steps", max(1, rounds // 3))
            return optuna.pruners.MedianPruner(**opts)
        if name == "successive_halving":
            opts.setdefault("min_resource", max(1, rounds // 5))
            return optuna.pruners.SuccessiveHalvingPruner(**opts)
        if name == "hyperband":
            opts.setdefault("min_resource", max(1, rounds // 5))
            opts.setdefault("max_resource", rounds)
            return optuna.pruners.HyperbandPruner(**opts)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[tune].pruner_options: not accepted by the {name!r} pruner: {exc}") from None
    raise ConfigError(f"[tune].pruner: unknown pruner {name!r}; valid: none, median, successive_halving, hyperband")

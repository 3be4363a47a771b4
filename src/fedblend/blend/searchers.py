"""Searchers: Optuna samplers by name, shared by blend synthesis and ``fedblend tune``.

| name | Optuna sampler | notes |
|---|---|---|
| ``tpe`` | ``TPESampler`` (Bergstra et al. 2011), multivariate | Bayesian; one or two objectives |
| ``cmaes`` | ``CmaEsSampler`` (Hansen 2016) | one objective only |
| ``gp`` | ``GPSampler`` (Gaussian-process Bayesian optimization) | one or two objectives |
| ``random`` | ``RandomSampler`` | baseline |
| ``grid`` | ``GridSampler`` over ``grid_points`` values per parameter | needs the search space |
| ``evolutionary`` | ``NSGAIISampler`` (Deb et al. 2002), a genetic algorithm | one or two objectives |

    from fedblend.blend.searchers import make_sampler
    sampler = make_sampler("tpe", seed=0, search_space_hint={"x": FloatDistribution(0, 1)})

The sampler is used through Optuna's ask/tell interface; every choice comes from ``seed``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

from fedblend.errors import ConfigError

__all__ = ["SEARCHERS", "make_sampler", "grid_for"]

SEARCHERS = ("tpe", "cmaes", "gp", "random", "grid", "evolutionary")
_SINGLE_OBJECTIVE = ("cmaes",)


def grid_for(search_space: Mapping[str, Any], points: int = 5) -> dict[str, list[Any]]:
    """``points`` evenly spaced values (log-spaced for log distributions) for each parameter."""
    import numpy as np
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    grid: dict[str, list[Any]] = {}
    for name, d in search_space.items():
        if isinstance(d, CategoricalDistribution):
            grid[name] = list(d.choices)
        elif isinstance(d, IntDistribution):
            vals = np.unique(np.round(np.linspace(d.low, d.high, points)).astype(int))
            grid[name] = [int(v) for v in vals]
        elif isinstance(d, FloatDistribution):
            if d.log:
                vals = np.exp(np.linspace(math.log(d.low), math.log(d.high), points))
            else:
                vals = np.linspace(d.low, d.high, points)
            grid[name] = [float(v) for v in vals]
        elif isinstance(d, (list, tuple)):
            grid[name] = list(d)
        else:
            raise ConfigError(f"grid searcher: cannot make a grid for parameter {name!r} with distribution {d!r}")
    return grid


def make_sampler(
    name: str,
    seed: int,
    search_space_hint: Mapping[str, Any] | None = None,
    *,
    budget: int | None = None,
    grid_points: int = 5,
    two_objective: bool = False,
    options: Mapping[str, Any] | None = None,
) -> Any:
    """The Optuna sampler called ``name``, seeded with ``seed``.

    ``search_space_hint`` (parameter -> Optuna distribution, or -> list of values) is required by
    ``grid`` and used by ``cmaes`` (start at the centre) and ``evolutionary`` (population size);
    ``budget`` (trials per study) sizes the start-up phases; ``options`` are passed to the sampler.
    """
    import optuna

    key = name.lower() if isinstance(name, str) else name
    if key not in SEARCHERS:
        raise ConfigError(f"unknown searcher {name!r}; valid searchers: {', '.join(SEARCHERS)}")
    if two_objective and key in _SINGLE_OBJECTIVE:
        raise ConfigError(
            f"searcher {key!r} optimizes one objective only; use one of tpe, gp, random, grid, evolutionary"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"searcher seed must be a non-negative int (got {seed!r})")
    opts = dict(options or {})
    dims = len(search_space_hint or {})
    startup = max(2, min(10, (budget or 30) // 3))
    s = optuna.samplers
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if key == "tpe":
                kw: dict[str, Any] = {"n_startup_trials": startup, "multivariate": True, "constant_liar": True}
                return s.TPESampler(seed=seed, **{**kw, **opts})
            if key == "cmaes":
                kw = {"n_startup_trials": 1}
                if budget is not None and dims:
                    kw["popsize"] = max(4, min(4 + int(3 * math.log(max(dims, 1))), max(4, budget // 3)))
                return s.CmaEsSampler(seed=seed, **{**kw, **opts})
            if key == "gp":
                return s.GPSampler(seed=seed, **{"n_startup_trials": startup, **opts})
            if key == "random":
                return s.RandomSampler(seed=seed, **opts)
            if key == "grid":
                if not search_space_hint:
                    raise ConfigError("searcher 'grid' needs the search space (search_space_hint) to lay out its grid")
                return s.GridSampler(grid_for(search_space_hint, grid_points), seed=seed, **opts)
            # evolutionary: a genetic algorithm (NSGA-II, which is a plain GA for one objective)
            pop = max(4, min(20, (budget or 40) // 3))
            return s.NSGAIISampler(seed=seed, **{"population_size": pop, **opts})
    except TypeError as exc:
        raise ConfigError(f"searcher {key!r}: bad sampler option(s) {sorted(opts)}: {exc}") from None

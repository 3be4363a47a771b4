"""Seeded train/validation/test splitting within one site, and the seed streams it draws from.

Every random choice in ``fedblend.data`` comes from ``rng_for(seed, purpose, *keys)``: a generator
from ``np.random.SeedSequence([seed, purpose, *keys])``, so the partition, each site's validation
split and each site's test split draw from independent, reproducible streams.
"""

from __future__ import annotations

import zlib

import numpy as np

from fedblend.data.base import ArraySplit
from fedblend.errors import ConfigError

__all__ = ["rng_for", "check_fraction", "holdout", "carve_val", "writable"]


def _key(k: int | str) -> int:
    if isinstance(k, str):
        return zlib.crc32(k.encode("utf-8"))
    if k < 0:
        raise ConfigError(f"seed keys must be non-negative integers (got {k!r})")
    return int(k)


def rng_for(seed: int, purpose: str, *keys: int | str) -> np.random.Generator:
    """A generator for one purpose (``"partition"``, ``"val"``, ...) and optional keys (site)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"'seed' must be a non-negative int (got {seed!r} that is a {type(seed).__name__!r})")
    return np.random.default_rng(np.random.SeedSequence([int(seed), _key(purpose), *(_key(k) for k in keys)]))


def check_fraction(name: str, value: float) -> float:
    """``value`` as a float in [0, 1), or a ``ConfigError`` naming the parameter."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"'{name}' must be a number in [0, 1) (got {value!r})") from None
    if not 0.0 <= v < 1.0:
        raise ConfigError(f"'{name}' must be in [0, 1) (got {value!r}); e.g. {name}=0.1 holds out 10%")
    return v


def holdout(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into (kept, held out) sorted index arrays; ``floor(n * fraction)`` held out.

    At least one example is always kept, so a tiny site keeps its training data.
    """
    n_held = int(np.floor(n * fraction + 1e-9))
    n_held = min(n_held, max(n - 1, 0))
    if n_held == 0:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    perm = rng.permutation(n)
    return np.sort(perm[n_held:]).astype(np.int64), np.sort(perm[:n_held]).astype(np.int64)


def carve_val(train: ArraySplit, val_fraction: float, rng: np.random.Generator) -> tuple[ArraySplit, ArraySplit]:
    """Carve a validation split out of ``train``; both keep the original row order."""
    keep, held = holdout(len(train), val_fraction, rng)
    if len(held) == 0:
        return train, ArraySplit.empty_like(train)
    return train.subset(keep), train.subset(held)


def writable(split: ArraySplit) -> ArraySplit:
    """``split`` itself, or a copy when its arrays are read-only views of a loader cache.

    Sites get arrays they own: torch warns on (and must not write to) read-only numpy memory.
    """
    if split.x.flags.writeable and split.y.flags.writeable:
        return split
    return ArraySplit(np.array(split.x, copy=True), np.array(split.y, copy=True))

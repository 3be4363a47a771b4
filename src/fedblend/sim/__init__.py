"""Simulation pools: many sites on one machine (in-process, vectorized, worker processes, Ray)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedblend.engine.site import SiteRunner
from fedblend.errors import ConfigError
from fedblend.sim.local import SequentialPool

__all__ = ["SequentialPool", "make_pool", "POOL_KINDS"]

POOL_KINDS = ("auto", "sequential", "vectorized", "process", "ray")


def make_pool(kind: str, runners: Sequence[SiteRunner], *, task: Any = None, workers: int = 0, device: str = "auto", job: Any = None) -> Any:
    """The pool named ``kind``; ``auto`` picks the fastest one that can run this task."""
    if kind not in POOL_KINDS:
        raise ConfigError(f"pool kind must be one of {list(POOL_KINDS)} (got {kind!r})")
    if kind in ("auto", "sequential"):
        return SequentialPool(runners)
    raise ConfigError(f"pool kind {kind!r} is not available in this build; use 'sequential'")

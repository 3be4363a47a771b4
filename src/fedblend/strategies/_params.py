"""Parameter checks for strategy constructors: ConfigError naming the parameter, range and fix."""

from __future__ import annotations

import math
from typing import Any

from fedblend.errors import ConfigError

__all__ = ["check_number", "check_bool"]


def check_number(
    owner: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise ConfigError unless ``value`` is a finite real number inside the given range."""
    lo_br, hi_br = ("(" if low_open else "["), (")" if high_open else "]")
    rng = f"{lo_br}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi_br}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ConfigError(
            f"{owner}: '{name}' must be a finite number in {rng} (got {value!r} that is a {type(value).__name__})"
        )
    v = float(value)
    bad = (low is not None and (v < low or (low_open and v == low))) or (
        high is not None and (v > high or (high_open and v == high))
    )
    if bad:
        raise ConfigError(f"{owner}: '{name}' must be in {rng} (got {value!r}); pass a value inside that range")


def check_bool(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{owner}: '{name}' must be True or False (got {value!r} that is a {type(value).__name__})")

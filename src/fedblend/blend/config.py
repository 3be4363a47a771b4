"""BlendSpec: the job file's ``[blend]`` table, validated (unknown keys are errors).

Every error names the key as ``[blend].<key>``, says what was expected and what was given::

    [blend]
    space = "tilt"          # tilt (default) | simplex | power
    searcher = "tpe"        # tpe | cmaes | gp | random | grid | evolutionary
    budget = 24             # candidates per synthesis, FedAvg and uniform included
    objective = "pooled"    # pooled | balanced | worst | pooled+worst
    schedule = "end"        # end | every_n (with every = N) | every_round
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedblend.errors import ConfigError

__all__ = ["BlendSpec", "parse_blend_spec", "SPACES", "OBJECTIVES", "SCHEDULES"]

SPACES = ("tilt", "simplex", "power")
OBJECTIVES = ("pooled", "balanced", "worst", "pooled+worst")
SCHEDULES = ("end", "every_n", "every_round")


class BlendSpec(BaseModel):
    """Optimal-ratio blending settings; see docs/blend.md for what each key does."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # ratio space
    space: Literal["tilt", "simplex", "power"] = "tilt"
    tilt_range: float = Field(default=2.0, gt=0, le=20, description="tilt: s_k in [-r, r]")
    tau_range: tuple[float, float] = Field(default=(-1.0, 2.0), description="power: tau in [lo, hi]; must hold 0 and 1")
    gamma: bool = Field(default=False, description="also search a global shrink factor toward the current model")
    gamma_range: tuple[float, float] = Field(default=(0.5, 1.0), description="gamma in [lo, hi]; must hold 1")
    groups: Literal["single", "body_head"] = "single"
    head: list[str] | None = Field(
        default=None, description="body_head: tensor-name prefixes of the head (default: the last layer)"
    )
    floor: float = Field(
        default=0.25, ge=0.0, lt=1.0, description="each site keeps at least floor/K of every candidate blend"
    )
    # search
    searcher: Literal["tpe", "cmaes", "gp", "random", "grid", "evolutionary"] = "tpe"
    budget: int = Field(
        default=24, ge=2, le=10_000, description="candidates per synthesis, FedAvg and uniform included"
    )
    batch_size: int = Field(
        default=4, ge=1, le=1000, description="candidates asked of the searcher and evaluated together"
    )
    grid_points: int = Field(default=5, ge=2, le=101, description="grid searcher: values per parameter")
    sampler_options: dict[str, Any] = Field(
        default_factory=dict, description="extra keyword arguments for the Optuna sampler"
    )
    warm_start: bool = True
    # signal and objective
    signal: Literal["federated", "server"] = "federated"
    server_data: str | None = Field(
        default=None,
        description='signal = "server": path to an .npz file with arrays x and y, the operator\'s validation set',
    )
    objective: Literal["pooled", "balanced", "worst", "pooled+worst"] = "pooled"
    # acceptance test
    margin: float = Field(
        default=0.001, ge=0.0, description="minimum paired gain in validation log-loss (nats per example)"
    )
    k: float = Field(default=2.0, ge=0.0, description="the gain must also exceed k standard errors")
    # when
    schedule: Literal["end", "every_n", "every_round"] = "end"
    every: int = Field(default=5, ge=1, description="every_n: blend every N rounds (and at the last round)")
    min_sites: int = Field(default=2, ge=2, description="skip a synthesis when fewer sites delivered updates")
    store_study: bool = Field(default=False, description="also keep each Optuna study in the run's database")

    @field_validator("tau_range")
    @classmethod
    def _tau_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not lo < hi or not (lo <= 0.0 <= hi and lo <= 1.0 <= hi):
            raise ValueError(
                "must be [lo, hi] with lo < hi holding both 0 (uniform) and 1 (FedAvg); e.g. tau_range = [-1.0, 2.0]"
            )
        return v

    @field_validator("gamma_range")
    @classmethod
    def _gamma_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        glo, ghi = v
        if not 0.0 < glo <= 1.0 <= ghi <= 10.0 or glo == ghi:
            raise ValueError(
                "must be [lo, hi] with 0 < lo <= 1 <= hi <= 10 and lo < hi (gamma = 1 is the plain blend); "
                "e.g. gamma_range = [0.5, 1.0]"
            )
        return v

    @model_validator(mode="after")
    def _combinations(self) -> BlendSpec:
        if self.objective == "pooled+worst" and self.searcher == "cmaes":
            raise ValueError(
                "searcher 'cmaes' optimizes one objective only, but objective is 'pooled+worst'; "
                "use searcher = 'tpe', 'gp', 'random', 'grid' or 'evolutionary' for two objectives"
            )
        if self.server_data is not None and self.signal != "server":
            raise ValueError(
                'server_data is only read with signal = "server"; add signal = "server" or remove server_data'
            )
        if self.head is not None and self.groups != "body_head":
            raise ValueError('head is only used with groups = "body_head"; remove it or set groups = "body_head"')
        return self

    @property
    def two_objective(self) -> bool:
        return self.objective == "pooled+worst"


def _format(exc: ValidationError) -> str:
    lines = [f"invalid [blend] table ({exc.error_count()} problem(s)):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
        key = f"[blend].{loc}" if loc else "[blend]"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(loc, list(BlendSpec.model_fields), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            msg = f"unknown key; {hint}valid keys are: {', '.join(BlendSpec.model_fields)}"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        got = err.get("input")
        got_s = "" if isinstance(got, dict) or err["type"] == "missing" else f" (got {got!r})"
        lines.append(f"  - {key}: {msg}{got_s}")
    lines.append("  see docs/blend.md for every [blend] key")
    return "\n".join(lines)


def parse_blend_spec(spec: dict[str, Any] | BlendSpec | None) -> BlendSpec:
    """Validate a ``[blend]`` table; raises ConfigError naming each bad ``[blend].<key>``."""
    if isinstance(spec, BlendSpec):
        return spec
    if spec is None:
        return BlendSpec()
    if not isinstance(spec, dict):
        raise ConfigError(f"[blend] must be a table of settings (got {spec!r} that is a {type(spec).__name__!r})")
    try:
        return BlendSpec.model_validate(spec)
    except ValidationError as exc:
        raise ConfigError(_format(exc)) from None

"""DeploySpec: the ``[deploy]`` table of a job file, validated here (the job keeps it free-form).

    [deploy]
    sites = ["cleveland", "hungary", "switzerland", "va"]   # who takes part (order = sampling order)
    quorum = 3              # a round closes at its deadline with at least 3 usable updates
    deadline_s = 600        # per training round
    heartbeat_s = 5         # sites beat this often; 3 missed beats = offline
    max_update_mb = 1024    # uploads above this are refused before a byte is stored

    [deploy.cycle]          # continuous federation (optional)
    every_s = 86400         # a new cycle of `rounds` rounds every day ...
    new_data_sites = 2      # ... or as soon as 2 sites report new data
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedblend.errors import ConfigError
from fedblend.net.identity import check_site_name

__all__ = ["DeploySpec", "CycleSpec", "parse_deploy"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CycleSpec(_Strict):
    """Continuous federation: when to run another cycle of ``rounds`` rounds after the first."""

    every_s: float | None = Field(default=None, gt=0, description="start a cycle this long after the previous one ended")
    new_data_sites: int | None = Field(default=None, ge=1, description="start a cycle when this many sites report new data")
    max_cycles: int | None = Field(default=None, ge=1, description="stop after this many cycles (default: never)")

    @model_validator(mode="after")
    def _some_trigger(self) -> CycleSpec:
        if self.every_s is None and self.new_data_sites is None:
            raise ValueError("[deploy.cycle] needs every_s or new_data_sites (or both)")
        return self


class DeploySpec(_Strict):
    sites: list[str] = Field(default_factory=list, description="expected sites, in sampling order; empty: whoever enrolls")
    min_sites_to_start: int | None = Field(default=None, ge=1, description="default: all of `sites`, else 1")
    start_timeout_s: float = Field(default=0.0, ge=0, description="give up waiting for sites to start (0: wait forever)")
    quorum: int | None = Field(default=None, ge=1, description="usable updates a round needs at its deadline (default 1)")
    deadline_s: float = Field(default=3600.0, gt=0, description="training deadline per round")
    eval_deadline_s: float | None = Field(default=None, gt=0, description="evaluation deadline (default: deadline_s)")
    heartbeat_s: float = Field(default=5.0, gt=0, le=3600)
    missed_heartbeats: int = Field(default=3, ge=1)
    max_update_mb: float = Field(default=2048.0, gt=0)
    chunk_mb: float = Field(default=4.0, gt=0, le=256)
    long_poll_s: float = Field(default=15.0, gt=0, le=300)
    data_check_s: float = Field(default=60.0, gt=0, description="how often sites re-hash their data manifest")
    linger_s: float = Field(default=10.0, ge=0, description="after the job ends, keep answering 'done' this long")
    classes: list[str | int] | None = Field(default=None, description="user data: the label values, so every site numbers them alike")
    cycle: CycleSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> DeploySpec:
        for s in self.sites:
            check_site_name(s)
        if len(set(self.sites)) != len(self.sites):
            raise ValueError(f"sites lists a site twice: {self.sites}")
        if self.sites and self.quorum is not None and self.quorum > len(self.sites):
            raise ValueError(f"quorum {self.quorum} is larger than the number of sites {len(self.sites)}")
        if self.sites and self.min_sites_to_start is not None and self.min_sites_to_start > len(self.sites):
            raise ValueError(f"min_sites_to_start {self.min_sites_to_start} is larger than the number of sites {len(self.sites)}")
        return self

    @property
    def offline_after_s(self) -> float:
        return self.heartbeat_s * self.missed_heartbeats

    @property
    def chunk_bytes(self) -> int:
        return int(self.chunk_mb * 1024 * 1024)

    @property
    def max_update_bytes(self) -> int:
        return int(self.max_update_mb * 1024 * 1024)

    def start_count(self) -> int:
        if self.min_sites_to_start is not None:
            return self.min_sites_to_start
        return len(self.sites) if self.sites else 1

    def quorum_count(self) -> int:
        """How many sites must be online before a round is worth (re)trying."""
        return max(1, min(self.quorum or 1, len(self.sites) or 1))


def parse_deploy(raw: dict[str, Any] | None, source: str = "job file") -> DeploySpec:
    try:
        return DeploySpec.model_validate(raw or {})
    except ValidationError as exc:
        lines = [f"{source}: invalid [deploy] table ({exc.error_count()} problem(s)):"]
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "(table)"
            msg = "unknown key; see docs/deploy.md for the valid keys" if e["type"] == "extra_forbidden" else e["msg"]
            lines.append(f"  - deploy.{loc}: {msg}" + ("" if isinstance(e.get("input"), dict) or e["type"] == "missing" else f" (got {e.get('input')!r})"))
        raise ConfigError("\n".join(lines)) from None

"""JobSpec: the TOML job file, validated with pydantic.

A job names every component of a run, so it sits at the top of the package beside the runner.
Errors name the file, the section and key, what was expected, what was given, and the fix.

Minimal job::

    name = "heart-fedavg"
    rounds = 15
    [data]
    dataset = "heart_disease"
    [model]
    name = "logreg"
    [train]
    lr = 0.001
    batch_size = 4
    local_steps = 100
    [strategy]
    name = "fedavg"
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedblend.errors import ConfigError

__all__ = [
    "JobSpec",
    "DataSpec",
    "ModelSpec",
    "TrainSpec",
    "StrategySpec",
    "SamplingSpec",
    "EvalSpec",
    "PoolSpec",
    "load_job",
    "parse_job",
    "format_validation_error",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Strict):
    dataset: str = Field(description="heart_disease | mnist | fashion_mnist | femnist | shakespeare | csv | parquet")
    dir: str | None = Field(default=None, description="data directory (default: $FEDBLEND_DATA_DIR or ../shared/data)")
    partition: Literal["natural", "iid", "dirichlet", "shards", "quantity_skew"] | None = Field(
        default=None, description="default: natural for datasets with their own clients, else iid")
    num_sites: int | None = Field(default=None, ge=1)
    alpha: float | None = Field(default=None, gt=0, description="Dirichlet concentration (dirichlet, quantity_skew)")
    shards_per_site: int | None = Field(default=None, ge=1)
    shard_size: int | None = Field(default=None, ge=1)
    examples_per_site: int | None = Field(default=None, ge=1)
    val_fraction: float | None = Field(default=None, ge=0.0, lt=1.0, description="default: the dataset's own")
    test_fraction: float = Field(default=0.25, gt=0.0, lt=1.0, description="user data only: share held out for test")
    min_cell: int = Field(default=5, ge=1)
    # user data (dataset = "csv" | "parquet"): one file per site
    files: dict[str, str] | None = None
    label_column: str | None = None
    feature_columns: list[str] | None = None
    options: dict[str, Any] = Field(default_factory=dict, description="dataset-specific options, e.g. num_writers")

    @model_validator(mode="after")
    def _user_data(self) -> DataSpec:
        if self.dataset in ("csv", "parquet"):
            if not self.files:
                raise ValueError(f"dataset = {self.dataset!r} needs [data].files = {{ site = \"path\" }}, one file per site")
            if not self.label_column:
                raise ValueError(f"dataset = {self.dataset!r} needs [data].label_column naming the label column")
        return self


class ModelSpec(BaseModel):
    """``name`` of a built-in model; any other key is passed to its factory (e.g. hidden = 200)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainSpec(_Strict):
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(default=0.01, gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    local_epochs: int = Field(default=1, ge=1)
    local_steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=32, ge=1)
    loss: Literal["auto", "ce", "bce"] = "auto"
    device: str = "cpu"


class StrategySpec(BaseModel):
    """``name`` of a strategy; any other key is one of its parameters (e.g. server_lr = 0.01)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = "fedavg"

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SamplingSpec(_Strict):
    fraction: float | None = Field(default=None, gt=0, le=1)
    count: int | None = Field(default=None, ge=1)
    min_sites: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _one_of(self) -> SamplingSpec:
        if self.fraction is not None and self.count is not None:
            raise ValueError("give either fraction or count, not both")
        return self


class EvalSpec(_Strict):
    every: int = Field(default=1, ge=0, description="evaluate every N rounds (0: only at the end)")
    splits: list[Literal["train", "val", "test"]] = Field(default_factory=lambda: ["test"])


class PoolSpec(_Strict):
    kind: Literal["auto", "sequential", "vectorized", "process", "ray"] = "auto"
    workers: int = Field(default=0, ge=0, description="process/ray workers (0: one per core)")
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")


class JobSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    seed: int = Field(default=0, ge=0)
    rounds: int = Field(default=10, ge=1)
    output_dir: str = "runs"
    data: DataSpec
    model: ModelSpec
    train: TrainSpec = Field(default_factory=TrainSpec)
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    pool: PoolSpec = Field(default_factory=PoolSpec)
    # Sections owned by other subsystems, validated there (blend/, hpo/, net/).
    blend: dict[str, Any] | None = None
    tune: dict[str, Any] | None = None
    deploy: dict[str, Any] | None = None
    max_update_norm: float = Field(default=1e4, gt=0)

    @field_validator("rounds")
    @classmethod
    def _rounds(cls, v: int) -> int:
        if v > 100_000:
            raise ValueError("rounds above 100000 is almost certainly a typo")
        return v

    def with_overrides(self, **changes: Any) -> JobSpec:
        """A copy with dotted-key overrides, e.g. ``{"train.lr": 0.1}``; validated again."""
        raw = self.model_dump(mode="python")
        for key, value in changes.items():
            node = raw
            parts = key.split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value
        return parse_job(raw, source="overrides")

    def to_toml(self) -> str:
        return _to_toml(self.model_dump(mode="json", exclude_none=True))


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid job file ({exc.error_count()} problem(s)):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key; check the spelling (see docs/jobs.md for the valid keys)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        got = err.get("input")
        got_s = "" if err["type"] in ("missing",) or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  - {loc}: {msg}{got_s}")
    return "\n".join(lines)


def parse_job(raw: dict[str, Any], source: str = "<job>") -> JobSpec:
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_job(path: str | Path) -> JobSpec:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"job file not found: {p} (give the path to a .toml job file; examples/ has some)")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file") from None
    return parse_job(raw, source=str(p))


def _to_toml(d: dict[str, Any]) -> str:
    import tomli_w

    return tomli_w.dumps(d)

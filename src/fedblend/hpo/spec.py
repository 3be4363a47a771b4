"""TuneSpec: the ``[tune]`` table of a job file, validated, and checked against the job it tunes.

    [tune]
    searcher = "tpe"            # grid | random | tpe | cmaes | gp | evolutionary
    n_trials = 30               # trials in all, shared by every worker
    metric = "val_loss"         # a federated validation metric (val_*), or a list for several objectives
    pruner = "median"           # none | median | successive_halving | hyperband (default: median)
    workers = 1                 # worker processes on this machine
    # storage = "postgresql://user@db/tune"   # default: sqlite:///RUN_DIR/tune.db

    [tune.space]
    "train.lr" = { type = "float", low = 1e-4, high = 1e-1, log = true }

Every error names the key as ``[tune].<key>`` and says what was expected and what was given.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedblend.errors import ConfigError
from fedblend.hpo.space import ParamSpec
from fedblend.jobs import DataSpec, JobSpec, SamplingSpec, TrainSpec

__all__ = [
    "TuneSpec",
    "SEARCHERS",
    "PRUNERS",
    "VAL_METRICS",
    "COST_METRICS",
    "parse_tune",
    "tune_spec_for",
]

SEARCHERS = ("grid", "random", "tpe", "cmaes", "gp", "evolutionary")
SINGLE_OBJECTIVE_ONLY = ("cmaes",)
PRUNERS = ("none", "median", "successive_halving", "hyperband")
VAL_METRICS = ("val_loss", "val_loss_mean_sites", "val_acc", "val_acc_mean_sites", "val_acc_worst_site")
COST_METRICS = ("bytes",)  # 2 x model bytes x participants, summed over rounds
_MAXIMIZE = ("val_acc", "val_acc_mean_sites", "val_acc_worst_site")

# Job keys a trial may change, and the sections whose keys are free-form (checked by their owner).
_TOP_LEVEL = ("rounds", "max_update_norm")
_SECTIONS: dict[str, type[BaseModel] | None] = {"train": TrainSpec, "sampling": SamplingSpec, "model": None,
                                               "strategy": None, "blend": None}
_REFUSED = {
    "data": "it changes the sites' data and validation split, so trials would not be compared on the same data",
    "eval": "the tuner sets the evaluation itself (validation every round)",
    "pool": "the pool changes how a federation runs, not what it learns",
    "tune": "the search cannot tune itself",
    "deploy": "deployment settings are not hyperparameters",
    "name": "the trial's name is set by the tuner",
    "seed": "the seed also draws the validation split, so trials would not be compared on the same data "
            "(set [tune].repeats to score each trial over several seeds instead)",
    "output_dir": "the tuner chooses where trials run",
}


class TuneSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    searcher: str = "tpe"
    n_trials: int = Field(default=20, ge=1, le=100_000)
    metric: str | list[str] = "val_loss"
    direction: str | list[str] | None = Field(default=None, description="minimize | maximize; default from the metric")
    pruner: Literal["none", "median", "successive_halving", "hyperband"] | None = None
    pruner_options: dict[str, Any] = Field(default_factory=dict)
    sampler_options: dict[str, Any] = Field(default_factory=dict)
    workers: int = Field(default=1, ge=1, le=1024)
    storage: str | None = Field(default=None, description="Optuna storage URL, or 'memory'; default RUN_DIR/tune.db")
    study_name: str | None = None
    seed: int | None = Field(default=None, ge=0)
    timeout_s: float | None = Field(default=None, gt=0)
    heartbeat_interval: int = Field(default=5, ge=1, le=3600)
    grace_period: int | None = Field(default=None, ge=2)
    max_retry: int = Field(default=1, ge=0, le=100)
    keep_runs: bool = False
    repeats: int = Field(default=1, ge=1, le=20, description="federations per trial, seeds seed..seed+repeats-1; scored by their mean")
    space: dict[str, ParamSpec] = Field(min_length=1)

    @field_validator("searcher")
    @classmethod
    def _searcher(cls, v: str) -> str:
        if v not in SEARCHERS:
            raise ValueError(f"unknown searcher {v!r}; valid searchers: {', '.join(SEARCHERS)}")
        return v

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str | list[str]) -> str | list[str]:
        names = [v] if isinstance(v, str) else v
        if not names:
            raise ValueError("give at least one metric")
        for m in names:
            if m.startswith("test"):
                raise ValueError(
                    f"{m!r} is measured on the test split; tuning must never see test data. "
                    f"Use a validation metric: {', '.join(VAL_METRICS)}")
            if m not in VAL_METRICS + COST_METRICS:
                raise ValueError(f"unknown metric {m!r}; valid metrics: {', '.join(VAL_METRICS + COST_METRICS)}")
        if len(set(names)) != len(names):
            raise ValueError(f"metrics must be distinct (got {names!r})")
        if all(m in COST_METRICS for m in names):
            raise ValueError("at least one metric must be a validation metric (val_*); 'bytes' alone has no learning signal")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TuneSpec:
        n = len(self.metrics)
        if self.direction is not None:
            dirs = [self.direction] if isinstance(self.direction, str) else self.direction
            if len(dirs) != n:
                raise ValueError(f"direction: {len(dirs)} direction(s) for {n} metric(s); give one per metric")
            for d in dirs:
                if d not in ("minimize", "maximize"):
                    raise ValueError(f"direction: must be 'minimize' or 'maximize' (got {d!r})")
        if n > 1 and self.pruner not in (None, "none"):
            raise ValueError(f"pruner: pruning works with one metric only (got pruner={self.pruner!r} and {n} metrics); "
                             'set pruner = "none"')
        if n > 1 and self.searcher in SINGLE_OBJECTIVE_ONLY:
            raise ValueError(f"searcher: {self.searcher!r} optimizes one metric only (got {n}); use tpe, gp, random, grid "
                             "or evolutionary")
        if self.storage == "memory" and self.workers > 1:
            raise ValueError("storage: 'memory' cannot be shared by several workers; drop storage (default: RUN_DIR/tune.db)")
        if self.grace_period is not None and self.grace_period <= self.heartbeat_interval:
            raise ValueError(f"grace_period ({self.grace_period}) must exceed heartbeat_interval ({self.heartbeat_interval})")
        keys = list(self.space)
        for i, (key, p) in enumerate(self.space.items()):
            for cond, allowed in (p.when or {}).items():
                if cond not in keys[:i]:
                    raise ValueError(f'space."{key}".when: {cond!r} must be a parameter declared before {key!r} in [tune.space]')
                ref = self.space[cond]
                if ref.type == "categorical":
                    bad = [a for a in allowed if a not in (ref.choices or [])]
                    if bad:
                        raise ValueError(f'space."{key}".when: {bad!r} are not among the choices of {cond!r} ({ref.choices!r})')
        return self

    # -- derived ------------------------------------------------------------------------------------
    @property
    def metrics(self) -> list[str]:
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    @property
    def directions(self) -> list[str]:
        if self.direction is not None:
            return [self.direction] if isinstance(self.direction, str) else list(self.direction)
        return ["maximize" if m in _MAXIMIZE else "minimize" for m in self.metrics]

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    @property
    def pruner_name(self) -> str:
        if self.pruner is None:
            return "none" if self.multi_objective else "median"
        return self.pruner

    @property
    def grace(self) -> int:
        return self.grace_period if self.grace_period is not None else 4 * self.heartbeat_interval


def _loc(loc: tuple[Any, ...]) -> str:
    out = "[tune]"
    for i, p in enumerate(loc):
        s = str(p)
        if i == 1 and loc[0] == "space":
            out += f'."{s}"'
        elif p in ("function-after[_check()]",):
            continue
        else:
            out += f".{s}"
    return out


def format_tune_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid [tune] table ({exc.error_count()} problem(s)):"]
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not str(p).startswith("function-"))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key; check the spelling (see docs/tune.md for the valid keys)"
        elif err["type"] == "missing":
            msg = "required key is missing" + (" (add at least one searched key under [tune.space])" if loc == ("space",) else "")
        got = err.get("input")
        got_s = "" if err["type"] in ("missing", "value_error") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  - {_loc(loc)}: {msg}{got_s}")
    return "\n".join(lines)


def parse_tune(raw: Mapping[str, Any] | None, source: str = "<job>") -> TuneSpec:
    """Validate a ``[tune]`` table on its own (``tune_spec_for`` also checks it against the job)."""
    if raw is None:
        raise ConfigError(f"{source}: no [tune] table; add one with a searcher and a [tune.space] (see docs/tune.md)")
    try:
        return TuneSpec.model_validate(dict(raw))
    except ValidationError as exc:
        raise ConfigError(format_tune_error(exc, source)) from None


def tune_spec_for(job: JobSpec, source: str = "<job>") -> TuneSpec:
    """The job's ``[tune]`` table, validated and checked against the job's other sections."""
    spec = parse_tune(job.tune, source)
    _check_validation_split(job, source)
    for key, p in spec.space.items():
        _check_key(job, spec, key, p, source)
    return spec


def _check_validation_split(job: JobSpec, source: str) -> None:
    d: DataSpec = job.data
    vf = d.val_fraction
    if vf is None:
        from fedblend.data.registry import DATASETS

        info = DATASETS.get(d.dataset)
        vf = info.default_val_fraction if info is not None else 0.0
    if not vf > 0:
        raise ConfigError(
            f"{source}: tuning needs a validation split, but [data].val_fraction is {vf!r} for dataset {d.dataset!r}. "
            "Trials are scored on validation data, never on test; set e.g. [data].val_fraction = 0.2"
        )


def _where(key: str, source: str) -> str:
    return f'{source}: [tune].space."{key}"'


def _check_key(job: JobSpec, spec: TuneSpec, key: str, p: ParamSpec, source: str) -> None:
    parts = key.split(".")
    root = parts[0]
    if root in _REFUSED:
        raise ConfigError(f"{_where(key, source)}: {root!r} keys cannot be searched: {_REFUSED[root]}")
    if len(parts) == 1:
        if root not in _TOP_LEVEL:
            raise ConfigError(f"{_where(key, source)}: unknown job key; searchable keys are {', '.join(_TOP_LEVEL)} "
                              f"and dotted keys under [{'], ['.join(_SECTIONS)}], e.g. \"train.lr\"")
    else:
        if root not in _SECTIONS:
            raise ConfigError(f"{_where(key, source)}: unknown job section {root!r}; searchable sections: "
                              f"{', '.join(_SECTIONS)} (and top-level {', '.join(_TOP_LEVEL)})")
        if len(parts) != 2 and root != "blend":
            raise ConfigError(f"{_where(key, source)}: expected SECTION.KEY, e.g. \"train.lr\" (got {len(parts)} parts)")
        model = _SECTIONS[root]
        if model is not None and parts[1] not in model.model_fields:
            raise ConfigError(f"{_where(key, source)}: [{root}] has no key {parts[1]!r}; valid keys: "
                              f"{', '.join(model.model_fields)}")
        if root == "strategy" and parts[1] != "name":
            _check_strategy_param(job, spec, key, parts[1], source)
        if root == "model" and parts[1] != "name":
            _check_model_param(job, spec, key, parts[1], source)
    # the range ends and every listed value must make a valid job
    probes: list[Any] = list(p.choices or []) if p.type == "categorical" else [p.low, p.high]
    if p.type == "int":
        probes = [int(v) for v in probes]
    for value in probes + [g for g in (p.grid or []) if g not in probes]:
        try:
            job.with_overrides(**{key: value})
        except ConfigError as exc:
            detail = "; ".join(ln.strip(" -") for ln in str(exc).splitlines()[1:]) or str(exc)
            raise ConfigError(f"{_where(key, source)}: the value {value!r} makes an invalid job: {detail}") from None
    if key == "strategy.name":
        from fedblend.strategies import STRATEGIES

        bad = [c for c in (p.choices or []) if str(c).lower() not in STRATEGIES]
        if bad:
            raise ConfigError(f"{_where(key, source)}: unknown strategies {bad!r}; valid: {', '.join(sorted(STRATEGIES))}")
    if key == "model.name":
        from fedblend.task.models import MODELS

        bad = [c for c in (p.choices or []) if c not in MODELS]
        if bad:
            raise ConfigError(f"{_where(key, source)}: unknown models {bad!r}; valid: {', '.join(sorted(MODELS))}")


def _possible(job: JobSpec, spec: TuneSpec, key: str, base: str) -> list[str]:
    p = spec.space.get(key)
    if p is not None and p.type == "categorical":
        return [str(c) for c in (p.choices or [])]
    return [base]


def _check_strategy_param(job: JobSpec, spec: TuneSpec, key: str, name: str, source: str) -> None:
    from fedblend.strategies import STRATEGIES

    names = [n.lower() for n in _possible(job, spec, "strategy.name", job.strategy.name)]
    valid = sorted({pn for n in names if n in STRATEGIES for pn in STRATEGIES[n].param_names()})
    if name not in valid:
        raise ConfigError(f"{_where(key, source)}: no strategy among {names} takes a parameter {name!r}; "
                          f"valid parameters: {', '.join(valid) or '(none)'}")


def _check_model_param(job: JobSpec, spec: TuneSpec, key: str, name: str, source: str) -> None:
    from fedblend.task.models import MODELS

    names = _possible(job, spec, "model.name", job.model.name)
    valid = sorted({pn for n in names if n in MODELS for pn in inspect.signature(MODELS[n]).parameters})
    if name not in valid:
        raise ConfigError(f"{_where(key, source)}: no model among {names} takes a parameter {name!r}; "
                          f"valid parameters: {', '.join(valid) or '(none)'}")

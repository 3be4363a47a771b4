"""Response models of the dashboard's JSON API (they make up its OpenAPI schema).

Every number that can be missing or non-finite in the store is ``float | None`` here: JSON has no
NaN, so the views turn NaN and infinities into null.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = [
    "RunInfo",
    "SiteCard",
    "PipelineStep",
    "Pipeline",
    "EventOut",
    "Overview",
    "Failure",
    "RoundRow",
    "Series",
    "Participation",
    "Training",
    "BlendTrial",
    "Synthesis",
    "Blends",
    "SiteData",
    "DataView",
    "SearchTrial",
    "Study",
    "Search",
    "JobDocument",
    "WhoAmI",
]

SiteState = Literal["online", "training", "evaluating", "idle", "offline", "rejected", "unknown"]
StepStatus = Literal["done", "current", "pending", "skipped"]


class RunInfo(BaseModel):
    label: str = Field(description="the run directory's name")
    present: bool = Field(description="false while the run directory holds no run.db yet")
    name: str | None = None
    kind: str = Field("federation", description="federation | tune (a hyperparameter search)")
    status: str | None = Field(None, description="running | finished | interrupted | ...")
    round: int = Field(0, description="last committed round")
    rounds: int | None = Field(None, description="rounds planned")
    dataset: str | None = None
    model: str | None = None
    strategy: str | None = None
    seed: int | None = None
    updated_at: float | None = None
    server_time: float = Field(description="the dashboard server's clock (unix seconds), for 'seconds ago'")


class SiteCard(BaseModel):
    site_id: str
    state: SiteState
    state_source: Literal["reported", "derived"] = Field(
        description="reported: the site (deployment) set it; derived: inferred from the round's events"
    )
    progress: float | None = Field(None, description="progress within the current round, 0..1")
    last_seen: float | None = Field(None, description="last heartbeat (deployment) or last activity (simulation)")
    data_version: str | None = None
    num_rows: int | None = None
    rejected: int = Field(0, description="updates rejected so far")
    rounds_participated: int = 0
    last_train_loss: float | None = None
    last_eval_loss: float | None = None
    last_eval_accuracy: float | None = None


class PipelineStep(BaseModel):
    id: str
    label: str
    status: StepStatus


class Pipeline(BaseModel):
    round: int | None = Field(None, description="the round the current stage belongs to")
    stage: str | None = Field(None, description="latest stage recorded by the round loop")
    steps: list[PipelineStep]


class EventOut(BaseModel):
    id: int
    ts: float
    kind: str
    round: int | None = None
    site_id: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)


class Overview(BaseModel):
    run: RunInfo
    server_state: str
    pipeline: Pipeline
    sites: list[SiteCard]
    recent_events: list[EventOut]


class Failure(BaseModel):
    round: int
    site_id: str
    kind: str = Field(description="rejected | error | timeout | offline")
    reason: str


class RoundRow(BaseModel):
    round: int
    committed_at: float | None = None
    duration_s: float | None = None
    participants: list[str]
    failures: list[Failure]
    global_metrics: dict[str, float | None]


class Series(BaseModel):
    kind: str = Field(description="train | eval:<split>")
    metric: str
    site_id: str
    rounds: list[int]
    values: list[float | None]


class Participation(BaseModel):
    sites: list[str]
    rounds: list[int]
    status: list[list[str]] = Field(
        description="status[site][round]: trained | rejected | error | timeout | offline | absent"
    )


class Training(BaseModel):
    run: RunInfo
    rounds: list[RoundRow]
    global_metric_names: list[str]
    site_series: list[Series]
    participation: Participation
    rejected: list[Failure]


class BlendTrial(BaseModel):
    number: int
    label: str | None = Field(None, description="fedavg | uniform | warm_start | search")
    state: str = Field("complete", description="complete | fail")
    ratios: dict[str, float | None] = Field(description="site -> mixing ratio of this candidate")
    params: dict[str, float | None] = Field(
        default_factory=dict, description="the searched parameters behind the ratios"
    )
    values: list[float | None] = Field(default_factory=list, description="objective value(s), minimized")
    score: float | None = Field(None, description="the first objective value (lower is better)")
    gain: float | None = Field(None, description="paired gain over FedAvg on the objective")
    gain_se: float | None = None
    pooled_loss: float | None = None
    pooled_acc: float | None = None
    worst_loss: float | None = None
    mean_site_acc: float | None = None
    worst_site_acc: float | None = None
    site_scores: dict[str, dict[str, float | None]] = Field(default_factory=dict, description="site -> n/loss/acc/...")
    reason: str | None = Field(None, description="why a failed trial failed")


class Synthesis(BaseModel):
    round: int
    sites: list[str]
    fedavg_ratios: dict[str, float | None]
    chosen_ratios: dict[str, float | None]
    decision: str = Field(description="accepted | not accepted | skipped")
    accepted: bool | None = Field(None, description="whether the searched ratios were adopted")
    adopted: str | None = Field(None, description="blend | fedavg")
    reason: str | None = None
    gain: float | None = None
    gain_se: float | None = None
    margin: float | None = None
    k: float | None = None
    objective: str | None = None
    searcher: str | None = None
    space: str | None = None
    budget: int | None = None
    best_trial: int | None = None
    best_label: str | None = None
    fedavg_metrics: dict[str, float | None] = Field(default_factory=dict, description="FedAvg's validation scores")
    best_metrics: dict[str, float | None] = Field(
        default_factory=dict, description="the best candidate's validation scores"
    )
    pareto_front: list[int] | None = None
    timing: dict[str, float | None] = Field(default_factory=dict)
    communication: dict[str, float | None] = Field(default_factory=dict)
    trials: list[BlendTrial]


class Blends(BaseModel):
    run: RunInfo
    syntheses: list[Synthesis]


class SiteData(BaseModel):
    site_id: str
    num_train: int | None = None
    num_val: int | None = None
    num_test: int | None = None
    label_counts: dict[str, int | None] = Field(description="None: suppressed (fewer than min_cell rows)")
    heterogeneity: float | None = Field(None, description="Jensen-Shannon divergence (base 2) from the pooled labels")
    data_version: str | None = None
    min_cell: int | None = None
    features: dict[str, dict[str, float | None]] = Field(
        default_factory=dict, description="feature -> mean/std/missing"
    )


class DataView(BaseModel):
    run: RunInfo
    classes: list[str]
    features: list[str]
    sites: list[SiteData]


class SearchTrial(BaseModel):
    number: int
    state: str = Field(description="complete | pruned | fail | running | waiting")
    values: list[float | None]
    params: dict[str, Any]
    duration_s: float | None = None
    rounds_done: int | None = Field(None, description="rounds the trial's federation ran (pruned trials stop early)")
    steps: list[int] = Field(default_factory=list, description="rounds with a reported validation value")
    intermediate: list[float | None] = Field(default_factory=list, description="the reported value at each of steps")
    fail_reason: str | None = None


class Study(BaseModel):
    name: str
    directions: list[str]
    metrics: list[str] = Field(default_factory=list)
    searcher: str | None = None
    budget: int | None = Field(None, description="n_trials of the search")
    counts: dict[str, int] = Field(default_factory=dict, description="trials per state")
    trials: list[SearchTrial]
    best_trial: int | None = None
    best_values: list[float | None] = Field(default_factory=list)
    best_params: dict[str, Any] = Field(default_factory=dict)
    pareto_front: list[int] = Field(default_factory=list, description="several objectives: the Pareto-optimal trials")
    importances: dict[str, dict[str, float]] = Field(default_factory=dict, description="metric -> parameter -> share")


class Search(BaseModel):
    run: RunInfo
    available: bool
    message: str
    source: str | None = Field(None, description="optuna storage | tune.json")
    studies: list[Study]


class JobDocument(BaseModel):
    name: str
    text: str | None = Field(description="the job file, with secret-looking values redacted")


class WhoAmI(BaseModel):
    role: Literal["viewer", "admin"] | None = Field(description="None when the dashboard has no access control")
    auth: bool

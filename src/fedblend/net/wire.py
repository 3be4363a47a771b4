"""The fleet protocol: every control message as a pydantic model (so all appear in the OpenAPI
schema), and the one place that maps errors to HTTP status codes.

Weights never travel as JSON: they are safetensors files sent in chunks (``ModelRef`` on the way
down, ``UploadManifest`` on the way up), each chunk with its own sha256 and the whole file with one.

    site                                   server
    GET  /v1/hello                    ->   job, settings          (identity from the certificate)
    POST /v1/register  Registration   ->   Registered
    POST /v1/heartbeat Heartbeat      ->   HeartbeatReply
    GET  /v1/work?wait=S              ->   WorkItem (train | evaluate | wait | done; job_id once the
                                           server switched jobs, e.g. between the trials of a search)
    GET  /v1/models/{id}/chunks/{i}   ->   bytes
    POST /v1/tasks/{id}/upload  UploadManifest -> UploadTicket
    PUT  /v1/uploads/{id}/chunks/{i}  bytes    -> ChunkAck
    POST /v1/uploads/{id}/commit      ->   Receipt
    POST /v1/tasks/{id}/eval  EvalResult -> Receipt
    POST /v1/tasks/{id}/fail  TaskFailure -> Receipt
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "PROTOCOL_VERSION",
    "job_id_of",
    "Schema",
    "Hello",
    "Registration",
    "Registered",
    "Heartbeat",
    "HeartbeatReply",
    "ModelRef",
    "WorkItem",
    "UploadManifest",
    "UploadTicket",
    "ChunkAck",
    "EvalResult",
    "TaskFailure",
    "Receipt",
    "ErrorBody",
    "WireError",
    "AdminStatus",
    "AdminAction",
    "SiteView",
]

PROTOCOL_VERSION = 1
_SHA256 = r"^[0-9a-f]{64}$"
SiteState = Literal["online", "training", "evaluating", "idle", "offline", "rejected"]


def job_id_of(job_toml: str) -> str:
    """The id of a job: sha256 of its TOML text (what ``WorkItem.job_id`` carries)."""
    return hashlib.sha256(job_toml.encode("utf-8")).hexdigest()


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Schema(_Msg):
    """Shape facts of a site's data; every site of a federation must agree on them."""

    input_shape: list[int] = Field(max_length=8)
    num_classes: int = Field(ge=1, le=1_000_000)
    kind: Literal["tabular", "image", "text"] = "tabular"
    feature_names: list[str] = Field(default_factory=list, max_length=100_000)


class Hello(_Msg):
    protocol: int = PROTOCOL_VERSION
    site: str
    server_id: str
    job_toml: str
    heartbeat_s: float
    chunk_bytes: int
    max_update_bytes: int
    data_check_s: float


class Registration(_Msg):
    protocol: int = PROTOCOL_VERSION
    site_id: str | None = Field(default=None, description="optional; when given it must equal the certificate's name")
    data_version: str = Field(max_length=128)
    num_rows: int = Field(ge=0, le=10**12)
    schema_: Schema = Field(alias="schema")
    stats: dict[str, Any] = Field(default_factory=dict, description="privacy-safe SiteStats.to_json()")
    agent: str = Field(default="", max_length=200)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Registered(_Msg):
    site: str
    server_id: str
    heartbeat_s: float


class Heartbeat(_Msg):
    state: SiteState = "idle"
    task_id: str | None = Field(default=None, max_length=64)
    progress: float = Field(default=0.0, ge=0.0, le=1.0)
    data_version: str | None = Field(default=None, max_length=128)
    num_rows: int | None = Field(default=None, ge=0, le=10**12)


class HeartbeatReply(_Msg):
    server_id: str
    registered: bool
    cancel_task: bool = False


class ModelRef(_Msg):
    """A safetensors file the site downloads in chunks."""

    model_id: str
    size: int
    sha256: str = Field(pattern=_SHA256)
    chunk_bytes: int
    chunks: list[str]


class WorkItem(_Msg):
    kind: Literal["train", "evaluate", "wait", "done"]
    task_id: str | None = None
    round: int | None = None
    model: ModelRef | None = None
    reference: ModelRef | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    split: str | None = None
    retry_after_s: float = 0.0
    message: str = ""
    job_id: str | None = Field(default=None, pattern=_SHA256,
                               description="sha256 of the job TOML this task belongs to; a site holding another job "
                                           "fetches /v1/hello again and reloads (None: the job from hello)")


class UploadManifest(_Msg):
    """What a site is about to upload for a training task (sent before the chunks)."""

    round: int = Field(ge=1)
    size: int = Field(ge=8)
    sha256: str = Field(pattern=_SHA256)
    chunks: list[str] = Field(min_length=1, max_length=1_000_000)
    num_examples: int
    metrics: dict[str, float] = Field(default_factory=dict, max_length=100)
    duration_s: float = Field(default=0.0, ge=0.0)

    @field_validator("chunks")
    @classmethod
    def _hex(cls, v: list[str]) -> list[str]:
        import re

        bad = [c for c in v if not re.fullmatch(_SHA256, c)]
        if bad:
            raise ValueError(f"every chunk digest must be 64 lower-case hex characters (got {bad[0]!r})")
        return v

    @field_validator("metrics")
    @classmethod
    def _finite(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k, x in v.items() if not math.isfinite(x)]
        if bad:
            raise ValueError(f"metrics must be finite numbers (not finite: {bad})")
        return v


class UploadTicket(_Msg):
    upload_id: str
    chunk_bytes: int
    received: list[int] = Field(default_factory=list, description="chunks already received (resume)")


class ChunkAck(_Msg):
    index: int
    received: int
    total: int


class EvalResult(_Msg):
    split: str = Field(max_length=16)
    num_examples: int = Field(ge=0, le=10**12)
    loss_sum: float
    correct: float = Field(ge=0)
    diff_sum: float = 0.0
    diff_sq_sum: float = Field(default=0.0, ge=0)

    @field_validator("loss_sum", "correct", "diff_sum", "diff_sq_sum")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


class TaskFailure(_Msg):
    reason: str = Field(max_length=2000)


class Receipt(_Msg):
    status: Literal["accepted", "duplicate"]
    detail: str = ""


class ErrorBody(_Msg):
    error: str
    detail: str


class SiteView(_Msg):
    site: str
    state: str
    last_heartbeat: float | None = None
    data_version: str | None = None
    num_rows: int | None = None
    rejected: int = 0


class AdminStatus(_Msg):
    server_id: str
    status: str
    round: int
    rounds: int
    cycle: int
    sites: list[SiteView]


class AdminAction(_Msg):
    action: Literal["stop", "start", "revoke"]
    site: str | None = None
    reason: str = ""


class WireError(Exception):
    """An error answered to a client: HTTP status, a short code, and a clear detail."""

    STATUS = {
        "unauthenticated": 401, "forbidden": 403, "certificate_revoked": 403, "not_found": 404,
        "not_registered": 409, "conflict": 409, "stale": 409, "late": 409, "gone": 410,
        "too_large": 413, "bad_request": 422, "rejected": 422, "bad_chunk": 422, "unavailable": 503,
    }

    def __init__(self, code: str, detail: str, *, record: bool = False) -> None:
        super().__init__(detail)
        self.code, self.detail, self.record = code, detail, record

    @property
    def status(self) -> int:
        return self.STATUS.get(self.code, 400)

    def body(self) -> dict[str, Any]:
        return ErrorBody(error=self.code, detail=self.detail).model_dump()

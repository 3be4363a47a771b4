"""Small job files for tests (fast settings on the real heart-disease data)."""

from __future__ import annotations

from typing import Any

from fedblend.jobs import JobSpec, parse_job


def heart_job(tmp_path: Any, **overrides: Any) -> JobSpec:
    raw: dict[str, Any] = {
        "name": "heart-test",
        "seed": 3,
        "rounds": 4,
        "output_dir": str(tmp_path / "runs"),
        "data": {"dataset": "heart_disease"},
        "model": {"name": "logreg"},
        "train": {"lr": 0.01, "batch_size": 8, "local_steps": 10},
        "strategy": {"name": "fedavg"},
    }
    job = parse_job(raw)
    return job.with_overrides(**overrides) if overrides else job

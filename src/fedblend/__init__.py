"""fedblend: federated learning that blends the sites' models in the best ratio it can find.

The public namespace is curated (``__all__``); heavy parts (torch models, Optuna, the web stack,
Ray) load only when used.
"""

from __future__ import annotations

from typing import Any

from fedblend.errors import (
    ConfigError,
    DataError,
    FedblendError,
    ModelError,
    QuorumError,
    StoreError,
    TransportError,
    UpdateRejected,
)
from fedblend.records import EvalReport, RoundPlan, RoundResult, SiteFailure, SiteStats, SiteUpdate
from fedblend.weights import Weights, weighted_sum

__version__ = "0.1.0"

_LAZY = {
    "Federation": "fedblend.engine",
    "Sampling": "fedblend.engine",
    "SiteRunner": "fedblend.engine",
    "SitePool": "fedblend.engine",
    "RunStore": "fedblend.engine",
    "TorchTask": "fedblend.task",
    "load_dataset": "fedblend.data",
    "make_strategy": "fedblend.strategies",
    "JobSpec": "fedblend.jobs",
    "load_job": "fedblend.jobs",
    "run_job": "fedblend.runner",
    "SqlRunStore": "fedblend.store",
    "learning": "fedblend.learning",
}

__all__ = [
    "__version__",
    "FedblendError",
    "ConfigError",
    "DataError",
    "ModelError",
    "QuorumError",
    "StoreError",
    "TransportError",
    "UpdateRejected",
    "EvalReport",
    "RoundPlan",
    "RoundResult",
    "SiteFailure",
    "SiteStats",
    "SiteUpdate",
    "Weights",
    "weighted_sum",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        mod = importlib.import_module(_LAZY[name])
        return mod if name == "learning" else getattr(mod, name)
    raise AttributeError(f"module 'fedblend' has no attribute {name!r}")

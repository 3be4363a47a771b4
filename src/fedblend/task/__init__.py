"""What a site runs: the Task protocol, TorchTask, local-training settings and built-in models.

from fedblend.task import TorchTask, build_model
task = TorchTask("logreg", model_params={"in_features": 13, "binary": True}, loss="bce", lr=0.001)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from fedblend.task.base import EvalSums, Task, TrainOutput
from fedblend.task.config import TrainConfig

# torch is imported only when a torch-backed name is used: the deployment server aggregates numpy
# weights and never needs it (about 150 MB less resident memory).
_LAZY = {
    **dict.fromkeys(("MODELS", "build_model", "char_lstm", "cnn_mcmahan", "count_parameters", "logreg", "mlp_2nn"), "models"),
    **dict.fromkeys(("LOSSES", "TorchTask"), "torch_task"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f"fedblend.task.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fedblend.task' has no attribute {name!r}")

__all__ = [
    "Task",
    "TrainOutput",
    "EvalSums",
    "TrainConfig",
    "TorchTask",
    "LOSSES",
    "MODELS",
    "build_model",
    "count_parameters",
    "logreg",
    "mlp_2nn",
    "cnn_mcmahan",
    "char_lstm",
]

"""What a site runs: the Task protocol, TorchTask, local-training settings and built-in models.

from fedblend.task import TorchTask, build_model
task = TorchTask("logreg", model_params={"in_features": 13, "binary": True}, loss="bce", lr=0.001)
"""

from __future__ import annotations

from fedblend.task.base import EvalSums, Task, TrainOutput
from fedblend.task.config import TrainConfig
from fedblend.task.models import MODELS, build_model, char_lstm, cnn_mcmahan, count_parameters, logreg, mlp_2nn
from fedblend.task.torch_task import LOSSES, TorchTask

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

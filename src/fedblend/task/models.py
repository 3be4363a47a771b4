"""Built-in model factories (torch.nn.Module) and their registry.

* ``logreg``: logistic regression; ``binary=True`` gives one logit for sigmoid/BCE, as FLamby's
  Fed-Heart-Disease baseline (``flamby/datasets/fed_heart_disease/model.py``).
* ``mlp``: McMahan et al. 2017 (arXiv:1602.05629) "2NN", 784-200-200-10, 199,210 parameters.
* ``cnn``: McMahan et al. 2017 "CNN": two 5x5 convolutions (32, 64 channels, 'same' padding) each
  followed by 2x2 max-pooling, a 512-unit dense layer and the output: 1,663,370 parameters for 28x28
  inputs and 10 classes.
* ``char_lstm``: the LEAF / McMahan Shakespeare model: 8-dim character embedding, 2-layer LSTM
  with 256 units, predicting the next character from the last step.

    from fedblend.task.models import build_model
    model = build_model("cnn", num_classes=62)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fedblend.errors import ConfigError

__all__ = ["logreg", "mlp_2nn", "cnn_mcmahan", "char_lstm", "MODELS", "build_model", "count_parameters"]


def _positive_int(model: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"model {model!r}: '{name}' must be an integer >= 1 (got {value!r} that is a {type(value).__name__})"
        )
    return value


class LogReg(nn.Module):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class MLP2NN(nn.Module):
    def __init__(self, in_features: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x.flatten(1)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class CNNMcMahan(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.image_size = image_size
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2)
        side = image_size // 4
        self.fc1 = nn.Linear(64 * side * side, 512)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # accepts (N, H*W*C), (N, H, W) or (N, C, H, W)
        x = x.reshape(x.shape[0], self.in_channels, self.image_size, self.image_size)
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class CharLSTM(nn.Module):
    def __init__(self, vocab_size: int, embed: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(x.long()))  # (N, T, hidden)
        return self.fc(out[:, -1, :])  # next character after the sequence


def logreg(in_features: int, num_classes: int = 2, binary: bool = False) -> nn.Module:
    """``Linear(in_features, num_classes)``; with ``binary=True`` (two classes) ``Linear(d, 1)``
    producing one logit, for ``loss="bce"``."""
    _positive_int("logreg", "in_features", in_features)
    _positive_int("logreg", "num_classes", num_classes)
    if not isinstance(binary, bool):
        raise ConfigError(f"model 'logreg': 'binary' must be True or False (got {binary!r})")
    if binary and num_classes != 2:
        raise ConfigError(
            f"model 'logreg': binary=True means two classes and one logit (got num_classes={num_classes}); "
            "use binary=False for more classes"
        )
    if not binary and num_classes < 2:
        raise ConfigError("model 'logreg': num_classes must be >= 2 (for one logit use binary=True)")
    return LogReg(in_features, 1 if binary else num_classes)


def mlp_2nn(in_features: int = 784, hidden: int = 200, num_classes: int = 10) -> nn.Module:
    """McMahan's 2NN: two hidden ReLU layers of ``hidden`` units; flattens its input."""
    _positive_int("mlp", "in_features", in_features)
    _positive_int("mlp", "hidden", hidden)
    _positive_int("mlp", "num_classes", num_classes)
    return MLP2NN(in_features, hidden, num_classes)


def cnn_mcmahan(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """McMahan's CNN for square ``image_size`` inputs (28 for MNIST/FEMNIST)."""
    _positive_int("cnn", "num_classes", num_classes)
    _positive_int("cnn", "in_channels", in_channels)
    _positive_int("cnn", "image_size", image_size)
    if image_size < 4:
        raise ConfigError(f"model 'cnn': image_size must be >= 4 for two 2x2 poolings (got {image_size})")
    return CNNMcMahan(num_classes, in_channels, image_size)


def char_lstm(vocab_size: int, embed: int = 8, hidden: int = 256, layers: int = 2) -> nn.Module:
    """LEAF Shakespeare next-character model; inputs are (N, T) int token ids."""
    _positive_int("char_lstm", "vocab_size", vocab_size)
    _positive_int("char_lstm", "embed", embed)
    _positive_int("char_lstm", "hidden", hidden)
    _positive_int("char_lstm", "layers", layers)
    return CharLSTM(vocab_size, embed, hidden, layers)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "logreg": logreg,
    "mlp": mlp_2nn,
    "cnn": cnn_mcmahan,
    "char_lstm": char_lstm,
}


def build_model(name: str, **params: Any) -> nn.Module:
    """Build the registered model ``name`` with ``params``; ConfigError on unknown names/params."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}")
    factory = MODELS[name]
    sig = inspect.signature(factory)
    valid = list(sig.parameters)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(f"model {name!r} has no parameter(s) {unknown}; valid parameters: {', '.join(valid)}")
    missing = [p.name for p in sig.parameters.values() if p.default is inspect.Parameter.empty and p.name not in params]
    if missing:
        raise ConfigError(f"model {name!r} needs parameter(s) {missing} (e.g. build_model({name!r}, {missing[0]}=...))")
    return factory(**params)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

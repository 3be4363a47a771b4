"""TorchTask: the Task protocol for any torch.nn.Module classifier (train locally, score, init).

Local training is plain minibatch SGD/Adam over a site's arrays, deterministic in the seed:
batches come from a numpy Generator seeded with it, torch randomness runs inside
``torch.random.fork_rng`` seeded with it. ``local_steps`` counts minibatches and cycles through
reshuffled epochs (FLamby: "100 local steps of batch 4"); otherwise ``local_epochs`` full passes.
FedProx adds ``proximal_mu/2 * ||w - w_global||^2`` over the model's parameters.

The pieces a vectorized (torch.func/vmap) pool needs are public: ``loss_fn``, ``per_example_loss``,
``train_config``, ``optimizer_settings``, ``batch_indices``, ``to_tensors``, ``check_fit``.

    from fedblend.task import TorchTask
    task = TorchTask("cnn", model_params={"num_classes": 10}, lr=0.05, batch_size=10)
    w0 = task.init_weights(seed=0)
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedblend.data.base import ArraySplit
from fedblend.errors import ConfigError, DataError, FedblendError, ModelError
from fedblend.task.base import EvalSums, TrainOutput
from fedblend.task.config import TrainConfig
from fedblend.task.models import MODELS, build_model
from fedblend.weights import Weights

__all__ = ["TorchTask", "LOSSES"]

log = logging.getLogger(__name__)

LOSSES = ("ce", "bce", "auto")


class TorchTask:
    """Train and score a torch model on one site's arrays.

    ``model_fn`` is a registered model name (see ``fedblend.task.models.MODELS``) or a callable
    returning a fresh ``nn.Module``; ``model_params`` are passed to it. ``loss`` is ``"ce"``
    (softmax cross-entropy over the outputs), ``"bce"`` (one logit, labels 0/1) or ``"auto"`` (bce
    when the model has one output, else ce). The other keyword parameters are the default
    ``TrainConfig``; a round's config may override them. ``momentum`` applies to SGD only.

    The model is built once per task (and thread) and reloaded with the given weights on each
    call, so one task object can serve every site of a simulation.
    """

    def __init__(
        self,
        model_fn: str | Callable[..., nn.Module],
        model_params: Mapping[str, Any] | None = None,
        loss: str = "ce",
        optimizer: str = "sgd",
        lr: float = 0.01,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        local_epochs: int = 1,
        local_steps: int | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 512,
        device: str = "cpu",
    ) -> None:
        if isinstance(model_fn, str):
            if model_fn not in MODELS:
                raise ConfigError(f"TorchTask: unknown model {model_fn!r}; valid models: {', '.join(sorted(MODELS))}")
        elif not callable(model_fn):
            raise ConfigError(
                f"TorchTask: 'model_fn' must be a model name or a callable returning an nn.Module (got {model_fn!r})"
            )
        if model_params is not None and not isinstance(model_params, Mapping):
            raise ConfigError(f"TorchTask: 'model_params' must be a mapping (got {type(model_params).__name__})")
        if loss not in LOSSES:
            raise ConfigError(f"TorchTask: 'loss' must be one of {list(LOSSES)} (got {loss!r})")
        if isinstance(eval_batch_size, bool) or not isinstance(eval_batch_size, int) or eval_batch_size < 1:
            raise ConfigError(f"TorchTask: 'eval_batch_size' must be an integer >= 1 (got {eval_batch_size!r})")
        _resolve_device(device)  # validates
        self.model_fn = model_fn
        self.model_params = model_params
        self.loss = loss
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.local_epochs = local_epochs
        self.local_steps = local_steps
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.device = device
        self._defaults = TrainConfig(
            lr=lr,
            optimizer=optimizer,
            momentum=momentum,
            weight_decay=weight_decay,
            local_epochs=local_epochs,
            local_steps=local_steps,
            batch_size=batch_size,
        )
        self._cache = threading.local()

    # Estimator rule ---------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def __repr__(self) -> str:
        return f"TorchTask({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_cache", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache = threading.local()

    # Model ------------------------------------------------------------------------------------
    @property
    def torch_device(self) -> torch.device:
        return _resolve_device(self.device)

    def build_model(self) -> nn.Module:
        """A fresh model from ``model_fn`` (on CPU, with torch's current RNG)."""
        params = dict(self.model_params or {})
        if isinstance(self.model_fn, str):
            return build_model(self.model_fn, **params)
        model = self.model_fn(**params)
        if not isinstance(model, nn.Module):
            raise ModelError(f"TorchTask: model_fn must return a torch.nn.Module (got {type(model).__name__})")
        return model

    def model(self) -> nn.Module:
        """This thread's cached model instance (built on first use)."""
        m = getattr(self._cache, "model", None)
        if m is None:
            with torch.random.fork_rng(devices=[]):  # building must not move the caller's RNG
                m = self._remember(self.build_model())
        return m

    def _remember(self, model: nn.Module) -> nn.Module:
        model = model.to(self.torch_device)
        self._cache.model = model
        self._cache.spec = {
            k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()
        }
        return model

    def load(self, weights: Weights) -> nn.Module:
        """The cached model with ``weights`` copied in; ModelError when they belong to another model."""
        model = self.model()
        spec = self._cache.spec
        if weights.spec() != spec:
            try:
                Weights({k: np.zeros(s, dtype=d) for k, (s, d) in spec.items()}).check_compatible(weights)
            except FedblendError as exc:
                raise ModelError(
                    f"{exc}; the weights were made for another model than {self._model_name()}: "
                    "initialise them with this task's init_weights(seed) or fix the model parameters"
                ) from None
        with torch.no_grad():
            for k, t in model.state_dict().items():
                arr = np.asarray(weights[k])
                if not arr.flags.writeable:
                    arr = arr.copy()
                t.copy_(torch.from_numpy(arr))
        return model

    def _model_name(self) -> str:
        name = self.model_fn if isinstance(self.model_fn, str) else getattr(self.model_fn, "__name__", "model_fn")
        return f"{name}({', '.join(f'{k}={v!r}' for k, v in (self.model_params or {}).items())})"

    # Pieces a vectorized pool reuses ----------------------------------------------------------
    def train_config(self, config: Mapping[str, Any] | None = None) -> TrainConfig:
        """The task's defaults with a round's ``config`` applied (validated)."""
        return self._defaults.merged(config or {})

    @staticmethod
    def optimizer_settings(cfg: TrainConfig) -> dict[str, Any]:
        if cfg.optimizer == "sgd":
            return {
                "name": "sgd",
                "lr": float(cfg.lr),
                "momentum": float(cfg.momentum),
                "weight_decay": float(cfg.weight_decay),
            }
        return {"name": "adam", "lr": float(cfg.lr), "weight_decay": float(cfg.weight_decay)}

    def make_optimizer(self, params: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
        s = self.optimizer_settings(cfg)
        if s["name"] == "sgd":
            return torch.optim.SGD(params, lr=s["lr"], momentum=s["momentum"], weight_decay=s["weight_decay"])
        return torch.optim.Adam(params, lr=s["lr"], weight_decay=s["weight_decay"])

    @staticmethod
    def batch_indices(n: int, cfg: TrainConfig, rng: np.random.Generator) -> list[np.ndarray]:
        """The minibatch index arrays of one local training run (last batch of an epoch may be short)."""
        bs = int(cfg.batch_size)
        batches: list[np.ndarray] = []
        if cfg.local_steps is None:
            for _ in range(int(cfg.local_epochs)):
                perm = rng.permutation(n)
                batches.extend(perm[i : i + bs] for i in range(0, n, bs))
            return batches
        steps = int(cfg.local_steps)
        while len(batches) < steps:
            perm = rng.permutation(n)
            batches.extend(perm[i : i + bs] for i in range(0, n, bs))
        return batches[:steps]

    def _loss_kind(self, width: int) -> str:
        if self.loss == "auto":
            return "bce" if width == 1 else "ce"
        return self.loss

    @staticmethod
    def _width(outputs: torch.Tensor) -> int:
        return 1 if outputs.ndim == 1 else int(outputs.shape[-1])

    def per_example_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss per example (no reduction)."""
        if self._loss_kind(self._width(outputs)) == "bce":
            return F.binary_cross_entropy_with_logits(outputs.reshape(-1), targets.to(outputs.dtype), reduction="none")
        return F.cross_entropy(outputs, targets, reduction="none")

    def loss_fn(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch: what local training minimises (before the proximal term)."""
        if self._loss_kind(self._width(outputs)) == "bce":
            return F.binary_cross_entropy_with_logits(outputs.reshape(-1), targets.to(outputs.dtype))
        return F.cross_entropy(outputs, targets)

    def correct(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-example 0/1 correctness: argmax, or logit > 0 (sigmoid > 0.5) for bce."""
        if self._loss_kind(self._width(outputs)) == "bce":
            return (outputs.reshape(-1) > 0).long() == targets
        return outputs.argmax(dim=-1) == targets

    def to_tensors(self, data: ArraySplit) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (float32, or int64 token ids) and int64 labels on the task's device."""
        x = np.asarray(data.x)
        x = np.ascontiguousarray(x, dtype=np.int64 if x.dtype.kind in "iub" else np.float32)
        y = np.ascontiguousarray(np.asarray(data.y), dtype=np.int64)
        if not x.flags.writeable:
            x = x.copy()
        if not y.flags.writeable:
            y = y.copy()
        dev = self.torch_device
        return torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)

    def check_fit(self, outputs: torch.Tensor, y: np.ndarray | torch.Tensor) -> None:
        """ModelError when the model's outputs cannot score these labels, saying how to fix it."""
        y_min, y_max = int(y.min()), int(y.max())
        classes = y_max + 1
        if y_min < 0:
            raise DataError(f"labels must be class ids >= 0 (got a label {y_min}); encode the labels as 0..K-1")
        if outputs.ndim > 2 or outputs.ndim == 0:
            raise ModelError(
                f"model {self._model_name()} must output (batch, classes) logits (got shape {tuple(outputs.shape)}); "
                "reduce the output to one row of logits per example"
            )
        width = self._width(outputs)
        kind = self._loss_kind(width)
        if kind == "bce":
            if width != 1:
                raise ModelError(
                    f"loss='bce' needs a model with one output logit, but {self._model_name()} outputs {width} values "
                    f"per example (the data has {classes} classes); use loss='ce', or a one-logit model "
                    "such as build_model('logreg', in_features=..., binary=True)"
                )
            if y_max > 1:
                raise ModelError(
                    f"loss='bce' needs labels 0/1, but the data has labels up to {y_max} ({classes} classes) and "
                    f"the model has 1 output; use loss='ce' with a model of {classes} outputs (num_classes={classes})"
                )
        else:
            if width < 2:
                raise ModelError(
                    f"loss='ce' needs a model with one output per class, but {self._model_name()} outputs 1 value "
                    f"(the data has {classes} classes); use loss='bce' for 0/1 labels, or num_classes={max(classes, 2)}"
                )
            if y_max >= width:
                raise ModelError(
                    f"model {self._model_name()} outputs {width} classes but the data has labels up to {y_max} "
                    f"(at least {classes} classes); build the model with num_classes={classes} or more"
                )

    # Task protocol ----------------------------------------------------------------------------
    def init_weights(self, seed: int) -> Weights:
        """Fresh weights, deterministic in ``seed`` (torch's global RNG is left untouched)."""
        _check_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = self.build_model()
        weights = Weights.from_torch(model)
        if getattr(self._cache, "model", None) is None:
            self._remember(model)
        return weights

    def train(self, weights: Weights, data: ArraySplit, config: dict[str, Any], seed: int) -> TrainOutput:
        cfg = self.train_config(config)
        _check_seed(seed)
        n = len(data)
        if n == 0:
            raise DataError("cannot train on 0 examples; give the site training data or leave it out of the round")
        model = self.load(weights)
        x, y = self.to_tensors(data)
        rng = np.random.default_rng(np.random.SeedSequence(int(seed)))
        batches = self.batch_indices(n, cfg, rng)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = self.make_optimizer(params, cfg)
        mu = float(cfg.proximal_mu)
        anchor = [p.detach().clone() for p in params] if mu > 0 else []
        dev = self.torch_device
        model.train()
        losses: list[torch.Tensor] = []
        with torch.random.fork_rng(devices=_rng_devices(dev)):
            torch.manual_seed(int(seed))
            for i, idx in enumerate(batches):
                it = torch.from_numpy(idx).to(dev)
                xb, yb = x[it], y[it]
                out = model(xb)
                if i == 0:
                    self.check_fit(out, data.y)
                loss = self.loss_fn(out, yb)
                total = loss
                if mu > 0:
                    prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
                    total = loss + (mu / 2.0) * prox
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                losses.append(loss.detach())
        train_loss = float(torch.stack(losses).double().mean()) if losses else math.nan
        log.debug("trained %d steps on %d examples, mean loss %.4g", len(batches), n, train_loss)
        return TrainOutput(
            weights=Weights.from_torch(model),
            num_examples=n,
            metrics={"train_loss": train_loss, "steps": len(batches)},
        )

    def evaluate(self, weights: Weights, data: ArraySplit, reference: Weights | None = None) -> EvalSums:
        n = len(data)
        if n == 0:
            return EvalSums(num_examples=0, loss_sum=0.0, correct=0.0)
        x, y = self.to_tensors(data)
        losses, correct = self._score(weights, x, y, data.y)
        diff_sum = diff_sq = 0.0
        if reference is not None:
            ref_losses, _ = self._score(reference, x, y, data.y)
            d = losses - ref_losses
            diff_sum, diff_sq = float(d.sum()), float((d * d).sum())
        return EvalSums(
            num_examples=n, loss_sum=float(losses.sum()), correct=float(correct), diff_sum=diff_sum, diff_sq_sum=diff_sq
        )

    def _score(self, weights: Weights, x: torch.Tensor, y: torch.Tensor, y_np: np.ndarray) -> tuple[torch.Tensor, int]:
        """Per-example losses (float64) and the number of correct predictions."""
        model = self.load(weights)
        model.eval()
        bs = int(self.eval_batch_size)
        parts: list[torch.Tensor] = []
        correct = torch.zeros((), dtype=torch.int64, device=x.device)
        with torch.no_grad():
            for i in range(0, len(y), bs):
                out = model(x[i : i + bs])
                if i == 0:
                    self.check_fit(out, y_np)
                yb = y[i : i + bs]
                parts.append(self.per_example_loss(out, yb).double())
                correct += self.correct(out, yb).sum()
        return torch.cat(parts).cpu(), int(correct)


def _resolve_device(device: Any) -> torch.device:
    if not isinstance(device, str):
        raise ConfigError(
            f"TorchTask: 'device' must be a string such as 'cpu', 'cuda', 'cuda:1' or 'auto' (got {device!r})"
        )
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"TorchTask: unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"TorchTask: device {device!r} asked for, but no CUDA GPU is available; use 'cpu' or 'auto'")
    return dev


def _rng_devices(dev: torch.device) -> list[int]:
    if dev.type == "cuda":
        return [dev.index if dev.index is not None else torch.cuda.current_device()]
    return []


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0 or seed >= 2**63:
        raise ConfigError(f"seed must be an integer in [0, 2**63) (got {seed!r})")

"""Functional optimizers over stacked per-client parameters, step-for-step equal to torch.optim.

Each tensor in ``params`` has a leading client axis; a step updates only the first ``k`` clients
(the ones still training: clients are ordered by decreasing step count, so the active ones are
always a prefix). The formulas are those of ``torch.optim.SGD`` (momentum, no dampening, no
Nesterov; weight decay added to the gradient) and ``torch.optim.Adam`` (betas 0.9/0.999, eps 1e-8,
L2 weight decay), which ``fedblend.task.TorchTask`` uses for local training. FedProx's proximal
term ``mu/2 * ||w - w_global||^2`` enters as its gradient ``mu * (w - w_global)``.

    opt = StackedOptimizer({"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}, mu=0.0)
    state = opt.init(params)
    opt.step(params, grads, state, k=4)   # in place, first 4 clients
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fedblend.errors import ConfigError

__all__ = ["StackedOptimizer", "OptState"]

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass
class OptState:
    step: int = 0
    anchor: list[torch.Tensor] = field(default_factory=list)  # FedProx: the global weights
    buf1: list[torch.Tensor] = field(default_factory=list)  # momentum / Adam first moment
    buf2: list[torch.Tensor] = field(default_factory=list)  # Adam second moment


class StackedOptimizer:
    """SGD or Adam for a list of stacked parameter tensors (client axis first), updated in place."""

    def __init__(self, settings: Mapping[str, Any], mu: float = 0.0) -> None:
        name = settings.get("name")
        if name not in ("sgd", "adam"):
            raise ConfigError(f"StackedOptimizer: optimizer must be 'sgd' or 'adam' (got {name!r})")
        self.name = str(name)
        self.lr = float(settings["lr"])
        self.momentum = float(settings.get("momentum", 0.0))
        self.weight_decay = float(settings.get("weight_decay", 0.0))
        self.mu = float(mu)

    def init(self, params: list[torch.Tensor], anchor: list[torch.Tensor] | None = None) -> OptState:
        st = OptState()
        if self.mu > 0:
            if anchor is None:
                raise ConfigError("StackedOptimizer: proximal_mu > 0 needs the global weights as anchor")
            st.anchor = anchor
        if self.name == "sgd" and self.momentum > 0:
            st.buf1 = [torch.zeros_like(p) for p in params]
        if self.name == "adam":
            st.buf1 = [torch.zeros_like(p) for p in params]
            st.buf2 = [torch.zeros_like(p) for p in params]
        return st

    @torch.no_grad()
    def step(self, params: list[torch.Tensor], grads: list[torch.Tensor], st: OptState, k: int) -> None:
        """One step for clients ``0..k-1``; ``grads`` hold exactly those ``k`` clients."""
        full = k == params[0].shape[0]
        ps = params if full else [p[:k] for p in params]
        gs = list(grads)
        if self.mu > 0:  # gradient of mu/2 ||w - a||^2; ``anchor`` has one row (broadcast)
            gs = [g.add(p - a, alpha=self.mu) for g, p, a in zip(gs, ps, st.anchor, strict=True)]
        if self.weight_decay > 0:
            gs = torch._foreach_add(gs, ps, alpha=self.weight_decay)
        st.step += 1
        if self.name == "sgd":
            if self.momentum > 0:
                bufs = st.buf1 if full else [b[:k] for b in st.buf1]
                if st.step == 1:  # torch: buf = grad on the first step
                    torch._foreach_copy_(bufs, gs)
                else:
                    torch._foreach_mul_(bufs, self.momentum)
                    torch._foreach_add_(bufs, gs)
                gs = bufs
            torch._foreach_add_(ps, gs, alpha=-self.lr)
            return
        b1, b2 = ADAM_BETAS
        m = st.buf1 if full else [b[:k] for b in st.buf1]
        v = st.buf2 if full else [b[:k] for b in st.buf2]
        torch._foreach_lerp_(m, gs, 1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, gs, gs, value=1 - b2)
        bc1 = 1 - b1**st.step
        bc2_sqrt = math.sqrt(1 - b2**st.step)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, ADAM_EPS)
        torch._foreach_addcdiv_(ps, m, denom, value=-self.lr / bc1)

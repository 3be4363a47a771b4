"""Fused SGD for models made of ``nn.Linear`` layers (logistic regression, MLPs such as the 2NN).

For a linear layer ``out = x W^T + b`` the weight gradient of a batch is ``delta^T x`` where
``delta = dL/d(out)``. Instead of materialising the gradient and then reading it again in the
optimizer step, this path asks autograd only for the ``delta`` of each layer (it differentiates
with respect to a zero "probe" added to every layer's output; the layers' inputs are captured by
forward hooks) and updates the stacked weights in place with one batched GEMM,
``W <- (1 - lr*wd - lr*mu) W - lr * delta^T x (+ lr*mu*W_global)``. On the CPU, where this
workload is bound by memory traffic over the clients' weights, that is markedly faster than
gradient-then-update, with the same arithmetic as ``torch.optim.SGD`` up to float rounding.

Used by ``StackedTrainer`` for plain SGD (momentum 0; weight decay and FedProx allowed) when every
trainable parameter belongs to an ``nn.Linear`` that runs once per forward and the model is not a
plain Linear/ReLU chain (those take ``fedblend.sim.chain``, without autograd); the first use checks
the fused gradients against ordinary ones and falls back for good if they differ (e.g. tied
weights used outside their module).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

__all__ = ["FusedLinearSGD", "NotFusable"]

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class NotFusable(Exception):
    """This model cannot take the fused path; the caller uses the general one."""


class FusedLinearSGD:
    """See the module docstring. ``ok`` is False when the model does not qualify."""

    def __init__(self, model: nn.Module, trainable: list[str], loss: LossFn) -> None:
        self.model = model
        self.loss = loss  # (outputs (k, B, ...), labels (k, B), mask or None) -> per-client loss (k,)
        self.layers: dict[str, nn.Linear] = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        keys = {f"{n}.weight" for n in self.layers} | {
            f"{n}.bias" for n, m in self.layers.items() if m.bias is not None
        }
        self.ok = bool(self.layers) and keys == set(trainable)
        self.verified: bool | None = None
        self._mode: str | None = None  # None (hooks idle) | "shape" | "probe"
        self._probe: dict[str, torch.Tensor] | None = None
        self._inputs: dict[str, torch.Tensor] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._calls: dict[str, int] = {}
        self._shape_cache: dict[tuple[int, ...], dict[str, tuple[int, ...]]] = {}
        self._zero_cache: dict[Any, dict[str, torch.Tensor]] = {}
        names = list(self.layers)

        def forward(
            z: dict[str, torch.Tensor], p: dict[str, torch.Tensor], fz: dict[str, torch.Tensor], x: torch.Tensor
        ) -> tuple[torch.Tensor, list[torch.Tensor]]:
            self._mode, self._probe, self._inputs = "probe", z, {}
            try:
                out = functional_call(model, (p, fz), (x,))
            finally:
                self._mode, self._probe = None, None
            return out, [self._inputs[n] for n in names]

        self._forward = vmap(forward, in_dims=(0, 0, None, 0))
        if self.ok:
            for name, mod in self.layers.items():
                mod.register_forward_hook(self._hook(name))

    def _hook(self, name: str) -> Callable[..., Any]:
        def hook(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor | None:
            if self._mode is None:  # an ordinary forward (evaluation, the general path)
                return None
            self._calls[name] = self._calls.get(name, 0) + 1
            self._inputs[name] = args[0]
            if self._mode == "shape":
                self._shapes[name] = tuple(out.shape)
                return None
            assert self._probe is not None
            return out + self._probe[name]

        return hook

    def usable(self, settings: dict[str, Any]) -> bool:
        return self.ok and self.verified is not False and settings["name"] == "sgd" and settings["momentum"] == 0.0

    def step(
        self,
        p: dict[str, torch.Tensor],
        fz: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor | None,
        settings: dict[str, Any],
        mu: float,
        anchor: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """One in-place SGD step for the clients in ``p`` (views of the stacked weights); their losses."""
        k = x.shape[0]
        z = self._zeros(k, self._out_shapes(p, fz, x), next(iter(p.values())).dtype, x.device)
        if self.verified is None:
            try:
                self._verify(z, p, fz, x, y, w)
            except NotFusable:
                raise
            except Exception as exc:  # e.g. a layer whose output the loss never uses
                self.verified = False
                raise NotFusable(f"{type(exc).__name__}: {exc}") from None
        deltas, loss, inputs = self._deltas(z, p, fz, x, y, w)
        lr, wd = settings["lr"], settings["weight_decay"]
        beta = 1.0 - lr * wd - lr * mu
        with torch.no_grad():
            for (name, layer), delta, xin in zip(self.layers.items(), deltas, inputs, strict=True):
                d = delta.reshape(k, -1, layer.out_features)
                wt = p[f"{name}.weight"]
                wt.baddbmm_(d.transpose(1, 2), xin.reshape(k, -1, layer.in_features), beta=beta, alpha=-lr)
                if mu > 0:
                    wt.add_(anchor[f"{name}.weight"], alpha=lr * mu)
                if layer.bias is not None:
                    b = p[f"{name}.bias"]
                    if beta != 1.0:
                        b.mul_(beta)
                    b.sub_(d.sum(1), alpha=lr)
                    if mu > 0:
                        b.add_(anchor[f"{name}.bias"], alpha=lr * mu)
        return loss

    def _deltas(
        self,
        z: dict[str, torch.Tensor],
        p: dict[str, torch.Tensor],
        fz: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor | None,
    ) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        """Per-client dL/d(out) of every layer, by ordinary autograd (the clients' losses are
        independent, so the gradient of their sum holds each client's own), the losses, and the
        layers' inputs."""
        out, inputs = self._forward(z, p, fz, x)
        loss = self.loss(out, y, w)
        deltas = torch.autograd.grad(loss.sum(), [z[n] for n in self.layers])
        return list(deltas), loss.detach(), [t.detach() for t in inputs]

    def _out_shapes(
        self, p: dict[str, torch.Tensor], fz: dict[str, torch.Tensor], x: torch.Tensor
    ) -> dict[str, tuple[int, ...]]:
        """Each layer's output shape for one client's batch (and a check that each layer runs once)."""
        key = tuple(x.shape[1:])
        if key in self._shape_cache:
            return self._shape_cache[key]
        self._mode, self._calls, self._shapes = "shape", {}, {}
        try:
            with torch.no_grad():
                functional_call(self.model, ({n: t[0] for n, t in p.items()}, fz), (x[0],))
        finally:
            self._mode = None
        if self._calls != {n: 1 for n in self.layers}:
            self.ok = False
            raise NotFusable(f"linear layers must run exactly once per forward (got {self._calls})")
        self._shape_cache[key] = dict(self._shapes)
        return self._shape_cache[key]

    def _zeros(
        self, k: int, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """The zero probes (leaves that autograd differentiates against, never written), cached."""
        key = (k, tuple(shapes.items()), dtype, device)
        if key not in self._zero_cache:
            if len(self._zero_cache) > 8:
                self._zero_cache.clear()
            self._zero_cache[key] = {
                n: torch.zeros((k, *shapes[n]), dtype=dtype, device=device, requires_grad=True) for n in self.layers
            }
        return self._zero_cache[key]

    def _verify(
        self,
        z: dict[str, torch.Tensor],
        p: dict[str, torch.Tensor],
        fz: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor | None,
    ) -> None:
        """Fused gradients (delta^T x, sum delta) equal ordinary ones on this batch, or never fuse."""
        n = min(2, x.shape[0])
        wn = w[:n] if w is not None else None
        leaves = {k: v[:n].detach().clone().requires_grad_(True) for k, v in p.items()}
        out = vmap(lambda pp, xx: functional_call(self.model, (pp, fz), (xx,)))(leaves, x[:n])
        ref_loss = self.loss(out, y[:n], wn)
        ref = dict(zip(leaves, torch.autograd.grad(ref_loss.sum(), list(leaves.values())), strict=True))
        zs = {k: torch.zeros_like(v[:n]).requires_grad_(True) for k, v in z.items()}
        deltas, _, inputs = self._deltas(zs, {k: v[:n] for k, v in p.items()}, fz, x[:n], y[:n], wn)
        ok = True
        for (name, layer), delta, xin in zip(self.layers.items(), deltas, inputs, strict=True):
            d = delta.reshape(n, -1, layer.out_features)
            gw = torch.bmm(d.transpose(1, 2), xin.reshape(n, -1, layer.in_features))
            ok &= torch.allclose(gw, ref[f"{name}.weight"], rtol=1e-4, atol=1e-6)
            if layer.bias is not None:
                ok &= torch.allclose(d.sum(1), ref[f"{name}.bias"], rtol=1e-4, atol=1e-6)
        self.verified = bool(ok)
        if not ok:
            log.warning("fused linear SGD does not reproduce this model's gradients; using the general path")
            raise NotFusable("fused gradients differ from autograd's")

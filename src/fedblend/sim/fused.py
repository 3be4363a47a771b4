"""Fused SGD for models made of ``nn.Linear`` layers (logistic regression, MLPs such as the 2NN).

For a linear layer ``out = x W^T + b`` the weight gradient of a batch is ``delta^T x`` where
``delta = dL/d(out)``. Instead of materialising the gradient and then reading it again in the
optimizer step, this path asks autograd only for the ``delta`` of each layer (it differentiates
with respect to a zero "probe" added to every layer's output; inputs are captured by forward
hooks) and updates the stacked weights in place with one batched GEMM,
``W <- (1 - lr*wd - lr*mu) W - lr * delta^T x (+ lr*mu*W_global)``. On the CPU, where this
workload is bound by memory traffic over the clients' weights, that is about twice as fast as
gradient-then-update, with the same arithmetic as ``torch.optim.SGD`` up to float rounding.

Used by ``StackedTrainer`` for plain SGD (momentum 0; weight decay and FedProx allowed) when every
trainable parameter belongs to an ``nn.Linear`` called once per forward; the first use checks
the fused gradients against ordinary ones and falls back for good if they differ (e.g. tied
weights used outside their module).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vmap

__all__ = ["FusedLinearSGD", "NotFusable"]

log = logging.getLogger(__name__)


class FusedLinearSGD:
    """See the module docstring. ``ok`` is False when the model does not qualify."""

    def __init__(self, model: nn.Module, task: Any, trainable: list[str]) -> None:
        self.model = model
        self.task = task
        self.layers: dict[str, nn.Linear] = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        keys = {f"{n}.weight" for n in self.layers} | {f"{n}.bias" for n, m in self.layers.items() if m.bias is not None}
        self.ok = bool(self.layers) and keys == set(trainable)
        self.verified: bool | None = None
        self._mode: str | None = None  # None | "shape" | "probe"
        self._probe: dict[str, torch.Tensor] | None = None
        self._shape_cache: dict[tuple[int, ...], dict[str, tuple[int, ...]]] = {}
        self._zero_cache: dict[Any, dict[str, torch.Tensor]] = {}
        self._inputs: dict[str, torch.Tensor] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._calls: dict[str, int] = {}
        self._fns: dict[bool, Callable[..., Any]] = {}
        if self.ok:
            for name, mod in self.layers.items():
                mod.register_forward_hook(self._hook(name))

    def _hook(self, name: str) -> Callable[..., Any]:
        def hook(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor | None:
            if self._mode is None:  # ordinary forward (evaluation, the general path)
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

    def _fn(self, masked: bool) -> Callable[..., Any]:
        if masked not in self._fns:
            names = list(self.layers)

            def loss(z: dict[str, torch.Tensor], p: dict[str, torch.Tensor], fz: dict[str, torch.Tensor],
                     x: torch.Tensor, y: torch.Tensor, *w: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
                self._mode, self._probe, self._inputs = "probe", z, {}
                try:
                    out = functional_call(self.model, (p, fz), (x,))
                finally:
                    self._mode, self._probe = None, None
                if masked:
                    value = (self.task.per_example_loss(out, y) * w[0]).sum() / w[0].sum()
                else:
                    value = self.task.loss_fn(out, y)
                return value, [self._inputs[n] for n in names]

            dims = (0, 0, None, 0, 0, 0) if masked else (0, 0, None, 0, 0)
            self._fns[masked] = vmap(grad_and_value(loss, argnums=0, has_aux=True), in_dims=dims)
        return self._fns[masked]

    def _out_shapes(self, p: dict[str, torch.Tensor], fz: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, tuple[int, ...]]:
        """Each layer's output shape for one client's batch (and a check that each runs once)."""
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

    def step(self, p: dict[str, torch.Tensor], fz: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             w: torch.Tensor | None, settings: dict[str, Any], mu: float, anchor: dict[str, torch.Tensor]) -> torch.Tensor:
        """One in-place SGD step for the clients in ``p`` (views of the stacked weights); returns their losses."""
        shapes = self._out_shapes(p, fz, x)
        k = x.shape[0]
        z = self._zeros(k, shapes, next(iter(p.values())).dtype, x.device)
        args = (z, p, fz, x, y) if w is None else (z, p, fz, x, y, w)
        if self.verified is None:
            self._verify(args, w)
        deltas, (loss, inputs) = self._fn(w is not None)(*args)
        lr, wd = settings["lr"], settings["weight_decay"]
        beta = 1.0 - lr * wd - lr * mu
        with torch.no_grad():
            for (name, layer), xin in zip(self.layers.items(), inputs, strict=True):
                d = deltas[name].reshape(k, -1, layer.out_features)
                xi = xin.reshape(k, -1, layer.in_features)
                wt = p[f"{name}.weight"]
                wt.baddbmm_(d.transpose(1, 2), xi, beta=beta, alpha=-lr)
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

    def _zeros(self, k: int, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        """The (read-only) zero probes, allocated once per shape."""
        key = (k, tuple(shapes.items()), dtype, device)
        if key not in self._zero_cache:
            if len(self._zero_cache) > 8:
                self._zero_cache.clear()
            self._zero_cache[key] = {n: torch.zeros((k, *shapes[n]), dtype=dtype, device=device) for n in self.layers}
        return self._zero_cache[key]

    def _verify(self, args: tuple[Any, ...], w: torch.Tensor | None) -> None:
        """Fused gradients (delta^T x, sum delta) equal ordinary ones on this batch, or never fuse."""
        z, p, fz, x, y = args[:5]
        n = min(2, x.shape[0])
        sub = ({k: v[:n] for k, v in z.items()}, {k: v[:n] for k, v in p.items()}, fz, x[:n], y[:n])
        sub = sub + ((w[:n],) if w is not None else ())
        masked = w is not None

        def plain(pp: dict[str, torch.Tensor], fzz: dict[str, torch.Tensor], xx: torch.Tensor, yy: torch.Tensor,
                  *ww: torch.Tensor) -> torch.Tensor:
            out = functional_call(self.model, (pp, fzz), (xx,))
            if masked:
                return (self.task.per_example_loss(out, yy) * ww[0]).sum() / ww[0].sum()
            loss: torch.Tensor = self.task.loss_fn(out, yy)
            return loss

        dims = (0, None, 0, 0, 0) if masked else (0, None, 0, 0)
        ref = vmap(grad(plain), in_dims=dims)(*sub[1:])
        deltas, (_, inputs) = self._fn(masked)(*sub)
        ok = True
        for (name, layer), xin in zip(self.layers.items(), inputs, strict=True):
            d = deltas[name].reshape(n, -1, layer.out_features)
            gw = torch.bmm(d.transpose(1, 2), xin.reshape(n, -1, layer.in_features))
            ok &= torch.allclose(gw, ref[f"{name}.weight"], rtol=1e-4, atol=1e-6)
            if layer.bias is not None:
                ok &= torch.allclose(d.sum(1), ref[f"{name}.bias"], rtol=1e-4, atol=1e-6)
        self.verified = bool(ok)
        if not ok:
            log.warning("fused linear SGD does not reproduce this model's gradients; using the general path")
            raise NotFusable("fused gradients differ from autograd's")


class NotFusable(Exception):
    """This model cannot take the fused path; the caller uses the general one."""
